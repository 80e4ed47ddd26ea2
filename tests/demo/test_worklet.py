"""The page's playback worklet (worklet.js) in Chromium's JavaScript engine, render quantum by quantum.

The processor class runs on the page's main thread with ``AudioWorkletProcessor`` and
``registerProcessor`` stood in (the audio thread cannot be stepped from a test): frames go in
through its message handler, and ``process()`` is called once per 128-sample render quantum at a
48 kHz context, as the audio thread would.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.demo.softphone_page import BrowserPage, browser_skip_reason, write_caller_wav

pytestmark = pytest.mark.skipif(bool(browser_skip_reason()), reason=browser_skip_reason())

WORKLET = Path(__file__).resolve().parents[2] / "acs_trio/control/static/softphone/worklet.js"

HARNESS = """([source, script]) => {
  globalThis.sampleRate = 48000;
  globalThis.currentTime = 0;
  const processors = {};
  globalThis.AudioWorkletProcessor = class {
    constructor() { this.port = { postMessage: () => {}, onmessage: null }; }
  };
  globalThis.registerProcessor = (name, cls) => { processors[name] = cls; };
  (0, eval)(source);
  const playback = new processors["softphone-playback"]({
    processorOptions: { prebufferFrames: 2, maxQueuedFrames: 500 },
  });
  const frame = () => playback.onMessage({ type: "frame", pcm: new Int16Array(480).fill(1000).buffer });
  // Render `quanta` quanta; the number of non-silent samples played.
  const render = (quanta) => {
    let played = 0;
    for (let i = 0; i < quanta; i++) {
      const out = [[new Float32Array(128)]];
      playback.process([], out);
      played += out[0][0].filter((x) => x !== 0).length;
      globalThis.currentTime += 128 / sampleRate;
    }
    return played;
  };
  return eval(script);
}"""


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Any:
    wav = tmp_path_factory.mktemp("worklet") / "caller.wav"
    write_caller_wav(wav)
    browser = BrowserPage("about:blank", wav)
    try:
        yield browser.page
    finally:
        browser.close()


def run(page: Any, script: str) -> Any:
    return page.evaluate(HARNESS, [WORKLET.read_text(), script])


def test_the_jitter_buffer_holds_two_frames_before_playing(page: Any) -> None:
    # One 20 ms frame is not yet the 40 ms prebuffer: silence; the second starts playback.
    played = run(page, "frame(); const one = render(8); frame(); [one, render(30)]")
    assert played == [0, 2 * 960]


def test_the_playback_queue_holds_at_most_500_frames(page: Any) -> None:
    stats = run(page, "for (let i = 0; i < 600; i++) frame(); playback.stats")
    assert stats["dropped"] == 100


def test_a_last_frame_short_of_the_prebuffer_still_plays(page: Any) -> None:
    # The end of a response (or a response shorter than 40 ms) must not wait for the next one:
    # after the prebuffer's time it plays as is.
    played = run(page, "frame(); const soon = render(8); [soon, render(30)]")
    assert played == [0, 960]
