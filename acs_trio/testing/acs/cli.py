"""``acs-trio simulate``: play ACS against a running server and print what a caller experienced.

Start the simulator first: it mints a fresh ACS resource (HTTPS endpoint, access key, JWT keys)
and prints — or writes with ``--env-file`` — the settings the server must be started with.  It
then waits for the server's ``/readyz`` and places the calls.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path

import trio

from ..._httpx import httpx
from ...errors import AcsTrioError
from .call import CallOptions
from .report import AggregateReport, render_aggregate, render_call
from .simulated import SimulatedAcs, load_utterances, open_simulated_acs

__all__ = ["main"]

#: Above this many calls, per-event lines give way to a periodic status line.
VERBOSE_CALLS = 10


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="acs-trio simulate", description=__doc__)
    p.add_argument("--server", required=True, help="server base URL, e.g. http://127.0.0.1:8000")
    p.add_argument("--wav", type=Path, help="caller audio: mono PCM16 WAV, 16 or 24 kHz")
    p.add_argument("--calls", type=int, default=1, help="number of calls (default 1)")
    p.add_argument("--concurrency", type=int, help="calls at once (default: all)")
    p.add_argument("--stagger-ms", type=float, default=0.0, help="delay between call starts")
    p.add_argument("--barge-in", action="store_true", help="talk over the agent's first answer")
    p.add_argument("--no-greeting", action="store_true", help="do not wait for a greeting")
    p.add_argument("--report", type=Path, help="write the JSON report here")
    p.add_argument("--record-dir", type=Path, help="write one stereo WAV per call here")
    p.add_argument("--env-file", type=Path, help="write the server's settings to this file")
    p.add_argument("--state-dir", type=Path, help="keep the TLS files here (default: temp dir)")
    p.add_argument("--ready-timeout", type=float, default=120.0, help="seconds to wait for /readyz")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.calls < 1 or (args.concurrency is not None and args.concurrency < 1):
        print("acs-trio simulate: --calls and --concurrency must be at least 1", file=sys.stderr)
        return 2
    try:
        load_utterances(args.wav, _options(args))  # fail fast, before anything is started
        report = trio.run(_simulate, args)
    except AcsTrioError as exc:
        print(f"acs-trio simulate: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0 if report is not None and not report.failed else 1


def _options(args: argparse.Namespace) -> CallOptions:
    return CallOptions(
        barge_in=args.barge_in, expect_greeting=not args.no_greeting, record_dir=args.record_dir
    )


async def _simulate(args: argparse.Namespace) -> AggregateReport | None:
    options = _options(args)
    async with open_simulated_acs(state_dir=args.state_dir) as acs:
        _announce(acs, args.server, args.env_file)
        if not await _wait_ready(acs, args.server, args.ready_timeout):
            return None
        progress = _Progress(args.calls, quiet=args.quiet)
        async with trio.open_nursery() as nursery:
            if not args.quiet and args.calls > VERBOSE_CALLS:
                nursery.start_soon(progress.status_lines)
            report = await acs.place_calls(
                args.server,
                options,
                wav=args.wav,
                calls=args.calls,
                concurrency=args.concurrency or args.calls,
                stagger_s=args.stagger_ms / 1000,
                progress=progress,
            )
            nursery.cancel_scope.cancel()
    for call in report.calls:
        if args.calls <= VERBOSE_CALLS or not call.ok:
            print(render_call(call))
    print(render_aggregate(report))
    if args.report:
        args.report.write_text(report.dumps())
        print(f"report written to {args.report}")
    return report


def _announce(acs: SimulatedAcs, server: str, env_file: Path | None) -> None:
    env = acs.server_env(server)
    lines = [f"{name}={shlex.quote(value)}" for name, value in env.items()]
    if env_file is not None:
        env_file.write_text("\n".join(lines) + "\n")
        print(f"fake ACS at {acs.endpoint}; server settings written to {env_file}")
        print(f"start the server with them, e.g.: set -a; . {env_file}; set +a; acs-trio serve")
    else:
        print(f"fake ACS at {acs.endpoint}; start the server with:")
        print("\n".join(lines))
    sys.stdout.flush()


async def _wait_ready(acs: SimulatedAcs, server: str, timeout_s: float) -> bool:
    """Poll ``/readyz`` of a separately started process (an external process has no
    ``task_status`` to signal readiness, so polling is the only way)."""
    url = f"{server.rstrip('/')}/readyz"
    print(f"waiting for {url} ...", flush=True)
    with trio.move_on_after(timeout_s):
        while True:
            try:
                with trio.fail_after(5):
                    response = await acs.http.get(url)
                if response.status_code == 200:
                    return True
            except (httpx.HTTPError, trio.TooSlowError):
                pass
            await trio.sleep(0.25)
    print(f"acs-trio simulate: {url} not ready after {timeout_s:g} s", file=sys.stderr)
    return False


class _Progress:
    """Per-event lines for a few calls; a status line every 5 s for many."""

    def __init__(self, calls: int, *, quiet: bool) -> None:
        self.calls = calls
        self.quiet = quiet
        self.done = 0
        self.failed = 0
        self.start = trio.current_time()

    def __call__(self, index: int, text: str) -> None:
        if text.startswith("done:"):
            self.done += 1
            self.failed += "FAILED" in text
        if not self.quiet and self.calls <= VERBOSE_CALLS:
            elapsed = trio.current_time() - self.start
            print(f"[{elapsed:7.2f}s] call {index}: {text}", file=sys.stderr, flush=True)

    async def status_lines(self) -> None:
        while True:
            await trio.sleep(5)
            elapsed = trio.current_time() - self.start
            print(
                f"[{elapsed:7.2f}s] {self.done}/{self.calls} calls done, {self.failed} failed",
                file=sys.stderr,
                flush=True,
            )
