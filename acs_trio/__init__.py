"""acs_trio: Azure Communication Services phone calls bridged to a realtime voice model, on Trio.

General layout (each layer imports only the ones below it; ``tests/test_layers.py`` checks)::

    demo/      the offline demo and its picture: composes the server with testing/
    control/   the server: routes, socket adapters, call registry, supervisor, auth, ACS REST
    call/      one call = one nursery: bridge, playout, caller/agent audio, the two socket seams
    wire/      pure codecs: ACS media, Realtime events, webhook bodies (no tasks, no sockets)
    config.py  errors.py  _httpx.py
    testing/   stand-ins (simulated ACS, local realtime peer, token signer): like trio.testing,
               shipped beside the product and never imported by it

The public surface is small: :func:`run_call` bridges one call inside its own nursery;
:class:`CallHandle` lets the control plane end it; :class:`Settings` reads the environment;
:func:`tool` makes a Python function a tool the agent can call (docs/tools.md).  The
HTTP/WebSocket server is :func:`acs_trio.control.app.create_app` (quart-trio), run by
``acs-trio serve``.
"""

from .call.bridge import run_call as run_call
from .call.lifecycle import (
    CallHandle as CallHandle,
    CallIds as CallIds,
    CallSummary as CallSummary,
    EndReason as EndReason,
)
from .call.media_socket import MediaSocket as MediaSocket
from .call.model_socket import ModelConnector as ModelConnector, ModelSocket as ModelSocket
from .config import Settings as Settings
from .control.model_ws import model_connector as model_connector
from .errors import (
    AcsRestError as AcsRestError,
    AcsTrioError as AcsTrioError,
    AuthError as AuthError,
    ConfigError as ConfigError,
    KeysUnavailable as KeysUnavailable,
    MediaClosed as MediaClosed,
    ModelClosed as ModelClosed,
    ModelConnectError as ModelConnectError,
    ModelError as ModelError,
    ModelRejected as ModelRejected,
    ProtocolError as ProtocolError,
)
from .tools import (
    Tool as Tool,
    ToolContext as ToolContext,
    ToolError as ToolError,
    tool as tool,
)

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
    "KeysUnavailable",
    "MediaClosed",
    "MediaSocket",
    "ModelClosed",
    "ModelConnectError",
    "ModelConnector",
    "ModelError",
    "ModelRejected",
    "ModelSocket",
    "ProtocolError",
    "Settings",
    "Tool",
    "ToolContext",
    "ToolError",
    "model_connector",
    "run_call",
    "tool",
]
