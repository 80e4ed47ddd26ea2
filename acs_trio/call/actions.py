"""The narrow port through which a call asks the control plane to act on the ACS call.

``call/`` never imports ``control/``: the control plane puts an object with this shape on
:attr:`CallHandle.control <acs_trio.call.lifecycle.CallHandle.control>` before the call starts,
and the built-in ``transfer_call`` tool uses it.  Hanging up needs no port: the call ends with
``EndReason.AGENT_HUNG_UP`` and the control plane hangs up every call that it did not see end
(docs/architecture.md, "Who cancels whom").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

__all__ = ["CallControl", "TransferResult"]


@dataclass(frozen=True)
class TransferResult:
    """How a transfer went: ``accepted`` (CallTransferAccepted) or why not, for the model."""

    accepted: bool
    detail: str = ""


class CallControl(Protocol):
    async def transfer(
        self, target: str, *, operation_context: str, timeout_s: float
    ) -> TransferResult:
        """Ask ACS to transfer the call to ``target`` and wait for the outcome's callback.

        Returns within ``timeout_s`` (not accepted, with a reason, if no callback came); never
        raises for a REST failure, which is a not-accepted result too.
        """
        ...
