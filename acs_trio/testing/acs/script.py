"""The caller's side of the conversation: listen, speak, wait, talk over the agent, hang up.

Only the script lives here; :mod:`.call` runs it beside the media sender and recorder and turns
a :class:`trio.TooSlowError` into a failed call named after :attr:`Step.name`.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

import trio

from .media import MediaLink, PreparedClip
from .report import CallReport, TurnReport

if TYPE_CHECKING:
    from .call import CallOptions

__all__ = ["Step", "run_script"]


class Step:
    """Names the script step in progress, so a timeout or early hang-up says where it happened."""

    def __init__(self) -> None:
        self.name = "placing the call"
        #: The caller has spoken its last utterance and is listening to the last answer.
        self.final = False


async def run_script(
    options: CallOptions,
    report: CallReport,
    link: MediaLink,
    clips: list[PreparedClip],
    step: Step,
    say: Callable[[str], None],
) -> None:
    """The caller: listen to the greeting, speak, wait for answers (or talk over one)."""
    step.name = "in the lead-in"
    await trio.sleep(options.lead_in_s)
    if options.expect_greeting:
        step.name = "waiting for the greeting"
        with trio.fail_after(options.greeting_timeout_s):
            await link.wait_until(lambda: link.last_audio_s is not None)
        say(f"greeting started at {report.greeting_first_audio_s:.2f} s")
        step.name = "waiting for the greeting to finish"
        with trio.fail_after(options.playout_timeout_s):
            await link.wait_played_out(options.quiet_s)
    for number, clip in enumerate(clips, start=1):
        barge_in = options.barge_in and number > 1
        if barge_in:
            clip = clip.without_leading_silence()
        step.name = f"speaking utterance {number}"
        start_s, end_s = await link.play(clip)
        report.turns.append(
            TurnReport(number, round(start_s, 3), round(end_s, 3), barge_in=barge_in)
        )
        if barge_in:
            step.name = f"waiting for StopAudio after barge-in utterance {number}"
            with trio.fail_at(link.opened_at + start_s + options.stop_audio_timeout_s):
                await link.wait_until(partial(_stopped_since, report, start_s))
            latency_ms = 1000 * (report.stop_audio_s[-1] - start_s)
            say(f"barge-in honoured: StopAudio {latency_ms:.0f} ms after speech start")
        step.name = f"waiting for the answer to utterance {number}"
        with trio.fail_after(options.response_timeout_s):
            await link.wait_until(partial(_audio_since, link, end_s))
        ttfa_ms = 1000 * ((link.last_audio_s or 0.0) - end_s)
        say(f"turn {number}: first audio {ttfa_ms:.0f} ms after speech end")
        next_barges_in = options.barge_in and number < len(clips)
        if next_barges_in:
            step.name = f"letting the answer to utterance {number} start"
            await trio.sleep(options.barge_in_delay_s)
        else:
            step.name = f"listening to the answer to utterance {number}"
            step.final = number == len(clips)
            with trio.fail_after(options.playout_timeout_s):
                await link.wait_played_out(options.quiet_s)


def _stopped_since(report: CallReport, t: float) -> bool:
    return any(stop >= t for stop in report.stop_audio_s)


def _audio_since(link: MediaLink, t: float) -> bool:
    return link.last_audio_s is not None and link.last_audio_s > t
