"""One call = one Trio nursery.

The bridge (:mod:`.bridge`) relays caller audio to the realtime model and the model's answer back,
paced (:mod:`.playout`), with barge-in.  It reaches its two peers only through two narrow seams,
:class:`~.media_socket.MediaSocket` and :class:`~.model_socket.ModelSocket`: nothing in this
package imports Quart or trio-websocket.  The adapters live in :mod:`acs_trio.control`.
"""

from .bridge import run_call as run_call

__all__ = ["run_call"]
