"""``run``: ramp 1 → N concurrent calls in steps, measure each step's window; ``smoke``: one call."""

from __future__ import annotations

import argparse
import asyncio
import platform
import random
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

from harness import Bench, open_bench
from metrics import now_ns, summary
from report import LevelRow, print_table, write_json, write_plot
from server_proc import self_cpu_s

TARGET_P99_MS = 5.0


async def smoke_main(args: argparse.Namespace) -> int:
    async with open_bench(args.out) as bench:
        calls = [bench.gen.new_call(args.call_s or 8.0) for _ in range(args.calls or 1)]
        results = await asyncio.gather(*(call.run() for call in calls))
        sink = bench.sink
        for name in ("setup", "hop_in", "hop_out", "ttfa", "barge", "teardown"):
            series = getattr(sink, name)
            print(f"{name:9s}", summary(sorted(series.v)))
        print(
            "results",
            results,
            "failures",
            sink.failures.window(0, 2**62),
            "events",
            sink.events.window(0, 2**62),
        )
        print("server log lines", bench.server.log_lines())
    return 0 if all(results) else 1


class Slots:
    """Keeps ``target`` calls live: each slot runs calls back to back (length jittered ±20 %)."""

    def __init__(self, bench: Bench, call_s: float) -> None:
        self.bench = bench
        self.call_s = call_s
        self.tasks: list[asyncio.Task[None]] = []
        self.stopping = False
        self.rng = random.Random(1)

    def add(self) -> None:
        self.tasks.append(asyncio.get_running_loop().create_task(self.slot()))

    async def slot(self) -> None:
        while not self.stopping:
            call = self.bench.gen.new_call(self.call_s * self.rng.uniform(0.8, 1.2))
            ok = await call.run()
            if not ok:
                await asyncio.sleep(0.5)

    async def stop(self) -> None:
        self.stopping = True
        for call in list(self.bench.gen.calls.values()):
            call.request_hang_up()
        await asyncio.wait(self.tasks, timeout=30)


@dataclass
class Snapshot:
    t_ns: int
    cpu_s: float
    rss_kb: int
    fds: int
    gen_cpu_s: float


def snapshot(bench: Bench) -> Snapshot:
    s = bench.server.sample()
    return Snapshot(now_ns(), s.cpu_s, s.rss_kb, s.fds, self_cpu_s())


def machine_info() -> dict[str, Any]:
    model = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    import os
    from importlib.metadata import version

    import trio

    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "trio": trio.__version__,
        "trio_websocket": version("trio-websocket"),
        "hypercorn": version("hypercorn"),
        "quart_trio": version("quart-trio"),
        "wsproto": version("wsproto"),
        "picows": version("picows"),
        "uvloop": version("uvloop"),
        "git": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip(),
        "git_dirty": bool(
            subprocess.run(
                ["git", "status", "--porcelain", "acs_trio"], capture_output=True, text=True
            ).stdout.strip()
        ),
    }


def level_row(bench: Bench, n: int, a: Snapshot, b: Snapshot, idle_rss_kb: int) -> LevelRow:
    sink = bench.sink
    t0, t1 = a.t_ns, b.t_ns
    wall = (t1 - t0) / 1e9
    cpu = b.cpu_s - a.cpu_s
    call_minutes = n * wall / 60
    failures = sink.failures.window(t0, t1)
    events = sink.events.window(t0, t1)
    return LevelRow(
        calls=n,
        window_s=wall,
        hop_in=summary(sink.hop_in.window(t0, t1)),
        hop_out=summary(sink.hop_out.window(t0, t1)),
        ttfa=summary(sink.ttfa.window(t0, t1)),
        barge=summary(sink.barge.window(t0, t1)),
        teardown=summary(sink.teardown.window(t0, t1)),
        setup=summary(sink.setup.window(t0, t1)),
        gen_lag=summary(sink.gen_lag.window(t0, t1)),
        cpu_pct=100 * cpu / wall,
        cpu_s_per_call_min=cpu / call_minutes if call_minutes else None,
        rss_kb=b.rss_kb,
        rss_per_call_kb=(b.rss_kb - idle_rss_kb) / n if n else None,
        fds=b.fds,
        gen_cpu_pct=100 * (b.gen_cpu_s - a.gen_cpu_s) / wall,
        failed_calls=sum(failures.values()),
        failures=dict(failures),
        events=dict(events),
    )


