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


def _read_by_config() -> set[str]:
    source = (ROOT / "acs_trio" / "config.py").read_text()
    read = set(re.findall(r'env\.(?:get|raw)\(\s*"([A-Z][A-Z0-9_]+)"', source))
    return read | set(re.findall(r'"([A-Z][A-Z0-9_]+)",\s*_', source))


def _readme_table() -> set[str]:
    """The variables named in the first column of README.md's configuration table."""
    readme = (ROOT / "README.md").read_text()
    table = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    names: set[str] = set()
    for line in table.splitlines():
        if line.startswith("| `"):
            names |= set(re.findall(r"`([A-Z][A-Z0-9_]+)`", line.split("|")[1]))
    return names


def test_the_readme_table_names_exactly_what_the_server_reads() -> None:
    # SSL_CERT_FILE is read by ssl/httpx, not by config.py; nothing else may be extra.
    assert _readme_table() == _read_by_config() | {"SSL_CERT_FILE"}


#: Commented lines whose value is an illustration, not the default.
EXAMPLE_VALUES = {
    "AGENT_INSTRUCTIONS",  # abridged
    "OPENAI_API_KEY",
    "REALTIME_URL",
    "REDIS_URL",
    "RECORDINGS_DIR",
}


def test_each_commented_value_in_the_example_is_the_default() -> None:
    example = (ROOT / "acs.env.example").read_text()
    live = dict(
        line.split("=", 1) for line in example.splitlines() if re.match(r"^[A-Z][A-Z0-9_]+=", line)
    )
    defaults = Settings.from_env(live)
    commented = re.findall(r"^#([A-Z][A-Z0-9_]+)=(.+)$", example, flags=re.MULTILINE)
    assert len(commented) > 40
    for name, value in commented:
        if name not in EXAMPLE_VALUES:
            assert Settings.from_env(live | {name: value}) == defaults, f"#{name}={value}"
