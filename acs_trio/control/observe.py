"""One call's observers (metrics, recording, a browser page) and log context, around ``run_call``.

:func:`observe_call` is what the media route wraps each call in: it puts the call's ids on every
log line (:func:`~acs_trio.control.logs.call_context`), attaches a
:class:`~acs_trio.call.observer.CallObserver` to the call's handle — metrics, the recorder and,
for a browser call, the page's event stream (control/softphone.py), fanned out by :class:`Tee`,
or none — and, with recordings on, owns the recorder's writer thread so the files are closed
however the call ends.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import trio

from ..call.lifecycle import CallHandle, CallIds, CallSummary
from ..call.model_socket import ModelConnector, ModelSocket
from ..call.observer import NULL_OBSERVER, CallObserver
from ..errors import ModelConnectError, ModelRejected
from .logs import call_context
from .metrics import Metrics
from .recording import open_call_recording

__all__ = ["Tee", "instrument_connector", "observe_call"]

logger = logging.getLogger(__name__)


class Tee:
    """Calls every hook on each of ``observers``; one observer's bug never reaches the call."""

    def __init__(self, *observers: CallObserver) -> None:
        self._observers = observers
        self._broken: set[int] = set()

    def _each(self, hook: Callable[[CallObserver], None]) -> None:
        for index, observer in enumerate(self._observers):
            if index in self._broken:
                continue
            try:
                hook(observer)
            except Exception:
                self._switch_off(index, observer)

    def _switch_off(self, index: int, observer: CallObserver) -> None:
        self._broken.add(index)
        logger.exception("observer %s failed; it is switched off for this call", observer)

    def on_start(self, ids: CallIds, started_at: float) -> None:
        self._each(lambda o: o.on_start(ids, started_at))

    def on_audio_format(self, sample_rate: int) -> None:
        self._each(lambda o: o.on_audio_format(sample_rate))

    # The two per-frame hooks skip the closure: they run 50 times a second per direction.
    def on_caller_audio(self, pcm: bytes, silent: bool, at: float) -> None:
        for index, observer in enumerate(self._observers):
            if index not in self._broken:
                try:
                    observer.on_caller_audio(pcm, silent, at)
                except Exception:
                    self._switch_off(index, observer)

    def on_agent_audio(self, pcm: bytes, at: float) -> None:
        for index, observer in enumerate(self._observers):
            if index not in self._broken:
                try:
                    observer.on_agent_audio(pcm, at)
                except Exception:
                    self._switch_off(index, observer)

    def on_stop_audio(self, at: float, latency_ms: float, flushed_ms: float) -> None:
        self._each(lambda o: o.on_stop_audio(at, latency_ms, flushed_ms))

    def on_ttfa(self, ms: float, *, greeting: bool) -> None:
        self._each(lambda o: o.on_ttfa(ms, greeting=greeting))

    def on_caller_speech(self, started: bool, at: float, *, barge_in: bool = False) -> None:
        self._each(lambda o: o.on_caller_speech(started, at, barge_in=barge_in))

    def on_transcript(self, role: str, text: str, at: float, *, item_id: str) -> None:
        self._each(lambda o: o.on_transcript(role, text, at, item_id=item_id))

    def on_tool_call(self, name: str, ok: bool, duration_ms: float, at: float) -> None:
        self._each(lambda o: o.on_tool_call(name, ok, duration_ms, at))

    def on_end(self, summary: CallSummary) -> None:
        self._each(lambda o: o.on_end(summary))


@asynccontextmanager
async def observe_call(
    handle: CallHandle, *, metrics: Metrics | None, recordings_dir: Path | None
) -> AsyncIterator[None]:
    """Attach the observers to ``handle`` for the block (the call); see the module docstring.

    An observer already on the handle (a browser call's page, control/softphone.py) is kept and
    hears every hook first.
    """
    attached: list[CallObserver] = [] if handle.observer is NULL_OBSERVER else [handle.observer]
    with call_context(handle):
        if recordings_dir is None:
            if metrics is not None:
                attached.append(metrics.call(handle))
            handle.observer = Tee(*attached) if attached else NULL_OBSERVER
            yield
            return
        on_drop = None if metrics is None else metrics.recording_dropped.inc
        async with open_call_recording(recordings_dir, on_drop=on_drop) as recorder:
            observers: list[CallObserver] = [*attached, recorder]
            if metrics is not None:
                observers.append(metrics.call(handle))
            handle.observer = Tee(*observers)
            yield


def instrument_connector(connect: ModelConnector, metrics: Metrics) -> ModelConnector:
    """``connect`` timed into ``acs_trio_model_connect_seconds``, failures counted by cause."""

    @asynccontextmanager
    async def connect_model() -> AsyncIterator[ModelSocket]:
        start = trio.current_time()
        opened = False
        try:
            async with connect() as ws:
                opened = True
                metrics.model_connected(trio.current_time() - start)
                yield ws
        except (ModelConnectError, ModelRejected) as exc:
            if not opened:
                metrics.model_connect_failed(exc)
            raise

    def connector() -> AbstractAsyncContextManager[ModelSocket]:
        return connect_model()

    return connector
