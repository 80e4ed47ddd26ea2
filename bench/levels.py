"""``run``: ramp 1 → N concurrent calls in steps, measure each step's window; ``smoke``: one call."""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

from arms import install_ref, parse_arm, this_tree
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
        for name in (
            "setup",
            "hop_in",
            "hop_in_last",
            "hop_out",
            "out_pacing",
            "hop_out_first",
            "truncate_err",
            "ttfa",
            "barge",
            "teardown",
        ):
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

    def __init__(self, bench: Bench, call_s: float, server_url: str | None = None) -> None:
        self.bench = bench
        self.call_s = call_s
        self.server_url = server_url
        self.tasks: list[asyncio.Task[None]] = []
        self.stopping = False
        self.rng = random.Random(1)

    def add(self) -> None:
        self.tasks.append(asyncio.get_running_loop().create_task(self.slot()))

    async def slot(self) -> None:
        while not self.stopping:
            call = self.bench.gen.new_call(
                self.call_s * self.rng.uniform(0.8, 1.2), self.server_url
            )
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


def snapshot(bench: Bench, arm: str | None = None) -> Snapshot:
    s = (bench.servers[arm] if arm else bench.server).sample()
    return Snapshot(now_ns(), s.cpu_s, s.rss_kb, s.fds, self_cpu_s())


def machine_info() -> dict[str, Any]:
    model = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
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


