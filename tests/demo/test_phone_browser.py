"""``acs-trio phone`` in a real headless Chromium: the page is ACS, the agent the local test peer.

The browser is Debian's ``chromium`` (``.ci/run`` installs it), driven by Playwright with
``executable_path`` (never ``playwright install``).  Its fake microphone plays a WAV made from the
repo's ``caller.wav``: silence while the greeting plays, one sentence (echoed back), and a second
sentence that starts while the echo is playing (a barge-in).  Real time: about 15 s.

Without chromium or Playwright these tests are skipped, and ``pytest -ra`` says why.
"""

from __future__ import annotations

import time

import pytest

from tests.demo.softphone_page import BrowserPhone, browser_skip_reason

pytestmark = pytest.mark.skipif(bool(browser_skip_reason()), reason=browser_skip_reason())


def test_a_browser_call_through_acs_trio_phone(phone: BrowserPhone) -> None:
    page = phone.page
    page.click("#call")
    page.wait_for_function("softphone.phase === 'in-call'", timeout=10_000)

    # The greeting reaches the page's playback, and its transcript the page.
    page.wait_for_selector("#transcript li.agent >> text=test agent here", timeout=10_000)
    page.wait_for_function("softphone.counters.framesPlayed >= 100", timeout=10_000)
    assert phone.counter("frames-sent") > 0

    # The caller's first sentence is echoed back: played, with a transcript of both sides.
    page.wait_for_selector("#transcript li.agent >> text=echo of your", timeout=20_000)
    page.wait_for_selector("#transcript li.caller >> text=s of speech", timeout=5_000)
    played_before_echo = phone.counter("frames-played")
    page.wait_for_function(
        f"softphone.counters.framesPlayed >= {played_before_echo + 10}", timeout=10_000
    )

    # The second sentence starts while the echo plays: StopAudio flushes the page's playback at
    # once (well within one 20 ms frame) and the echo stops.
    page.wait_for_function("softphone.counters.stopAudio >= 1", timeout=15_000)
    page.wait_for_function(
        "softphone.flushMs.length === softphone.counters.stopAudio", timeout=2_000
    )
    flush_ms = page.evaluate("softphone.flushMs")
    assert flush_ms and max(flush_ms) < 20, flush_ms
    stops = phone.settled_counter("stop-audio", "stopAudio")
    assert phone.settled_counter("flushes", "flushes") == stops
    assert phone.settled_counter("bad-messages", "badMessages") == 0

    # Latencies on the page: the server's time to first audio, and the page's own.
    page.wait_for_function("softphone.pageTtfaMs.length >= 1", timeout=10_000)
    page.wait_for_function("softphone.bargeInMs.length >= 1", timeout=5_000)
    # The page renders its numbers every 100 ms: wait for the render, not a fixed time (a
    # loaded CI machine can delay a timer well past 300 ms).
    for field in ("server-ttfa", "page-ttfa", "barge-in"):
        page.wait_for_function(
            f"/^\\d+(, \\d+)*$/.test(document.getElementById({field!r}).textContent)",
            timeout=5_000,
        )

    phone.screenshot_if_asked()

    # Hang up: the page closes its media socket; the server's call ends as a hang-up.
    page.click("#call")
    page.wait_for_function("softphone.phase === 'ended'", timeout=10_000)
    assert page.inner_text("#end-reason") == "caller_hung_up"
    summary = phone.server_line(r"call ended call_id=softphone-\S+ .*", timeout_s=10)
    assert "end_reason=caller_hung_up" in summary
    assert "barge_ins=0" not in summary and "turns=0" not in summary


def test_closing_the_tab_ends_the_call(phone: BrowserPhone) -> None:
    page = phone.page
    page.click("#call")
    page.wait_for_function("softphone.counters.framesPlayed >= 10", timeout=10_000)
    started = time.monotonic()
    page.close()
    summary = phone.server_line(r"call ended call_id=softphone-\S+ .*", timeout_s=10)
    assert "end_reason=caller_hung_up" in summary
    assert time.monotonic() - started < 5
