"""The shared call state in Redis (``REDIS_URL``), through coredis on Trio.

Keys (prefix ``acs_trio:``)::

    instance:<id>      "1" with a PX lease; the instance renews it every lease/3 (its own task)
    calls              SET of the tokens of live calls: the cluster-wide admission count
    call:<token>       HASH owner, ccid, corr, scid, state, media
    media:<media>      the call token of the call whose media socket URL carries <media>
    seen:<sha256>      IncomingCall event ids / contexts already answered (EX SEEN_TTL)
    conv:<token>       JSON list of turns: the conversation so far, as the caller heard it
    inbox:<id>         STREAM: callbacks forwarded to the owner, "taken" notices.  A stream,
                       not pub/sub: a message waits there while the owner's reader reconnects
                       (callbacks are not known to be redelivered, so none may be lost)

Every multi-key decision (admission, duplicate check, claim, reap, release) is one Lua script,
so two instances never both win.  An owner renews its instance lease and re-writes its calls'
records every lease/3; that also restores them after Redis restarted empty.  A record whose
owner's lease expired is taken by the first survivor that sees it (``REAP``), which hangs the call
up: no zombie calls.

Faults: every command has a deadline; the first failure logs one ERROR and flips
:attr:`RedisCallStore.available` (new calls get 503, the readiness probe too), the first success
afterwards logs that Redis is back.  Live calls never wait on Redis: the bridge only hands over a
copy of its conversation, and a background task writes the newest one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import secrets
import socket
from collections.abc import AsyncIterator, Awaitable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import coredis
import coredis.exceptions
import trio

from ..call.conversation_store import ConversationStore, Turn
from ..config import ClusterSettings
from ..errors import StateUnavailable
from .call_store import StoredCall, StoreHooks
from .log_safe import clip

__all__ = ["RedisCallStore", "check_redis", "default_instance_id", "open_redis_store"]

logger = logging.getLogger(__name__)
# coredis logs every retry of every command at INFO: during an outage that is a line per command
# (per lease round, per call...).  Our own log says it once each way (RedisCallStore._do).
logging.getLogger("coredis").setLevel(logging.WARNING)

T = TypeVar("T")

PREFIX = "acs_trio:"
CALLS = PREFIX + "calls"
#: A conversation outlives its call's record this long (a resume may come a little later).
CONVERSATION_TTL_S = 6 * 3600
#: The inbox reader blocks this long per XREAD (a message wakes it at once).
INBOX_BLOCK_MS = 1000
INBOX_RETRY_S = 0.5
#: An inbox left by a dead instance disappears after this long.
INBOX_TTL_S = 600
#: Most turns replayed into a resumed session (the newest ones).
CONVERSATION_MAX_TURNS = 200

_REDIS_ERRORS = (coredis.exceptions.RedisError, OSError, trio.TooSlowError)

# KEYS: calls set, call hash, media index, seen keys...  ARGV: token, max (0: none; -1: full
# here, only the duplicate check), seen TTL, owner, ccid, corr, scid, state, media token.
# 0 = duplicate, 1 = answering, 2 = full.
_ADMIT = """
for i = 4, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then return 0 end
end
local max = tonumber(ARGV[2])
if max < 0 then return 2 end
if max > 0 and redis.call('SCARD', KEYS[1]) >= max then return 2 end
for i = 4, #KEYS do redis.call('SET', KEYS[i], '1', 'EX', ARGV[3]) end
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[2], 'owner', ARGV[4], 'ccid', ARGV[5], 'corr', ARGV[6], 'scid', ARGV[7],
           'state', ARGV[8], 'media', ARGV[9])
redis.call('SET', KEYS[3], ARGV[1])
return 1
"""

# Renew/update one of our calls; returns the other owner if someone claimed it meanwhile.
_RENEW = """
local owner = redis.call('HGET', KEYS[2], 'owner')
if owner and owner ~= ARGV[2] then return owner end
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[2], 'owner', ARGV[2], 'ccid', ARGV[3], 'corr', ARGV[4], 'scid', ARGV[5],
           'state', ARGV[6], 'media', ARGV[7])
