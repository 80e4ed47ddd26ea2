"""The control plane's side of :class:`~acs_trio.call.actions.CallControl`: transfers over REST.

One :class:`RecordControl` per call, put on the call's handle when the call is admitted.  A
transfer is ``transfer_call_to_participant`` with a fresh operation context, then a wait for the
callback that carries the same ``operationContext`` (``CallTransferAccepted`` or
``CallTransferFailed``, docs/protocols/acs.md §3), bounded by ``timeout_s``.  A callback naming another
operation, or arriving after the wait, changes nothing.
"""

from __future__ import annotations

import contextlib
import logging

import trio

from ..call.actions import TransferResult
from ..errors import AcsRestError
from ..wire.webhook import CallbackEvent
from .acs_rest import AcsRest
from .supervisor import CallRecord

__all__ = ["TRANSFER_EVENTS", "RecordControl"]

logger = logging.getLogger(__name__)

TRANSFER_EVENTS = frozenset({"CallTransferAccepted", "CallTransferFailed"})
#: At most this many transfers wait for their callback at once per call (the tool allows one).
_MAX_PENDING = 4


class RecordControl:
    """Transfers for one call; the only way a call reaches ACS REST."""

    def __init__(self, record: CallRecord, rest: AcsRest, *, rest_timeout_s: float) -> None:
        self._record = record
        self._rest = rest
        self._rest_timeout_s = rest_timeout_s
        self._pending: dict[str, trio.MemorySendChannel[CallbackEvent]] = {}

    async def transfer(
        self, target: str, *, operation_context: str, timeout_s: float
    ) -> TransferResult:
        record = self._record
        if not record.call_connection_id:
            return TransferResult(False, "the call has no call connection id yet")
        if len(self._pending) >= _MAX_PENDING:
            return TransferResult(False, "too many transfers in progress")
        send, receive = trio.open_memory_channel[CallbackEvent](1)
        self._pending[operation_context] = send
        try:
            with trio.move_on_after(timeout_s) as waited:
                try:
                    with trio.fail_after(self._rest_timeout_s):
                        await self._rest.transfer_call_to_participant(
                            record.call_connection_id, target, operation_context=operation_context
                        )
                except AcsRestError as exc:
                    logger.warning("%s transfer refused: %s", record.ids, exc)
                    return TransferResult(False, f"ACS refused the transfer: {exc}")
                except trio.TooSlowError:
                    logger.warning("%s transfer request timed out", record.ids)
                    return TransferResult(False, "the transfer request timed out")
                logger.info(
                    "%s transfer to %s requested (%s)", record.ids, target, operation_context
                )
                event = await receive.receive()
            if waited.cancelled_caught:
                logger.warning("%s transfer %s: no outcome within %.0fs", record.ids,
                               operation_context, timeout_s)  # fmt: skip
                return TransferResult(
                    False, f"no answer from the transfer target within {timeout_s:g} s"
                )
        finally:
            del self._pending[operation_context]
        if event.name == "CallTransferAccepted":
            logger.info("%s CallTransferAccepted (%s)", record.ids, operation_context)
            return TransferResult(True)
        logger.warning("%s CallTransferFailed %s", record.ids, event.result_summary())
        return TransferResult(False, f"the transfer failed ({event.result_summary()})")

    def on_transfer_event(self, event: CallbackEvent) -> None:
        """A CallTransferAccepted/Failed callback: wake the transfer with its operation context."""
        context = event.data.get("operationContext")
        waiter = self._pending.get(context) if isinstance(context, str) else None
        if waiter is None:
            logger.info("%s %s for operation %r: no transfer waits for it; ignored",
                        self._record.ids, event.name, context)  # fmt: skip
            return
        with contextlib.suppress(trio.WouldBlock):  # a duplicate delivery: the first decides
            waiter.send_nowait(event)
