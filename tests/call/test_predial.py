"""Early dial: the model socket opened at admission is adopted by the call's first session.

The greeting-time measurement of issue 10: admission at t=0; ``answer_call`` plus ACS opening
the media socket take ``ANSWER_S``; dialling the model takes ``DIAL_S``; the model's first
greeting audio comes ``MODEL_FIRST_AUDIO_S`` after ``response.create``.  Greeting time is
measured from the media socket opening to the first greeting frame written to ACS.
"""

from __future__ import annotations

import pytest
import trio
from trio.testing import wait_all_tasks_blocked

from acs_trio.call.bridge import run_call
from acs_trio.call.lifecycle import CallHandle, CallIds, CallSummary, EndReason
from acs_trio.call.predial import PreDial
from acs_trio.config import AgentSettings
from tests.call.test_call import LIMITS
from tests.fakes import FakeAcs, FakeModel, TrioMediaSocket, open_ws_pair, record

ANSWER_S = 0.4
DIAL_S = 0.3
MODEL_FIRST_AUDIO_S = 0.2


async def greeting_time(
    nursery: trio.Nursery, *, early: bool, model: FakeModel | None = None
) -> tuple[float, CallSummary]:
    model = model or FakeModel(nursery, connect_delay_s=DIAL_S)
    connect = model.connect
    if early:  # what the control plane does at admission (ControlPlane.admit/_supervise)
        predial = PreDial(model.connect)
        nursery.start_soon(predial.run)
        connect = predial.connector()
    await trio.sleep(ANSWER_S)
    acs_client, acs_server = await open_ws_pair(nursery)
    acs = FakeAcs(acs_client)
    nursery.start_soon(record, acs_client, acs.seen)
    handle = CallHandle(CallIds("c"))
    summaries: list[CallSummary] = []

    async def run() -> None:
        summaries.append(
            await run_call(
                TrioMediaSocket(acs_server),
                connect,
                handle=handle,
                agent=AgentSettings(greeting="Greet the caller."),
                limits=LIMITS,
            )
        )

    media_open = trio.current_time()
    nursery.start_soon(run)
    await model.wait_for("response.create")  # the model is asked to greet...
    await trio.sleep(MODEL_FIRST_AUDIO_S)  # ...and starts speaking this much later
    await model.speak(200)
    await trio.sleep(1)
    first_frame = acs.audio_out()[0][0]
    handle.end(EndReason.CALL_DISCONNECTED)
    await handle.finished.wait()
    await wait_all_tasks_blocked()
    return first_frame - media_open, summaries[0]


async def test_early_dial_cuts_the_greeting_time(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    before, _ = await greeting_time(nursery, early=False)
    after, summary = await greeting_time(nursery, early=True)
    # Before: dial, then configure and greet.  After: the dial overlapped the answer.
    assert before == pytest.approx(DIAL_S + MODEL_FIRST_AUDIO_S, abs=1e-9)
    assert after == pytest.approx(MODEL_FIRST_AUDIO_S, abs=1e-9)
    assert summary.end_reason is EndReason.CALL_DISCONNECTED
    print(f"\ngreeting time after media open: {before * 1000:.0f} ms -> {after * 1000:.0f} ms")


async def test_a_failed_early_dial_is_retried_by_the_call(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    model = FakeModel(nursery, connect_delay_s=DIAL_S)
    model.refuse_with = [(503, None)]  # the early dial is refused; the call's retry works
    elapsed, summary = await greeting_time(nursery, early=True, model=model)
    assert len(model.connections) == 1
    assert summary.model_reconnects == 0  # the first session, just later
    assert DIAL_S + MODEL_FIRST_AUDIO_S <= elapsed <= DIAL_S + MODEL_FIRST_AUDIO_S + 0.2
