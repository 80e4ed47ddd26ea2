"""Load benchmark for acs_trio: N concurrent simulated ACS calls against one server core.

    python bench/load.py [run] [--quick] [--levels 1,10,25,...] [--hold 30] [--call-s 30]
    python bench/load.py leak [--calls 2000] [--concurrency 16] [--call-s 2.5]
    python bench/load.py profile --calls 100 [--seconds 30]
    python bench/load.py --levels 25,50,75 --compare ad65ca8     # same-run A/B against a git ref
    python bench/load.py --levels 25,50 --arm b20:APPEND_BATCH_MS=20   # A/B of settings
    python bench/load.py observe [--calls 40] [--rounds 4]   # CPU: metrics/recording off vs on
    python bench/load.py cluster [--levels 20] [--workers-levels 20,40,60,...]

The server runs as its own process pinned to core 0 (``taskset -c 0``); this process (fake ACS
REST + JWKS over TLS, the fake realtime model, all media clients; asyncio + uvloop + picows +
aiohttp) pins itself to core 1.  bench/README.md explains every figure; docs/performance.md has
the results.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import uvloop  # noqa: E402
from harness import pin_to_core  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/load.py", description=__doc__.split("\n")[0])
    parser.add_argument(
        "mode",
        nargs="?",
        default="run",
        choices=["run", "leak", "profile", "smoke", "observe", "cluster"],
    )
    parser.add_argument(
        "--quick", action="store_true", help="about one minute: levels 1,5,10, short windows"
    )
    parser.add_argument(
        "--levels", default="1,10,25,50,100,150,200,250,300", help="concurrent calls per step (run)"
    )
    parser.add_argument(
        "--hold", type=float, default=25.0, help="measurement window per level, s (run)"
    )
    parser.add_argument(
        "--settle", type=float, default=5.0, help="wait after reaching a level, s (run)"
    )
    parser.add_argument(
        "--ramp-rate", type=float, default=10.0, help="new calls per second while ramping"
    )
    parser.add_argument(
        "--call-s", type=float, default=None, help="call length, s (run: 30, leak: 3.5)"
    )
    parser.add_argument(
        "--calls", type=int, default=None, help="leak: total calls; profile: concurrent calls"
    )
    parser.add_argument("--concurrency", type=int, default=32, help="leak: calls at once")
    parser.add_argument("--seconds", type=float, default=30.0, help="profile: sampling time, s")
    parser.add_argument(
        "--workers-levels",
        default="20,40,60,80,100,120",
        help="cluster: ramp for --workers 1 vs 2 (empty: skip)",
    )
    parser.add_argument("--keep-going", action="store_true", help="run: do not stop at saturation")
    parser.add_argument(
        "--compare",
        metavar="GIT_REF",
        help="run: also measure GIT_REF (own worktree + venv under --out), levels alternating",
    )
    parser.add_argument(
        "--nice",
        type=int,
        default=0,
        help="scheduling niceness for this process and the servers (negative needs root): "
        "on a machine shared with other work, keeps the measured processes from being starved",
    )
    parser.add_argument(
        "--rt",
        type=int,
        default=0,
        help="SCHED_RR priority (1-99, root) for this process and the servers: on a machine "
        "oversubscribed by other work, the measured processes then run when they are ready (the "
        "kernel still leaves others 5 %% of each core); use with levels below saturation",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="run with several arms: turns per arm at each level, ABBA order (default 1); "
        "observe: measurement windows (default 4)",
    )
    parser.add_argument(
        "--arm",
        action="append",
        metavar="NAME:VAR=VALUE,...",
        help="run: also measure this tree with extra server environment (repeatable)",
    )
    parser.add_argument("--out", type=Path, default=HERE / "out", help="output directory")
    parser.add_argument(
        "--tag", default="", help="label stored in the JSON (e.g. 'before', 'after')"
    )
    parser.add_argument(
        "--observe",
        choices=["off", "metrics", "all"],
        default="metrics",
        help="run: server metrics off, on (the default, as shipped), or metrics + RECORDINGS_DIR",
    )
    args = parser.parse_args(argv)
    if args.rounds is None:
        args.rounds = 4 if args.mode == "observe" else 1
    args.out.mkdir(parents=True, exist_ok=True)
    pin_to_core(1)
    if args.nice:
        os.setpriority(os.PRIO_PROCESS, 0, args.nice)
        os.environ["BENCH_NICE"] = str(args.nice)  # the servers get it too (server_proc.py)
    if args.rt:
        os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(args.rt))
        os.environ["BENCH_RT"] = str(args.rt)
    if args.mode == "leak":
        from leak import leak_main as target
    elif args.mode == "profile":
        from spy import profile_main as target
    elif args.mode == "observe":
        from observe_cost import observe_main as target
    elif args.mode == "cluster":
        from cluster import cluster_main as target
    elif args.mode == "smoke":
        from levels import smoke_main as target
    else:
        from levels import run_main as target
    return int(uvloop.run(target(args)) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
