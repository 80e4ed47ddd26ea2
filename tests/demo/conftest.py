from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.demo.softphone_page import BrowserPhone, write_caller_wav


@pytest.fixture
def phone(tmp_path: Path) -> Iterator[BrowserPhone]:
    """``acs-trio phone`` and a Chromium page on it; SOFTPHONE_SCREENSHOT=path saves a picture."""
    wav = tmp_path / "caller.wav"
    write_caller_wav(wav)
    shot = os.environ.get("SOFTPHONE_SCREENSHOT")
    browser_phone = BrowserPhone(wav, Path(shot) if shot else None)
    try:
        yield browser_phone
        assert browser_phone.page_errors == []
    finally:
        assert browser_phone.close_all() == 0
