"""A stand-in for Azure Communication Services that plays phone calls against the server.

It follows the documented wire formats (docs/protocols/acs.md; docs/simulator.md
lists which section each message comes from): Event Grid ``IncomingCall``, the Call Automation
REST API the SDK calls (HMAC-checked), CloudEvents callbacks and the media WebSocket, all signed
with its own JWKS and served over HTTPS with its own CA.
"""

from __future__ import annotations

from .call import CallOptions as CallOptions
from .report import (
    AggregateReport as AggregateReport,
    CallReport as CallReport,
    TurnReport as TurnReport,
    render_aggregate as render_aggregate,
    render_call as render_call,
)
from .simulated import SimulatedAcs as SimulatedAcs, open_simulated_acs as open_simulated_acs

__all__ = [
    "AggregateReport",
    "CallOptions",
    "CallReport",
    "SimulatedAcs",
    "TurnReport",
    "open_simulated_acs",
    "render_aggregate",
    "render_call",
]
