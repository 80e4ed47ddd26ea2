"""One call's tool calls: run in a child nursery of the call, bounded, answered in order.

Realtime function calling (docs/protocols/realtime.md §2.4, §3.2): the model ends a response with one or
more ``function_call`` items; for each, :meth:`ToolRunner.on_function_call` starts a task in this
call's tool nursery (a child of the call's nursery, so when the call ends every running tool is
cancelled with it).  A finished tool's JSON result goes to the model as a ``function_call_output``
item; once no tool of ours is still running and no response is in progress, one
``response.create`` follows, so several calls of one response run concurrently and are answered
with one response.

A call outlives its model session safely: the replay of a new session restates each call as a
``function_call`` item (call/conversation.py), so an output sent later is accepted there.

Every failure is an output the model can talk about, never the end of the call: arguments that
are not JSON or do not fit the schema, a tool that raises, a tool past its deadline, more than
``max_concurrent_tools`` at once, or the call's ``tool_time_budget_s`` used up.  Each is logged
and counted in the call summary.

A barge-in does not cancel a running tool: its output still goes into the conversation when it
is ready (the model must see an answer to its call), and the ``response.create`` waits until the
response the caller's new turn started is done, so the model speaks about the result after it
has answered the interruption.

Built-in tools: ``end_call`` (always) waits until the response that called it is complete and its
audio has *played* at ACS (``Playout.wait_played_out``), then ends the call as
``agent_hung_up`` (the control plane hangs up for everyone); if the caller interrupted that
response (``cancelled``, or a barge-in on its audio still playing), the model is told and the
call goes on.  ``transfer_call`` (with
``TRANSFER_TARGET``) waits the same way, then asks the control plane (:class:`CallControl`) to
transfer; accepted ends the call as ``transferred``, failed goes back to the model as an error.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any

import trio

from ..config import ActionSettings
from ..tools import Tool, ToolContext, ToolError
from ..wire import realtime as rt
from .actions import CallControl
from .lifecycle import CallSummary, EndReason
from .observer import NULL_OBSERVER, CallObserver

__all__ = ["END_CALL", "TRANSFER_CALL", "ToolRunner"]

END_CALL: dict[str, Any] = {
    "type": "function",
    "name": "end_call",
    "description": (
        "End the phone call (hang up). First say a short goodbye to the caller in the same "
        "response; call this only when the caller has nothing more to ask or asks to hang up."
    ),
    "parameters": {"type": "object", "properties": {}, "required": []},
}

TRANSFER_CALL: dict[str, Any] = {
    "type": "function",
    "name": "transfer_call",
    "description": (
        "Transfer the caller to a human colleague. First tell the caller you are transferring "
        "them; call this when they ask for a person or you cannot help."
    ),
    "parameters": {
        "type": "object",
        "properties": {
            "reason": {"type": "string", "description": "Why, in a few words (for the log)."}
        },
        "required": [],
    },
}

#: Call ids remembered to run each call once (it may arrive as two events).
_SEEN_CALL_IDS = 256
#: Responses whose completion is remembered for end_call/transfer_call.
_DONE_RESPONSES = 32


class ToolRunner:
    """Per-call: nothing here is shared with another call."""

    def __init__(
        self,
        *,
        tools: Sequence[Tool],
        settings: ActionSettings,
        context: ToolContext,
        outbox: trio.MemorySendChannel[str],
        summary: CallSummary,
        log: logging.LoggerAdapter[logging.Logger],
        wait_played_out: Callable[[], Awaitable[None]],
        end: Callable[[EndReason, str], None],
        control: CallControl | None,
        observer: CallObserver = NULL_OBSERVER,
        turn_pending: Callable[[], bool] = lambda: False,
    ) -> None:
        self._tools = {t.name: t for t in tools}
        #: Each finished custom tool call (and each refusal) is reported here: metrics, transcript.
        self._observer = observer
        #: call_ids whose tool call failed (_error), until reported to the observer.
        self._failed: set[str] = set()
        self._settings = settings
        self._context = context
        self._outbox = outbox
        self._summary = summary
        self._log = log
        self._wait_played_out = wait_played_out
        self._end = end
        self._control = control
        #: The caller is speaking, or server VAD has committed their turn and will create its
        #: response: a response.create now would talk over them or collide with that response.
        self._turn_pending = turn_pending
        self._nursery: trio.Nursery | None = None
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._running = 0
        self._budget_used_s = 0.0
        # Sync tools' worker threads: an abandoned thread keeps its token until it returns, so
        # a call holds at most this many, and never trio's default limiter (getaddrinfo's).
        self._threads = trio.CapacityLimiter(settings.max_concurrent_tools)
        # response.create gating: wanted after outputs; sent when no tool runs and no response.
        self._want_response = False
        self._responding = False
        self._poke = trio.Event()
        #: response id -> final status (completed, cancelled, ...), for end_call/transfer_call.
        self._done: OrderedDict[str, str] = OrderedDict()
        self._done_changed = trio.Event()
        self._builtin_busy = False

    # --- what the model is offered -----------------------------------------------------------

    def declarations(self) -> list[dict[str, Any]]:
        """``session.tools``: the built-ins, then the custom tools."""
        declared = [END_CALL]
        if self._settings.transfer_target:
            declared.append(TRANSFER_CALL)
        return declared + [t.declaration() for t in self._tools.values()]

    # --- the task ------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The tool nursery; runs until the call cancels it (tools are cancelled with it)."""
        with self._outbox:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._respond_when_due)
                task_status.started()
                await trio.sleep_forever()

    # --- events from the model task (synchronous: no checkpoint) -----------------------------

    @property
    def responding(self) -> bool:
        """A response is in progress (created, or asked for, and not yet done)."""
        return self._responding

    def on_new_session(self, *, responding: bool) -> None:
        """A (new) model session: a response of the old one will never be done.

        ``responding``: the bridge asked this session for a response already.
        """
        self._responding = responding
        self._poke.set()

    def on_response_created(self) -> None:
        self._responding = True

    def on_response_done(self, response_id: str, status: str = "completed") -> None:
        self._responding = False
        self._done[response_id] = status
        while len(self._done) > _DONE_RESPONSES:
            self._done.popitem(last=False)
        self._done_changed.set()
        self._done_changed = trio.Event()
        self._poke.set()

    def want_response(self) -> None:
        """Something was added to the conversation that the model should answer (DTMF)."""
        self._want_response = True
        self._poke.set()

    def on_function_call(self, call: rt.FunctionCall) -> None:
        if call.call_id in self._seen:
            return  # the same call, seen again in response.output_item.done
        self._seen[call.call_id] = None
        while len(self._seen) > _SEEN_CALL_IDS:
            self._seen.popitem(last=False)
        nursery = self._nursery
        if nursery is None:
            self._log.warning(
                "function call %s (%s) before tools were ready", call.name, call.call_id
            )
            return
        self._summary.tool_calls += 1
        self._log.info(
            "model calls %s(%s) call_id=%s", call.name, call.arguments[:200], call.call_id
        )
        if call.name == "end_call":
            nursery.start_soon(self._end_call, call)
        elif call.name == "transfer_call" and self._settings.transfer_target:
            nursery.start_soon(self._transfer_call, call)
        elif call.name in self._tools:
            nursery.start_soon(self._run_tool, self._tools[call.name], call)
        else:
            nursery.start_soon(self._refuse, call, f"there is no tool named {call.name!r}")

    # --- custom tools --------------------------------------------------------------------------

    async def _run_tool(self, tool: Tool, call: rt.FunctionCall) -> None:
        settings = self._settings
        budget_left = settings.tool_time_budget_s - self._budget_used_s
        if self._running >= settings.max_concurrent_tools:
            await self._refuse(call, f"{self._running} tool calls are already running; retry later")
            return
        if budget_left <= 0:
            await self._refuse(call, "this call has used its tool time; no more tool calls")
            return
        self._running += 1
        started = trio.current_time()
        try:
            output = await self._invoke(tool, call, min(settings.tool_timeout_s, budget_left))
        finally:
            self._running -= 1
            self._budget_used_s += trio.current_time() - started
        now = trio.current_time()
        ok = call.call_id not in self._failed  # every failure goes through _error()
        self._failed.discard(call.call_id)
        self._observer.on_tool_call(call.name, ok, (now - started) * 1000, now)
        await self._answer(call, output)

    async def _invoke(self, tool: Tool, call: rt.FunctionCall, limit_s: float) -> str:
        """Run one tool; always returns the output text (errors included)."""
        try:
            kwargs = tool.parse_arguments(call.arguments)
        except ToolError as exc:
            return self._error(call, "bad arguments", str(exc))
        if tool.context_param is not None:
            kwargs[tool.context_param] = self._context
        timeout_s = min(limit_s, tool.timeout_s or limit_s)
        with trio.move_on_after(timeout_s) as scope:
            try:
                if tool.is_async:
                    result = await tool.func(**kwargs)
                else:
                    # A thread cannot be cancelled: on timeout it is abandoned (its result dropped).
                    result = await trio.to_thread.run_sync(
                        partial(tool.func, **kwargs), abandon_on_cancel=True, limiter=self._threads
                    )
                output = json.dumps(result, default=str)
            except ToolError as exc:
                return self._error(call, "tool error", str(exc))
            except Exception as exc:  # a tool's bug: this call goes on, the model is told
                self._log.warning("tool %s raised", call.name, exc_info=True)
                return self._error(call, "tool failed", f"{type(exc).__name__}: {exc}")
        if scope.cancelled_caught:
            self._summary.tool_timeouts += 1
            return self._error(call, "timeout", f"the tool did not finish within {timeout_s:g} s")
        if len(output) > self._settings.max_tool_output_chars:
            return self._error(call, "tool failed", f"result too large ({len(output)} chars)")
        self._log.info("tool %s done in call_id=%s", call.name, call.call_id)
        return output

    def _error(self, call: rt.FunctionCall, kind: str, message: str) -> str:
        self._summary.tool_errors += 1
        self._failed.add(call.call_id)
        # A tool's exception text is as unbounded as a result: cut it to the same cap.
        limit, text = self._settings.max_tool_output_chars, f"{kind}: {message}"
        output = json.dumps({"error": text})
        cut = len(text)
        while len(output) > limit and cut > 0:
            cut = max(0, cut - (len(output) - limit) - 2)
            output = json.dumps({"error": text[:cut] + "…"})
        self._log.warning(
            "tool %s %s (call_id=%s): %s", call.name, kind, call.call_id, message[:limit]
        )
        return output

    async def _refuse(self, call: rt.FunctionCall, why: str) -> None:
        self._observer.on_tool_call(call.name, False, 0.0, trio.current_time())
        output = self._error(call, "refused", why)
        self._failed.discard(call.call_id)
        await self._answer(call, output)

    async def _answer(self, call: rt.FunctionCall, output: str) -> None:
        try:
            await self._outbox.send(rt.function_call_output(call.call_id, output))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return  # the model side has stopped: the call is ending
        self.want_response()

    async def _respond_when_due(self) -> None:
        """Sends ``response.create`` once outputs are in, no tool runs and no response is active."""
        while True:
            await self._poke.wait()
            self._poke = trio.Event()
            due = self._want_response and self._running == 0
            if due and not self._responding and not self._turn_pending():
                self._want_response = False
                self._responding = True  # until this response's response.done
                try:
                    await self._outbox.send(rt.response_create())
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return

    # --- built-ins -----------------------------------------------------------------------------

    async def _wait_goodbye(self, response_id: str) -> bool:
        """The response that made the call is complete and all its audio has played at ACS.

        False if the caller interrupted that response (it ended ``cancelled``), or spoke over
        its audio still playing after it completed (a barge-in): the model's decision was made
        before it heard the caller out, so the call goes on.
        """
        barge_ins = self._summary.barge_ins
        with trio.move_on_after(self._settings.goodbye_max_wait_s) as scope:
            while response_id and response_id not in self._done:
                await self._done_changed.wait()
            await self._wait_played_out()
        if scope.cancelled_caught:
            self._log.warning(
                "the goodbye did not finish playing within %.0f s; going on",
                self._settings.goodbye_max_wait_s,
            )
        interrupted = self._summary.barge_ins != barge_ins
        return not interrupted and self._done.get(response_id) != "cancelled"

    async def _end_call(self, call: rt.FunctionCall) -> None:
        if self._builtin_busy:
            await self._refuse(call, "already ending or transferring the call")
            return
        self._builtin_busy = True
        if not await self._wait_goodbye(call.response_id):
            self._builtin_busy = False
            await self._refuse(call, "the caller interrupted; the call goes on")
            return
        self._end(EndReason.AGENT_HUNG_UP, "the agent called end_call")

    async def _transfer_call(self, call: rt.FunctionCall) -> None:
        target = self._settings.transfer_target or ""
        if self._builtin_busy:
            await self._refuse(call, "already ending or transferring the call")
            return
        if self._control is None:
            await self._refuse(call, "transfers are not available on this server")
            return
        self._builtin_busy = True
        try:
            if not await self._wait_goodbye(call.response_id):
                await self._refuse(call, "the caller interrupted; no transfer")
                return
            operation_context = f"transfer-{secrets.token_hex(8)}"
            self._log.info("transferring to %s (operation %s)", target, operation_context)
            result = await self._control.transfer(
                target,
                operation_context=operation_context,
                timeout_s=self._settings.transfer_timeout_s,
            )
        finally:
            self._builtin_busy = False
        if result.accepted:
            self._end(EndReason.TRANSFERRED, f"transferred to {target}")
            return
        await self._answer(call, self._error(call, "transfer failed", result.detail))
