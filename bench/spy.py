"""``profile``: hold N calls, sample the server with py-spy, and say where its CPU goes.

py-spy attaches to the server's pid (root, or ptrace allowed) and records collapsed stacks
(``--format raw``); idle time (the Trio loop waiting in epoll) is not sampled, so the shares are
shares of the CPU the server actually used.  The summary groups leaf frames ("self" time) by
the library they are in, and lists the top functions by self and by inclusive time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from arms import install_ref
from harness import open_bench
from levels import Slots, level_row, snapshot
from report import print_table

# First match wins; matched against the frame's file path.
CATEGORIES = [
    ("wsproto (WebSocket framing, both sockets)", r"(^|/)wsproto/"),
    ("trio-websocket (model socket)", r"(^|/)trio_websocket/"),
    ("hypercorn (ASGI server, media socket)", r"(^|/)hypercorn/"),
    ("quart / quart-trio (route layer)", r"(^|/)quart(_trio)?/"),
    ("trio: socket send/recv (syscalls)", r"(^|/)trio/_socket\.py"),
    ("trio: epoll wait + registrations", r"(^|/)trio/_core/_io_epoll\.py"),
    ("trio: scheduler, cancel scopes, channels", r"(^|/)trio/"),
    ("json", r"(^|/)json/"),
    ("logging", r"(^|/)logging/"),
    ("acs_trio (the bridge itself)", r"(^|/)acs_trio/"),
    ("h11 / httpx / azure (control plane)", r"(^|/)(h11|httpx|httpcore|azure)/"),
    ("jwt / cryptography", r"(^|/)(jwt|cryptography)/"),
    ("generated __init__ (dataclasses, attrs)", r"^<(string|attrs generated)"),
    ("other stdlib", r"^[A-Za-z_]+\.py$|^<frozen"),
]
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def parse_frame(frame: str) -> tuple[str, str]:
    match = _FRAME.match(frame.strip())
    if not match:
        return frame.strip(), ""
    return match["func"], match["file"]


def category(path: str) -> str:
    for name, pattern in CATEGORIES:
        if re.search(pattern, path):
            return name
    return "other (C builtins, native)" if not path else "other"


def analyse(raw_path: Path, top: int = 25) -> dict[str, object]:
    total = 0
    by_cat: Counter[str] = Counter()
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    by_task: Counter[str] = Counter()
    for line in raw_path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [
            parse_frame(f)
            for f in stack.split(";")
            if f and not f.startswith("process ") and not f.startswith("thread ")
        ]
        if not frames:
            continue
        total += count
        func, path = frames[-1]
        by_cat[category(path)] += count
        self_time[f"{func} ({_short(path)})"] += count
        names = [f for f, _ in frames]
        root = names.index("unrolled_run") + 1 if "unrolled_run" in names else len(names)
        task = frames[root] if root < len(frames) else ("(trio scheduler itself)", "")
        by_task[f"{task[0]} ({_short(task[1])})" if task[1] else task[0]] += count
        for name in {f"{f} ({_short(p)})" for f, p in frames}:
            inclusive[name] += count

    def share(counter: Counter[str], n: int) -> list[tuple[str, float]]:
        return [(k, round(100 * v / total, 1)) for k, v in counter.most_common(n)]

    return {
        "samples": total,
        "self_by_library_pct": share(by_cat, 50),
        "by_task_pct": share(by_task, 20),
        "top_self_pct": share(self_time, top),
        "top_inclusive_pct": share(inclusive, top * 2),
    }


def _short(path: str) -> str:
    for marker in ("site-packages/", "/work/main/", "/lib/python3.11/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


async def profile_main(args: argparse.Namespace) -> int:
    n = args.calls or 50
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    raw = args.out / f"profile-{stamp}-{n}calls{'-' + args.tag if args.tag else ''}.txt"
    # --compare REF profiles that ref's server (its own worktree + venv) instead of this tree's.
    arms = [install_ref(args.compare, args.out)] if args.compare else None
    async with open_bench(args.out, arms=arms) as bench:
        warm = bench.gen.new_call(4.0)
        await warm.run()
        idle = snapshot(bench)
        slots = Slots(bench, args.call_s or 30.0)
        while len(slots.tasks) < n:
            slots.add()
            await asyncio.sleep(1 / args.ramp_rate)
        await asyncio.sleep(args.settle)
        a = snapshot(bench)
        cmd = [
            "taskset",
            "-c",
            "1",
            spy,
            "record",
            "-p",
            str(bench.server.pid),
            "-d",
            str(int(args.seconds)),
            "-r",
            "200",
            "-f",
            "raw",
            "-o",
            str(raw),
        ]
        proc = await asyncio.create_subprocess_exec(
            *cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        _, err = await proc.communicate()
        b = snapshot(bench)
        row = level_row(bench, n, a, b, idle.rss_kb)
        await slots.stop()
    print_table([row])
    if proc.returncode != 0 or not raw.exists():
        print(f"py-spy failed ({proc.returncode}): {err.decode()[-500:]}")
        return 1
    result = analyse(raw)
    result.update(
        {
            "calls": n,
            "seconds": args.seconds,
            "raw": str(raw),
            "command": " ".join(["python", "bench/load.py", *sys.argv[1:]]),
            "level": row.as_dict(),
        }
    )
    out = raw.with_suffix(".json")
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"py-spy: {result['samples']} samples while the server held {n} calls (with py-spy attached: CPU {row.cpu_pct:.0f} %)"
    )
    print("self time by library:")
    for name, pct in result["self_by_library_pct"]:  # type: ignore[union-attr]
        print(f"  {pct:5.1f} %  {name}")
    print("by task (the coroutine each sample ran under):")
    for name, pct in result["by_task_pct"]:  # type: ignore[union-attr]
        print(f"  {pct:5.1f} %  {name}")
    print("top functions, self time:")
    for name, pct in result["top_self_pct"][:20]:  # type: ignore[index]
        print(f"  {pct:5.1f} %  {name}")
    print("top functions, inclusive time:")
    for name, pct in result["top_inclusive_pct"][:40]:  # type: ignore[index]
        print(f"  {pct:5.1f} %  {name}")
    print(f"wrote {raw} and {out}")
    return 0
