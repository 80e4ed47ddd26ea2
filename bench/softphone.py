"""Softphone figures: the page's time to first audio, and the server's CPU for a browser call
against a simulated ACS call, in the same run and the same server process.

    python bench/softphone.py --calls 3 --out docs/softphone-bench.json [--screenshot docs/softphone.png]

One server (``acs-trio serve --local-peer`` with ``SOFTPHONE=1``, pinned to core 0) takes
``--calls`` simulated ACS calls (``acs-trio simulate``, one at a time, core 1) and then ``--calls``
browser calls (Debian's Chromium through Playwright, the page's fake microphone playing the test
story WAV of tests/demo/softphone_page.py).  Both callers play the same WAV, and the local test
peer answers both, inside the server process, so its CPU is in both figures.

Per call, the server's CPU (utime + stime from /proc) is read when its ``call started`` and
``call ended`` log lines appear; CPU-s per call-minute = that difference / the summary line's
``duration_s``.  The page's time to first audio is measured by the page itself on the audio
clock: the end of the caller's speech (its level detector, -40 dBFS, 300 ms hangover) to the
first agent sample leaving its playback worklet.  Needs ``pip install -e '.[dev]'`` and chromium.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.demo.softphone_page import (  # noqa: E402
    MODEL_VARS,
    BrowserPage,
    browser_skip_reason,
    write_caller_wav,
)

SCREENSHOT_AT_S = 9.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_s(pid: int) -> float:
    """utime + stime of ``pid`` (proc(5) fields 14, 15), as bench/server_proc.py reads them."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


STARTED = re.compile(r"\[call=(\S+) corr=\S+\] call started")
ENDED = re.compile(r"call ended call_id=(\S+) .*duration_s=([\d.]+) end_reason=(\S+)")