def saturated(row: LevelRow) -> bool:
    p99s = [h["p99"] for h in (row.hop_in, row.hop_out) if h["p99"] is not None]
    return (
        row.cpu_pct > 97 or row.failed_calls > max(2, row.calls // 20) or any(p > 200 for p in p99s)
    )


async def run_main(args: argparse.Namespace) -> int:
    if args.quick:
        levels = [1, 5, 10]
        hold, settle, call_s = 8.0, 3.0, args.call_s or 12.0
    else:
        levels = [int(x) for x in args.levels.split(",")]
        hold, settle, call_s = args.hold, args.settle, args.call_s or 30.0
    started = time.time()
    rows: list[LevelRow] = []
    from observe_cost import observe_env

    async with open_bench(args.out, server_env=observe_env(args.observe, args.out)) as bench:
        # Warm-up: one short call (lazy imports, JWKS fetch, first TLS connection), then idle.
        warm = bench.gen.new_call(4.0)
        await warm.run()
        await asyncio.sleep(2)
        idle = snapshot(bench)
        idle_cpu_a = idle
        await asyncio.sleep(3)
        idle_b = snapshot(bench)
        idle_cpu_pct = (
            100 * (idle_b.cpu_s - idle_cpu_a.cpu_s) / ((idle_b.t_ns - idle_cpu_a.t_ns) / 1e9)
        )
        print(
            f"idle server: RSS {idle.rss_kb} KB, {idle.fds} fds, CPU {idle_cpu_pct:.1f} %",
            flush=True,
        )
        slots = Slots(bench, call_s)
        timeline: list[dict[str, Any]] = []
        for n in levels:
            while len(slots.tasks) < n:
                slots.add()
                await asyncio.sleep(1 / args.ramp_rate)
            await asyncio.sleep(settle)
            a = snapshot(bench)
            await asyncio.sleep(hold)
            b = snapshot(bench)
            row = level_row(bench, n, a, b, idle.rss_kb)
            rows.append(row)
            timeline.append(
                {
                    "calls": n,
                    "live_calls_at_end": len(bench.gen.calls),
                    "model_sockets": bench.peer.open_sockets,
                }
            )
            print_table([row], header=len(rows) == 1)
            if saturated(row) and not args.keep_going:
                print(f"saturated at {n} calls: stopping the ramp", flush=True)
                break
        # Everyone hangs up at once: teardown under the largest burst.
        burst_from = now_ns()
        live = len(bench.gen.calls)
        await slots.stop()
        burst = summary(bench.sink.teardown.window(burst_from, now_ns()))
        await asyncio.sleep(3)
        after = snapshot(bench)
        log_lines = bench.server.log_lines()
        open_model = bench.peer.open_sockets
    held = [r for r in rows if r.ok(TARGET_P99_MS)]
    result = {
        "tag": args.tag,
        "command": " ".join(["python", "bench/load.py", *sys.argv[1:]]),
        "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)),
        "duration_s": round(time.time() - started, 1),
        "machine": machine_info(),
        "settings": {
            "levels": levels,
            "hold_s": hold,
            "settle_s": settle,
            "call_s": call_s,
            "ramp_rate": args.ramp_rate,
            "observe": args.observe,
        },
        "idle": {"rss_kb": idle.rss_kb, "fds": idle.fds, "cpu_pct": idle_cpu_pct},
        "levels": [r.as_dict() for r in rows],
        "largest_n_p99_under_5ms_no_failures": max((r.calls for r in held), default=None),
        "final_hang_up_burst": {"calls": live, "teardown_ms": burst},
        "after_all_hung_up": {
            "rss_kb": after.rss_kb,
            "fds": after.fds,
            "model_sockets_open": open_model,
        },
        "server_log_lines": log_lines,
        "timeline": timeline,
    }
    stem = f"load-{time.strftime('%Y%m%d-%H%M%S')}{'-' + args.tag if args.tag else ''}"
    json_path = write_json(args.out / f"{stem}.json", result)
    png = write_plot(
        args.out / f"{stem}.png",
        rows,
        title=f"acs_trio on one core ({result['machine']['cpu_model']})",
    )
    print(
        f"largest N with p99 < {TARGET_P99_MS:g} ms per hop and no failed call: {result['largest_n_p99_under_5ms_no_failures']}"
    )
    print(f"hang-up burst of {live} calls: teardown {burst}")
    print(
        f"after all hung up: RSS {after.rss_kb} KB, {after.fds} fds, model sockets open {open_model}; server log lines {log_lines}"
    )
    print(f"wrote {json_path} and {png}")
    return 0
