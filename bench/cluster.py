"""``cluster``: what shared state in Redis costs, and what ``--workers 2`` buys, in one run.

    python bench/load.py cluster [--levels 20] [--hold 20] [--settle 4] [--call-s 20]
                                 [--workers-levels 20,40,60,80,100]

Part 1, same level(s), same run, one after the other: the server on core 0 without ``REDIS_URL``
(one process, today's path) and with ``REDIS_URL`` pointing at a ``redis-server`` on core 1 (with
the generator).  Reported per variant: server CPU-s per call-minute and CPU %, hop latencies
(ACS→model, model→ACS) and call set-up time (IncomingCall POSTed → media socket open, which now
includes the admission script and, for the media socket, a Redis lookup), plus redis-server's own
CPU.  Part 2: a ramp with ``--workers 1`` (core 0) and ``--workers 2`` (cores 0 and 1, shared with
the generator and Redis), stopping at saturation, to compare the calls one host carries.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from typing import Any

from harness import open_bench
from levels import Slots, level_row, machine_info, snapshot
from report import LevelRow, print_table, write_json
from server_proc import free_port, proc_sample


class RedisProc:
    def __init__(self, core: int) -> None:
        self.port = free_port()
        self.core = core
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("redis-server not found: apt-get install -y redis-server")
        self.proc = subprocess.Popen(  # noqa: ASYNC220 - starting is instant, no wait
            ["taskset", "-c", str(self.core), binary, "--port", str(self.port), "--bind",
             "127.0.0.1", "--save", "", "--appendonly", "no", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        for _ in range(100):
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.close()
                return
            except OSError:
                await asyncio.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    async def command(self, line: str) -> str:
        """One inline command; the first line of the reply."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        writer.write(line.encode() + b"\r\n")
        reply = await reader.readline()
        writer.close()
        return reply.decode().strip()

    def cpu_s(self) -> float:
        assert self.proc is not None
        return proc_sample(self.proc.pid).cpu_s

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=10)


async def _measure(
    args: argparse.Namespace,
    levels: list[int],
    *,
    label: str,
    server_env: dict[str, str] | None = None,
    server_args: tuple[str, ...] = (),
    core: int | str = 0,
    redis: RedisProc | None = None,
    stop_at_saturation: bool = False,
    cores: int = 1,
) -> list[dict[str, Any]]:
    print(f"\n== {label}", flush=True)
    rows: list[dict[str, Any]] = []
    async with open_bench(
        args.out, server_core=core, server_env=server_env, server_args=server_args
    ) as bench:
        if server_args:
            await asyncio.sleep(2)  # every worker up (readiness answered by the first)
        warm = bench.gen.new_call(4.0)
        await warm.run()
        await asyncio.sleep(1)
        idle = snapshot(bench)
        slots = Slots(bench, args.call_s or 20.0)
        printed: list[LevelRow] = []
        for n in levels:
            while len(slots.tasks) < n:
                slots.add()
                await asyncio.sleep(1 / args.ramp_rate)
            await asyncio.sleep(args.settle)
            redis_a = redis.cpu_s() if redis else 0.0
            a = snapshot(bench)
            await asyncio.sleep(args.hold)
            b = snapshot(bench)
            redis_b = redis.cpu_s() if redis else 0.0
            row = level_row(bench, n, a, b, idle.rss_kb)
            printed.append(row)
            print_table([row], header=len(printed) == 1)
            wall = (b.t_ns - a.t_ns) / 1e9
            entry = {"variant": label, "cores": cores, **row.as_dict()}
            if redis is not None:
                entry["redis_cpu_pct"] = 100 * (redis_b - redis_a) / wall
                entry["redis_cpu_s_per_call_min"] = (redis_b - redis_a) / (n * wall / 60)
                print(f"      redis-server CPU {entry['redis_cpu_pct']:.2f} %", flush=True)
            rows.append(entry)
            if stop_at_saturation and _saturated(entry):
                print(f"saturated at {n} calls", flush=True)
                break
        await slots.stop()
    return rows


