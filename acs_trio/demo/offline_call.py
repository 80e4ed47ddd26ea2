"""``acs-trio demo``: one offline call end to end on loopback, written up in ``demo-out/``.

Three real pieces run in one Trio run, talking over real sockets on 127.0.0.1: the simulated ACS
(:mod:`acs_trio.testing.acs`: Event Grid, HMAC-checked Call Automation REST, JWKS over TLS with its
own CA, the media WebSocket client), the server itself (:func:`acs_trio.control.app.create_app` under
hypercorn, settings parsed by :meth:`Settings.from_env` from the simulator's environment), and the
LOCAL TEST PEER as the "model" (:mod:`acs_trio.testing.realtime`: it greets with a recorded prompt and
echoes what it heard; it is not a language model).  The caller talks over the agent's first
answer, so the recording shows a barge-in: StopAudio, and the truncate telling the peer how much
of its answer was heard.  The peer is scripted to call the ``end_call`` tool with its answer to
the caller's last phrase, so the call ends with an agent hang-up: the server waits until that
answer has played, then hangs up over REST (end reason ``agent_hung_up``).  docs/demo.md explains
the output.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shutil
import socket
import ssl
import sys
import wave
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import trio
from hypercorn.trio import serve as hypercorn_serve

from .._httpx import httpx
from ..call import run_call
from ..call.lifecycle import CallSummary, EndReason
from ..config import Settings
from ..control.app import create_app
from ..control.server import hypercorn_config
from ..errors import AcsTrioError
from ..testing.acs import CallOptions, CallReport, open_simulated_acs
from ..testing.acs.simulated import load_utterances
from ..testing.realtime import LocalPeerSettings, PeerStats, serve_local_peer
from .timeline import call_picture, write_png

__all__ = ["DemoResult", "main", "run_demo"]

logger = logging.getLogger(__name__)

#: The whole demo (start-up, a ~15 s call, shutdown) must finish within this.
DEMO_TIMEOUT_S = 120.0
#: After the simulator's call ends, the server's own summary must follow within this.
SUMMARY_TIMEOUT_S = 5.0
#: hypercorn and the local peer must stop within this once asked.
SHUTDOWN_TIMEOUT_S = 10.0

AGENT_NOTE = (
    "the agent is the LOCAL TEST PEER: it greets with a recorded prompt and echoes what it heard; "
    "it is not a language model"
)

#: Server settings the demo adds to the simulator's ACS settings (names from acs_trio/config.py).
DEMO_ENV = {
    "SHUTDOWN_GRACE_S": "2",  # nothing is live at shutdown; do not wait the default 10 s
    "CALL_MAX_DURATION_S": "120",
    "LOG_LEVEL": "INFO",
}


#: The simulator's script with a barge-in 0.8 s into the agent's first answer: the echo starts
#: with the caller's 300 ms of VAD prefix padding, so this lets ~0.5 s of it be heard first.
DEMO_CALL = CallOptions(barge_in=True, barge_in_delay_s=0.8)


@dataclass
class DemoResult:
    """Everything the demo produced; ``failure`` is None when the call went as scripted."""

    out_dir: Path
    report: CallReport
    peer: list[PeerStats]
    summary: CallSummary | None
    #: The server's VAD_SILENCE_DURATION_MS (the peer's turn ends this long after the speech).
    vad_silence_duration_ms: int = 500
    failure: str | None = None
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.failure is None


def _reserve_port() -> tuple[int, int]:
    """A listening-ready socket on 127.0.0.1:<free port>, handed to hypercorn as ``fd://``.

    The server's settings (PUBLIC_BASE_URL) must name its port before hypercorn starts (the app's
    lifespan reads them before hypercorn binds), so the port is bound here first; hypercorn takes
    ownership of the file descriptor (``socket.socket(fileno=...)``) and closes it.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    except OSError:
        sock.close()
        raise
    return sock.detach(), port