if ARGV[7] ~= '' then redis.call('SET', KEYS[3], ARGV[1]) end
return ''
"""

_CLAIM = """
local f = redis.call('HMGET', KEYS[2], 'owner', 'ccid', 'corr', 'scid', 'state', 'media')
if not f[1] then return {'missing'} end
if f[5] == 'ending' then return {'ending'} end
local ccid = f[2] or ''
if ARGV[3] ~= '' and ccid ~= '' and ccid ~= ARGV[3] then return {'mismatch', ccid} end
if ccid == '' then ccid = ARGV[3] end
redis.call('HSET', KEYS[2], 'owner', ARGV[2], 'state', 'connected', 'ccid', ccid)
redis.call('SADD', KEYS[1], ARGV[1])
return {'ok', f[1], ccid, f[3] or '', f[4] or '', f[6] or ''}
"""

# KEYS: owner's instance key, owner's inbox.  ARGV: message, inbox TTL.  0 if the owner is dead.
_SEND = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', '10000', '*', 'm', ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[2])
return 1
"""

# KEYS: calls set, call hash, the owner's instance key.  ARGV: owner, us.  The owner's lease is
# checked here, atomically with the take: it may have renewed since the scan saw it gone.
_REAP = """
if redis.call('HGET', KEYS[2], 'owner') ~= ARGV[1] then return 0 end
if redis.call('EXISTS', KEYS[3]) == 1 then return 0 end
redis.call('HSET', KEYS[2], 'owner', ARGV[2], 'state', 'ending')
return 1
"""

# KEYS: calls set, call hash, conversation.  ARGV: token, owner, media index key prefix.
_RELEASE = """
local owner, media = unpack(redis.call('HMGET', KEYS[2], 'owner', 'media'))
if owner and owner ~= ARGV[2] then return 0 end
redis.call('SREM', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2], KEYS[3])
if media and media ~= '' and redis.call('GET', ARGV[3] .. media) == ARGV[1] then
  redis.call('DEL', ARGV[3] .. media)
end
return 1
"""


def default_instance_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


def _call_key(token: str) -> str:
    return f"{PREFIX}call:{token}"


def _media_key(media_token: str) -> str:
    return f"{PREFIX}media:{media_token}"


def _conv_key(token: str) -> str:
    return f"{PREFIX}conv:{token}"


def _inbox(instance_id: str) -> str:
    return f"{PREFIX}inbox:{instance_id}"


def _instance_key(instance_id: str) -> str:
    return f"{PREFIX}instance:{instance_id}"


def _redact(url: str) -> str:
    """The URL for a log line, without a password."""
    _, at, tail = url.rpartition("@")
    return f"{url.split('://', 1)[0]}://…@{tail}" if at else url


@dataclass(eq=False)
class _Conversation:
    """One call's :class:`ConversationStore`: the history it started with and the newest copy."""

    token: str
    started_with: Sequence[Turn]
    pending: Sequence[Turn] | None = None
    changed: trio.Event = field(default_factory=trio.Event)
    #: Copies not written because Redis was away (a later copy replaces them anyway).
    skipped: int = 0

    def history(self) -> Sequence[Turn]:
        return self.started_with

    def save(self, turns: Sequence[Turn]) -> None:
        # Policy: the call never waits on Redis; only the newest copy is kept for the writer.
        self.pending = tuple(turns)
        self.changed.set()


