"""Several `acs-trio serve` processes sharing call state in a real Redis, behind a round-robin
load balancer (tests/cluster/harness.py).  Real time, real sockets, real processes; leases are
1.5 s so a crashed owner is noticed within a few seconds.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import trio

from tests.cluster.harness import (
    CALLER_SAID,
    GREETING,
    Cluster,
    Instance,
    eventually,
    free_port,
    open_cluster,
    start_instances,
)

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="loopback cluster: Linux CI")


@pytest.fixture
async def cluster(nursery: trio.Nursery) -> AsyncIterator[Cluster]:
    async with open_cluster(nursery) as running:
        try:
            yield running
        finally:
            with trio.CancelScope(shield=True):
                for instance in running.instances:
                    await instance.stop()
                    # (pytest shows this only for a failed test)
                    print(f"===== {instance.name} log (tail)\n{instance.text()[-6000:]}")


async def _redis_int(cluster: Cluster, command: str) -> int:
    """One integer-valued Redis command (inline protocol) against the cluster's Redis."""
    stream = await trio.open_tcp_stream("127.0.0.1", cluster.redis.port)
    async with stream:
        await stream.send_all(command.encode() + b"\r\n")
        reply = await stream.receive_some(64)
    return int(reply.strip().lstrip(b":"))


async def _redis_get(cluster: Cluster, key: str) -> str | None:
    """GET (a RESP bulk string) from the cluster's Redis."""
    stream = await trio.open_tcp_stream("127.0.0.1", cluster.redis.port)
    async with stream:
        await stream.send_all(f"GET {key}\r\n".encode())
        reply = b""
        while b"\r\n" not in reply or (
            reply.startswith(b"$")
            and not reply.startswith(b"$-1")
            and len(reply.split(b"\r\n", 1)[1]) < int(reply[1 : reply.index(b"\r\n")]) + 2
        ):
            reply += await stream.receive_some(65536)
    if reply.startswith(b"$-1"):
        return None
    return reply.split(b"\r\n", 1)[1][:-2].decode()


async def _redis_calls(cluster: Cluster) -> int:
    """Live calls registered in Redis: the cluster-wide admission count."""
    return await _redis_int(cluster, "SCARD acs_trio:calls")


async def _owner(instances: list[Instance]) -> Instance:
    """The one instance that runs a call now (its /healthz counts it, the others' do not)."""
    found: list[Instance] = []

    async def one_runs_it() -> bool:
        counts = [(await instance.health())["calls"] for instance in instances]
        found[:] = [instances[counts.index(1)]] if sorted(counts)[-1] == sum(counts) == 1 else []
        return bool(found)

    await eventually(one_runs_it, 5)
    return found[0]


async def _no_calls_in_redis(cluster: Cluster) -> bool:
    return await _redis_calls(cluster) == 0


async def test_one_call_split_over_three_instances(cluster: Cluster, nursery: trio.Nursery) -> None:
    """IncomingCall on i0, CallConnected on i1, media on i2, CallDisconnected on i0 again."""
    instances = await start_instances(cluster, nursery, 3)
    lb = cluster.balancer
    call = cluster.call()

    assert await call.ring() == [200]
    assert lb.landed("/api/incomingCall") == [0]  # i0 answers

    assert await call.callback("CallConnected") == 200  # on i1: forwarded to i0
    assert lb.landed("/api/callbacks/") == [1]
    await eventually(lambda: "CallConnected" in instances[0].text(), 5)
    assert "forwarded to i0" in instances[1].text()

    await nursery.start(call.media)  # on i2: it claims the call and runs it
    assert lb.landed("/ws/") == [2]
    assert await _owner(instances) is instances[2]
    assert "taken over by instance i2" in instances[0].text()
    assert await _redis_calls(cluster) == 1

    async def cluster_count_seen_by_i1() -> bool:  # for scaling: the same number everywhere
        return (await instances[1].health())["cluster_calls"] == 1

    await eventually(cluster_count_seen_by_i1, 3)
    # the greeting reaches the caller from i2
    await eventually(lambda: any('"AudioData"' in m for m in call.received), 5)

    # CallDisconnected on a non-owner (i0) ends the call within a second.
    asked = trio.current_time()
    assert await call.callback("CallDisconnected") == 200
    assert lb.landed("/api/callbacks/") == [1, 0]
    with trio.fail_after(1.0):
        await call.media_closed.wait()
    assert call.closed_at is not None
    assert call.closed_at - asked < 1.0
    assert call.close_code == 1000
    assert "forwarded to i2" in instances[0].text()
    await eventually(lambda: _no_calls_in_redis(cluster), 5)
    assert not call.sim.hung_up.is_set()  # ACS ended it: nobody hangs up

    # Event Grid delivers the same IncomingCall again, to i1: answered once cluster-wide.
    assert await call.post_incoming() == 200
    assert lb.landed("/api/incomingCall") == [0, 1]
    assert "duplicate" in instances[1].text()
    assert "answering caller" not in instances[1].text()


