"""An order-desk agent's tool: look an order up in a small local table.

Run the server with it::

    AGENT_TOOLS=examples.orders acs-trio serve

and tell the agent about it, e.g. ``AGENT_INSTRUCTIONS="You are the order desk of Contoso. Ask
for the order number and look it up with lookup_order."``  A real deployment would query its
order system here; keep such calls async (``httpx.AsyncClient``) so they are cancelled with the
call, and give them a deadline shorter than ``TOOL_TIMEOUT_S``.
"""

from __future__ import annotations

from typing import Any

import trio

from acs_trio.tools import ToolContext, ToolError, tool

#: order number -> (status, expected delivery); what the "database" knows.
ORDERS: dict[str, tuple[str, str]] = {
    "A1001": ("shipped", "Thursday"),
    "A1002": ("being packed", "next Monday"),
    "A1003": ("delivered", "last Friday"),
}


@tool(timeout_s=5)
async def lookup_order(order_id: str, ctx: ToolContext) -> dict[str, Any]:
    """Look up the status and delivery day of a customer's order.

    Args:
        order_id: The order number as the caller reads it out, e.g. "A1001".
    """
    await trio.sleep(0.05)  # stands for a database round trip
    key = order_id.strip().upper().replace(" ", "")
    # Remember what this caller asked about (the scratch dict lives as long as the call).
    asked = ctx.scratch.setdefault("orders_asked", [])
    asked.append(key)
    if key not in ORDERS:
        raise ToolError(f"there is no order {order_id!r}; ask the caller to check the number")
    status, delivery = ORDERS[key]
    return {"order_id": key, "status": status, "delivery": delivery, "asked_before": asked[:-1]}
