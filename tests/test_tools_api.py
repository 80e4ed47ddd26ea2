"""The public tool API: schema from signature and docstring, argument checks, the AGENT_TOOLS loader."""

from __future__ import annotations

import sys
import types
from typing import Literal

import pytest

from acs_trio.config import Settings
from acs_trio.errors import ConfigError
from acs_trio.tools import ToolContext, ToolError, load_tools, tool


@tool(name="book-table", timeout_s=3)
def book(
    party: int,
    when: str,
    area: Literal["inside", "terrace"] = "inside",
    notes: str | None = None,
    tags: list[str] | None = None,
    ctx: ToolContext | None = None,
) -> str:
    """Book a table.

    The model reads only this paragraph's first line.

    Args:
        party: How many people.
        when: ISO time, e.g. "19:30";
            today if no date.
        area: Where to sit.
    """
    return "ok"


def test_schema_comes_from_signature_and_docstring() -> None:
    assert book.declaration() == {
        "type": "function",
        "name": "book-table",
        "description": "Book a table.",
        "parameters": {
            "type": "object",
            "properties": {
                "party": {"type": "integer", "description": "How many people."},
                "when": {
                    "type": "string",
                    "description": 'ISO time, e.g. "19:30"; today if no date.',
                },
                "area": {
                    "type": "string",
                    "enum": ["inside", "terrace"],
                    "description": "Where to sit.",
                },
                "notes": {"type": "string"},
                "tags": {"type": "array", "items": {"type": "string"}},
            },
            "required": ["party", "when"],
            "additionalProperties": False,
        },
    }
    assert book.timeout_s == 3
    assert not book.is_async


def test_context_parameter_is_found_by_annotation() -> None:
    @tool
    def whoami(ctx: ToolContext) -> str:
        """Who is calling."""
        return ctx.caller

    assert whoami.context_param == "ctx"
    assert whoami.parameters["properties"] == {}


@pytest.mark.parametrize(
    ("arguments", "error"),
    [
        ("", "missing argument(s): party, when"),
        ("[1]", "arguments must be a JSON object"),
        ('{"party": true, "when": "x"}', "argument 'party' must be a integer, not bool"),
        ('{"party": 2, "when": null}', "argument 'when' may not be null"),
        ('{"party": 2, "when": "x", "tags": ["a", 3]}', "argument 'tags' element must be a string"),
        ('{"party": 2.5, "when": "x"}', "argument 'party' must be a integer, not float"),
        ('{"party": 2, "when": "x", "who": 1}', "unknown argument(s): who"),
    ],
)
def test_bad_arguments_are_tool_errors(arguments: str, error: str) -> None:
    with pytest.raises(ToolError, match=error.replace("(", r"\(").replace(")", r"\)")):
        book.parse_arguments(arguments)


def test_good_arguments_pass() -> None:
    args = '{"party": 2, "when": "19:30", "area": "terrace", "notes": null, "tags": ["x"]}'
    assert book.parse_arguments(args)["area"] == "terrace"


@pytest.mark.parametrize(
    ("define", "message"),
    [
        (lambda: tool(name="f")(lambda x: x), "needs a type annotation"),
        (lambda: tool(name="bad name!")(book.func), "must be 1-64 letters"),
    ],
)
def test_bad_tools_fail_at_definition(define: object, message: str) -> None:
    with pytest.raises(TypeError, match=message):
        define()  # type: ignore[operator]


def test_a_nullable_parameter_without_a_default_may_be_omitted() -> None:
    @tool
    def note(text: str | None) -> str:
        """Take a note."""
        return text or "(empty)"

    assert note.parameters["required"] == []  # X | None: optional for the model
    assert note.func(**note.parse_arguments("{}")) == "(empty)"  # so the call gets None


def test_unsupported_annotation_fails_at_definition() -> None:
    def f(x: dict[str, int]) -> None:
        """F."""

    with pytest.raises(TypeError, match="unsupported annotation"):
        tool(f)


def _module(name: str, **attrs: object) -> str:
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    sys.modules[name] = module
    return name


@pytest.mark.parametrize(
    ("attrs", "message"),
    [
        ({}, "defines no @tool functions"),
        ({"end_call": tool(name="end_call")(book.func)}, "tool name 'end_call' is built in"),
        ({"a": book, "b": book}, "two tools are named 'book-table'"),
    ],
)
def test_loader_fails_closed_with_one_line(attrs: dict[str, object], message: str) -> None:
    name = _module(f"acs_trio_test_tools_{abs(hash(message))}", **attrs)
    with pytest.raises(ConfigError, match=message) as caught:
        load_tools(name)
    assert "\n" not in str(caught.value)
    assert str(caught.value).startswith(f"AGENT_TOOLS={name!r}")


def test_loader_collects_the_example() -> None:
    [lookup] = load_tools("examples.orders")
    assert lookup.name == "lookup_order"
    assert lookup.parameters["required"] == ["order_id"]


async def test_example_tool_answers_and_remembers_per_call() -> None:
    [lookup] = load_tools("examples.orders")
    ctx = ToolContext(call_id="c", caller="+1")
    assert (await lookup.func("a1001", ctx))["status"] == "shipped"
    with pytest.raises(ToolError, match="no order"):
        await lookup.func("Z", ctx)
    assert ctx.scratch["orders_asked"] == ["A1001", "Z"]


def test_action_settings_from_env() -> None:
    actions = Settings.from_env(
        {
            "AGENT_TOOLS": "examples.orders",
            "TRANSFER_TARGET": "+14255550199",
            "DTMF_ENABLED": "false",
            "DTMF_INTER_DIGIT_TIMEOUT_MS": "1500",
            "DTMF_TERMINATOR": "none",
            "TOOL_TIMEOUT_S": "4",
            "TOOL_MAX_CONCURRENT": "2",
        }
    ).actions
    assert actions.tools_module == "examples.orders"
    assert actions.transfer_target == "+14255550199"
    assert (actions.dtmf_enabled, actions.dtmf_inter_digit_timeout_ms) == (False, 1500)
    assert actions.dtmf_terminator == ""
    assert (actions.tool_timeout_s, actions.max_concurrent_tools) == (4, 2)
    defaults = Settings.from_env({}).actions
    assert (defaults.dtmf_enabled, defaults.dtmf_terminator, defaults.transfer_target) == (
        True,
        "#",
        None,
    )
    assert Settings.from_env({"TRANSFER_TARGET": "8:acs:res_1"}).actions.transfer_target


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("TRANSFER_TARGET", "4255550199"),
        ("TRANSFER_TARGET", "sip:agent@contoso.com"),
        # A Teams user's raw id is not an ACS user: it would go out as communicationUser.
        ("TRANSFER_TARGET", "8:orgid:6b3e6d5a-0000-4000-8000-000000000001"),
        ("AGENT_TOOLS", "my-tools.py"),
        ("DTMF_ENABLED", "maybe"),
        ("DTMF_TERMINATOR", "##"),
        ("DTMF_INTER_DIGIT_TIMEOUT_MS", "0"),
    ],
)
def test_bad_action_settings_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({name: value})
