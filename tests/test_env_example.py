"""acs.env.example documents every variable the server reads, and its live lines parse."""

from __future__ import annotations

import re
from pathlib import Path

from acs_trio.config import Settings

ROOT = Path(__file__).resolve().parent.parent


def test_every_setting_is_in_acs_env_example() -> None:
    source = (ROOT / "acs_trio" / "config.py").read_text()
    read = set(re.findall(r'env\.(?:get|raw)\(\s*"([A-Z][A-Z0-9_]+)"', source))
    read |= set(re.findall(r'"([A-Z][A-Z0-9_]+)",\s*_', source))  # env.get("X", parse, ...)
    assert {"ACS_RESOURCE_ID", "LOG_FORMAT", "RECORDINGS_DIR", "PORT"} <= read
    example = (ROOT / "acs.env.example").read_text()
    documented = set(re.findall(r"^#?([A-Z][A-Z0-9_]+)=", example, flags=re.MULTILINE))
    assert read - documented == set()
    assert "SSL_CERT_FILE" in documented


def test_the_example_parses_as_is() -> None:
    example = (ROOT / "acs.env.example").read_text()
    env = dict(
        line.split("=", 1) for line in example.splitlines() if re.match(r"^[A-Z][A-Z0-9_]+=", line)
    )
    settings = Settings.from_env(env)
    assert settings.require_acs().resource_id == "00000000-0000-0000-0000-000000000000"
    assert settings.require_model().provider == "azure-openai"
    assert settings.notices == ()
