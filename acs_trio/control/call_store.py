"""The seam between one process's calls and the state shared by every instance.

:class:`~acs_trio.control.control_plane.ControlPlane` keeps the calls this process *runs* in its
own dicts (the in-memory store: ``calls`` by token and the IncomingCall duplicate memory).  With
``REDIS_URL`` set it is also given a :class:`CallStore` (:mod:`acs_trio.control.redis_state`) so
that any instance can take any call's media socket and callbacks:

- ``admit``: duplicate IncomingCall suppression and the admission count,
  cluster-wide and atomic;
- ``update`` / ``release``: the call record (owner, call connection id, state), kept alive by the
  owner's lease (renewed by :meth:`CallStore.run`);
- ``claim``: a media socket that lands on another instance moves the call there;
- ``lookup_media``: a media socket names its call by its media token (indexed to the call);
- ``lookup`` / ``forward``: a callback that lands on a non-owner is sent to the owner;
- ``conversation``: the conversation so far, for a resume after the owner died.

Without ``REDIS_URL`` there is no store (``None``) and the control plane behaves exactly as a single
process always has.  Every method raises :class:`~acs_trio.errors.StateUnavailable` when the
shared state cannot be reached within its deadline; it never hangs a request.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio

from ..call.conversation_store import ConversationStore, Turn

__all__ = ["CallStore", "StoreHooks", "StoredCall"]


@dataclass(frozen=True)
class StoredCall:
    """What every instance may know about a call (never the media, never a secret but the token)."""

    token: str = field(repr=False)
    owner: str
    call_connection_id: str = ""
    correlation_id: str = ""
    server_call_id: str = ""
    #: ``answering`` → ``connected`` (media attached somewhere) → ``ending`` (being hung up).
    state: str = "answering"
    #: The media socket's URL token (separate from the callback token ``token``).
    media_token: str = field(default="", repr=False)


class StoreHooks(Protocol):
    """What the store calls back into this instance's control plane."""

    def owned_calls(self) -> Iterable[StoredCall]:
        """The calls this instance runs now (their records are renewed with the lease)."""
        ...

    def owned_call(self, token: str) -> StoredCall | None:
        """One of :meth:`owned_calls` as it is now; None once it no longer runs here."""
        ...

    def call_taken(self, token: str, new_owner: str) -> None:
        """Another instance claimed one of our calls (its media socket landed there)."""
        ...

    def deliver_callbacks(self, token: str, events: list[Any]) -> None:
        """Callback events forwarded by a non-owner, as received (raw JSON objects)."""
        ...

    async def hang_up_orphan(self, call: StoredCall, why: str) -> None:
        """Hang up a call whose owner died (its lease expired); shielded by the caller."""
        ...


class CallStore(Protocol):
    instance_id: str
    #: Live calls across all instances, as of the last lease round.
    cluster_calls: int

    @property
    def available(self) -> bool:
        """False from the first failed command until one succeeds again (logged once each way)."""
        ...

    async def run(
        self, hooks: StoreHooks, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Lease renewal, the forwarded-callback inbox and the orphan reaper; until cancelled."""
        ...

    async def admit(self, seen_keys: Sequence[str], call: StoredCall, max_calls: int | None) -> str:
        """One atomic decision for a new IncomingCall, cluster-wide.

        ``"duplicate"`` if any of ``seen_keys`` was seen before; ``"full"`` if ``max_calls`` live
        calls exist already (nothing is remembered then: a redelivery may be answered later);
        else ``"answering"``: the keys are remembered and ``call`` is registered, owned by us.
        """
        ...

    async def update(self, call: StoredCall) -> None:
        """Write what we learned (call connection id, state) while we own the call."""
        ...

    async def lookup(self, token: str) -> StoredCall | None: ...

    async def lookup_media(self, media_token: str) -> str | None:
        """The callback token of the call whose media socket URL carries ``media_token``."""
        ...

    async def claim(self, token: str, call_connection_id: str) -> StoredCall | str:
        """Make this instance the owner (a media socket arrived here), or say why not."""
        ...

    async def forward(self, owner: str, token: str, events: list[Any]) -> bool:
        """Queue callback events for the owner; False if no live instance has that name."""
        ...

    async def release(self, token: str) -> None:
        """The call is over: forget it (only if we still own it)."""
        ...

    async def history(self, token: str) -> list[Turn]:
        """The conversation so far (empty for a new call)."""
        ...

    def conversation(self, token: str, history: Sequence[Turn]) -> ConversationStore:
        """A store for ``run_call``; run :meth:`flush_conversation` beside the call."""
        ...

    async def flush_conversation(self, conversation: ConversationStore) -> None:
        """Write the newest saved copy whenever there is one; until cancelled (the call ended)."""
        ...