class RedisCallStore:
    """:class:`~acs_trio.control.call_store.CallStore` on Redis.  Open with :func:`open_redis_store`."""

    def __init__(self, client: coredis.Redis[str], settings: ClusterSettings) -> None:
        self._redis = client
        self._settings = settings
        self.instance_id = settings.instance_id or default_instance_id()
        self._available = True
        #: When Redis last came back after an outage: owners get one lease from then to renew
        #: their instance keys (expired meanwhile) before the reaper may take their calls.
        self._back_at = -float("inf")
        #: Live calls across the cluster, as of the last lease round (for /healthz and scaling).
        self.cluster_calls = 0
        #: A record's renewal write and its release never interleave (no resurrected records).
        self._records_lock = trio.Lock()
        #: Calls admitted or claimed here within the last lease, by when: the reaper leaves their
        #: records alone though the control plane may not have registered them yet.
        self._fresh: dict[str, float] = {}
        self._admit = client.register_script(_ADMIT)
        self._renew = client.register_script(_RENEW)
        self._claim = client.register_script(_CLAIM)
        self._reap = client.register_script(_REAP)
        self._release = client.register_script(_RELEASE)
        self._send = client.register_script(_SEND)

    # -- health ------------------------------------------------------------------------------

    @property
    def available(self) -> bool:
        return self._available

    async def _do(self, what: str, command: Awaitable[T]) -> T:
        """One command within its deadline; failures flip :attr:`available` (logged once)."""
        try:
            with trio.fail_after(self._settings.command_timeout_s):
                result = await command
        except _REDIS_ERRORS as exc:
            if self._available:
                self._available = False
                logger.error(
                    "Redis unreachable (%s: %s): new calls are refused with 503 until it is "
                    "back; live calls go on",
                    what,
                    exc or type(exc).__name__,
                )
            raise StateUnavailable(f"Redis unreachable during {what}") from exc
        if not self._available:
            self._available = True
            self._back_at = trio.current_time()
            logger.warning("Redis is back: accepting new calls again")
        return result

    # -- background: lease, inbox, reaper ------------------------------------------------------

    async def run(
        self, hooks: StoreHooks, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        await self._renew_instance()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._heartbeat_loop)
            await self._renew_all(hooks)
            nursery.start_soon(self._inbox_loop, hooks)
            nursery.start_soon(self._lease_loop, hooks)
            nursery.start_soon(self._reaper_loop, hooks)
            task_status.started()

    async def _heartbeat_loop(self) -> None:
        """The instance lease, every lease/3 on the clock: never behind the call records' writes
        (many calls, a slow Redis) nor their lock, or survivors would hang up live calls."""
        period = self._settings.lease_s / 3
        deadline = trio.current_time()
        while True:
            deadline = max(deadline + period, trio.current_time())
            await trio.sleep_until(deadline)
            with contextlib.suppress(StateUnavailable):  # logged once by _do; retried next round
                await self._renew_instance()

    async def _renew_instance(self) -> None:
        lease_ms = int(self._settings.lease_s * 1000)
        await self._do(
            "lease renewal", self._redis.set(_instance_key(self.instance_id), "1", px=lease_ms)
        )

    async def _lease_loop(self, hooks: StoreHooks) -> None:
        while True:
            await trio.sleep(self._settings.lease_s / 3)
            with contextlib.suppress(StateUnavailable):  # logged once by _do; retried next round
                await self._renew_all(hooks)

    async def _renew_all(self, hooks: StoreHooks) -> None:
        """Re-write our calls' records (restores them after Redis restarted empty)."""
        # The instance key first: a record restored before it would look orphaned to a survivor.
        await self._renew_instance()
        for token in [call.token for call in hooks.owned_calls()]:
            # One record at a time: a claim or release never waits for the whole round; the
            # record is read under the lock, so a call released meanwhile is not written back.
            async with self._records_lock:
                call = hooks.owned_call(token)
                if call is None:
                    continue
                other = await self._write(call, "lease renewal")
            if other:
                hooks.call_taken(token, other)
        self.cluster_calls = int(await self._do("lease renewal", self._redis.scard(CALLS)))

    async def _write(self, call: StoredCall, what: str) -> str:
        args = [
            call.token,
            self.instance_id,
            call.call_connection_id,
            call.correlation_id,
            call.server_call_id,
            call.state,
            call.media_token,
        ]
        keys = [CALLS, _call_key(call.token), _media_key(call.media_token)]
        other: Any = await self._do(what, self._renew(keys=keys, args=args))
        return str(other or "")

    async def _inbox_loop(self, hooks: StoreHooks) -> None:
        """Read our inbox stream from where we left off; survives Redis going away and back."""
        key, last = _inbox(self.instance_id), "0-0"
        while True:
            try:
                batches = await self._do(
                    "inbox read", self._redis.xread({key: last}, count=100, block=INBOX_BLOCK_MS)
                )
            except StateUnavailable:
                await trio.sleep(INBOX_RETRY_S)
                continue
            for entry in (batches or {}).get(key, ()):
                last = str(entry.identifier)
                self._on_inbox(hooks, entry.field_values.get("m"))

    async def _post(self, owner: str, message: dict[str, Any]) -> bool:
        keys = [_instance_key(owner), _inbox(owner)]
        args = [json.dumps(message), str(INBOX_TTL_S)]
        sent: Any = await self._do("forward", self._send(keys=keys, args=args))
        return bool(sent)

    @staticmethod
    def _on_inbox(hooks: StoreHooks, data: object) -> None:
        try:
            message = json.loads(data) if isinstance(data, str | bytes) else None
        except ValueError:
            message = None
        if not isinstance(message, dict) or not isinstance(message.get("token"), str):
            logger.warning("inbox: malformed message ignored")
            return
        token: str = message["token"]
        if message.get("kind") == "callbacks" and isinstance(message.get("events"), list):
            hooks.deliver_callbacks(token, message["events"])
        elif message.get("kind") == "taken" and isinstance(message.get("by"), str):
            hooks.call_taken(token, message["by"])
        else:
            logger.warning("inbox: unknown message kind %r ignored", str(message.get("kind"))[:40])

    async def _reaper_loop(self, hooks: StoreHooks) -> None:
        """Hang up calls whose owner's lease has expired (the owner crashed or was killed)."""
        async with trio.open_nursery() as nursery:
            while True:
                # Jittered, so survivors do not all scan at once (the Lua claim decides anyway).
                await trio.sleep(self._settings.lease_s / 2 * random.uniform(0.75, 1.25))
                try:
                    for call in await self._orphans(hooks):
                        nursery.start_soon(self._hang_up_orphan, hooks, call)
                except StateUnavailable:
                    pass

    async def _orphans(self, hooks: StoreHooks) -> list[StoredCall]:
        tokens = await self._do("reaper scan", self._redis.smembers(CALLS))
        found: list[StoredCall] = []
        alive: dict[str, bool] = {self.instance_id: True}
        horizon = trio.current_time() - self._settings.lease_s
        recovering = self._back_at > horizon  # every lease may have lapsed in the outage
        self._fresh = {token: at for token, at in self._fresh.items() if at > horizon}
        owned = {call.token for call in hooks.owned_calls()}
        for token in tokens:
            call = await self.lookup(token)
            if call is None:
                await self._do("reaper cleanup", self._redis.srem(CALLS, [token]))
                continue
            if call.owner not in alive:
                exists = await self._do(
                    "reaper scan", self._redis.exists([_instance_key(call.owner)])
                )
                alive[call.owner] = bool(exists)
            if call.owner == self.instance_id and token not in owned and token not in self._fresh:
                # Ours but not run here: a call (or a reaped orphan) whose release failed
                # earlier (Redis was away).  Finish it, or it holds a slot of the cluster count.
                with contextlib.suppress(StateUnavailable):
                    await self.release(token)
                continue
            if alive[call.owner] or recovering:
                continue
            won: Any = await self._do(
                "reaper claim",
                self._reap(
                    keys=[CALLS, _call_key(token), _instance_key(call.owner)],
                    args=[call.owner, self.instance_id],
                ),
            )
            if won:
                found.append(call)
        return found

    async def _hang_up_orphan(self, hooks: StoreHooks, call: StoredCall) -> None:
        why = f"owner {call.owner} stopped renewing its lease ({self._settings.lease_s:.0f}s)"
        logger.warning("call=%s orphaned: %s", call.call_connection_id or call.token[:4], why)
        try:
            await hooks.hang_up_orphan(call, why)
        finally:
            # If this fails, the next scan finds the record (ours, 'ending', not run) again.
            with (
                trio.move_on_after(self._settings.command_timeout_s * 2, shield=True),
                contextlib.suppress(StateUnavailable),
            ):
                await self.release(call.token)

    # -- admission ------------------------------------------------------------------------------

    async def admit(self, seen_keys: Sequence[str], call: StoredCall, max_calls: int | None) -> str:
        keys = [
            CALLS,
            _call_key(call.token),
            _media_key(call.media_token),
            *(f"{PREFIX}seen:{key}" for key in seen_keys),
        ]
        args = [
            call.token,
            str(max_calls or 0),
            str(int(self._settings.seen_ttl_s)),
            self.instance_id,
            call.call_connection_id,
            call.correlation_id,
            call.server_call_id,
            call.state,
            call.media_token,
        ]
        outcome: Any = await self._do("admission", self._admit(keys=keys, args=args))
        if int(outcome) == 1:
            self._fresh[call.token] = trio.current_time()
        return {0: "duplicate", 1: "answering"}.get(int(outcome), "full")

    async def update(self, call: StoredCall) -> None:
        async with self._records_lock:
            await self._write(call, "call update")

    async def lookup(self, token: str) -> StoredCall | None:
        fields = await self._do(
            "lookup",
            self._redis.hmget(
                _call_key(token), ["owner", "ccid", "corr", "scid", "state", "media"]
            ),
        )
        owner, ccid, corr, scid, state, media = (str(v) if v is not None else None for v in fields)
        if owner is None:
            return None
        return StoredCall(
            token, owner, ccid or "", corr or "", scid or "", state or "answering", media or ""
        )

    async def lookup_media(self, media_token: str) -> str | None:
        token = await self._do("media lookup", self._redis.get(_media_key(media_token)))
        return str(token) if token else None

    async def claim(self, token: str, call_connection_id: str) -> StoredCall | str:
        async with self._records_lock:
            result: Any = await self._do(
                "media claim",
                self._claim(
                    keys=[CALLS, _call_key(token)],
                    args=[token, self.instance_id, call_connection_id],
                ),
            )
        fields = [str(v) for v in result]
        if fields[0] == "missing":
            return "unknown or finished call token"
        if fields[0] == "ending":
            return "call is already ending"
        if fields[0] == "mismatch":
            return f"x-ms-call-connection-id {clip(call_connection_id)} does not match"
        _, previous, ccid, corr, scid, media = fields
        self._fresh[token] = trio.current_time()
        if previous != self.instance_id:
            notice = {"kind": "taken", "token": token, "by": self.instance_id}
            with contextlib.suppress(StateUnavailable):  # else it learns at its next renewal
                await self._post(previous, notice)
        return StoredCall(token, self.instance_id, ccid, corr, scid, "connected", media)

    async def forward(self, owner: str, token: str, events: list[Any]) -> bool:
        return await self._post(owner, {"kind": "callbacks", "token": token, "events": events})

    async def release(self, token: str) -> None:
        async with self._records_lock:
            await self._do(
                "release",
                self._release(
                    keys=[CALLS, _call_key(token), _conv_key(token)],
                    args=[token, self.instance_id, PREFIX + "media:"],
                ),
            )

    # -- the conversation so far -------------------------------------------------------------

    async def history(self, token: str) -> list[Turn]:
        raw = await self._do("conversation read", self._redis.get(_conv_key(token)))
        try:
            items = json.loads(raw) if raw else []
        except ValueError:
            items = []
        turns: list[Turn] = []
        for item in items if isinstance(items, list) else []:
            if not isinstance(item, dict):
                continue
            role, text = item.get("role"), item.get("text")
            if role in {"user", "assistant"} and isinstance(text, str):
                turns.append(Turn("user" if role == "user" else "assistant", text))
        return turns[-CONVERSATION_MAX_TURNS:]

    def conversation(self, token: str, history: Sequence[Turn]) -> ConversationStore:
        return _Conversation(token, tuple(history))

    async def flush_conversation(self, conversation: ConversationStore) -> None:
        assert isinstance(conversation, _Conversation)
        key = _conv_key(conversation.token)
        while True:
            await conversation.changed.wait()
            conversation.changed = trio.Event()
            turns, conversation.pending = conversation.pending or (), None
            if not self._available:
                conversation.skipped += 1  # no queue while Redis is away; the next copy goes
                continue
            value = json.dumps([{"role": t.role, "text": t.text} for t in turns])
            try:
                await self._do(
                    "conversation write", self._redis.set(key, value, ex=CONVERSATION_TTL_S)
                )
            except StateUnavailable:
                conversation.skipped += 1