async def test_media_elsewhere_takes_the_call_over(cluster: Cluster, nursery: trio.Nursery) -> None:
    """The answering instance stands down without hanging up when the media lands elsewhere."""
    instances = await start_instances(cluster, nursery, 2)
    call = cluster.call()
    await call.ring()  # i0
    await nursery.start(call.media)  # i1
    assert cluster.balancer.landed("/ws/") == [1]
    assert await _owner(instances) is instances[1]
    assert "taken over by instance i1" in instances[0].text()
    assert await call.callback("CallDisconnected") == 200
    with trio.fail_after(2):
        await call.media_closed.wait()
    assert not call.sim.hung_up.is_set()


async def test_sigterm_drains_without_dropping_calls(
    cluster: Cluster, nursery: trio.Nursery
) -> None:
    instances = await start_instances(cluster, nursery, 2)
    call = cluster.call()
    await call.ring()
    await nursery.start(call.media)
    draining = await _owner(instances)
    other = instances[1 - instances.index(draining)]

    draining.signal(signal.SIGTERM)
    await eventually(lambda: _status_is(draining, "/readyz", 503), 5)
    # New calls: a delivery that still reaches the draining instance gets 503 (Event Grid
    # delivers again); the platform takes the terminating replica out of rotation, so the
    # next delivery goes to the other one.
    second = cluster.call()
    async with httpx.AsyncClient(trust_env=False) as http:
        direct = await http.post(
            f"{draining.url}/api/incomingCall", json=second.incoming_event(), headers=second.webhook
        )
    assert direct.status_code == 503
    cluster.balancer.out.add(instances.index(draining))
    assert await second.ring() == [200]
    await nursery.start(second.media)
    assert (await other.health())["calls"] == 1  # answered and run there

    # The first call goes on well past the old 10 s default? Its grace is 60 s here; 1.5 s of
    # audio, then the caller hangs up, and the callback (served or forwarded) ends it.
    await trio.sleep(1.5)
    assert not call.media_closed.is_set()
    assert await call.callback("CallDisconnected") == 200
    with trio.fail_after(2):
        await call.media_closed.wait()
    assert call.close_code == 1000  # not 1001 "going away": the call was not cut
    with trio.fail_after(10):
        await draining.exited.wait()
    assert draining.process is not None and draining.process.returncode == 0
    assert not call.sim.hung_up.is_set()
    assert not second.media_closed.is_set()  # the other instance's call is untouched
    assert await second.callback("CallDisconnected") == 200
    with trio.fail_after(2):
        await second.media_closed.wait()


async def test_kill_9_owner_survivor_hangs_up(cluster: Cluster, nursery: trio.Nursery) -> None:
    instances = await start_instances(cluster, nursery, 2)
    call = cluster.call()
    await call.ring()
    await nursery.start(call.media)
    owner = await _owner(instances)
    survivor = instances[1 - instances.index(owner)]

    owner.signal(signal.SIGKILL)
    killed = trio.current_time()
    with trio.fail_after(2):
        await call.media_closed.wait()  # the balancer closes the dead backend's connection
    with trio.fail_after(8):
        await call.sim.hung_up.wait()
    waited = trio.current_time() - killed
    assert 1.0 < waited < 6.0  # after the 1.5 s lease, not before
    assert call.sim.hang_up_via is not None and "terminate" in call.sim.hang_up_via
    assert "orphaned: owner " in survivor.text()
    await eventually(lambda: _no_calls_in_redis(cluster), 5)


