"""``observe``: the server's CPU with metrics and recordings off, metrics on, and both on.

Same run, same moment: three server processes side by side on the same core — ``off``
(``METRICS_ENABLED=false``), ``metrics`` (as shipped) and ``all`` (metrics + ``RECORDINGS_DIR``) —
each with its own fake ACS, model and N calls from this process, ramped together, then measured
over the same ``--hold`` windows.  Whatever else loads the machine loads the three alike (measuring
them one after another on a shared machine gave ratios from 0.8 to 2 for identical servers), so
the per-window ratio to ``off`` is the result; absolute CPU % is only context.  ``/metrics`` of the
two servers that have it is scraped every ``SCRAPE_INTERVAL_S``, like a Prometheus would (a
little more often).
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


async def observe_main(args: argparse.Namespace) -> int:
    """Three servers side by side (off, metrics, metrics + recording), N calls each, one core."""
    n = args.calls or 40
    hold, settle, call_s = args.hold, args.settle, args.call_s or 30.0
    windows = args.rounds
    started = time.time()
    load_before = os.getloadavg()
    modes = ("off", "metrics", "all")
    async with contextlib.AsyncExitStack() as stack:
        benches = {}
        for mode in modes:
            out = args.out / f"observe-{mode}"
            out.mkdir(parents=True, exist_ok=True)
            benches[mode] = await stack.enter_async_context(
                open_bench(out, server_env=observe_env(mode, out))
            )
        await asyncio.gather(*(bench.gen.new_call(4.0).run() for bench in benches.values()))
        slots = {mode: Slots(bench, call_s) for mode, bench in benches.items()}
        for _ in range(n):  # ramp the three together
            for mode_slots in slots.values():
                mode_slots.add()
            await asyncio.sleep(1 / args.ramp_rate)
        await asyncio.sleep(settle)
        stop, sizes = asyncio.Event(), []
        scrapers = [
            asyncio.get_running_loop().create_task(_scrape(benches[m].server.url, stop, sizes))
            for m in ("metrics", "all")
        ]
        rows: list[dict[str, Any]] = []
        for window in range(1, windows + 1):
            a = {mode: snapshot(bench) for mode, bench in benches.items()}
            await asyncio.sleep(hold)
            b = {mode: snapshot(bench) for mode, bench in benches.items()}
            row: dict[str, Any] = {"window": window}
            for mode, bench in benches.items():
                wall = (b[mode].t_ns - a[mode].t_ns) / 1e9
                row[mode] = {
                    "cpu_pct": round(100 * (b[mode].cpu_s - a[mode].cpu_s) / wall, 2),
                    "rss_kb": b[mode].rss_kb,
                    "live_calls": len(bench.gen.calls),
                    "failed_calls": sum(
                        bench.sink.failures.window(a[mode].t_ns, b[mode].t_ns).values()
                    ),
                }
            gen_wall = (b["off"].t_ns - a["off"].t_ns) / 1e9
            row["generator_cpu_pct"] = round(
                100 * (b["off"].gen_cpu_s - a["off"].gen_cpu_s) / gen_wall, 1
            )
            row["load_average"] = os.getloadavg()[0]
            rows.append(row)
            print(
                f"window {window}: server CPU off {row['off']['cpu_pct']:.2f} %, metrics "
                f"{row['metrics']['cpu_pct']:.2f} %, metrics+recording {row['all']['cpu_pct']:.2f} % "
                f"(live {row['off']['live_calls']}/{row['metrics']['live_calls']}/"
                f"{row['all']['live_calls']}, failed {row['off']['failed_calls']}/"
                f"{row['metrics']['failed_calls']}/{row['all']['failed_calls']}; "
                f"generator {row['generator_cpu_pct']} %, load {row['load_average']:.1f})",
                flush=True,
            )
        stop.set()
        await asyncio.gather(*scrapers)
        await asyncio.gather(*(mode_slots.stop() for mode_slots in slots.values()))
        log_lines = {mode: bench.server.log_lines() for mode, bench in benches.items()}
    recordings = args.out / "observe-all" / "recordings"
    recorded_mb = sum(p.stat().st_size for p in recordings.rglob("*") if p.is_file()) / 1e6
    shutil.rmtree(recordings, ignore_errors=True)
    ratios = {
        mode: [row[mode]["cpu_pct"] / row["off"]["cpu_pct"] for row in rows]
        for mode in ("metrics", "all")
    }
    result = {
        "tag": args.tag,
        "command": " ".join(["python", "bench/load.py", *sys.argv[1:]]),
        "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)),
        "duration_s": round(time.time() - started, 1),
        "machine": machine_info(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "settings": {"calls_per_server": n, "hold_s": hold, "settle_s": settle, "call_s": call_s},
        "windows": rows,
        "scrapes": len(sizes),
        "scrape_bytes": sizes[-1] if sizes else 0,
        "recorded_mb": round(recorded_mb, 1),
        "server_log_lines": log_lines,
        "cpu_ratio_to_off": {
            mode: {
                "per_window": [round(v, 3) for v in vs],
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
            f"{label}: server CPU x{statistics.median(vs):.3f} of off (median of {windows} "
            "windows: " + ", ".join(f"{v:.3f}" for v in vs) + ")"
        )
    print(
        f"recorded {recorded_mb:.1f} MB; load average before {load_before}, after {os.getloadavg()}"
    )
    print(f"wrote {path}")
    return 0