async def run_demo(
    out_dir: Path,
    *,
    wav: Path | None = None,
    options: CallOptions | None = None,
    progress: Callable[[str], None] | None = None,
) -> DemoResult:
    """Run the offline call and write ``call.wav``, ``report.json`` and ``timeline.png``.

    ``options`` defaults to the simulator's script with a barge-in; ``record_dir`` is always a
    scratch directory inside ``out_dir``.  Raises only for a broken set-up (``AcsTrioError``,
    ``trio.TooSlowError``); a failed call is reported in the result.
    """
    scratch = out_dir / ".recording"
    base = options or DEMO_CALL
    call_options = dataclasses.replace(base, record_dir=scratch, expect_agent_hang_up=True)
    utterances = load_utterances(wav, call_options)  # a bad WAV fails here, before anything starts
    # The agent hangs up (end_call) with its answer to the caller's last phrase.
    peer_settings = LocalPeerSettings(end_call_after_turns=len(utterances))
    await trio.Path(out_dir).mkdir(parents=True, exist_ok=True)
    peer_stats: list[PeerStats] = []
    summaries: list[CallSummary] = []
    summary_seen = trio.Event()

    async def run_call_and_keep_summary(*args: Any, **kwargs: Any) -> CallSummary:
        # The server's real bridge, unchanged; the demo keeps the summary it returns.
        summary = await run_call(*args, **kwargs)
        summaries.append(summary)
        summary_seen.set()
        return summary

    say = progress or (lambda text: logger.info("%s", text))
    with trio.fail_after(DEMO_TIMEOUT_S):
        async with open_simulated_acs() as acs, trio.open_nursery() as nursery:
            peer_url: str = await nursery.start(
                partial(serve_local_peer, settings=peer_settings, record=peer_stats)
            )
            fd, port = _reserve_port()
            server_url = f"http://127.0.0.1:{port}"
            env = {
                **acs.server_env(server_url),
                "REALTIME_URL": peer_url,
                **DEMO_ENV,
                # The server's own recording (the production recorder, same code path).
                "RECORDINGS_DIR": str(out_dir / "recordings"),
            }
            settings = Settings.from_env(env)  # the real environment parsing path
            # The server's REST/JWKS client must trust the simulator's CA.  Instead of setting
            # SSL_CERT_FILE in os.environ (what a separate server process would do), the demo hands
            # create_app an httpx transport that trusts exactly that CA.
            trust = ssl.create_default_context(cafile=str(acs.tls.ca_pem))
            transport = httpx.AsyncHTTPTransport(verify=trust)
            app = create_app(settings, http_transport=transport, run_call=run_call_and_keep_summary)
            config = hypercorn_config("127.0.0.1", 0)
            config.bind = [f"fd://{fd}"]
            # At shutdown no call is live; only the simulator's idle keep-alive connection is
            # open, and hypercorn would wait the full graceful timeout (5 s) for it.
            config.graceful_timeout = 1.0
            stop = trio.Event()
            async with trio.open_nursery() as server_nursery:
                await server_nursery.start(
                    partial(hypercorn_serve, app, config, shutdown_trigger=stop.wait)
                )
                say(f"server on {server_url}, local test peer on {peer_url}, ACS at {acs.endpoint}")
                report = await acs.place_call(
                    server_url, call_options, wav=wav, progress=lambda _i, text: say(text)
                )
                with trio.move_on_after(SUMMARY_TIMEOUT_S):
                    await summary_seen.wait()
                stop.set()  # lifespan shutdown drains (nothing is live), then hypercorn stops
                server_nursery.cancel_scope.deadline = trio.current_time() + SHUTDOWN_TIMEOUT_S
            nursery.cancel_scope.cancel()  # the local peer
    result = DemoResult(out_dir, report, peer_stats, summaries[0] if summaries else None)
    result.vad_silence_duration_ms = settings.agent.vad_silence_duration_ms
    result.failure = _failure(result)
    await trio.to_thread.run_sync(write_outputs, result, scratch)
    result.files.update(await trio.to_thread.run_sync(_server_recording, out_dir / "recordings"))
    return result


