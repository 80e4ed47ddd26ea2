"""Example agent tools (``AGENT_TOOLS=examples.orders``); not part of the acs_trio package."""
