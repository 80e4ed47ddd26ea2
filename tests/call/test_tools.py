"""Stories of calls where the model acts: tools, end_call, the keypad.  Mock clock throughout.

The model is :class:`FakeModel` (GA events over an in-memory trio-websocket); ACS is
:class:`FakeAcs`.  Each test asserts what the model and ACS saw, and when.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import pytest
import trio
from trio.testing import wait_all_tasks_blocked

from acs_trio.call.actions import TransferResult
from acs_trio.call.bridge import run_call
from acs_trio.call.lifecycle import CallHandle, CallIds, CallSummary, EndReason
from acs_trio.config import ActionSettings, AgentSettings, CallLimits
from acs_trio.tools import Tool, ToolContext, ToolError, tool
from acs_trio.wire import realtime as rt
from tests.fakes import FakeAcs, FakeModel, TrioMediaSocket, open_ws_pair, pcm_tone, record

NO_GREETING = AgentSettings(greeting=None)


# --- tools used by the stories ------------------------------------------------------------------

ORDERS = {"A1001": "shipped", "A1002": "processing"}


@dataclass
class Journal:
    started: list[tuple[float, str]] = field(default_factory=list)
    finished: list[tuple[float, str]] = field(default_factory=list)
    cancelled: list[tuple[float, str]] = field(default_factory=list)


JOURNAL = Journal()


@tool
async def order_status(order_id: str, ctx: ToolContext) -> dict[str, Any]:
    """Look up an order.

    Args:
        order_id: The order number, e.g. "A1001".
    """
    JOURNAL.started.append((trio.current_time(), order_id))
    try:
        await trio.sleep(0.5)  # a database round trip
    except trio.Cancelled:
        JOURNAL.cancelled.append((trio.current_time(), order_id))
        raise
    JOURNAL.finished.append((trio.current_time(), order_id))
    ctx.scratch["lookups"] = ctx.scratch.get("lookups", 0) + 1
    if order_id not in ORDERS:
        raise ToolError(f"no order {order_id}")
    return {
        "order_id": order_id,
        "status": ORDERS[order_id],
        "call_id": ctx.call_id,
        "caller": ctx.caller,
        "lookups_this_call": ctx.scratch["lookups"],
    }


@tool
def broken(level: Literal["low", "high"] = "low") -> str:
    """Always fails (a bug)."""
    raise RuntimeError(f"database down ({level})")


@tool(timeout_s=2)
async def slow() -> str:
    """Takes forever."""
    await trio.sleep(60)
    return "never"


TOOLS: Sequence[Tool] = (order_status, broken, slow)


@tool
async def dump(rows: int) -> list[str]:
    """Returns ``rows`` rows, or fails with all of them in its message."""
    table = [f"row {i:05d}" for i in range(rows)]
    if rows > 1000:
        raise ToolError(f"too many rows: {table}")
    return table


#: Released at the end of the story that uses ``hangs``, so its threads finish.
HANG = threading.Event()
HUNG_THREADS: list[str] = []


@tool(timeout_s=1)
def hangs() -> str:
    """Blocks its thread (a network call without a timeout)."""
    HUNG_THREADS.append(threading.current_thread().name)
    HANG.wait(30)
    return "too late"


@dataclass
class FakeControl:
    """What a call asks of the control plane (the real one is tested in tests/control)."""

    result: TransferResult
    delay_s: float = 1.0
    asked: list[tuple[float, str, str]] = field(default_factory=list)

    async def transfer(
        self, target: str, *, operation_context: str, timeout_s: float
    ) -> TransferResult:
        self.asked.append((trio.current_time(), target, operation_context))
        await trio.sleep(self.delay_s)
        return self.result


@dataclass
class Call:
    acs: FakeAcs
    model: FakeModel
    handle: CallHandle
    summary: CallSummary | None = None

    async def ended(self) -> CallSummary:
        await self.handle.finished.wait()
        await wait_all_tasks_blocked()
        assert self.summary is not None
        return self.summary


async def start_call(
    nursery: trio.Nursery,
    *,
    actions: ActionSettings | None = None,
    tools: Sequence[Tool] = TOOLS,
    control: FakeControl | None = None,
    call_id: str = "call-1",
    caller: str = "+14255550123",
) -> Call:
    JOURNAL.__init__()  # type: ignore[misc]
    acs_client, acs_server = await open_ws_pair(nursery)
    handle = CallHandle(CallIds(call_id, "corr-1"))
    handle.caller = caller
    handle.control = control
    call = Call(FakeAcs(acs_client), FakeModel(nursery), handle)
    nursery.start_soon(record, acs_client, call.acs.seen)

    async def run() -> None:
        call.summary = await run_call(
            TrioMediaSocket(acs_server),
            call.model.connect,
            handle=handle,
            agent=NO_GREETING,
            limits=CallLimits(),
            tools=tools,
            actions=actions,
        )

    nursery.start_soon(run)
    await call.model.connected.wait()
    await wait_all_tasks_blocked()
    await call.acs.send_metadata()
    return call


# --- function calling -------------------------------------------------------------------------------


async def test_tools_are_declared_in_session_update(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    call = await start_call(nursery, actions=ActionSettings(transfer_target="+14255550199"))
    [update] = call.model.events("session.update")
    tools = update["session"]["tools"]
    assert [t["name"] for t in tools] == [
        "end_call",
        "transfer_call",
        "order_status",
        "broken",
        "slow",
    ]
    assert tools[2] == {
        "type": "function",
        "name": "order_status",
        "description": "Look up an order.",
        "parameters": {
            "type": "object",
            "properties": {
                "order_id": {"type": "string", "description": 'The order number, e.g. "A1001".'}
            },
            "required": ["order_id"],
            "additionalProperties": False,
        },
    }
    assert update["session"]["tool_choice"] == "auto"
    call.handle.end(EndReason.CALL_DISCONNECTED)
    await call.ended()


async def test_without_transfer_target_only_end_call_is_built_in(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    call = await start_call(nursery, tools=())
    [update] = call.model.events("session.update")
    assert [t["name"] for t in update["session"]["tools"]] == ["end_call"]
    call.handle.end(EndReason.CALL_DISCONNECTED)
    await call.ended()


async def test_tool_result_then_response_create_in_order(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    call = await start_call(nursery)
    model = call.model
    t0 = trio.current_time()
    [call_id] = await model.call_tools(("order_status", '{"order_id": "A1001"}'))
    await trio.sleep(1)
    # The tool ran 0.5 s; its output, then one response.create, left at that instant.
    assert model.tool_traffic() == [(t0 + 0.5, f"output:{call_id}"), (t0 + 0.5, "response.create")]
    assert model.outputs()[call_id] == {
        "order_id": "A1001",
        "status": "shipped",
        "call_id": "call-1",
        "caller": "+14255550123",
        "lookups_this_call": 1,
    }
    # The call goes on: the model speaks the answer and it reaches the caller.
    await model.speak(200)
    await trio.sleep(1)
    assert len(call.acs.audio_out()) == 10
    call.handle.end(EndReason.CALL_DISCONNECTED)
    summary = await call.ended()
    assert (summary.tool_calls, summary.tool_errors, summary.tool_timeouts) == (1, 0, 0)


async def test_errors_go_back_to_the_model_and_the_call_goes_on(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    # `broken` is a sync tool: it runs in a worker thread, which the mock clock cannot see; jump
    # only after 50 ms of real idleness, so the thread has finished by the time the clock moves.
    autojump_clock.autojump_threshold = 0.05
    call = await start_call(nursery)
    model = call.model
    t0 = trio.current_time()
    ids = await model.call_tools(
        ("order_status", '{"order_id": "Z9"}'),  # the tool raises ToolError
        ("broken", '{"level": "high"}'),  # the tool has a bug
        ("slow", "{}"),  # times out at its own 2 s
        ("order_status", "{not json"),
        ("order_status", '{"order_id": 7}'),  # schema mismatch
        ("order_status", '{"order_id": "A1", "extra": 1}'),
        ("broken", '{"level": "medium"}'),  # not in the Literal
        ("no_such_tool", "{}"),
    )
    await trio.sleep(3)
    outputs = model.outputs()
    assert [outputs[i]["error"] for i in ids] == [
        "tool error: no order Z9",
        "tool failed: RuntimeError: database down (high)",
        "timeout: the tool did not finish within 2 s",
        "bad arguments: arguments are not valid JSON: Expecting property name enclosed in "
        "double quotes: line 1 column 2 (char 1)",
        "bad arguments: argument 'order_id' must be a string, not int",
        "bad arguments: unknown argument(s): extra",
        "bad arguments: argument 'level' must be one of ['low', 'high']",
        "refused: there is no tool named 'no_such_tool'",
    ]
    # One response.create, after the last (the timeout at 2 s).
    creates = [t for t, label in model.tool_traffic() if label == "response.create"]
    assert creates == [t0 + 2]
    await model.speak(100)
    await trio.sleep(0.5)
    assert call.acs.audio_out()
    call.handle.end(EndReason.CALL_DISCONNECTED)
    summary = await call.ended()
    assert summary.end_reason is EndReason.CALL_DISCONNECTED
    assert (summary.tool_calls, summary.tool_errors, summary.tool_timeouts) == (8, 8, 1)


async def test_two_calls_of_one_response_run_concurrently(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    call = await start_call(nursery)
    model = call.model
    t0 = trio.current_time()
    first, second = await model.call_tools(
        ("order_status", '{"order_id": "A1001"}'), ("order_status", '{"order_id": "A1002"}')
    )
    await trio.sleep(2)
    assert sorted(JOURNAL.started) == [(t0, "A1001"), (t0, "A1002")]
    traffic = model.tool_traffic()
    # Both outputs (in the order they finished), then one response.create; all at 0.5 s, not
    # 1.0 s: the two lookups ran side by side.
    assert sorted(traffic[:2]) == sorted(
        [(t0 + 0.5, f"output:{first}"), (t0 + 0.5, f"output:{second}")]
    )
    assert traffic[2:] == [(t0 + 0.5, "response.create")]
    # Both see the same call's scratch dict.
    assert sorted(o["lookups_this_call"] for o in model.outputs().values()) == [1, 2]
    call.handle.end(EndReason.CALL_DISCONNECTED)
    await call.ended()


async def test_a_duplicate_announcement_runs_the_tool_once(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    call = await start_call(nursery)
    model = call.model
    response_id, _ = await model.start_response()
    await model.function_call(response_id, "order_status", '{"order_id": "A1001"}', call_id="c1")
    await model.function_call(response_id, "order_status", '{"order_id": "A1001"}', call_id="c1")
    await model.response_done(response_id, "completed")
    await trio.sleep(1)
    assert len(JOURNAL.started) == 1
    assert len(model.outputs()) == 1
    call.handle.end(EndReason.CALL_DISCONNECTED)
    await call.ended()


async def test_hang_up_while_a_tool_runs_cancels_it(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    call = await start_call(nursery)
    t0 = trio.current_time()
    await call.model.call_tools(("order_status", '{"order_id": "A1001"}'))
    await trio.sleep(0.2)
    await call.acs.ws.aclose(1000)  # the caller hangs up mid-lookup
    summary = await call.ended()
    assert summary.end_reason is EndReason.CALLER_HUNG_UP
    assert summary.ended_at == t0 + 0.2  # not held up by the tool
    assert JOURNAL.cancelled == [(t0 + 0.2, "A1001")]
    assert JOURNAL.finished == []
    assert call.model.outputs() == {}


async def test_a_barge_in_does_not_cancel_a_tool(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    call = await start_call(nursery)
    model = call.model
    t0 = trio.current_time()
    [call_id] = await model.call_tools(("order_status", '{"order_id": "A1001"}'))
    await trio.sleep(0.1)
    await model.speech_started()  # the caller talks while the lookup runs
    await trio.sleep(0.2)
    await model.speech_stopped()
    response_id, item_id = await model.start_response()  # server VAD answers the caller
    await model.audio_delta(response_id, item_id, pcm_tone(100))
    await trio.sleep(0.5)
    # The result went into the conversation when ready; response.create waits for that answer.
    assert model.tool_traffic() == [(t0 + 0.5, f"output:{call_id}")]
    await model.finish_response(response_id, item_id)
    await wait_all_tasks_blocked()
    assert model.tool_traffic()[-1] == (t0 + 0.8, "response.create")
    call.handle.end(EndReason.CALL_DISCONNECTED)
    await call.ended()


async def test_a_result_ready_while_the_caller_talks_waits_for_the_turns_response(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """No response.create while the caller speaks or server VAD is about to answer the turn:
    the model would talk over the caller, and server VAD's own response would collide with ours
    (``conversation_already_has_active_response``)."""
    call = await start_call(nursery)
    model = call.model
    t0 = trio.current_time()
    [call_id] = await model.call_tools(("order_status", '{"order_id": "A1001"}'))
    await trio.sleep(0.1)
    await model.speech_started()  # the caller is still talking when the lookup ends at 0.5
    await trio.sleep_until(t0 + 0.8)
    await model.speech_stopped()  # server VAD commits the turn and will create a response
    await trio.sleep(0.1)
    assert model.tool_traffic() == [(t0 + 0.5, f"output:{call_id}")]
    response_id, item_id = await model.start_response()
    await model.audio_delta(response_id, item_id, pcm_tone(100))
    await model.finish_response(response_id, item_id)
    await wait_all_tasks_blocked()
    assert model.tool_traffic()[-1] == (t0 + 0.9, "response.create")
    call.handle.end(EndReason.CALL_DISCONNECTED)
    await call.ended()


async def test_concurrency_cap_and_time_budget(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    actions = ActionSettings(max_concurrent_tools=1, tool_time_budget_s=0.8)
    call = await start_call(nursery, actions=actions)
    model = call.model
    first, second = await model.call_tools(
        ("order_status", '{"order_id": "A1001"}'), ("order_status", '{"order_id": "A1002"}')
    )
    await trio.sleep(1)
    outputs = model.outputs()
    assert outputs[first]["status"] == "shipped"
    assert outputs[second] == {"error": "refused: 1 tool calls are already running; retry later"}
    # 0.5 s used of 0.8: the next lookup gets only 0.3 s, then the budget is gone.
    [third] = await model.call_tools(("order_status", '{"order_id": "A1002"}'))
    await trio.sleep(1)
    assert model.outputs()[third] == {"error": "timeout: the tool did not finish within 0.3 s"}
    [fourth] = await model.call_tools(("order_status", '{"order_id": "A1002"}'))
    await trio.sleep(1)
    assert model.outputs()[fourth] == {
        "error": "refused: this call has used its tool time; no more tool calls"
    }
    call.handle.end(EndReason.CALL_DISCONNECTED)
    await call.ended()


async def test_hung_sync_tools_are_bounded_per_call_and_spare_the_process_threads(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """An abandoned worker thread keeps running: it holds one of its call's own thread slots
    (``max_concurrent_tools``), never trio's process-wide default limiter, which DNS lookups
    (``getaddrinfo``) of every other call share."""
    autojump_clock.autojump_threshold = 0.05  # let the worker threads start in real time
    HANG.clear()
    HUNG_THREADS.clear()
    default_threads = trio.to_thread.current_default_thread_limiter()
    call = await start_call(nursery, tools=(hangs,), actions=ActionSettings(max_concurrent_tools=2))
    for _ in range(3):
        [call_id] = await call.model.call_tools(("hangs", "{}"))
        await trio.sleep(1.5)
        assert call.model.outputs()[call_id] == {
            "error": "timeout: the tool did not finish within 1 s"
        }
    # Two abandoned threads still block; the third call waited for a slot and timed out.
    assert len(HUNG_THREADS) == 2
    assert default_threads.borrowed_tokens == 0
    HANG.set()
    call.handle.end(EndReason.CALL_DISCONNECTED)
    await call.ended()


async def test_what_goes_back_to_the_model_is_capped(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """A result over ``max_tool_output_chars`` is an error; so is an error message over it cut."""
    call = await start_call(
        nursery, tools=(dump,), actions=ActionSettings(max_tool_output_chars=500)
    )
    ids = await call.model.call_tools(("dump", '{"rows": 3}'), ("dump", '{"rows": 100}'))
    [huge] = await call.model.call_tools(("dump", '{"rows": 5000}'))
    await trio.sleep(1)
    outputs = call.model.outputs()
    assert outputs[ids[0]] == ["row 00000", "row 00001", "row 00002"]
    assert outputs[ids[1]] == {"error": "tool failed: result too large (1300 chars)"}
    sent = {
        m["item"]["call_id"]: m["item"]["output"]
        for m in call.model.events("conversation.item.create")
        if m["item"]["type"] == "function_call_output"
    }
    assert len(sent[huge]) <= 500
    assert outputs[huge]["error"].startswith("tool error: too many rows: ['row 00000', ")
    call.handle.end(EndReason.CALL_DISCONNECTED)
    await call.ended()


async def test_each_call_has_its_own_context(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    one = await start_call(nursery, call_id="call-A", caller="+14255550001")
    two = await start_call(nursery, call_id="call-B", caller="+14255550002")
    for _ in range(2):
        await one.model.call_tools(("order_status", '{"order_id": "A1001"}'))
        await trio.sleep(1)
    await two.model.call_tools(("order_status", '{"order_id": "A1001"}'))
    await trio.sleep(1)
    seen_one = sorted(o["lookups_this_call"] for o in one.model.outputs().values())
    [seen_two] = two.model.outputs().values()
    assert seen_one == [1, 2]
    assert (seen_two["call_id"], seen_two["caller"], seen_two["lookups_this_call"]) == (
        "call-B",
        "+14255550002",
        1,  # call A's scratch is not call B's
    )
    for call in (one, two):
        call.handle.end(EndReason.CALL_DISCONNECTED)
        await call.ended()


# --- end_call --------------------------------------------------------------------------------------


async def test_end_call_hangs_up_when_the_goodbye_has_played(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    call = await start_call(nursery)
    model, acs = call.model, call.acs
    t0 = trio.current_time()
    # One response: 1 s of goodbye as a burst, then the end_call function call.
    response_id, item_id = await model.start_response()
    for _ in range(10):
        await model.audio_delta(response_id, item_id, pcm_tone(100))
    await model.send(
        {
            "type": "response.output_audio.done",
            "response_id": response_id,
            "item_id": item_id,
            "output_index": 0,
            "content_index": 0,
        }
    )
    await model.function_call(response_id, "end_call", "{}")
    await model.response_done(response_id, "completed")
    summary = await call.ended()
    frames = acs.audio_out()
    assert len(frames) == 50
    # Frame k is written at max(0, 20k - 100) ms and plays until 20(k+1) ms: the last one,
    # written at t0 + 0.88, has played at t0 + 1.0.  Not before: that is when the call ends.
    assert frames[-1][0] == pytest.approx(t0 + 0.88)
    assert summary.end_reason is EndReason.AGENT_HUNG_UP
    assert summary.ended_at == pytest.approx(t0 + 1.0)
    assert acs.seen.closed is not None and acs.seen.closed.code == 1000
    assert acs.seen.closed_at == pytest.approx(t0 + 1.0)
    assert model.outputs() == {}  # no answer to end_call: nothing more is said
    assert not EndReason.AGENT_HUNG_UP.caller_gone  # so the control plane hangs up for everyone


async def test_end_call_waits_for_audio_of_its_response_still_to_come(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """The call can be announced before the goodbye's last delta: the response's end counts."""
    call = await start_call(nursery)
    model = call.model
    t0 = trio.current_time()
    response_id, item_id = await model.start_response()
    await model.function_call(response_id, "end_call", "{}")
    await trio.sleep(0.3)
    await model.audio_delta(response_id, item_id, pcm_tone(200))
    await model.finish_response(response_id, item_id)
    summary = await call.ended()
    assert summary.end_reason is EndReason.AGENT_HUNG_UP
    assert summary.ended_at == pytest.approx(t0 + 0.5)


async def test_a_goodbye_the_caller_interrupts_does_not_hang_up(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    call = await start_call(nursery)
    model = call.model
    t0 = trio.current_time()
    response_id, item_id = await model.start_response()
    await model.audio_delta(response_id, item_id, pcm_tone(1000))
    call_id = await model.function_call(response_id, "end_call", "{}")
    await trio.sleep_until(t0 + 0.3)
    await model.speech_started()  # "wait, one more thing"
    await model.finish_response(response_id, item_id, status="cancelled")
    await trio.sleep(1)
    assert not call.handle.end_requested.is_set()
    assert call.model.outputs()[call_id] == {
        "error": "refused: the caller interrupted; the call goes on"
    }
    call.handle.end(EndReason.CALL_DISCONNECTED)
    await call.ended()


async def test_a_goodbye_interrupted_while_it_plays_does_not_hang_up(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """The response completed (audio arrives faster than it plays), then the caller speaks over
    the goodbye still playing at ACS: the caller is not hung up on mid-sentence."""
    call = await start_call(nursery)
    model = call.model
    t0 = trio.current_time()
    response_id, item_id = await model.start_response()
    await model.audio_delta(response_id, item_id, pcm_tone(1000))
    call_id = await model.function_call(response_id, "end_call", "{}")
    await model.finish_response(response_id, item_id)  # completed at t0: 1 s still to play
    await trio.sleep_until(t0 + 0.3)
    await model.speech_started()  # "wait, one more thing"
    await trio.sleep(2)
    assert not call.handle.end_requested.is_set()
    assert call.model.outputs()[call_id] == {
        "error": "refused: the caller interrupted; the call goes on"
    }
    call.handle.end(EndReason.CALL_DISCONNECTED)
    await call.ended()


async def test_a_goodbye_that_never_ends_is_bounded(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    call = await start_call(nursery, actions=ActionSettings(goodbye_max_wait_s=5))
    t0 = trio.current_time()
    response_id, _ = await call.model.start_response()
    await call.model.function_call(response_id, "end_call", "{}")  # and no response.done
    summary = await call.ended()
    assert summary.end_reason is EndReason.AGENT_HUNG_UP
    assert summary.ended_at == t0 + 5


# --- transfer_call (the control plane's side: tests/control/test_agent_actions.py) ----------------


async def test_transfer_accepted_ends_the_call_as_transferred(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    control = FakeControl(TransferResult(True))
    call = await start_call(
        nursery, actions=ActionSettings(transfer_target="+14255550199"), control=control
    )
    t0 = trio.current_time()
    response_id, item_id = await call.model.start_response()
    await call.model.audio_delta(response_id, item_id, pcm_tone(400))  # "transferring you now"
    await call.model.function_call(response_id, "transfer_call", '{"reason": "wants a human"}')
    await call.model.finish_response(response_id, item_id)
    summary = await call.ended()
    [(asked_at, target, operation)] = control.asked
    assert (asked_at, target) == (pytest.approx(t0 + 0.4), "+14255550199")  # after it played
    assert operation.startswith("transfer-")
    assert summary.end_reason is EndReason.TRANSFERRED
    assert summary.ended_at == pytest.approx(t0 + 1.4)
    assert EndReason.TRANSFERRED.caller_gone  # never hang up for everyone after a transfer


async def test_transfer_failed_is_the_tools_error_and_the_call_goes_on(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    control = FakeControl(TransferResult(False, "the transfer failed (486/0 'busy')"))
    call = await start_call(
        nursery, actions=ActionSettings(transfer_target="8:acs:res_agent"), control=control
    )
    t0 = trio.current_time()
    [call_id] = await call.model.call_tools(("transfer_call", "{}"))
    await trio.sleep(2)
    assert call.model.outputs()[call_id] == {
        "error": "transfer failed: the transfer failed (486/0 'busy')"
    }
    assert call.model.tool_traffic() == [
        (t0 + 1, f"output:{call_id}"),
        (t0 + 1, "response.create"),  # so the model tells the caller
    ]
    assert not call.handle.end_requested.is_set()
    call.handle.end(EndReason.CALL_DISCONNECTED)
    await call.ended()


async def test_transfer_without_a_control_plane_is_refused(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    call = await start_call(nursery, actions=ActionSettings(transfer_target="+14255550199"))
    [call_id] = await call.model.call_tools(("transfer_call", "{}"))
    await trio.sleep(0.1)
    assert call.model.outputs()[call_id] == {
        "error": "refused: transfers are not available on this server"
    }
    call.handle.end(EndReason.CALL_DISCONNECTED)
    await call.ended()


# --- the keypad ------------------------------------------------------------------------------------


async def test_keys_then_hash_become_one_user_item(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    call = await start_call(nursery)
    t0 = trio.current_time()
    for tone in "123#":
        await call.acs.send_dtmf(tone)
        await trio.sleep(0.3)
    assert call.model.tool_traffic() == [
        (
            pytest.approx(t0 + 0.9),
            "user_text:[The caller pressed these keys on the phone keypad, in order: 123#]",
        ),
        (pytest.approx(t0 + 0.9), "response.create"),
    ]
    call.handle.end(EndReason.CALL_DISCONNECTED)
    summary = await call.ended()
    assert summary.dtmf_entries == 1


async def test_a_response_lost_with_its_session_does_not_block_the_next_ones(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """The model connection drops after our response.create, before response.created: the new
    session has no response in progress, so a keypad entry is answered at once."""
    call = await start_call(nursery)
    model = call.model
    await model.call_tools(("order_status", '{"order_id": "A1001"}'))
    await trio.sleep(0.6)
    assert model.tool_traffic()[-1][1] == "response.create"
    reconnected = model.new_connection
    await model.streams[-1].inner.aclose()
    await reconnected.wait()
    await trio.sleep(1)  # the new session is configured
    t1 = trio.current_time()
    await call.acs.send_dtmf("7")
    await call.acs.send_dtmf("#")
    await wait_all_tasks_blocked()
    second = [m["type"] for t, m in model.connections[1].messages if t >= t1]
    assert second == ["conversation.item.create", "response.create"]
    call.handle.end(EndReason.CALL_DISCONNECTED)
    await call.ended()


async def test_a_tool_running_across_a_model_drop_is_answered_in_the_new_session(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """A new session knows only what the replay tells it, and the service refuses an output
    whose call it never saw.  The replay restates each call as a ``function_call`` item, a
    finished one with its output right after; a tool still running at the switch answers the
    new session later, and that session takes it and answers the caller."""
    call = await start_call(nursery)
    model = call.model
    # First call: answered in the first session, and the model speaks about it.
    [done_id] = await model.call_tools(("order_status", '{"order_id": "A1001"}'))
    await trio.sleep(0.6)
    await model.speak(200)
    await trio.sleep(1)
    # Second call: its tool runs 0.5 s; the model connection drops 0.1 s in.
    t0 = trio.current_time()
    [running_id] = await model.call_tools(("order_status", '{"order_id": "A1002"}'))
    await trio.sleep(0.1)
    reconnected = model.new_connection
    await model.streams[-1].inner.aclose()
    await reconnected.wait()
    t1 = trio.current_time()
    assert t1 < t0 + 0.5  # the new session is up while the tool still runs
    await trio.sleep(1)
    assert JOURNAL.finished == [(t0 - 1.1, "A1001"), (t0 + 0.5, "A1002")]
    new = model.connections[1]
    traffic = [
        (t, m["item"]) if m["type"] == "conversation.item.create" else (t, m["type"])
        for t, m in new.messages
        if m["type"] in {"conversation.item.create", "response.create"}
    ]
    replayed = [(item["type"], item["call_id"]) for _, item in traffic if isinstance(item, dict)]
    assert replayed == [
        ("function_call", done_id),
        ("function_call_output", done_id),
        ("function_call", running_id),
        ("function_call_output", running_id),
    ]
    assert traffic[2][1] == {
        "type": "function_call",
        "call_id": running_id,
        "name": "order_status",
        "arguments": '{"order_id": "A1002"}',
    }
    # The replay went out as the session opened; the output, then one response.create, at the
    # tool's finish time, in the new session, which took it.
    assert [t for t, _ in traffic[:3]] == [t1] * 3
    assert [t for t, _ in traffic[3:]] == [t0 + 0.5, t0 + 0.5]
    assert traffic[4][1] == "response.create"
    assert model.outputs()[running_id]["status"] == "processing"
    assert new.rejected == [] and model.connections[0].rejected == []
    # The model's next answer is produced and reaches the caller.
    heard = len(call.acs.audio_out())
    await model.speak(200)
    await trio.sleep(1)
    assert len(call.acs.audio_out()) == heard + 10
    call.handle.end(EndReason.CALL_DISCONNECTED)
    summary = await call.ended()
    assert (summary.tool_calls, summary.tool_errors, summary.model_reconnects) == (2, 0, 1)


async def test_a_tool_done_between_sessions_is_answered_once_after_the_replay(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """The tool finishes while no session is open (the reconnect is refused once, Retry-After
    1 s): its output waits in the outbox and reaches the new session after the replayed call,
    exactly once (the log learns an output when it is written, not when it is queued)."""
    call = await start_call(nursery)
    model = call.model
    t0 = trio.current_time()
    [call_id] = await model.call_tools(("order_status", '{"order_id": "A1001"}'))
    await trio.sleep(0.1)
    model.refuse_with = [(503, 1.0)]
    reconnected = model.new_connection
    await model.streams[-1].inner.aclose()
    await reconnected.wait()
    t1 = trio.current_time()
    assert t1 > t0 + 1.0  # the tool finished at t0 + 0.5, with no session open
    await trio.sleep(1)
    new = model.connections[1]
    sent = [
        (m["item"]["type"], m["item"].get("call_id"))
        if m["type"] == "conversation.item.create"
        else (m["type"], None)
        for _, m in new.messages
        if m["type"] in {"conversation.item.create", "response.create"}
    ]
    assert sent == [
        ("function_call", call_id),
        ("function_call_output", call_id),
        ("response.create", None),
    ]
    assert new.rejected == []
    call.handle.end(EndReason.CALL_DISCONNECTED)
    await call.ended()


async def test_the_fake_model_refuses_an_output_for_a_call_it_never_saw(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """The fake behaves as the service does (``invalid_tool_call_id``), so the story above can
    fail: an output is taken only after a ``function_call`` item with its call_id."""
    model = FakeModel(nursery)
    async with model.connect() as ws:
        assert json.loads(await ws.receive())["type"] == "session.created"
        await ws.send(rt.function_call_output("call_x", '{"ok": true}'))
        error = json.loads(await ws.receive())
        assert error["type"] == "error"
        assert error["error"]["code"] == "invalid_tool_call_id"
        await ws.send(rt.function_call_item("call_x", "order_status", "{}", "evt_1"))
        await ws.send(rt.function_call_output("call_x", '{"ok": true}'))
        await wait_all_tasks_blocked()
        assert [m["item"]["type"] for m in model.seen.rejected] == ["function_call_output"]
        assert model.seen.call_ids == {"call_x"}
        await ws.close(1000, "done")


async def test_keys_without_terminator_are_sent_after_the_inter_digit_timeout(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    actions = ActionSettings(dtmf_inter_digit_timeout_ms=1500, dtmf_terminator="*")
    call = await start_call(nursery, actions=actions)
    t0 = trio.current_time()
    await call.acs.send_dtmf("4")
    await trio.sleep(1)
    await call.acs.send_dtmf("5")
    await call.acs.send_dtmf("bogus")  # not a key: ignored (counted as a bad message)
    await trio.sleep(3)
    await call.acs.send_dtmf("9")
    await call.acs.send_dtmf("*")
    await wait_all_tasks_blocked()
    texts = [(t, label) for t, label in call.model.tool_traffic() if label.startswith("user")]
    assert [(t - t0, label.rsplit(" ", 1)[1]) for t, label in texts] == [
        (pytest.approx(2.5), "45]"),
        (pytest.approx(4.0), "9*]"),
    ]
    call.handle.end(EndReason.CALL_DISCONNECTED)
    summary = await call.ended()
    assert summary.bad_acs_messages == 1


async def test_a_key_during_agent_speech_is_a_barge_in(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    call = await start_call(nursery)
    model, acs = call.model, call.acs
    t0 = trio.current_time()
    response_id, item_id = await model.start_response()
    for _ in range(20):
        await model.audio_delta(response_id, item_id, pcm_tone(100))
    await trio.sleep_until(t0 + 0.51)
    await acs.send_dtmf("0")
    await wait_all_tasks_blocked()
    assert acs.stop_audio_times() == [t0 + 0.51]
    assert all(t <= t0 + 0.51 for t, _ in acs.audio_out())
    assert [e["type"] for e in model.events("response.cancel")] == ["response.cancel"]
    # Truncated at the ms played (frames 0..25 of 20 ms played by 510 ms), as for speech.
    assert model.events("conversation.item.truncate")[0]["audio_end_ms"] == 510
    await model.finish_response(response_id, item_id, status="cancelled")
    await trio.sleep(3)
    # The key itself still reaches the model, after the cancelled response is done.
    assert [label for _, label in model.tool_traffic()][-2:] == [
        "user_text:[The caller pressed these keys on the phone keypad, in order: 0]",
        "response.create",
    ]
    call.handle.end(EndReason.CALL_DISCONNECTED)
    summary = await call.ended()
    assert summary.barge_ins == 1


async def test_keypad_off_keeps_todays_behaviour(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    call = await start_call(nursery, actions=ActionSettings(dtmf_enabled=False))
    response_id, item_id = await call.model.start_response()
    await call.model.audio_delta(response_id, item_id, pcm_tone(1000))
    await trio.sleep(0.2)
    await call.acs.send_dtmf("1")
    await call.acs.send_dtmf("#")
    await trio.sleep(5)
    assert call.acs.stop_audio_times() == []
    assert call.model.tool_traffic() == []
    call.handle.end(EndReason.CALL_DISCONNECTED)
    await call.ended()