async def cluster_main(args: argparse.Namespace) -> int:
    started = time.time()
    levels = [int(x) for x in (args.levels if args.levels != DEFAULT_LEVELS else "20").split(",")]
    ramp = [int(x) for x in args.workers_levels.split(",") if x.strip()]
    redis = RedisProc(core=1)
    await redis.start()
    try:
        # Alternate the two variants (A B A B ...): the machine is shared, so its load drifts.
        single: list[dict[str, Any]] = []
        shared: list[dict[str, Any]] = []
        for round_ in range(args.rounds or 3):
            await redis.command("FLUSHALL")  # every round starts from an empty Redis
            single += await _measure(
                args, levels, label=f"round {round_ + 1}: one process, no REDIS_URL"
            )
            shared += await _measure(
                args, levels, label=f"round {round_ + 1}: REDIS_URL (redis-server on core 1)",
                server_env={"REDIS_URL": redis.url, "INSTANCE_ID": f"bench-{round_}"}, redis=redis,
            )  # fmt: skip
            left = await redis.command("SCARD acs_trio:calls")
            print(f"   calls left in Redis after the round: {left.lstrip(':')}", flush=True)
        workers = {}
        if ramp:
            env = {"REDIS_URL": redis.url, "INSTANCE_ID": "bench-w"}
            workers["1"] = await _measure(
                args, ramp, label="--workers 1 (core 0), REDIS_URL", server_env=env,
                server_args=("--workers", "1"), core=0, stop_at_saturation=True,
            )  # fmt: skip
            workers["2"] = await _measure(
                args, ramp, label="--workers 2 (cores 0-1, shared with the generator), REDIS_URL",
                server_env=env, server_args=("--workers", "2"), core="0,1",
                stop_at_saturation=True, cores=2,
            )  # fmt: skip
    finally:
        redis.stop()
    result = {
        "command": " ".join(["python", "bench/load.py", *sys.argv[1:]]),
        "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)),
        "duration_s": round(time.time() - started, 1),
        "machine": machine_info(),
        "load_average_at_start": os.getloadavg(),
        "settings": {
            "rounds": args.rounds or 3,
            "levels": levels,
            "workers_levels": ramp,
            "hold_s": args.hold,
            "settle_s": args.settle,
            "call_s": args.call_s or 20.0,
        },
        "single": single,
        "redis": shared,
        "workers": workers,
    }
    _summary(single, shared, workers)
    path = write_json(args.out / f"cluster-{time.strftime('%Y%m%d-%H%M%S')}.json", result)
    print(f"wrote {path}")
    return 0


DEFAULT_LEVELS = "1,10,25,50,100,150,200,250,300"


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def _summary(
    single: list[dict[str, Any]], shared: list[dict[str, Any]], workers: dict[str, Any]
) -> None:
    print("\n== Redis path against one process (alternating rounds, same run): median of rounds")
    for n in sorted({row["calls"] for row in single}):
        a = [row for row in single if row["calls"] == n]
        b = [row for row in shared if row["calls"] == n]

        def med(rows: list[dict[str, Any]], *path: str) -> float:
            values = []
            for row in rows:
                value: Any = row
                for key in path:
                    value = value[key]
                if value is not None:
                    values.append(float(value))
            return _median(values) if values else float("nan")

        cpu_a, cpu_b = med(a, "cpu_s_per_call_min"), med(b, "cpu_s_per_call_min")
        print(
            f"{n} calls, {len(a)}+{len(b)} rounds: server CPU-s/call-min {cpu_a:.3f} → {cpu_b:.3f} "
            f"({100 * (cpu_b / cpu_a - 1):+.1f} %), + redis-server "
            f"{med(b, 'redis_cpu_s_per_call_min'):.4f}"
        )
        for name, key in (("set-up", "setup"), ("ACS→model", "hop_in"), ("model→ACS", "hop_out"),
                          ("TTFA+", "ttfa")):  # fmt: skip
            print(
                f"   {name:10s} p50 {med(a, key, 'p50'):7.2f} → {med(b, key, 'p50'):7.2f} ms   "
                f"p99 {med(a, key, 'p99'):7.1f} → {med(b, key, 'p99'):7.1f} ms"
            )
        print(
            f"   failed calls {sum(r['failed_calls'] for r in a)} / {sum(r['failed_calls'] for r in b)}"
        )
    for count, rows in workers.items():
        held = [r for r in rows if not _saturated(r)]
        best = max((r["calls"] for r in held), default=None)
        print(f"--workers {count}: largest level below saturation: {best}")


def _saturated(row: dict[str, Any]) -> bool:
    """levels.saturated, with the CPU limit scaled to the cores the server may use."""
    p99s = [h["p99"] for h in (row["hop_in"], row["hop_out"]) if h["p99"] is not None]
    return (
        row["cpu_pct"] > 97 * row["cores"]
        or row["failed_calls"] > max(2, row["calls"] // 20)
        or any(p > 200 for p in p99s)
    )