def _server_recording(directory: Path) -> dict[str, Path]:
    """The server recorder's files for the demo call (the newest call in ``directory``)."""
    found: dict[str, Path] = {}
    for suffix in ("wav", "transcript.jsonl", "summary.json"):
        paths = sorted(directory.glob(f"*/*.{suffix}"))
        if paths:
            found[f"server.{suffix}"] = paths[-1]
    return found


def _failure(result: DemoResult) -> str | None:
    if result.report.failure is not None:
        return result.report.failure
    if result.summary is None:
        return "the server never reported the call's end"
    if not result.report.stop_audio_s and any(t.barge_in for t in result.report.turns):
        return "no StopAudio after the barge-in"
    if result.summary.end_reason is not EndReason.AGENT_HUNG_UP:
        return f"the call ended with {result.summary.end_reason.value}, not the agent's hang-up"
    return None


# --- output files (sync: run in a worker thread) --------------------------------------------------


def write_outputs(result: DemoResult, scratch: Path) -> None:
    """Move the simulator's recording to ``call.wav``; write ``report.json`` and ``timeline.png``."""
    out = result.out_dir
    if result.report.recording:
        wav_path = out / "call.wav"
        shutil.move(result.report.recording, wav_path)
        result.report.recording = str(wav_path)
        result.files["call.wav"] = wav_path
    shutil.rmtree(scratch, ignore_errors=True)
    report_path = out / "report.json"
    report_path.write_text(json.dumps(report_json(result), indent=2) + "\n")
    result.files["report.json"] = report_path
    if "call.wav" in result.files:
        rate, stereo = read_stereo(result.files["call.wav"])
        png = out / "timeline.png"
        truncations = [ms for stats in result.peer for _, ms in stats.truncations]
        write_png(png, call_picture(result.report, truncations, rate, stereo))
        result.files["timeline.png"] = png


def read_stereo(path: Path) -> tuple[int, np.ndarray]:
    """``(rate, samples[n, 2])`` of a PCM16 stereo WAV."""
    with wave.open(str(path), "rb") as w:
        if w.getnchannels() != 2 or w.getsampwidth() != 2:
            raise AcsTrioError(f"{path}: expected a 16-bit stereo WAV")
        rate, data = w.getframerate(), w.readframes(w.getnframes())
    return rate, np.frombuffer(data, dtype="<i2").reshape(-1, 2)


def peer_json(stats: PeerStats, silence_ms: int) -> dict[str, Any]:
    """What the local peer saw; ``echo_ms`` ≈ each turn's voiced audio the echo will replay."""
    data = asdict(stats)
    data["events_received"] = dict(stats.events_received)
    data["events_sent"] = dict(stats.events_sent)
    data["turns"] = [
        {
            "audio_start_ms": start,
            "audio_end_ms": end,
            # The peer's turn end is its last voiced frame plus silence_duration_ms (local-peer.md).
            "echo_ms": None if end is None else end - silence_ms - start,
        }
        for start, end in stats.turns
    ]
    data["truncations"] = [{"item_id": item, "audio_end_ms": ms} for item, ms in stats.truncations]
    return data


def report_json(result: DemoResult) -> dict[str, Any]:
    summary = result.summary
    silence_ms = result.vad_silence_duration_ms
    return {
        "ok": result.ok,
        "failure": result.failure,
        "agent": AGENT_NOTE,
        "simulator": result.report.to_json(),
        "peer": [peer_json(s, silence_ms) for s in result.peer],
        "server": None
        if summary is None
        else {
            **{k: _rounded(v) for k, v in asdict(summary).items() if k not in _CLOCK_FIELDS},
            "call_id": summary.ids.call_id,
            "correlation_id": summary.ids.correlation_id,
            "end_reason": summary.end_reason.value,
            "duration_s": round(summary.duration_s, 3),
        },
    }


#: Summary fields that are raw Trio clock readings or replaced by plainer ones.
_CLOCK_FIELDS = {"ids", "end_reason", "started_at", "ended_at"}


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 1)
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


# --- the human summary and the CLI ----------------------------------------------------------------


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} ms"


