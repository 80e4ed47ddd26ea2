"""Start-up warnings for configured model names with an announced shutdown date (issue 10 #7)."""

from __future__ import annotations

import logging
from dataclasses import replace

import pytest

from acs_trio.config import AgentSettings
from acs_trio.control.app import create_app
from tests.acs_service import FakeAcsService
from tests.control.test_app import settings


def test_shutdown_listed_models_are_warned_at_start_up(caplog: pytest.LogCaptureFixture) -> None:
    agent = AgentSettings(model="gpt-realtime", transcription_model="whisper-1")
    with caplog.at_level(logging.WARNING):
        create_app(replace(settings(), agent=agent), http_transport=FakeAcsService().transport)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("'gpt-realtime'" in w and "2027-01-20" in w for w in warnings)
    assert any("'whisper-1'" in w and "2027-02-26" in w for w in warnings)


def test_current_models_start_without_a_shutdown_warning(caplog: pytest.LogCaptureFixture) -> None:
    agent = AgentSettings(transcription_model="gpt-transcribe")
    with caplog.at_level(logging.WARNING):
        create_app(replace(settings(), agent=agent), http_transport=FakeAcsService().transport)
    assert "shutdown date" not in caplog.text
