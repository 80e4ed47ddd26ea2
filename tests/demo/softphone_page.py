"""Drive ``acs-trio phone`` and its page in Debian's Chromium (tests and bench/softphone.py).

Playwright drives the system browser through ``executable_path``; its own browser downloads are
never used.  The fake microphone is a WAV file (Chromium's ``--use-file-for-fake-audio-capture``).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import wave
from pathlib import Path
from typing import Any

import numpy as np

CALLER_WAV = Path(__file__).resolve().parents[2] / "acs_trio/testing/assets/caller.wav"
#: Model settings removed from the server's environment: the tests talk to the local peer.
MODEL_VARS = ("REALTIME_URL", "OPENAI_API_KEY", "AZURE_OPENAI_ENDPOINT", "SOFTPHONE_TOKEN")


def chromium_path() -> str | None:
    return (
        os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    )


def browser_skip_reason() -> str:
    """Why the browser tests cannot run here ("" when they can)."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "browser tests skipped: Playwright is not installed (pip install -e '.[dev]')"
    if chromium_path() is None:
        return (
            "browser tests skipped: no chromium on PATH "
            "(Debian: apt-get install -y chromium; .ci/run installs it)"
        )
    return ""


def write_caller_wav(path: Path) -> float:
    """caller.wav's two sentences re-timed for one softphone story; returns its length in s.

    3.2 s of silence (the 2.4 s greeting plays out), sentence one (2.5 s), 1.3 s of silence (its
    echo starts ~0.65 s in), sentence two (barges into the echo), then 6 s of silence (the second
    echo plays out).
    """
    with wave.open(str(CALLER_WAV)) as w:
        rate = w.getframerate()
        pcm = np.frombuffer(w.readframes(w.getnframes()), "<i2")

    def silence(s: float) -> np.ndarray[Any, Any]:
        return np.zeros(int(s * rate), "<i2")

    first, second = pcm[int(0.2 * rate) : int(2.7 * rate)], pcm[int(3.1 * rate) : int(5.95 * rate)]
    out = np.concatenate([silence(3.2), first, silence(1.3), second, silence(6.0)])
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(out.tobytes())
    return len(out) / rate


class PhoneServer:
    """``python -m acs_trio phone --local-peer --port 0`` as a child process; its log collected."""

    def __init__(self, *extra_env: tuple[str, str]) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(MODEL_VARS)}
        env.update({"LOG_LEVEL": "INFO", "PYTHONUNBUFFERED": "1", **dict(extra_env)})
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "acs_trio", "phone", "--local-peer", "--port", "0"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        found = self.wait_line(r"softphone: open (http://\S+)", timeout_s=30)
        match = re.search(r"http://\S+", found)
        assert match is not None
        self.url = match.group(0)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_line(self, pattern: str, *, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        regex = re.compile(pattern)
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if regex.search(line):
                    return line
            if self.proc.poll() is not None and not self._reader.is_alive():
                break
            time.sleep(0.05)
        tail = "\n".join(self.lines[-30:])
        raise AssertionError(f"no server line matching {pattern!r} in {timeout_s} s:\n{tail}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(timeout=5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.proc.returncode


class BrowserPage:
    """One Chromium with a fake microphone playing ``wav``, and one page on ``url``."""

    def __init__(self, url: str, wav: Path, screenshot: Path | None = None) -> None:
        from playwright.sync_api import sync_playwright

        self.screenshot = screenshot
        self.page_errors: list[str] = []
        self._pw = sync_playwright().start()
        try:
            self.browser = self._pw.chromium.launch(
                executable_path=chromium_path(),
                args=[
                    "--no-sandbox",
                    "--disable-gpu",
                    "--use-fake-ui-for-media-stream",
                    "--use-fake-device-for-media-stream",
                    f"--use-file-for-fake-audio-capture={wav}%noloop",
                    "--autoplay-policy=no-user-gesture-required",
                ],
            )
            # bypass_csp: the page forbids eval, which Playwright's wait_for_function uses.
            self.page = self.browser.new_page(
                viewport={"width": 1100, "height": 760}, bypass_csp=True
            )
            self.page.on("pageerror", lambda exc: self.page_errors.append(str(exc)))
            self.page.goto(url)
        except BaseException:
            self.close()
            raise

    def counter(self, element_id: str) -> int:
        return int(self.page.inner_text(f"#{element_id}"))

    def settled_counter(self, element_id: str, key: str) -> int:
        """A DOM counter once the page has rendered its latest value (it renders every 100 ms)."""
        self.page.wait_for_function(
            f"document.getElementById({element_id!r}).textContent"
            f" === String(softphone.counters[{key!r}])",
            timeout=2_000,
        )
        return self.counter(element_id)

    def screenshot_if_asked(self) -> None:
        if self.screenshot is not None:
            self.page.screenshot(path=str(self.screenshot), full_page=True)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.browser.close()
        with contextlib.suppress(Exception):
            self._pw.stop()


class BrowserPhone(BrowserPage):
    """``acs-trio phone`` (:class:`PhoneServer`) and a :class:`BrowserPage` on its URL."""

    def __init__(self, wav: Path, screenshot: Path | None = None) -> None:
        self.server = PhoneServer()
        try:
            super().__init__(self.server.url, wav, screenshot)
        except BaseException:
            self.server.stop()
            raise

    def server_line(self, pattern: str, *, timeout_s: float) -> str:
        return self.server.wait_line(pattern, timeout_s=timeout_s)

    def close_all(self) -> int:
        self.close()
        return self.server.stop()
