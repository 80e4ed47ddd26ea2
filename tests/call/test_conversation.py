"""The replay log (call/conversation.py): function calls replayed with their outputs, bounded."""

from __future__ import annotations

import json
from collections.abc import Callable

from acs_trio.call.conversation import Conversation


def _ids() -> Callable[[], str]:
    n = iter(range(1, 1000))
    return lambda: f"evt_{next(n)}"


def _items(conversation: Conversation) -> list[tuple[str, str]]:
    out = []
    for raw in conversation.replay(_ids()):
        item = json.loads(raw)["item"]
        out.append((item["type"], item.get("call_id") or item["content"][0]["text"]))
    return out


def test_calls_are_replayed_in_order_with_their_outputs_right_after() -> None:
    c = Conversation(max_chars=1000)
    c.caller_turn("u1")
    c.caller_said("u1", "where is my order")
    c.function_call("call_1", "order_status", '{"order_id": "A1"}')
    c.function_call("call_1", "order_status", '{"order_id": "A1"}')  # GA announces it twice
    c.agent_said("a1", "let me look")
    c.function_output("call_1", '{"status": "shipped"}')
    c.function_call("call_2", "order_status", '{"order_id": "A2"}')  # still running
    assert _items(c) == [
        ("message", "where is my order"),
        ("function_call", "call_1"),
        ("function_call_output", "call_1"),
        ("message", "let me look"),
        ("function_call", "call_2"),
    ]
    # Only messages are texts (the store for a resume elsewhere keeps text turns).
    assert c.texts() == [("user", "where is my order"), ("assistant", "let me look")]


def test_a_call_and_its_output_are_kept_or_dropped_together_within_the_budget() -> None:
    c = Conversation(max_chars=30)
    c.function_call("call_1", "f", '{"a": 1}')
    c.function_output("call_1", "x" * 20)  # 1 + 8 + 20 = 29 chars
    assert _items(c) == [("function_call", "call_1"), ("function_call_output", "call_1")]
    c.agent_said("a1", "hello")  # the newest is kept; the call no longer fits: both go
    assert _items(c) == [("message", "hello")]
