"""``acs-trio serve --workers N``: N server processes on one shared listening socket.

One Trio process uses one core.  The parent binds the port once and starts N children
(``acs-trio serve --fd <n>``), each a full instance with its own instance id
(``<INSTANCE_ID or host-pid>-w<i>``) and its own drain; the kernel spreads connections over them.
A callback or a re-established media socket may reach any child, so the children share call
state exactly as separate hosts do: ``--workers`` above 1 needs ``REDIS_URL``.

The parent forwards SIGTERM/SIGINT to every child and waits for their drains (a child whose parent
is killed drains by itself: server._watch_parent); a child that dies
on its own is restarted after a pause (its calls are hung up by a sibling once its lease expires,
or resumed by whichever sibling their re-established media socket reaches).  The children run in
their own sessions, so a Ctrl-C in a terminal reaches them once, through the parent.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys

import trio

from .redis_state import default_instance_id

__all__ = ["run_workers"]

logger = logging.getLogger(__name__)

#: Pause before restarting a worker that exited on its own.
RESTART_PAUSE_S = 1.0


def bind_shared_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(socket.SOMAXCONN)
    sock.set_inheritable(True)
    return sock


async def run_workers(
    count: int, host: str, port: int, child_args: list[str], base_id: str = ""
) -> None:
    """Serve with ``count`` child processes until a signal has drained them all."""
    base_id = base_id or os.environ.get("INSTANCE_ID", "") or default_instance_id()
    with bind_shared_socket(host, port) as sock:
        logger.info("%d workers sharing %s:%d", count, host, sock.getsockname()[1])
        stopping = trio.Event()
        processes: dict[int, trio.Process] = {}
        async with trio.open_nursery() as nursery:
            for index in range(count):
                nursery.start_soon(
                    _keep_worker, index, sock.fileno(), child_args, base_id, processes, stopping
                )
            await _forward_signals(processes, stopping)
    logger.info("all workers stopped")


async def _keep_worker(
    index: int,
    fd: int,
    child_args: list[str],
    base_id: str,
    processes: dict[int, trio.Process],
    stopping: trio.Event,
) -> None:
    generation = 0
    while not stopping.is_set():
        instance = f"{base_id}-w{index}" + (f"r{generation}" if generation else "")
        command = [sys.executable, "-m", "acs_trio", "serve", "--fd", str(fd), *child_args]
        env = os.environ | {"INSTANCE_ID": instance}
        process = await trio.lowlevel.open_process(
            command, env=env, pass_fds=(fd,), start_new_session=True
        )
        processes[index] = process
        try:
            code = await process.wait()
        finally:
            if process.returncode is None:  # we are being cancelled: do not leave it running
                with trio.move_on_after(5, shield=True):
                    process.terminate()
                    await process.wait()
        if stopping.is_set():
            logger.info("worker %s exited (%s)", instance, code)
            return
        logger.error("worker %s exited on its own (%s): restarting", instance, code)
        generation += 1
        await trio.sleep(RESTART_PAUSE_S)


async def _forward_signals(processes: dict[int, trio.Process], stopping: trio.Event) -> None:
    """Pass SIGTERM/SIGINT to each worker (each drains), then wait for them to exit."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            logger.info("%s: forwarding to %d workers", signal.Signals(signum).name, len(processes))
            stopping.set()
            for process in processes.values():
                if process.returncode is None:
                    process.send_signal(signum)
            if all(process.returncode is not None for process in processes.values()):
                return
            # The keep-alive tasks return once their worker has exited; a second signal is
            # forwarded too (a worker stops at once on its second signal).
            async with trio.open_nursery() as waiter:
                waiter.start_soon(_wait_all, processes, waiter.cancel_scope)
                async for again in signals:
                    for process in processes.values():
                        if process.returncode is None:
                            process.send_signal(again)
            return


async def _wait_all(processes: dict[int, trio.Process], scope: trio.CancelScope) -> None:
    for process in list(processes.values()):
        await process.wait()
    scope.cancel()
