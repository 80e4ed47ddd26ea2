"""Bring up the whole bench: local CA, fake ACS REST + JWKS, fake model, the server(s), calls."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import secrets
import ssl
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from arms import Arm, this_tree
from caller import WEBHOOK_SECRET, Generator
from fake_acs import FakeAcs
from fake_model import ModelPeer
from metrics import Sink
from server_proc import ServerProcess

from acs_trio.testing.acs.tls import make_tls_files
from acs_trio.testing.tokens import TokenSigner


@dataclass
class Bench:
    sink: Sink
    gen: Generator
    peer: ModelPeer
    acs: FakeAcs
    #: One server per arm, by label, all on ``server_core``; the first is ``server``.
    servers: dict[str, ServerProcess]
    arms: list[Arm]

    @property
    def server(self) -> ServerProcess:
        return next(iter(self.servers.values()))


def pin_to_core(core: int) -> None:
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, {core})


@contextlib.asynccontextmanager
async def open_bench(
    out_dir: Path,
    *,
    server_core: int | str = 0,
    script_kw: dict[str, int] | None = None,
    delta_ms: int = 100,
    server_env: dict[str, str] | None = None,
    server_args: tuple[str, ...] = (),
    arms: list[Arm] | None = None,
) -> AsyncIterator[Bench]:
    arms = arms or [this_tree()]
    sink = Sink()
    tls = make_tls_files(out_dir / "tls")
    resource_id = str(uuid.uuid4())
    signer = TokenSigner(audience=resource_id)
    placeholder = Generator(sink, signer, "http://unset")
    acs = FakeAcs(sink, signer, placeholder.by_context, placeholder.by_connection)
    acs_port = await acs.start(str(tls.cert_pem), str(tls.key_pem))
    # The model link is TLS, as in production (wss://): the same local CA, trusted by the
    # server through SSL_CERT_FILE.
    model_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    model_tls.load_cert_chain(str(tls.cert_pem), str(tls.key_pem))
    peer = ModelPeer(sink, placeholder.calls, delta_ms=delta_ms)
    model_port = await peer.start(ssl=model_tls)
    access_key = base64.b64encode(secrets.token_bytes(32)).decode()
    env = {
        "ACS_CONNECTION_STRING": f"endpoint=https://127.0.0.1:{acs_port}/;accesskey={access_key}",
        "ACS_RESOURCE_ID": resource_id,
        "ACS_JWKS_URL": f"https://127.0.0.1:{acs_port}/calling/keys",
        "SSL_CERT_FILE": str(tls.ca_pem),
        "REALTIME_URL": f"wss://127.0.0.1:{model_port}/v1/realtime",
        "MAX_CONCURRENT_CALLS": "100000",
        # The bench drives the server past saturation on purpose: no admission limits.
        "INCOMING_CALL_SECRET": WEBHOOK_SECRET,
        "ANSWER_RATE_PER_S": "100000",
        "ANSWER_BURST": "100000",
        "MAX_LOOP_LAG_MS": "100000",
        "LOG_LEVEL": os.environ.get("BENCH_SERVER_LOG_LEVEL", "WARNING"),
        **(server_env or {}),
    }
    servers: dict[str, ServerProcess] = {}
    try:
        for arm in arms:
            server = ServerProcess(
                {**env, **arm.env},
                out_dir,
                core=server_core,
                extra_args=server_args,
                python=arm.python,
                cwd=arm.cwd,
                label=arm.label,
            )
            servers[arm.label] = server
            await server.start()
        gen = Generator(sink, signer, next(iter(servers.values())).url, script_kw=script_kw)
        gen.lead_ms = int(env.get("PLAYOUT_LEAD_MS", "100"))
        # Share the registries the fake endpoints were given.
        gen.calls, gen.by_context, gen.by_connection = (
            placeholder.calls,
            placeholder.by_context,
            placeholder.by_connection,
        )
        async with gen:
            yield Bench(sink, gen, peer, acs, servers, arms)
    finally:
        for server in servers.values():
            server.stop()
        await acs.stop()
        if peer.server is not None:
            peer.server.close()
        await asyncio.sleep(0)
