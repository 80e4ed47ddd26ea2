"""RedisCallStore against a real redis-server, without the HTTP servers around it: the lease and
the reaper's decisions under a slow Redis and racing instances.  Real time (short leases)."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Iterable
from typing import Any

import pytest
import trio

from acs_trio.config import ClusterSettings
from acs_trio.control import redis_state
from acs_trio.control.call_store import StoredCall
from acs_trio.control.redis_state import RedisCallStore, open_redis_store
from tests.cluster.harness import RedisServer, free_port

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="redis-server: Linux CI")


class Hooks:
    def __init__(self) -> None:
        self.calls: list[StoredCall] = []
        self.taken: list[tuple[str, str]] = []

    def owned_calls(self) -> Iterable[StoredCall]:
        return list(self.calls)

    def owned_call(self, token: str) -> StoredCall | None:
        return next((call for call in self.calls if call.token == token), None)

    def call_taken(self, token: str, new_owner: str) -> None:
        self.taken.append((token, new_owner))

    def deliver_callbacks(self, token: str, events: list[Any]) -> None:
        pass

    async def hang_up_orphan(self, call: StoredCall, why: str) -> None:
        pass


@pytest.fixture
async def redis() -> AsyncIterator[RedisServer]:
    server = RedisServer(free_port())
    await server.start()
    try:
        yield server
    finally:
        with trio.CancelScope(shield=True):
            await server.aclose()


def _settings(redis: RedisServer, name: str, lease_s: float = 15.0) -> ClusterSettings:
    return ClusterSettings(redis_url=redis.url, instance_id=name, lease_s=lease_s)


async def _exists(store: RedisCallStore, key: str) -> bool:
    return bool(await store._redis.exists([key]))


async def test_reaper_does_not_take_a_call_whose_owner_renewed_meanwhile(
    redis: RedisServer,
) -> None:
    """The scan saw owner A's lease gone; A renews before the claim: the call stays A's."""
    async with (
        open_redis_store(_settings(redis, "A")) as a,
        open_redis_store(_settings(redis, "B")) as b,
    ):
        call = StoredCall("tok-1", "A", "ccid-1", "corr", "scid", "connected", "media-1")
        assert await a.admit(["seen-1"], call, None) == "answering"
        do = b._do

        async def owner_renews_just_before_the_claim(what: str, command: Any) -> Any:
            if what == "reaper claim":
                await do("test", a._redis.set(redis_state._instance_key("A"), "1", px=15000))
            return await do(what, command)

        b._do = owner_renews_just_before_the_claim  # type: ignore[method-assign]
        assert await b._orphans(Hooks()) == []
        record = await b.lookup("tok-1")
        assert record is not None
        assert (record.owner, record.state) == ("A", "connected")


async def test_instance_lease_is_renewed_while_call_record_writes_are_slow(
    redis: RedisServer,
) -> None:
    """Redis slow for the per-call writes (many calls, a busy Redis): the instance's own lease
    must still be renewed on time, or survivors hang up its live calls."""
    lease_s = 0.9
    async with open_redis_store(_settings(redis, "A", lease_s)) as store:
        hooks = Hooks()
        hooks.calls.append(StoredCall("tok-2", "A", "ccid-2", "corr", "scid", "connected", "m2"))
        write = store._write

        async def slow_write(call: StoredCall, what: str) -> str:
            await trio.sleep(3 * lease_s)
            return await write(call, what)

        store._write = slow_write  # type: ignore[method-assign]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(store.run, hooks)
            for _ in range(8):  # 2.4 lease periods
                await trio.sleep(lease_s * 0.3)
                assert await _exists(store, redis_state._instance_key("A"))
            nursery.cancel_scope.cancel()


async def test_our_own_record_left_by_a_failed_release_is_cleaned_up(redis: RedisServer) -> None:
    """A call ended while Redis was away (its release failed): the record must not hold a slot
    of the cluster-wide count for as long as this instance lives.  A call just admitted, not yet
    in our registry, is left alone."""
    lease_s = 0.5
    async with open_redis_store(_settings(redis, "A", lease_s)) as store:
        hooks = Hooks()  # neither call runs here (any more / yet)
        ended = StoredCall("tok-ended", "A", "ccid-3", "corr", "scid", "answering", "m3")
        assert await store.admit(["seen-3"], ended, 10) == "answering"
        await store.update(
            StoredCall("tok-ended", "A", "ccid-3", "corr", "scid", "connected", "m3")
        )
        await trio.sleep(lease_s * 1.5)
        new = StoredCall("tok-new", "A", "ccid-4", "corr", "scid", "answering", "m4")
        assert await store.admit(["seen-4"], new, 10) == "answering"
        assert await store._orphans(hooks) == []
        assert await store.lookup("tok-ended") is None
        assert await store.lookup_media("m3") is None
        assert await store.lookup("tok-new") is not None
        assert await store._redis.smembers(redis_state.CALLS) == {"tok-new"}


async def test_a_media_claim_does_not_wait_for_a_whole_slow_renewal_round(
    redis: RedisServer,
) -> None:
    """Redis slow, many calls: a media socket's claim waits for one record write at most, not
    for the lease round over every call (it held one lock across all of them)."""
    async with open_redis_store(_settings(redis, "A")) as store:
        hooks = Hooks()
        for i in range(5):
            call = StoredCall(f"tok-{i}", "A", f"ccid-{i}", "corr", "scid", "connected", f"m{i}")
            hooks.calls.append(call)
            assert await store.admit([f"seen-{i}"], call, None) == "answering"
        moving = StoredCall("tok-x", "A", "ccid-x", "corr", "scid", "answering", "mx")
        assert await store.admit(["seen-x"], moving, None) == "answering"
        write = store._write

        async def slow_write(call: StoredCall, what: str) -> str:
            await trio.sleep(1.0)
            return await write(call, what)

        store._write = slow_write  # type: ignore[method-assign]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(store._renew_all, hooks)
            await trio.sleep(0.1)
            with trio.fail_after(2.5):  # the whole round takes 5 s
                claimed = await store.claim("tok-x", "ccid-x")
            assert not isinstance(claimed, str)
            nursery.cancel_scope.cancel()


async def test_a_renewal_round_does_not_resurrect_a_call_released_meanwhile(
    redis: RedisServer,
) -> None:
    async with open_redis_store(_settings(redis, "A")) as store:
        hooks = Hooks()
        for i in range(2):
            call = StoredCall(f"tok-{i}", "A", f"ccid-{i}", "corr", "scid", "connected", f"m{i}")
            hooks.calls.append(call)
            assert await store.admit([f"seen-{i}"], call, None) == "answering"
        write = store._write

        async def slow_write(call: StoredCall, what: str) -> str:
            await trio.sleep(0.5)
            return await write(call, what)

        store._write = slow_write  # type: ignore[method-assign]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(store._renew_all, hooks)
            await trio.sleep(0.1)
            del hooks.calls[1]  # tok-1 ends (the control plane forgets it, then releases it)
            await store.release("tok-1")
            await trio.sleep(1.5)
        assert await store.lookup("tok-1") is None
        assert await store.lookup("tok-0") is not None


async def test_records_restored_after_an_empty_restart_come_with_their_owners_lease(
    redis: RedisServer,
) -> None:
    """Redis restarted empty: the round that writes our records back writes our instance key
    first, or a survivor's reaper sees them ownerless and hangs the live calls up."""
    async with open_redis_store(_settings(redis, "A")) as store:
        hooks = Hooks()
        hooks.calls.append(StoredCall("tok-r", "A", "ccid-r", "corr", "scid", "connected", "mr"))
        await store._redis.flushall()
        await store._renew_all(hooks)
        assert await store.lookup("tok-r") is not None
        assert await _exists(store, redis_state._instance_key("A"))


async def test_no_reaping_until_owners_had_a_lease_to_renew_after_an_outage(
    redis: RedisServer,
) -> None:
    """Redis away longer than a lease (a failover) with its data kept: every instance key has
    expired meanwhile.  When Redis is back, a survivor must give the owners one lease to renew
    before it takes their calls as orphans, or it hangs up live calls."""
    lease_s = 0.6
    async with (
        open_redis_store(_settings(redis, "A", lease_s)) as a,
        open_redis_store(_settings(redis, "B", lease_s)) as b,
    ):
        call = StoredCall("tok-o", "A", "ccid-o", "corr", "scid", "connected", "mo")
        assert await a.admit(["seen-o"], call, None) == "answering"
        await b._redis.delete([redis_state._instance_key("A")])  # expired during the outage
        b._available = False  # B saw the outage too (logged once)...
        await b.lookup("tok-o")  # ...and this is its first command that succeeds again
        assert b.available
        assert await b._orphans(Hooks()) == []  # A may be alive: not renewed yet
        record = await b.lookup("tok-o")
        assert record is not None and record.owner == "A"
        await trio.sleep(lease_s * 1.2)  # A had its lease and did not renew: dead
        assert [found.token for found in await b._orphans(Hooks())] == ["tok-o"]