class Server:
    """The server process and, per call id, its CPU time at the call's start and end."""

    def __init__(self, env: dict[str, str], port: int) -> None:
        self.proc = subprocess.Popen(
            [
                *("taskset", "-c", "0", sys.executable, "-m", "acs_trio", "serve"),
                *("--local-peer", "--host", "127.0.0.1", "--port", str(port)),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.cpu_start: dict[str, float] = {}
        self.calls: dict[str, dict[str, Any]] = {}
        self.lines: list[str] = []
        self.ended = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            cpu = cpu_s(self.proc.pid) if self.proc.poll() is None else 0.0
            self.lines.append(line.rstrip())
            if match := STARTED.search(line):
                self.cpu_start[match.group(1)] = cpu
            elif match := ENDED.search(line):
                call_id = match.group(1)
                with self.ended:
                    self.calls[call_id] = {
                        "cpu_s": cpu - self.cpu_start.get(call_id, cpu),
                        "duration_s": float(match.group(2)),
                        "end_reason": match.group(3),
                        "summary": line.strip(),
                    }
                    self.ended.notify_all()

    def wait_calls(self, prefix: str, count: int, timeout_s: float) -> list[dict[str, Any]]:
        with self.ended:
            self.ended.wait_for(
                lambda: sum(k.startswith(prefix) for k in self.calls) >= count, timeout_s
            )
            return [v | {"call_id": k} for k, v in self.calls.items() if k.startswith(prefix)]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def per_minute(calls: list[dict[str, Any]]) -> list[float]:
    return [c["cpu_s"] / (c["duration_s"] / 60) for c in calls if c["duration_s"] > 0]


def browser_call(url: str, wav: Path, wav_s: float, screenshot: Path | None) -> dict[str, Any]:
    page = BrowserPage(url, wav, screenshot)
    try:
        p = page.page
        p.click("#call")
        p.wait_for_function("softphone.phase === 'in-call'", timeout=10_000)
        # The picture: 9 s in, the caller's second sentence has cut into the first echo.
        time.sleep(SCREENSHOT_AT_S)
        page.screenshot_if_asked()
        time.sleep(wav_s + 0.5 - SCREENSHOT_AT_S)
        numbers: dict[str, Any] = p.evaluate(
            "({pageTtfaMs: softphone.pageTtfaMs, serverTtfaMs: softphone.serverTtfaMs,"
            " flushMs: softphone.flushMs, bargeInMs: softphone.bargeInMs,"
            " greetingMs: softphone.greetingMs, counters: softphone.counters,"
            " contextRate: Number(document.getElementById('context-rate').textContent)})"
        )
        p.click("#call")
        p.wait_for_function("softphone.phase === 'ended'", timeout=10_000)
        return numbers
    finally:
        page.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "docs/softphone-bench.json")
    parser.add_argument("--screenshot", type=Path)
    args = parser.parse_args()
    if reason := browser_skip_reason():
        print(reason, file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="softphone-bench-"))
    wav = work / "caller.wav"
    wav_s = write_caller_wav(wav)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env_file = work / "server.env"
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(MODEL_VARS)}
    simulator = subprocess.Popen(
        [
            *("taskset", "-c", "1", sys.executable, "-m", "acs_trio", "simulate", "--server", base),
            *("--env-file", str(env_file), "--wav", str(wav), "--calls", str(args.calls)),
            *("--concurrency", "1", "--report", str(work / "simulate.json"), "--quiet"),
        ],
        env=base_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 30
    while not env_file.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    env = dict(base_env)
    for line in env_file.read_text().splitlines():
        name, _, value = line.partition("=")
        env[name] = value.strip("'")
    token = secrets.token_urlsafe(24)
    env |= {"SOFTPHONE": "1", "SOFTPHONE_TOKEN": token, "LOG_LEVEL": "INFO"}
    server = Server(env, port)
    try:
        out, _ = simulator.communicate(timeout=120 + 60 * args.calls)
        acs_calls = [c for c in server.wait_calls("", args.calls, 30)]
        pages = []
        for n in range(args.calls):
            shot = args.screenshot if n == args.calls - 1 else None
            pages.append(browser_call(f"{base}/softphone/{token}/", wav, wav_s, shot))
        browser_calls = server.wait_calls("softphone-", args.calls, 30)
    finally:
        server.stop()
    acs_calls = [c for c in acs_calls if not c["call_id"].startswith("softphone-")]
    page_ttfa = [ms for page in pages for ms in page["pageTtfaMs"]]
    server_ttfa = [ms for page in pages for ms in page["serverTtfaMs"]]
    flush = [ms for page in pages for ms in page["flushMs"]]
    acs_cpu, browser_cpu = per_minute(acs_calls), per_minute(browser_calls)
    result = {
        "command": f"python bench/softphone.py --calls {args.calls}",
        "machine": {"nproc": os.cpu_count(), "python": sys.version.split()[0]},
        "wav_s": wav_s,
        "simulator_exit": simulator.returncode,
        "simulator_output_tail": out.splitlines()[-6:],
        "acs_calls": acs_calls,
        "browser_calls": browser_calls,
        "pages": pages,
        "page_ttfa_ms": page_ttfa,
        "server_ttfa_ms": server_ttfa,
        "flush_ms": flush,
        "cpu_s_per_call_min": {"acs": acs_cpu, "browser": browser_cpu},
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")

    def stats(values: list[float]) -> str:
        if not values:
            return "-"
        return f"median {statistics.median(values):.0f} (min {min(values):.0f}, max {max(values):.0f}, n={len(values)})"

    print(f"page TTFA ms (speech end -> first agent audio played): {stats(page_ttfa)}")
    print(f"server TTFA ms (speech_stopped -> first frame sent):  {stats(server_ttfa)}")
    print(f"StopAudio -> playback flushed ms: max {max(flush, default=0):.2f} (n={len(flush)})")
    print(
        "server CPU-s per call-minute: "
        f"ACS {statistics.median(acs_cpu) if acs_cpu else float('nan'):.3f} {[round(x, 3) for x in acs_cpu]}, "
        f"browser {statistics.median(browser_cpu) if browser_cpu else float('nan'):.3f} {[round(x, 3) for x in browser_cpu]}"
    )
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