def level_row(
    bench: Bench, n: int, a: Snapshot, b: Snapshot, idle_rss_kb: int, arm: str = ""
) -> LevelRow:
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
        arm=arm,
        hop_in_last=summary(sink.hop_in_last.window(t0, t1)),
        hop_out_first=summary(sink.hop_out_first.window(t0, t1)),
        out_pacing=summary(sink.out_pacing.window(t0, t1)),
        out_total=summary(sink.out_total.window(t0, t1)),
        truncate_err=summary(sink.truncate_err.window(t0, t1)),
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
    arms = [this_tree("this")]
    arms += [parse_arm(spec) for spec in args.arm or []]
    if args.compare:
        arms.append(install_ref(args.compare, args.out))
    started = time.time()
    rows: list[LevelRow] = []
    from observe_cost import observe_env

    async with open_bench(
        args.out, arms=arms, server_env=observe_env(args.observe, args.out)
    ) as bench:
        labels = list(bench.servers)
        idle: dict[str, Snapshot] = {}
        idle_cpu_pct: dict[str, float] = {}
        for label in labels:
            # Warm-up: one short call (lazy imports, JWKS fetch, first TLS connection), then idle.
            warm = bench.gen.new_call(4.0, bench.servers[label].url)
            await warm.run()
        await asyncio.sleep(2)
        for label in labels:
            idle[label] = snapshot(bench, label)
        await asyncio.sleep(3)
        for label in labels:
            b = snapshot(bench, label)
            a = idle[label]
            idle_cpu_pct[label] = 100 * (b.cpu_s - a.cpu_s) / ((b.t_ns - a.t_ns) / 1e9)
            print(
                f"idle server {label} ({bench.servers[label].pid}): RSS {a.rss_kb} KB, {a.fds} fds, "
                f"CPU {idle_cpu_pct[label]:.1f} %",
                flush=True,
            )
        timeline: list[dict[str, Any]] = []
        live_slots: dict[str, Slots] = {}
        done: set[str] = set()  # arms that saturated (not loaded further)
        for i, n in enumerate(levels):
            # A/B: the arms take turns at each level, in alternating order (ABBA...), one loaded
            # at a time on the same core, so slow drift of the machine's load hits both alike.
            turns = [
                (r, label)
                for r in range(args.rounds)
                for label in (labels if (i + r) % 2 == 0 else labels[::-1])
                if label not in done
            ]
            if not turns:
                break
            for r, label in turns:
                url = bench.servers[label].url
                slots = live_slots.get(label)
                if slots is None:
                    slots = live_slots[label] = Slots(bench, call_s, url)
                while len(slots.tasks) < n:
                    slots.add()
                    await asyncio.sleep(1 / args.ramp_rate)
                await asyncio.sleep(settle)
                a = snapshot(bench, label)
                await asyncio.sleep(hold)
                b = snapshot(bench, label)
                row = level_row(bench, n, a, b, idle[label].rss_kb, arm=label)
                row.round = r
                rows.append(row)
                timeline.append(
                    {
                        "arm": label,
                        "calls": n,
                        "live_calls_at_end": len(bench.gen.calls),
                        "model_sockets": bench.peer.open_sockets,
                    }
                )
                print_table([row], header=len(rows) == 1)
                if saturated(row) and not args.keep_going:
                    print(f"{label} saturated at {n} calls: not loaded further", flush=True)
                    done.add(label)
                if len(labels) > 1:
                    # Unload this arm before the next one is measured.
                    await live_slots.pop(label).stop()
                    await asyncio.sleep(2)
        # Everyone hangs up at once: teardown under the largest burst (single-arm runs).
        burst_from = now_ns()
        live = len(bench.gen.calls)
        for slots in live_slots.values():
            await slots.stop()
        burst = summary(bench.sink.teardown.window(burst_from, now_ns()))
        await asyncio.sleep(3)
        after = {label: snapshot(bench, label) for label in labels}
        log_lines = {label: bench.servers[label].log_lines() for label in labels}
        open_model = bench.peer.open_sockets
    held = {  # every round at that level held
        label: max(
            (
                r.calls
                for r in rows
                if r.arm == label
                and all(o.ok(TARGET_P99_MS) for o in rows if o.arm == label and o.calls == r.calls)
            ),
            default=None,
        )
        for label in labels
    }
    result = {
        "tag": args.tag,
        "command": " ".join(["python", "bench/load.py", *sys.argv[1:]]),
        "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)),
        "duration_s": round(time.time() - started, 1),
        "machine": machine_info(),
        "load_average_at_start": os.getloadavg(),
        # Server settings inherited by every arm from this process's environment.
        "inherited_env": {
            k: v
            for k, v in os.environ.items()
            if k in {"APPEND_BATCH_MS", "OUTBOUND_FRAME_MS", "PLAYOUT_LEAD_MS"}
        },
        "arms": [{"label": a.label, "git": a.git, "env": a.env, "python": a.python} for a in arms],
        "settings": {
            "levels": levels,
            "hold_s": hold,
            "settle_s": settle,
            "call_s": call_s,
            "ramp_rate": args.ramp_rate,
            "model_link": "wss (local CA)",
            "nice": args.nice,
            "sched_rr_priority": args.rt,
            "rounds": args.rounds,
            "observe": args.observe,
        },
        "idle": {
            label: {
                "rss_kb": idle[label].rss_kb,
                "fds": idle[label].fds,
                "cpu_pct": idle_cpu_pct[label],
            }
            for label in labels
        },
        "levels": [r.as_dict() for r in rows],
        "largest_n_p99_under_5ms_no_failures": held,
        "cpu_ratio_vs_first_arm": ratios(rows, labels),
        "final_hang_up_burst": {"calls": live, "teardown_ms": burst},
        "after_all_hung_up": {
            "rss_kb": {label: s.rss_kb for label, s in after.items()},
            "fds": {label: s.fds for label, s in after.items()},
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
    for label in labels:
        print(
            f"{label}: largest N with p99 < {TARGET_P99_MS:g} ms per hop (every frame) and no failed call: {held[label]}"
        )
    for label, per_level in result["cpu_ratio_vs_first_arm"].items():
        print(f"CPU-s per call-minute, {labels[0]} / {label}: {per_level}")
    print(f"hang-up burst of {live} calls: teardown {burst}")
    print(
        f"after all hung up: RSS {result['after_all_hung_up']['rss_kb']} KB, model sockets open {open_model}; server log lines {log_lines}"
    )
    print(f"wrote {json_path} and {png}")
    return 0


def ratios(rows: list[LevelRow], labels: list[str]) -> dict[str, dict[int, float]]:
    """CPU-s per call-minute of the first arm divided by each other arm's, level by level
    (CPU seconds and call-minutes summed over the rounds)."""
    cpu: dict[tuple[str, int], float] = {}
    minutes: dict[tuple[str, int], float] = {}
    for r in rows:
        key = (r.arm, r.calls)
        call_min = r.calls * r.window_s / 60
        cpu[key] = cpu.get(key, 0.0) + (r.cpu_s_per_call_min or 0.0) * call_min
        minutes[key] = minutes.get(key, 0.0) + call_min
    out: dict[str, dict[int, float]] = {}
    for label in labels[1:]:
        out[label] = {}
        for (arm, n), mine in cpu.items():
            other = cpu.get((label, n))
            if arm == labels[0] and mine and other:
                out[label][n] = round((mine / minutes[(arm, n)]) / (other / minutes[(label, n)]), 3)
    return out