def summary_text(result: DemoResult) -> str:
    """What a person wants to know about the call, with where the files are."""
    report, summary = result.report, result.summary
    status = "OK" if result.ok else f"FAILED: {result.failure}"
    lines = [f"acs-trio demo: one offline call, {status}", f"  NOTE: {AGENT_NOTE}"]
    if report.greeting_first_audio_s is not None:
        lines.append(f"  greeting: first audio {report.greeting_first_audio_s:.2f} s after connect")
    bridge = summary.ttfa_ms if summary and len(summary.ttfa_ms) == len(report.turns) else None
    for i, turn in enumerate(report.turns):
        line = f"  turn {turn.utterance}: time to first audio {_ms(turn.ttfa_ms)} after speech end"
        if bridge is not None:
            line += f" (server: {_ms(bridge[i])} from the peer's speech_stopped to the first frame)"
        if turn.barge_in:
            line += f"; barge-in: StopAudio {_ms(turn.stop_audio_latency_ms)} after speech start"
        lines.append(line)
    truncations = [ms for stats in result.peer for _, ms in stats.truncations]
    if truncations:
        lines.append(
            f"  truncate: agent answer cut at audio_end_ms={truncations[0]} (what the caller had heard); "
            f"StopAudio flushed {report.discarded_audio_ms:.0f} ms not yet played"
        )
    server = (
        ""
        if summary is None
        else f"; server counted in {summary.frames_in}, out {summary.frames_out}"
    )
    lines.append(
        f"  frames: caller→server {report.frames_sent}, agent→caller {report.frames_received}{server}"
    )
    ended = f"  ended: hung up by {report.hung_up_by or '-'} (close code {report.close_code})"
    if summary is not None:
        ended += f"; server end reason {summary.end_reason.value}"
    if report.hang_up_after_played_ms is not None:
        ended += f", {report.hang_up_after_played_ms:.0f} ms after the goodbye had played"
    lines.append(ended)
    calls = [name for stats in result.peer for name in stats.function_calls]
    if calls:
        lines.append(f"  tools: the agent called {', '.join(calls)} (scripted in the local peer)")
    lines.extend(f"  deviation: {text} (x{n})" for text, n in report.deviations.items())
    what = {
        "call.wav": "stereo: caller left, agent right (as heard)",
        "report.json": "simulator report, what the peer saw, the server's call summary",
        "timeline.png": "picture of the call",
        "server.wav": "the server's recording: caller left (bit-exact), agent right as heard",
        "server.transcript.jsonl": "the server's transcript: speech, answers, barge-ins",
        "server.summary.json": "the server's call summary",
    }
    lines.extend(f"  {path}  {what[name]}" for name, path in result.files.items())
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="acs-trio demo",
        description="One offline call on loopback: ACS simulator -> server -> local test peer "
        "(greets, then echoes; not a model).  Writes call.wav, report.json, timeline.png.",
    )
    p.add_argument("--out", type=Path, default=Path("demo-out"), help="output directory")
    p.add_argument("--wav", type=Path, help="caller audio: mono PCM16 WAV, 16/24 kHz, 2 utterances")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    try:
        load_utterances(args.wav, DEMO_CALL)  # fail fast, before logging or anything starts
    except AcsTrioError as exc:
        print(f"acs-trio demo: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("acs_trio").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    # hypercorn's "Running on ..." lines (two servers) are noise here; warnings still show.
    logging.getLogger("hypercorn.error").addFilter(lambda r: r.levelno >= logging.WARNING)
    result: DemoResult | None = None
    code = 1
    try:
        result = trio.run(partial(run_demo, args.out, wav=args.wav))
    except* KeyboardInterrupt:
        print("acs-trio demo: interrupted", file=sys.stderr)
        code = 130
    except* AcsTrioError as group:
        print(f"acs-trio demo: {_first(group)}", file=sys.stderr)
        code = 2
    except* trio.TooSlowError:
        print(f"acs-trio demo: did not finish within {DEMO_TIMEOUT_S:.0f} s", file=sys.stderr)
    if result is None:
        return code
    print(summary_text(result))
    return 0 if result.ok else 1


def _first(group: BaseExceptionGroup[Any]) -> BaseException:
    """The first leaf of a (possibly nested) exception group."""
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc
