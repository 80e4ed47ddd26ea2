"""The server under test as its own process, pinned to one core, and what /proc says about it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ProcSample:
    t: float  # time.monotonic()
    cpu_s: float  # utime + stime
    rss_kb: int
    fds: int


def proc_sample(pid: int) -> ProcSample:
    t = time.monotonic()
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (proc(5) fields 14, 15)
    rss = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
                break
    return ProcSample(t, cpu, rss, len(os.listdir(f"/proc/{pid}/fd")))


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def tree_sample(pid: int) -> ProcSample:
    """``proc_sample`` summed over the process and its children (``serve --workers N``)."""
    samples = [proc_sample(pid)]
    for child in _children(pid):
        with contextlib.suppress(OSError):  # exited between the listing and the read
            samples.append(proc_sample(child))
    return ProcSample(
        samples[0].t,
        sum(x.cpu_s for x in samples),
        sum(x.rss_kb for x in samples),
        sum(x.fds for x in samples),
    )


def self_cpu_s() -> float:
    return time.process_time()


class ServerProcess:
    """``taskset -c <core> python -m acs_trio serve --host 127.0.0.1 --port P`` with the bench env."""

    def __init__(
        self,
        env: dict[str, str],
        out_dir: Path,
        *,
        core: int | str = 0,
        extra_args: tuple[str, ...] = (),
        python: str = sys.executable,
        cwd: Path | None = None,
        label: str = "",
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, **env, "PUBLIC_BASE_URL": self.url}
        self.env.pop("PYTHONPATH", None)  # each server runs the acs_trio of its own venv/tree
        slug = "".join(c if c.isalnum() else "-" for c in label) or "server"
        self.log_path = out_dir / f"server-{time.strftime('%Y%m%d-%H%M%S')}-{slug}.log"
        self.core = core
        self.extra_args = extra_args
        self.python = python
        self.cwd = cwd
        self.label = label
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid  # taskset execs python: same pid

    async def start(self, timeout_s: float = 30) -> None:
        log = self.log_path.open("wb")
        cmd = [
            "taskset",
            "-c",
            str(self.core),
            self.python,
            "-m",
            "acs_trio",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            *self.extra_args,
        ]
        self.proc = subprocess.Popen(  # noqa: ASYNC220 - starting is instant, no wait
            cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=self.cwd
        )
        nice = int(os.environ.get("BENCH_NICE", "0"))
        if nice:
            os.setpriority(os.PRIO_PROCESS, self.proc.pid, nice)
        rt = int(os.environ.get("BENCH_RT", "0"))
        if rt:
            os.sched_setscheduler(self.proc.pid, os.SCHED_RR, os.sched_param(rt))
        deadline = time.monotonic() + timeout_s
        async with aiohttp.ClientSession() as http:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(
                        f"server exited with {self.proc.returncode}; see {self.log_path}"
                    )
                try:
                    async with http.get(f"{self.url}/readyz") as r:
                        if r.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"server not ready in {timeout_s}s; see {self.log_path}")
                await asyncio.sleep(
                    0.1
                )  # an external process: polling is the only readiness signal

    async def live_calls(self) -> int:
        """Calls the server still holds, from ``GET /healthz`` (``{"calls": N, ...}``)."""
        async with aiohttp.ClientSession() as http, http.get(f"{self.url}/healthz") as r:
            body = await r.json()
        return int(body["calls"])

    def sample(self) -> ProcSample:
        return tree_sample(self.pid)

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def log_lines(self) -> int:
        try:
            return sum(1 for _ in self.log_path.open("rb"))
        except OSError:
            return 0
