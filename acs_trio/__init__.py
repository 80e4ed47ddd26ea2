"""acs_trio: Azure Communication Services phone calls bridged to a realtime voice model, on Trio.

The public surface is small: :func:`run_call` bridges one call inside its own nursery;
:class:`CallHandle` lets the control plane end it; :class:`Settings` reads the environment.  The
HTTP/WebSocket server is :func:`acs_trio.app.create_app` (quart-trio), run by ``acs-trio serve``.
"""

from .call import run_call as run_call
from .config import Settings as Settings
from .errors import (
    AcsRestError as AcsRestError,
    AcsTrioError as AcsTrioError,
    AuthError as AuthError,
    ConfigError as ConfigError,
    MediaClosed as MediaClosed,
    ModelClosed as ModelClosed,
    ModelConnectError as ModelConnectError,
    ModelError as ModelError,
    ModelRejected as ModelRejected,
    ProtocolError as ProtocolError,
)
from .lifecycle import (
    CallHandle as CallHandle,
    CallIds as CallIds,
    CallSummary as CallSummary,
    EndReason as EndReason,
)
from .media_socket import MediaSocket as MediaSocket
from .realtime_client import ModelConnector as ModelConnector, model_connector as model_connector

__version__ = "0.1.0"

__all__ = [
    "AcsRestError",
    "AcsTrioError",
    "AuthError",
    "CallHandle",
    "CallIds",
    "CallSummary",
    "ConfigError",
    "EndReason",
    "MediaClosed",
    "MediaSocket",
    "ModelClosed",
    "ModelConnectError",
    "ModelConnector",
    "ModelError",
    "ModelRejected",
    "ProtocolError",
    "Settings",
    "model_connector",
    "run_call",
]
