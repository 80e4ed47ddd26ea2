"""A LOCAL TEST PEER for the Realtime GA protocol: no model, an energy VAD and an echo.

It lets the bridge, the simulator and the demo run offline: it greets with a recorded sentence
(``assets/greeting.wav``), detects caller turns by level, and answers each with the caller's own
audio.  Modules: :mod:`.protocol` and :mod:`.events` (wire shapes), :mod:`.vad` and
:mod:`.inputs` (turns on the audio timeline), :mod:`.session` (the state machine, pure),
:mod:`.connection` (the I/O loop) and :mod:`.server` (serve + CLI).
"""

from __future__ import annotations

from .connection import handle_connection as handle_connection
from .server import REALTIME_PATH as REALTIME_PATH, serve_local_peer as serve_local_peer
from .session import PeerSession as PeerSession
from .settings import LocalPeerSettings as LocalPeerSettings, PeerStats as PeerStats

__all__ = [
    "REALTIME_PATH",
    "LocalPeerSettings",
    "PeerSession",
    "PeerStats",
    "handle_connection",
    "serve_local_peer",
]