async def check_redis(url: str, timeout_s: float = 5.0) -> str | None:
    """None if Redis answers PING at ``url``, else one line saying what is wrong."""
    try:
        with trio.fail_after(timeout_s):
            client: coredis.Redis[str] = coredis.Redis.from_url(
                url, decode_responses=True, connect_timeout=timeout_s
            )
            async with client:
                await client.ping()
    except* _REDIS_ERRORS as group:
        problem: str | None = (
            f"Redis at REDIS_URL ({_redact(url)}) is unreachable: {group.exceptions[0]}"
        )
    else:
        problem = None
    return problem


@asynccontextmanager
async def open_redis_store(settings: ClusterSettings) -> AsyncIterator[RedisCallStore]:
    """A connected store; raises :class:`StateUnavailable` (one line) if Redis is unreachable."""
    assert settings.redis_url
    timeout = settings.command_timeout_s
    client: coredis.Redis[str] = coredis.Redis.from_url(
        settings.redis_url, decode_responses=True, connect_timeout=timeout, stream_timeout=timeout
    )
    problem = await check_redis(settings.redis_url, timeout)
    if problem is not None:
        raise StateUnavailable(problem)
    async with client:
        store = RedisCallStore(client, settings)
        logger.info(
            "shared state in Redis %s as instance %s",
            _redact(settings.redis_url),
            store.instance_id,
        )
        yield store