async def test_owner_dies_media_resumes_on_survivor_with_context(
    cluster: Cluster, nursery: trio.Nursery
) -> None:
    instances = await start_instances(cluster, nursery, 2)
    call = cluster.call()
    await call.ring()
    await nursery.start(call.media)
    owner = await _owner(instances)
    survivor = instances[1 - instances.index(owner)]
    # The greeting was spoken and the caller's words transcribed: both are kept in Redis.
    assert call.sim.answer is not None
    token = call.sim.answer.callback_uri.rsplit("/", 1)[1]

    async def two_turns_kept() -> bool:
        kept = await _redis_get(cluster, f"acs_trio:conv:{token}")
        return kept is not None and len(json.loads(kept)) == 2

    await eventually(two_turns_kept, 5)

    owner.signal(signal.SIGKILL)
    with trio.fail_after(2):
        await call.media_closed.wait()
    sessions_before = len(cluster.model.sessions)
    await nursery.start(call.media)  # ACS re-establishes the media socket: the balancer → survivor
    assert await _owner([survivor]) is survivor

    def resumed_session_fed() -> bool:
        return any(
            e["type"] == "conversation.item.create"
            for session in cluster.model.sessions[sessions_before:]
            for e in session.events
        )

    await eventually(resumed_session_fed, 5)
    await trio.sleep(0.2)
    # (the first fed session: a loaded machine may time a session out and open another)
    resumed = next(
        s
        for s in cluster.model.sessions[sessions_before:]
        if "conversation.item.create" in s.types()
    )
    items = [e["item"] for e in resumed.events if e["type"] == "conversation.item.create"]
    assert [(i["role"], i["content"][0]["text"]) for i in items] == [
        ("assistant", GREETING),
        ("user", CALLER_SAID),
    ]
    assert "response.create" not in resumed.types()  # no second greeting
    await trio.sleep(2.5)  # past the dead owner's lease: the survivor owns it, nobody hangs up
    assert not call.sim.hung_up.is_set()
    assert not call.media_closed.is_set()
    assert await call.callback("CallDisconnected") == 200
    with trio.fail_after(2):
        await call.media_closed.wait()


async def test_redis_restart_mid_call(cluster: Cluster, nursery: trio.Nursery) -> None:
    instances = await start_instances(cluster, nursery, 2)
    call = cluster.call()
    await call.ring()
    await nursery.start(call.media)
    owner = await _owner(instances)

    await cluster.redis.kill()
    for instance in instances:
        await eventually(lambda i=instance: _status_is(i, "/readyz", 503), 5)
    refused = cluster.call()
    assert await refused.post_incoming() == 503  # new calls: Event Grid will deliver again
    await trio.sleep(1.0)  # a second of audio (50 frames) and several lease rounds, Redis away
    assert not call.media_closed.is_set()
    for instance in instances:
        assert instance.count("Redis unreachable") == 1  # once, not per frame or per round

    await cluster.redis.start()  # same port, empty: the owners write their calls back
    await cluster.wait_ready(*instances)
    assert owner.count("Redis is back") == 1

    async def call_written_back() -> bool:
        return await _redis_calls(cluster) == 1

    await eventually(call_written_back, 2)  # within one lease round (0.5 s)
    assert await refused.post_incoming() == 200  # the redelivery is answered now
    with trio.fail_after(10):
        await refused.sim.answered.wait()
    assert await call.callback("CallDisconnected") == 200  # possibly forwarded: record restored
    with trio.fail_after(2):
        await call.media_closed.wait()
    assert call.close_code == 1000
    assert not call.sim.hung_up.is_set()


