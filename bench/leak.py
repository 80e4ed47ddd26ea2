"""``leak``: many short calls, a few at a time; the server's RSS and fds must come back to level.

Checkpoints are taken *quiescent*: new calls stop, the live ones finish, two seconds pass, then
RSS (VmRSS) and the open-fd count (/proc/<pid>/fd) are read.  So the first checkpoint (after 100
calls) and the last (after all) compare like with like.  Each short call still has a greeting,
a caller turn with an answer, and every third call a barge-in (second turn into the answer).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Iterator
from typing import Any

from harness import open_bench
from metrics import summary
from report import write_json

SHORT_SCRIPT = {
    "greeting": 25,
    "speech": 25,
    "silence": 15,
    "answer": 25,
    "gap": 10,
    "barge_after": 10,
}


async def leak_main(args: argparse.Namespace) -> int:
    total = args.calls or 2000
    concurrency = args.concurrency
    call_s = args.call_s or 3.5
    checkpoints = sorted(
        {c for c in (100, total // 4, total // 2, 3 * total // 4, total) if 0 < c <= total}
    )
    started = time.time()
    rows: list[dict[str, Any]] = []
    async with open_bench(args.out, script_kw=SHORT_SCRIPT) as bench:
        warm = bench.gen.new_call(call_s)
        await warm.run()
        await asyncio.sleep(2)
        idle = bench.server.sample()
        print(f"idle after one warm-up call: RSS {idle.rss_kb} KB, {idle.fds} fds", flush=True)
        done = 0
        ok = 0
        for checkpoint in checkpoints:
            queue = iter(range(checkpoint - done))

            async def worker(queue: Iterator[int]) -> int:
                good = 0
                for _ in queue:
                    good += await bench.gen.new_call(call_s).run()
                return good

            results = await asyncio.gather(*(worker(queue) for _ in range(concurrency)))
            ok += sum(results)
            done = checkpoint
            await asyncio.sleep(2)
            s = bench.server.sample()
            row = {
                "calls_done": done,
                "calls_ok": ok,
                "rss_kb": s.rss_kb,
                "fds": s.fds,
                "model_sockets_open": bench.peer.open_sockets,
                "server_live_calls": await bench.server.live_calls(),
                "calls_live_in_generator": len(bench.gen.calls),
                "elapsed_s": round(time.time() - started, 1),
            }
            rows.append(row)
            print(row, flush=True)
        sink = bench.sink
        failures = dict(sink.failures.window(0, 2**62))
        events = dict(sink.events.window(0, 2**62))
        server_hang_ups = bench.acs.hang_ups
        log_lines = bench.server.log_lines()
    first, last = rows[0], rows[-1]
    rss_growth = 100 * (last["rss_kb"] - first["rss_kb"]) / first["rss_kb"]
    result = {
        "tag": args.tag,
        "command": " ".join(["python", "bench/load.py", *sys.argv[1:]]),
        "settings": {
            "calls": total,
            "concurrency": concurrency,
            "call_s": call_s,
            "script": SHORT_SCRIPT,
        },
        "duration_s": round(time.time() - started, 1),
        "idle": {"rss_kb": idle.rss_kb, "fds": idle.fds},
        "checkpoints": rows,
        "rss_growth_pct_first_to_last": round(rss_growth, 2),
        "fds_first_last": [first["fds"], last["fds"]],
        "failures": failures,
        "events": events,
        "server_hang_up_requests": server_hang_ups,
        "teardown_ms": summary(sorted(sink.teardown.v)),
        "barge_in_ms": summary(sorted(sink.barge.v)),
        "server_log_lines": log_lines,
    }
    path = write_json(
        args.out
        / f"leak-{time.strftime('%Y%m%d-%H%M%S')}{'-' + args.tag if args.tag else ''}.json",
        result,
    )
    print(
        f"{total} calls ({concurrency} at once, {call_s:g} s each) in {result['duration_s']} s: {ok} ok, failures {failures}; "
        f"RSS {first['rss_kb']} → {last['rss_kb']} KB ({rss_growth:+.1f} %), fds {first['fds']} → {last['fds']}, "
        f"model sockets open {last['model_sockets_open']}, server live calls {last['server_live_calls']}; "
        f"server log lines {log_lines}; wrote {path}"
    )
    return 0 if not failures else 1
