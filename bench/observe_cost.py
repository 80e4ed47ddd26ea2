"""``observe``: the server's CPU with metrics and recordings off, metrics on, and both on.

Same bench, same run: for each round, the three configurations are measured one after the other
(a fresh server process each, N calls held for ``--hold`` s after ``--settle`` s), so a machine
shared with other work loads all of them alike; the ratios to "off" within a round are the
result, absolute CPU % only its context.  With metrics on, ``/metrics`` is scraped every
``SCRAPE_INTERVAL_S`` during the window, like a Prometheus would (a little more often).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
from harness import open_bench
from levels import Slots, machine_info, snapshot
from report import write_json

SCRAPE_INTERVAL_S = 5.0


def observe_env(mode: str, out_dir: Path) -> dict[str, str]:
    """Server settings for ``--observe off|metrics|all`` (names from acs_trio/config.py)."""
    if mode == "off":
        return {"METRICS_ENABLED": "false"}
    if mode == "metrics":
        return {"METRICS_ENABLED": "true"}
    recordings = out_dir / "recordings"
    return {"METRICS_ENABLED": "true", "RECORDINGS_DIR": str(recordings)}


async def _scrape(url: str, stop: asyncio.Event, sizes: list[int]) -> None:
    async with aiohttp.ClientSession() as http:
        while not stop.is_set():
            async with http.get(f"{url}/metrics") as response:
                sizes.append(len(await response.read()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), SCRAPE_INTERVAL_S)


async def _measure(
    args: argparse.Namespace, mode: str, n: int, call_s: float, hold: float, settle: float
) -> dict[str, Any]:
    env = observe_env(mode, args.out)
    async with open_bench(args.out, server_env=env) as bench:
        warm = bench.gen.new_call(4.0)
        await warm.run()
        slots = Slots(bench, call_s)
        while len(slots.tasks) < n:
            slots.add()
            await asyncio.sleep(1 / args.ramp_rate)
        await asyncio.sleep(settle)
        stop, sizes = asyncio.Event(), []
        scraper = None
        if mode != "off":
            scraper = asyncio.get_running_loop().create_task(_scrape(bench.server.url, stop, sizes))
        a = snapshot(bench)
        await asyncio.sleep(hold)
        b = snapshot(bench)
        stop.set()
        if scraper is not None:
            await scraper
        failures = sum(bench.sink.failures.window(a.t_ns, b.t_ns).values())
        live = len(bench.gen.calls)
        await slots.stop()
        log_lines = bench.server.log_lines()
    wall = (b.t_ns - a.t_ns) / 1e9
    recordings = args.out / "recordings"
    recorded_mb = 0.0
    if recordings.exists():
        recorded_mb = sum(p.stat().st_size for p in recordings.rglob("*")) / 1e6
        shutil.rmtree(recordings)
    return {
        "mode": mode,
        "calls": n,
        "live_at_end": live,
        "window_s": round(wall, 2),
        "cpu_pct": round(100 * (b.cpu_s - a.cpu_s) / wall, 2),
        "gen_cpu_pct": round(100 * (b.gen_cpu_s - a.gen_cpu_s) / wall, 2),
        "rss_kb": b.rss_kb,
        "failed_calls": failures,
        "scrapes": len(sizes),
        "scrape_bytes": sizes[-1] if sizes else 0,
        "recorded_mb": round(recorded_mb, 1),
        "server_log_lines": log_lines,
    }


async def observe_main(args: argparse.Namespace) -> int:
    n = args.calls or 40
    hold, settle, call_s = args.hold, args.settle, args.call_s or 30.0
    rounds = args.rounds
    started = time.time()
    load_before = os.getloadavg()
    runs: list[dict[str, Any]] = []
    for round_no in range(1, rounds + 1):
        for mode in ("off", "metrics", "all"):
            row = await _measure(args, mode, n, call_s, hold, settle)
            row["round"] = round_no
            runs.append(row)
            print(
                f"round {round_no} {mode:8s} {n} calls: server CPU {row['cpu_pct']:6.2f} % "
                f"(generator {row['gen_cpu_pct']:.1f} %), failed {row['failed_calls']}, "
                f"scrapes {row['scrapes']}, recorded {row['recorded_mb']} MB",
                flush=True,
            )
    ratios: dict[str, list[float]] = {"metrics": [], "all": []}
    for round_no in range(1, rounds + 1):
        by_mode = {r["mode"]: r for r in runs if r["round"] == round_no}
        for mode in ratios:
            ratios[mode].append(by_mode[mode]["cpu_pct"] / by_mode["off"]["cpu_pct"])
    result = {
        "tag": args.tag,
        "command": " ".join(["python", "bench/load.py", *sys.argv[1:]]),
        "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)),
        "duration_s": round(time.time() - started, 1),
        "machine": machine_info(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "settings": {"calls": n, "hold_s": hold, "settle_s": settle, "call_s": call_s},
        "runs": runs,
        "cpu_ratio_to_off": {
            mode: {
                "per_round": [round(v, 3) for v in vs],
                "median": round(statistics.median(vs), 3),
            }
            for mode, vs in ratios.items()
        },
    }
    stem = f"observe-{time.strftime('%Y%m%d-%H%M%S')}{'-' + args.tag if args.tag else ''}"
    path = write_json(args.out / f"{stem}.json", result)
    for mode, vs in ratios.items():
        label = "metrics on" if mode == "metrics" else "metrics + recording on"
        print(
            f"{label}: server CPU x{statistics.median(vs):.3f} of off (median of {rounds} rounds: "
            + ", ".join(f"{v:.3f}" for v in vs)
            + ")"
        )
    print(f"load average before {load_before}, after {os.getloadavg()}; wrote {path}")
    return 0