async def test_unreachable_redis_at_start_is_one_line(cluster: Cluster) -> None:
    env = cluster.env("lonely", REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    with trio.fail_after(30):
        result = await trio.run_process(
            [sys.executable, "-m", "acs_trio", "serve", "--port", "1"],
            env=env,
            capture_stderr=True,
            check=False,
        )
    assert result.returncode == 2
    [line] = result.stderr.decode().strip().splitlines()
    assert line.startswith("acs-trio serve: Redis at REDIS_URL (redis://127.0.0.1:")
    assert "unset REDIS_URL" in line


async def test_workers_share_one_port(cluster: Cluster, nursery: trio.Nursery) -> None:
    port = free_port()
    parent = Instance("w", port, cluster.env("w"), args=["--workers", "2"])
    await parent.start(nursery)
    cluster.instances = [parent]
    seen: set[str] = set()
    with trio.fail_after(20):
        while len(seen) < 2 or parent.count("serving on") < 2:
            async with trio.open_nursery() as burst:
                for _ in range(8):
                    burst.start_soon(_note_instance, parent, seen)
    assert seen == {"w-w0", "w-w1"}
    parent.signal(signal.SIGTERM)
    with trio.fail_after(15):
        await parent.exited.wait()
    assert parent.process is not None and parent.process.returncode == 0
    assert parent.count("exited (0)") == 2


async def _note_instance(instance: Instance, seen: set[str]) -> None:
    with contextlib.suppress(OSError):
        seen.add((await instance.health())["instance"])


async def _status_is(instance: Instance, path: str, status: int) -> bool:
    return (await instance.get(path)).status_code == status


async def test_a_full_cluster_turns_a_caller_away_busy(
    cluster: Cluster, nursery: trio.Nursery
) -> None:
    """CLUSTER_MAX_CONCURRENT_CALLS=1: the second caller is rejected as busy, not left ringing;
    a redelivery of the first call to the other instance is a duplicate, not a rejection."""
    instances = await start_instances(cluster, nursery, 2, CLUSTER_MAX_CONCURRENT_CALLS="1")
    lb = cluster.balancer
    first = cluster.call()
    assert await first.ring() == [200]
    await nursery.start(first.media)
    assert await _redis_calls(cluster) == 1

    # Event Grid delivers the first call again, to the instance that did not answer it: a
    # duplicate (Redis says so before any turning away), not a rejection.
    [answered_by] = lb.landed("/api/incomingCall")
    lb.out = {answered_by}
    assert await first.post_incoming() == 200
    await eventually(lambda: "duplicate" in instances[1 - answered_by].text(), 5)
    assert not first.sim.rejected.is_set()
    lb.out = set()

    second = cluster.call()
    assert await second.post_incoming() == 200  # a definite answer: Event Grid need not retry
    with trio.fail_after(5):
        await second.sim.rejected.wait()
    assert second.sim.reject_reason == "busy"
    assert not second.sim.answered.is_set()
    assert await _redis_calls(cluster) == 1  # nothing registered for the refused call

    assert await first.callback("CallDisconnected") == 200
    with trio.fail_after(2):
        await first.media_closed.wait()
    await eventually(lambda: _no_calls_in_redis(cluster), 5)


async def test_a_dropped_media_socket_resumes_where_it_lands(
    cluster: Cluster, nursery: trio.Nursery
) -> None:
    """A socket re-established to the same instance resumes the call there; one that lands on
    another instance takes the call over through Redis.  Neither hangs the caller up."""
    instances = await start_instances(cluster, nursery, 2)
    lb = cluster.balancer
    call = cluster.call()
    lb.out.add(1)  # everything goes to i0 for now
    await call.ring()
    await nursery.start(call.media)
    assert lb.landed("/ws/") == [0]
    await eventually(lambda: any('"AudioData"' in m for m in call.received), 5)

    call.drop()  # the network drops the socket; ACS re-establishes it
    await call.media_closed.wait()
    await trio.sleep(0.5)
    await nursery.start(call.media)
    assert lb.landed("/ws/") == [0, 0]
    await eventually(lambda: "the call resumes" in instances[0].text(), 5)
    assert "taken over" not in instances[0].text()
    assert await _owner(instances) is instances[0]

    lb.out = {0}  # now the re-established socket lands on i1
    call.drop()
    await call.media_closed.wait()
    await trio.sleep(0.5)
    await nursery.start(call.media)
    assert lb.landed("/ws/") == [0, 0, 1]
    await eventually(lambda: "taken over by instance i1" in instances[0].text(), 5)
    assert await _owner(instances) is instances[1]
    assert await _redis_calls(cluster) == 1

    assert await call.callback("CallDisconnected") == 200
    with trio.fail_after(2):
        await call.media_closed.wait()
    await eventually(lambda: _no_calls_in_redis(cluster), 5)
    assert not call.sim.hung_up.is_set()


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    """Running (not gone, not a zombie waiting for its new parent to reap it)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


async def test_workers_drain_and_exit_when_their_parent_is_killed(
    cluster: Cluster, nursery: trio.Nursery
) -> None:
    """kill -9 of the `--workers` parent: the children (own sessions) must not serve on forever."""
    parent = Instance("w", free_port(), cluster.env("w"), args=["--workers", "2"])
    await parent.start(nursery)
    cluster.instances = [parent]
    await eventually(lambda: parent.count("serving on") >= 2, 20)
    assert parent.process is not None
    pid = parent.process.pid
    children = await trio.to_thread.run_sync(_children, pid)
    assert len(children) == 2
    parent.signal(signal.SIGKILL)
    try:
        await eventually(lambda: not any(_alive(child) for child in children), 10)
    finally:
        for child in children:
            if _alive(child):
                os.kill(child, signal.SIGKILL)
