"""``SimulatedAcs``: one fake ACS resource (HTTPS REST + JWKS + token signer) and its call runner.

Start it first, hand its :meth:`SimulatedAcs.server_env` to the server process, then place
calls::

    async with open_simulated_acs() as acs:
        env = acs.server_env("http://127.0.0.1:8000")   # start the server with these
        report = await acs.place_calls("http://127.0.0.1:8000", CallOptions(), calls=1)
"""

from __future__ import annotations

import base64
import logging
import secrets
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, cast

import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from ..._httpx import httpx
from ...errors import ConfigError
from ..tokens import OFFICIAL_ISSUER, TokenSigner
from .audio import Clip, load_wav, split_at_longest_silence
from .call import CallContext, CallOptions, place_call
from .registry import CallRegistry
from .report import AggregateReport, CallReport
from .rest import FakeAcsApp
from .tls import TlsFiles, make_tls_files
from .wire import WallClock

__all__ = ["SimulatedAcs", "load_utterances", "open_simulated_acs"]

logger = logging.getLogger(__name__)


@dataclass
class SimulatedAcs:
    """A running fake ACS resource.  Create it with :func:`open_simulated_acs`."""

    endpoint: str
    access_key: str
    resource_id: str
    tls: TlsFiles
    signer: TokenSigner
    registry: CallRegistry
    http: httpx.AsyncClient
    clock: WallClock
    #: What Event Grid would carry for this resource's subscription (``X-Incoming-Call-Secret``).
    incoming_call_secret: str = field(default_factory=lambda: secrets.token_urlsafe(32), repr=False)

    @property
    def connection_string(self) -> str:
        return f"endpoint={self.endpoint}/;accesskey={self.access_key}"

    @property
    def jwks_url(self) -> str:
        return f"{self.endpoint}/calling/keys"

    def server_env(self, public_base_url: str) -> dict[str, str]:
        """Environment for the server process so it talks to this fake ACS (config.py names)."""
        return {
            "ACS_CONNECTION_STRING": self.connection_string,
            "ACS_RESOURCE_ID": self.resource_id,
            "ACS_JWKS_URL": self.jwks_url,
            "ACS_JWT_ISSUER": self.signer.issuer,
            "PUBLIC_BASE_URL": public_base_url.rstrip("/"),
            "SSL_CERT_FILE": str(self.tls.ca_pem),
            "INCOMING_CALL_SECRET": self.incoming_call_secret,
        }

    async def place_call(
        self, server_url: str, options: CallOptions | None = None, *, wav: Path | None = None,
        index: int = 0, progress: Callable[[int, str], None] | None = None,
    ) -> CallReport:  # fmt: skip
        """Place one call and return its report."""
        options = options or CallOptions()
        ctx = self._context(wav, options, progress)
        return await place_call(ctx, server_url, options, index)

    async def place_calls(
        self, server_url: str, options: CallOptions | None = None, *, wav: Path | None = None,
        calls: int = 1, concurrency: int = 1, stagger_s: float = 0.0,
        progress: Callable[[int, str], None] | None = None,
    ) -> AggregateReport:  # fmt: skip
        """Place ``calls`` calls, at most ``concurrency`` at once, starting ``stagger_s`` apart."""
        options = options or CallOptions()
        ctx = self._context(wav, options, progress)
        limiter = trio.CapacityLimiter(max(1, concurrency))
        reports: list[CallReport] = []
        start = trio.current_time()

        async def one(index: int) -> None:
            await trio.sleep_until(start + index * stagger_s)
            async with limiter:
                reports.append(await place_call(ctx, server_url, options, index))

        async with trio.open_nursery() as nursery:
            for index in range(calls):
                nursery.start_soon(one, index)
        reports.sort(key=lambda r: r.index)
        return AggregateReport(reports, wall_s=trio.current_time() - start)

    def _context(
        self, wav: Path | None, options: CallOptions, progress: Callable[[int, str], None] | None
    ) -> CallContext:
        return CallContext(
            registry=self.registry,
            signer=self.signer,
            clock=self.clock,
            http=self.http,
            topic=(
                f"/subscriptions/{uuid.UUID(int=0)}/resourceGroups/acs-simulator/providers/"
                "Microsoft.Communication/communicationServices/acs-simulator"
            ),
            utterances=load_utterances(wav, options),
            progress=progress or (lambda _index, _text: None),
            incoming_call_secret=self.incoming_call_secret,
        )


def load_utterances(wav: Path | None, options: CallOptions) -> tuple[Clip, ...]:
    """The caller's speech: the WAV split at its longest silence into one or two utterances.

    Raises :class:`ConfigError` for an unusable WAV, or a single utterance with ``barge_in``.
    Cheap enough to call up front just to validate the arguments.
    """
    clip = load_wav(wav)
    first, second = split_at_longest_silence(clip, threshold_rms=options.silence_threshold_rms)
    if options.barge_in and second is None:
        raise ConfigError("barge-in needs a WAV with two utterances separated by silence")
    return (first,) if second is None else (first, second)


@asynccontextmanager
async def open_simulated_acs(
    *,
    state_dir: Path | None = None,
    resource_id: str | None = None,
    issuer: str = OFFICIAL_ISSUER,
    http_transport: httpx.AsyncBaseTransport | None = None,
) -> AsyncIterator[SimulatedAcs]:
    """Serve a fake ACS resource on ``https://127.0.0.1:<free port>`` for the block's duration.

    TLS files go to ``state_dir`` (a temporary directory, removed afterwards, when None).
    ``http_transport`` replaces the network for the simulator's own requests (tests).
    """
    with tempfile.TemporaryDirectory(prefix="acs-sim-") as tmp:
        tls = make_tls_files(state_dir or Path(tmp))
        resource_id = resource_id or str(uuid.uuid4())
        signer = TokenSigner(audience=resource_id, issuer=issuer)
        access_key = base64.b64encode(secrets.token_bytes(32)).decode("ascii")
        registry = CallRegistry()
        app = FakeAcsApp(registry=registry, signer=signer, access_key=access_key)
        config = Config()
        config.bind = ["127.0.0.1:0"]
        config.certfile, config.keyfile = str(tls.cert_pem), str(tls.key_pem)
        config.accesslog = None
        config.graceful_timeout = 1.0
        stop = trio.Event()
        async with (
            httpx.AsyncClient(transport=http_transport, timeout=30.0) as http,
            trio.open_nursery() as nursery,
        ):
            # cast: hypercorn's ASGI types are stricter than a plain-dict ASGI app needs.
            asgi = cast(Any, app)
            binds = await nursery.start(partial(serve, asgi, config, shutdown_trigger=stop.wait))
            port = int(binds[0].rsplit(":", 1)[1])
            acs = SimulatedAcs(
                endpoint=f"https://127.0.0.1:{port}",
                access_key=access_key,
                resource_id=resource_id,
                tls=tls,
                signer=signer,
                registry=registry,
                http=http,
                clock=WallClock(trio.current_time()),
            )
            logger.info("fake ACS listening on %s (CA %s)", acs.endpoint, tls.ca_pem)
            try:
                yield acs
            finally:
                stop.set()
