"""Tool calls reach the metrics and the transcript through the call's observer (mock clock)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import trio
from prometheus_client.parser import text_string_to_metric_families
from trio.testing import wait_all_tasks_blocked

from acs_trio.call.bridge import run_call
from acs_trio.call.lifecycle import CallHandle, CallIds, EndReason
from acs_trio.config import AgentSettings, CallLimits
from acs_trio.control.metrics import Metrics
from acs_trio.control.observe import observe_call
from tests.call.test_tools import TOOLS
from tests.fakes import FakeAcs, FakeModel, TrioMediaSocket, open_ws_pair, record


def transcript_of(directory: Path, call_id: str) -> list[Any]:
    [path] = directory.glob(f"*/*_{call_id}.transcript.jsonl")
    return [json.loads(line) for line in path.read_text().splitlines()]


async def test_tool_calls_are_counted_and_marked_in_the_transcript(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    metrics = Metrics()
    acs_client, acs_server = await open_ws_pair(nursery)
    acs, model = FakeAcs(acs_client), FakeModel(nursery)
    nursery.start_soon(record, acs_client, acs.seen)
    handle = CallHandle(CallIds("call-5", "corr-5"))
    ended = trio.Event()

    async def run() -> None:
        async with observe_call(handle, metrics=metrics, recordings_dir=tmp_path):
            await run_call(
                TrioMediaSocket(acs_server),
                model.connect,
                handle=handle,
                agent=AgentSettings(greeting=None),
                limits=CallLimits(),
                tools=TOOLS,
            )
        ended.set()

    nursery.start_soon(run)
    await model.connected.wait()
    await wait_all_tasks_blocked()
    await acs.send_metadata()
    await model.call_tools(
        ("order_status", '{"order_id": "A1001"}'),  # ok after 0.5 s
        ("order_status", '{"order_id": "Z9"}'),  # ToolError after 0.5 s
        ("no_such_tool", "{}"),  # refused
    )
    await trio.sleep(1)
    handle.end(EndReason.CALL_DISCONNECTED)
    await ended.wait()

    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(metrics.expose().decode())
        for s in family.samples
    }
    calls = "acs_trio_tool_calls_total"
    assert samples[(calls, (("outcome", "ok"), ("tool", "order_status")))] == 1
    assert samples[(calls, (("outcome", "failed"), ("tool", "order_status")))] == 1
    assert samples[(calls, (("outcome", "failed"), ("tool", "no_such_tool")))] == 1
    seconds = ("acs_trio_tool_call_seconds_sum", (("tool", "order_status"),))
    assert samples[seconds] == 1.0  # two lookups of 0.5 s

    lines = transcript_of(tmp_path, "call-5")  # no audio in this story: no WAV
    tool_lines = sorted(
        (line["name"], line["ok"], line["duration_ms"])
        for line in lines
        if line["type"] == "tool_call"
    )
    assert tool_lines == [
        ("no_such_tool", False, 0.0),
        ("order_status", False, 500.0),
        ("order_status", True, 500.0),
    ]
