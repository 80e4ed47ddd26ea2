"""A throw-away certificate authority so the fake ACS endpoint can speak HTTPS on 127.0.0.1.

The server's Call Automation SDK only talks to ``https://`` endpoints and its JWKS fetch must
verify TLS, exactly as in production.  Rather than teaching the server to skip verification, the
simulator mints a local CA with trustme and the operator starts the server with
``SSL_CERT_FILE=<ca.pem>`` (httpx and ssl honour it), which keeps the server's real TLS path.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import trustme

__all__ = ["TlsFiles", "make_tls_files"]


@dataclass(frozen=True)
class TlsFiles:
    """PEM files on disk: the CA to trust, and the server's certificate chain and key."""

    ca_pem: Path
    cert_pem: Path
    key_pem: Path

    def client_context(self) -> ssl.SSLContext:
        """An SSL context that trusts only this CA (for tests and self-checks)."""
        return ssl.create_default_context(cafile=str(self.ca_pem))


def make_tls_files(directory: Path) -> TlsFiles:
    """Write a fresh CA and a leaf certificate for 127.0.0.1/localhost into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA(organization_name="acs-trio simulator")
    leaf = ca.issue_cert("127.0.0.1", "localhost", "::1")
    files = TlsFiles(
        ca_pem=directory / "ca.pem",
        cert_pem=directory / "server-cert.pem",
        key_pem=directory / "server-key.pem",
    )
    ca.cert_pem.write_to_path(str(files.ca_pem))
    with files.cert_pem.open("wb") as chain:
        for blob in leaf.cert_chain_pems:
            chain.write(blob.bytes())
    leaf.private_key_pem.write_to_path(str(files.key_pem))
    files.key_pem.chmod(0o600)
    return files
