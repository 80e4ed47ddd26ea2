"""Settings, read once from the environment at start-up.

Everything is a frozen dataclass with units in the field names, so a reader never has to guess
whether ``timeout`` is seconds or milliseconds.  A missing or invalid value raises
:class:`~acs_trio.errors.ConfigError` naming the variable, before any socket is opened.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from ipaddress import ip_address
from typing import TypeVar
from urllib.parse import quote, urlsplit

from .errors import ConfigError

__all__ = [
    "DEFAULT_REALTIME_MODEL",
    "REALTIME_MODEL_SHUTDOWNS",
    "AcsSettings",
    "ActionSettings",
    "AgentSettings",
    "CallLimits",
    "ClusterSettings",
    "ControlTimeouts",
    "ModelEndpoint",
    "Observability",
    "ServerSettings",
    "Settings",
    "SoftphoneSettings",
    "WebhookSettings",
    "is_loopback_url",
    "model_shutdown_warning",
    "redact_url",
    "transcription_shutdown_warning",
]

#: The official Call Automation token issuer and key set (docs/protocols/acs.md §5.1).
DEFAULT_ACS_JWT_ISSUER = "https://acscallautomation.communication.azure.com"
DEFAULT_ACS_JWKS_URL = "https://acscallautomation.communication.azure.com/calling/keys"

#: Voices accepted by the GA session (docs/protocols/realtime.md §2.1).
KNOWN_VOICES = frozenset(
    {"alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer", "verse", "marin", "cedar"}
)

DEFAULT_INSTRUCTIONS = (
    "You are a friendly phone agent. Keep answers short and spoken-style: one or two sentences. "
    "If the caller interrupts you, stop and listen."
)
DEFAULT_GREETING = "Greet the caller in one short sentence and ask how you can help."

T = TypeVar("T")

#: A current GA realtime model.  The openai SDK 3.63.0 (PyPI, 2026-12) lists it among the session
#: models (``types/realtime/realtime_session_create_request_param.py``) and not among the
#: deprecated ones; docs/protocols/realtime.md §2.1 has the notice quoted.
DEFAULT_REALTIME_MODEL = "gpt-realtime-2.1"

#: Model names with an announced shutdown date.  Source: the openai SDK 3.63.0 docstring of the
#: session ``model`` field: 'Deprecated values: "gpt-realtime", "gpt-realtime-2025-08-28",
#: "gpt-realtime-mini", "gpt-realtime-mini-2025-12-15", "gpt-audio-mini",
#: "gpt-audio-mini-2025-12-15": Announced shutdown date: 2027-01-20. See
#: https://developers.openai.com/api/docs/deprecations'.
REALTIME_MODEL_SHUTDOWNS: dict[str, str] = dict.fromkeys(
    (
        "gpt-realtime",
        "gpt-realtime-2025-08-28",
        "gpt-realtime-mini",
        "gpt-realtime-mini-2025-12-15",
        "gpt-audio-mini",
        "gpt-audio-mini-2025-12-15",
    ),
    "2027-01-20",
)


def model_shutdown_warning(model: str) -> str | None:
    """A start-up warning when ``model`` is on :data:`REALTIME_MODEL_SHUTDOWNS`, else None."""
    date = REALTIME_MODEL_SHUTDOWNS.get(model.strip().lower())
    if date is None:
        return None
    return (
        f"realtime model {model!r} has an announced shutdown date of {date} "
        f"(https://developers.openai.com/api/docs/deprecations); "
        f"move to a current model such as {DEFAULT_REALTIME_MODEL!r}"
    )


#: Input transcription models with an announced shutdown date (the replay after a reconnect
#: needs the caller's transcripts).  Source: the openai SDK 3.63.0 docstring of
#: ``AudioTranscription.model`` (``types/realtime/audio_transcription.py``): 'Deprecated values:
#: "whisper-1", "gpt-4o-mini-transcribe", "gpt-4o-mini-transcribe-2025-12-15",
#: "gpt-4o-transcribe", "gpt-4o-transcribe-diarize": Announced shutdown date: 2027-02-26.'
#: The same docstring lists ``gpt-transcribe``, ``gpt-live-transcribe`` and
#: ``gpt-realtime-whisper`` as current options (their availability on Azure is not verified).
TRANSCRIPTION_MODEL_SHUTDOWNS: dict[str, str] = dict.fromkeys(
    (
        "whisper-1",
        "gpt-4o-mini-transcribe",
        "gpt-4o-mini-transcribe-2025-12-15",
        "gpt-4o-transcribe",
        "gpt-4o-transcribe-diarize",
    ),
    "2027-02-26",
)


def transcription_shutdown_warning(model: str) -> str | None:
    """A start-up warning when ``model`` is on :data:`TRANSCRIPTION_MODEL_SHUTDOWNS`."""
    date = TRANSCRIPTION_MODEL_SHUTDOWNS.get(model.strip().lower())
    if date is None:
        return None
    return (
        f"input transcription model {model!r} has an announced shutdown date of {date} "
        f"(https://developers.openai.com/api/docs/deprecations); set INPUT_TRANSCRIPTION_MODEL "
        f"to a current one (the openai SDK lists 'gpt-transcribe')"
    )


#: ACS streams 20 ms frames (docs/protocols/acs.md §4.3).
ACS_FRAME_MS = 20

#: INCOMING_CALL_SECRET shorter than this is refused (it is all that stands before answering).
MIN_SECRET_CHARS = 16


@dataclass(frozen=True)
class ModelEndpoint:
    """Where the realtime model lives and how to authenticate the WebSocket handshake."""

    url: str
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    #: Human-readable provider name for logs ("azure-openai", "openai", "explicit URL").
    provider: str = "explicit URL"

    def __repr__(self) -> str:  # never print keys (nor an ``?api-key=`` in the URL's query)
        return f"ModelEndpoint(provider={self.provider!r}, url={redact_url(self.url)!r})"


@dataclass(frozen=True)
class AgentSettings:
    """What the agent says and how the model's server VAD listens (sent in ``session.update``)."""

    instructions: str = DEFAULT_INSTRUCTIONS
    voice: str = "marin"
    #: Instructions for a greeting response at call start; ``None`` waits for the caller.
    greeting: str | None = DEFAULT_GREETING
    #: The model name sent in ``session.model`` (OpenAI); Azure ignores it in favour of the URL.
    #: Not ``gpt-realtime``: see :data:`REALTIME_MODEL_SHUTDOWNS`.
    model: str = DEFAULT_REALTIME_MODEL
    vad_threshold: float = 0.5
    vad_prefix_padding_ms: int = 300
    vad_silence_duration_ms: int = 500
    #: Input transcription model; empty disables transcription.
    transcription_model: str = "gpt-4o-mini-transcribe"


@dataclass(frozen=True)
class CallLimits:
    """Per-call timeouts, pacing and buffer sizes.  docs/architecture.md explains each one."""

    max_duration_s: float = 3600.0
    #: No speech from either side for this long ends the call (a line left open).
    idle_timeout_s: float = 120.0
    #: No message at all from ACS for this long: the media stream has stalled.
    media_timeout_s: float = 20.0
    model_connect_timeout_s: float = 10.0
    #: Budget for closing both sockets once the call has ended (shielded cleanup).
    close_timeout_s: float = 2.0
    #: How far ahead of real time outbound audio may run (ACS buffers it; StopAudio flushes it).
    playout_lead_ms: int = 100
    #: Agent audio per outbound AudioData message.  20 ms matches ACS's own cadence (docs/protocols/acs.md
    #: §4.3) and keeps StopAudio granular; larger frames cost less CPU per call (docs/performance.md).
    frame_ms: int = 20
    #: Caller audio is batched into one ``input_audio_buffer.append`` per this many ms.  20 (no
    #: batching) because every frame of a batch but the last waits for it: 60 ms batches made
    #: caller audio 20 ms later on average (41 ms p99) for ~10 % less CPU (docs/performance.md).
    append_batch_ms: int = 20
    #: Agent audio queued for the caller; above this the model reader waits (back-pressure).
    outbound_buffer_ms: int = 300_000
    #: Messages waiting to be written to the model socket; above this ACS receive waits.
    model_outbox_size: int = 64
    max_acs_message_bytes: int = 64 * 1024
    max_model_message_bytes: int = 4 * 1024 * 1024
    #: Undecodable messages from ACS tolerated before the call is ended as a protocol error.
    max_bad_messages: int = 100
    # --- the model session (docs/architecture.md, "The model session") ---
    #: Wait this long for ``session.updated`` after ``session.update``; else the session failed.
    session_ready_timeout_s: float = 5.0
    #: This many ``response.done`` in a row with status failed/incomplete end the call.
    max_failed_responses: int = 3
    #: Total time a call may spend re-opening its model session after a drop; then it ends.
    model_reconnect_budget_s: float = 10.0
    #: Jittered exponential back-off between reconnect attempts: first and largest delay.
    model_backoff_first_s: float = 0.2
    model_backoff_max_s: float = 2.0
    #: Caller audio kept while no session is open (sent to the next one); older audio is dropped
    #: and counted.
    model_gap_audio_ms: int = 2000
    #: WebSocket ping every this many s; no pong within the timeout means a dead link.
    model_ping_interval_s: float = 10.0
    model_pong_timeout_s: float = 5.0
    #: Move to a fresh session at the first quiet moment in the last this-many s before the
    #: session's ``expires_at``; at ``expires_at`` minus ``session_recycle_force_s`` regardless.
    session_recycle_margin_s: float = 120.0
    session_recycle_force_s: float = 10.0
    #: Session length assumed when ``session.created`` has no ``expires_at`` (Azure: 30 min).
    session_default_lifetime_s: float = 1800.0
    #: Most transcript characters replayed into a new session (oldest dropped first).
    replay_max_chars: int = 24_000


@dataclass(frozen=True)
class ControlTimeouts:
    """The control plane's deadlines for one call's life (answer, media, hang-up)."""

    #: Whole ``answer_call`` exchange, retries included.
    answer_s: float = 10.0
    #: From answering to the media WebSocket connecting; after this the call is hung up.
    media_connect_s: float = 30.0
    #: One ``hang_up`` attempt (azure-core's own retries included).
    hang_up_s: float = 5.0
    #: All hang-up attempts together (retried on 5xx/network errors with back-off); they run
    #: shielded, so this is also the shield's deadline.
    hang_up_total_s: float = 30.0
    #: After the media socket closed from ACS's side, how long to wait for ``CallDisconnected``
    #: before hanging up: a closed socket alone does not prove the call is over.
    disconnect_grace_s: float = 5.0
    #: Once the call has been asked to end, how long the media route gets to finish before the
    #: supervisor hangs up anyway (a send to a dead peer can block: hypercorn shields send_all).
    media_done_after_end_s: float = 5.0
    #: ACS re-established a call's media socket while our side still holds the old one (a drop
    #: with no close seen): the old socket's call is asked to end and gets this long, then is
    #: cancelled and gets this long again, before the new socket is refused.  Twice this must
    #: stay under ``media_done_after_end_s`` (the supervisor's own wait).
    media_takeover_s: float = 2.0


@dataclass(frozen=True)
class ActionSettings:
    """What the agent can do besides talking: tools, hang up, transfer, hear the keypad.

    docs/tools.md explains each one; all of them are per call.
    """

    #: ``AGENT_TOOLS``: a module (``package.module``) whose ``@tool`` functions the model may call.
    tools_module: str | None = None
    #: ``TRANSFER_TARGET``: an E.164 number (``+14255550100``) or an ACS user id (``8:acs:…``);
    #: when set, the built-in ``transfer_call`` tool is offered.
    transfer_target: str | None = None
    #: One tool call's deadline (a tool may ask for less with ``@tool(timeout_s=…)``).
    tool_timeout_s: float = 10.0
    #: Tool calls running at once in one call; more are answered with an error output at once.
    max_concurrent_tools: int = 4
    #: Total time tools may run in one call; after that every tool call is refused.
    tool_time_budget_s: float = 120.0
    #: A tool result longer than this (JSON characters) is replaced by an error output.
    max_tool_output_chars: int = 16 * 1024
    #: ``end_call``/``transfer_call`` wait for the agent's last words to play, at most this long.
    goodbye_max_wait_s: float = 30.0
    #: From ``transfer_call_to_participant`` to ``CallTransferAccepted``/``Failed``, at most.
    transfer_timeout_s: float = 60.0
    #: Keypad: answer with ``enableDtmfTones`` and hand tones to the model (docs/protocols/acs.md §4.2).
    dtmf_enabled: bool = True
    #: Digits are sent this long after the last one, unless the terminator came first.
    dtmf_inter_digit_timeout_ms: int = 2000
    #: Ends a keypad entry at once (and is part of it); empty for none.
    dtmf_terminator: str = "#"
    #: An entry longer than this is sent at once.
    dtmf_max_digits: int = 32


# --- server-level limits: one home for every number a reviewer may want to tune -----------------

#: Webhook bodies above this get 413 (Quart's MAX_CONTENT_LENGTH).  An IncomingCall event is
#: 2-5 KB and a Call Automation callback about as much; Event Grid sends one event per delivery
#: by default (docs/deployment.md says to keep it so), so 64 KiB is generous.
MAX_BODY_BYTES = 64 * 1024
#: IncomingCall deliveries with more events than this get 413 before any event is decoded.
MAX_EVENTS_PER_DELIVERY = 5
#: Quart's BODY_TIMEOUT: the whole request body must arrive within this (slow-body clients).
BODY_TIMEOUT_S = 5.0
#: hypercorn's read_timeout: a connection that sends nothing for this long is closed.  ACS sends a
#: media frame every 20 ms, so this only ever closes idle or trickling clients.
READ_TIMEOUT_S = 10.0
#: Accepted sockets: unacknowledged data for this long kills the connection (TCP_USER_TIMEOUT),
#: so a peer that stops reading cannot hold a call's close deadline hostage (hypercorn shields
#: ``send_all``); keepalive probes find dead idle peers the same way.
TCP_USER_TIMEOUT_S = 10.0
TCP_KEEPALIVE_IDLE_S = 10
TCP_KEEPALIVE_INTERVAL_S = 5
TCP_KEEPALIVE_PROBES = 3
#: How long after an answer_call that failed or timed out a late connection is watched for
#: (and hung up): a media socket or CallConnected for it means ACS did answer.
LATE_ANSWER_WATCH_S = 60.0
#: Busy rejections / overflow redirects in flight at once; more are only logged.
MAX_PENDING_REJECTS = 32
#: After ACS disconnects the media socket, the route has this long to finish before it is cancelled.
MEDIA_DISCONNECT_GRACE_S = 5.0
#: Largest WebSocket message hypercorn assembles (an ACS 20 ms frame is ~1.4 KB of JSON).
WEBSOCKET_MAX_MESSAGE_BYTES = 1024 * 1024
#: After the drain, how long hypercorn waits for the last connections before cancelling them.
GRACEFUL_TIMEOUT_S = 5.0
#: Server events waiting in trio-websocket's queue before its reader stops reading the model socket.
MODEL_MESSAGE_QUEUE_SIZE = 16
#: IncomingCall event ids / contexts remembered to answer each call once.
SEEN_EVENTS_MAX = 4096
#: Hang-up back-off: 0.5, 1, 2, 4, 8, 8... s between attempts, within hang_up_total_s.
HANG_UP_FIRST_RETRY_S = 0.5
HANG_UP_MAX_RETRY_S = 8.0
#: JWT clock-skew leeway, and the JWKS refresh rules (docs/control-plane.md).
JWT_LEEWAY_S = 60.0
JWKS_REFRESH_INTERVAL_S = 60.0
JWKS_EMPTY_RETRY_S = 1.0
JWKS_FETCH_TIMEOUT_S = 5.0
#: The JWKS is fetched at start-up and then replaced on this timer, so a key Microsoft removes
#: stops being trusted within this time.  Failed timer fetches are retried after JWKS_RETRY_S.
JWKS_MAX_AGE_S = 3600.0
JWKS_RETRY_S = 10.0
#: Unknown-``kid`` refreshes from requests that carry a live per-call token (media sockets,
#: callbacks of admitted calls) have their own budget, at most one per this many seconds, apart
#: from the budget spent by anonymous requests (JWKS_REFRESH_INTERVAL_S): junk tokens sent to
#: unknown callback URLs cannot delay the refresh a real key rotation needs.
JWKS_KNOWN_CALL_REFRESH_S = 5.0
#: Softphone (docs/softphone.md): browser calls at once, events queued per call (dropped when
#: the page does not keep up), and how long the page has to open its media socket.
SOFTPHONE_MAX_CALLS = 4
SOFTPHONE_EVENT_QUEUE = 256
SOFTPHONE_MEDIA_CONNECT_S = 10.0
#: Shortest SOFTPHONE_TOKEN accepted (the token is the page's only credential).
SOFTPHONE_MIN_TOKEN_CHARS = 22


@dataclass(frozen=True)
class AcsSettings:
    """Call Automation resource, public URL and token checks (docs/protocols/acs.md §2, §5)."""

    connection_string: str = field(repr=False)
    #: The https base URL ACS reaches; callback and wss media URLs are built from it.
    public_base_url: str
    #: The ACS resource's immutable id: the audience of Call Automation JWTs.
    resource_id: str
    jwks_url: str = DEFAULT_ACS_JWKS_URL
    jwt_issuer: str = DEFAULT_ACS_JWT_ISSUER

    def __repr__(self) -> str:  # never print the access key
        return (
            f"AcsSettings(public_base_url={self.public_base_url!r}, "
            f"resource_id={self.resource_id!r})"
        )


@dataclass(frozen=True)
class ServerSettings:
    host: str = "0.0.0.0"
    port: int = 8000
    #: What one process carries at p99 < 5 ms (docs/performance.md: 40 calls; underruns from 75).
    max_concurrent_calls: int = 40
    #: On shutdown, live calls get this long before they are ended (and hung up).
    shutdown_grace_s: float = 10.0
    #: New calls are refused (as FULL) while the event loop lags more than this.
    max_loop_lag_ms: float = 20.0


@dataclass(frozen=True)
class WebhookSettings:
    """The IncomingCall webhook: its secret, the answer rate limit and the overflow target."""

    #: Event Grid must send it as ``?code=`` or the ``X-Incoming-Call-Secret`` header.
    incoming_call_secret: str = field(default="", repr=False)
    #: Token bucket for answers: sustained rate and burst.
    answer_rate_per_s: float = 5.0
    answer_burst: int = 20
    #: When full: redirect here (a phone number ``+1…`` or an ACS user id), else reject as busy.
    overflow_target: str = ""


@dataclass(frozen=True)
class Observability:
    """Logs, metrics and recordings (docs/operations.md)."""

    #: ``text`` (human-readable, the default) or ``json`` (one JSON object per line).
    log_format: str = "text"
    #: Serve Prometheus metrics on ``GET /metrics``.
    metrics_enabled: bool = True
    #: Opt-in: per call a stereo WAV, a transcript JSONL and a summary JSON under this directory.
    recordings_dir: str | None = None
    #: Recordings older than this are deleted (checked hourly); 0 keeps them forever.
    recordings_retention_days: float = 30.0


#: Recording write-behind: chunks of RECORDING_CHUNK_MS of stereo audio, at most
#: RECORDING_QUEUE_CHUNKS queued for the writer thread (beyond that they are dropped and counted).
RECORDING_CHUNK_MS = 500
RECORDING_QUEUE_CHUNKS = 64
#: How often the retention sweep runs.
RECORDINGS_SWEEP_INTERVAL_S = 3600.0
#: The event-loop lag probe's period.
LOOP_LAG_INTERVAL_S = 0.25


@dataclass(frozen=True)
class SoftphoneSettings:
    """The browser softphone page (docs/softphone.md); off unless ``SOFTPHONE=1``."""

    #: The secret in the page's URL (``/softphone/<token>/``); every softphone route checks it.
    token: str

    def __repr__(self) -> str:  # never print the token
        return "SoftphoneSettings(token=…)"

    @classmethod
    def generated(cls) -> SoftphoneSettings:
        return cls(token=secrets.token_urlsafe(24))


@dataclass(frozen=True)
class ClusterSettings:
    """Shared state for many processes/hosts (docs/deployment.md "Many instances").

    ``redis_url`` unset: one process, every call's state in its memory (no Redis at all).
    """

    redis_url: str | None = None
    #: This process's name in Redis; default: host name, pid and a random suffix.
    instance_id: str = ""
    #: The owner renews its lease every third of this; a crashed owner's calls are hung up by a
    #: survivor once it has expired.
    lease_s: float = 15.0
    #: Live calls across all instances (atomic in Redis); ``None``: only each instance's cap.
    max_calls: int | None = None
    #: How long an IncomingCall's event id / context is remembered cluster-wide.
    seen_ttl_s: float = 600.0
    #: Deadline for one Redis command (a lost Redis must not hang a request).
    command_timeout_s: float = 2.0

    def __repr__(self) -> str:  # the URL may carry a password
        return (
            f"ClusterSettings(redis={'set' if self.redis_url else 'off'}, id={self.instance_id!r})"
        )


@dataclass(frozen=True)
class Settings:
    """Everything the server needs.  ``acs-trio serve`` requires ``model`` and ``acs``."""

    model: ModelEndpoint | None = None
    agent: AgentSettings = field(default_factory=AgentSettings)
    limits: CallLimits = field(default_factory=CallLimits)
    acs: AcsSettings | None = None
    server: ServerSettings = field(default_factory=ServerSettings)
    log_level: str = "INFO"
    webhook: WebhookSettings = field(default_factory=WebhookSettings)
    observability: Observability = field(default_factory=Observability)
    #: Things worth a WARNING once logging is up (e.g. quotes removed from a value).
    notices: tuple[str, ...] = ()
    actions: ActionSettings = field(default_factory=ActionSettings)
    #: None (the default): no softphone route exists.
    softphone: SoftphoneSettings | None = None
    cluster: ClusterSettings = field(default_factory=ClusterSettings)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = _Env(os.environ if environ is None else environ)
        settings = cls(
            model=_model_from_env(env),
            agent=_agent_from_env(env),
            limits=_limits_from_env(env),
            acs=_acs_from_env(env),
            server=ServerSettings(
                host=env.get("HOST", str, ServerSettings.host),
                port=env.get("PORT", _port, ServerSettings.port),
                max_concurrent_calls=env.get(
                    "MAX_CONCURRENT_CALLS", _positive_int, ServerSettings.max_concurrent_calls
                ),
                shutdown_grace_s=env.get(
                    "SHUTDOWN_GRACE_S", _non_negative_float, ServerSettings.shutdown_grace_s
                ),
                max_loop_lag_ms=env.get(
                    "MAX_LOOP_LAG_MS", _positive_float, ServerSettings.max_loop_lag_ms
                ),
            ),
            log_level=env.get("LOG_LEVEL", _log_level, "INFO"),
            webhook=WebhookSettings(
                incoming_call_secret=env.raw("INCOMING_CALL_SECRET") or "",
                answer_rate_per_s=env.get(
                    "ANSWER_RATE_PER_S", _positive_float, WebhookSettings.answer_rate_per_s
                ),
                answer_burst=env.get("ANSWER_BURST", _positive_int, WebhookSettings.answer_burst),
                overflow_target=env.get("OVERFLOW_TARGET", _transfer_target, ""),
            ),
            observability=_observability_from_env(env),
            actions=_actions_from_env(env),
            softphone=_softphone_from_env(env),
            cluster=_cluster_from_env(env),
        )
        return replace(settings, notices=tuple(env.notices))

    def require_model(self) -> ModelEndpoint:
        if self.model is None:
            raise ConfigError(
                "no realtime model configured: set AZURE_OPENAI_ENDPOINT (with "
                "AZURE_OPENAI_API_KEY and AZURE_OPENAI_DEPLOYMENT), OPENAI_API_KEY or REALTIME_URL; "
                "or run `acs-trio serve --local-peer` to answer with the local echo test peer"
            )
        return self.model

    def require_incoming_call_secret(self) -> str:
        secret = self.webhook.incoming_call_secret
        if len(secret) < MIN_SECRET_CHARS:
            raise ConfigError(
                f"INCOMING_CALL_SECRET must be set (at least {MIN_SECRET_CHARS} characters, e.g. "
                "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`) and put in the "
                "Event Grid subscription (docs/deployment.md)"
            )
        return secret

    def require_acs(self) -> AcsSettings:
        if self.acs is None:
            raise ConfigError(
                "ACS_CONNECTION_STRING, PUBLIC_BASE_URL and ACS_RESOURCE_ID "
                "must be set to answer calls"
            )
        return self.acs


class _Env:
    """Typed access to environment variables; every error names the variable."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ
        self.notices: list[str] = []

    def raw(self, name: str) -> str | None:
        value = self._environ.get(name)
        if value is None or value.strip() == "":
            return None
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            # `docker run --env-file` passes quotes literally (a shell-style file has them).
            notice = (
                f"{name}: removed the surrounding {value[0]} quotes (docker --env-file keeps "
                "quotes literally: write NAME=value without quotes there)"
            )
            if notice not in self.notices:
                self.notices.append(notice)
            value = value[1:-1].strip()
            return value or None
        return value

    def get(self, name: str, parse: Callable[[str], T], default: T) -> T:
        value = self.raw(name)
        if value is None:
            return default
        try:
            return parse(value)
        except ValueError as exc:
            shown = "<hidden>" if _is_secret_name(name) else repr(redact_url(value))
            raise ConfigError(f"{name}={shown} is invalid: {exc}") from None


def _is_secret_name(name: str) -> bool:
    return any(word in name for word in ("SECRET", "KEY", "CONNECTION_STRING", "TOKEN"))


def redact_url(value: str) -> str:
    """``value`` with any URL query and user-info replaced: they may hold credentials."""
    try:
        parts = urlsplit(value)
    except ValueError:
        return "<unparsable>"
    if not parts.scheme or not parts.netloc:
        return value
    netloc = parts.netloc.rpartition("@")[2]
    query = "?<redacted>" if parts.query else ""
    return f"{parts.scheme}://{netloc}{parts.path}{query}"


def is_loopback_url(url: str) -> bool:
    """True if ``url``'s host is localhost or a loopback address."""
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ip_address(host).is_loopback
    except ValueError:
        return False


def _refuse_cleartext(name: str, url: str, what: str) -> None:
    """Credentials never travel over ws:// or http:// except to this machine (tests, demos)."""
    scheme = urlsplit(url).scheme
    if scheme in {"ws", "http"} and not is_loopback_url(url):
        raise ConfigError(
            f"{name} is {scheme}:// to a non-loopback host, which would send {what} in clear "
            f"text: use {scheme}s://"
        )


def _log_format(value: str) -> str:
    lowered = value.lower()
    if lowered not in {"text", "json"}:
        raise ValueError("must be text or json")
    return lowered


def _int(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ValueError("must be a whole number") from None


def _positive_int(value: str) -> int:
    number = _int(value)
    if number <= 0:
        raise ValueError("must be a positive integer")
    return number


def _port(value: str) -> int:
    number = _int(value)
    if not 0 <= number <= 65535:
        raise ValueError("must be a TCP port (0-65535)")
    return number


def _positive_float(value: str) -> float:
    number = float(value)
    if not number > 0:
        raise ValueError("must be a positive number")
    return number


def _non_negative_float(value: str) -> float:
    number = float(value)
    if not number >= 0:
        raise ValueError("must be zero or more")
    return number


def _unit_float(value: str) -> float:
    number = float(value)
    if not 0.0 <= number <= 1.0:
        raise ValueError("must be between 0 and 1")
    return number


def _voice(value: str) -> str:
    if value not in KNOWN_VOICES:
        raise ValueError(f"must be one of {', '.join(sorted(KNOWN_VOICES))}")
    return value


def _log_level(value: str) -> str:
    level = value.upper()
    if level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise ValueError("must be DEBUG, INFO, WARNING or ERROR")
    return level


def _ws_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in {"ws", "wss"} or not parts.netloc:
        raise ValueError("must be a ws:// or wss:// URL")
    return value


def _https_base(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in {"https", "http"} or not parts.netloc:
        raise ValueError("must be an https:// URL (http:// only for local testing)")
    return value.rstrip("/")


def _model_from_env(env: _Env) -> ModelEndpoint | None:
    """Pick the model endpoint: explicit URL, then Azure OpenAI, then OpenAI, else None (serve fails closed).

    URL shapes and auth headers: docs/protocols/realtime.md §1.1 (OpenAI: ``/v1/realtime?model=``,
    Bearer) and §1.2 (Azure GA: ``/openai/v1/realtime?model=<deployment>``, ``api-key`` header, no
    ``api-version`` and no ``OpenAI-Beta`` header).
    """
    explicit = env.get("REALTIME_URL", _ws_url, "")
    if explicit:
        key = env.raw("REALTIME_API_KEY")
        if key or urlsplit(explicit).query:
            _refuse_cleartext("REALTIME_URL", explicit, "the model credentials")
        headers = (("Authorization", f"Bearer {key}"),) if key else ()
        return ModelEndpoint(url=explicit, headers=headers, provider="explicit URL")

    azure_endpoint = env.get("AZURE_OPENAI_ENDPOINT", _https_base, "")
    if azure_endpoint:
        key = env.raw("AZURE_OPENAI_API_KEY")
        deployment = env.raw("AZURE_OPENAI_DEPLOYMENT")
        if key is None:
            raise ConfigError("AZURE_OPENAI_API_KEY must be set with AZURE_OPENAI_ENDPOINT")
        if deployment is None:
            raise ConfigError("AZURE_OPENAI_DEPLOYMENT must be set with AZURE_OPENAI_ENDPOINT")
        _refuse_cleartext("AZURE_OPENAI_ENDPOINT", azure_endpoint, "AZURE_OPENAI_API_KEY")
        parts = urlsplit(azure_endpoint)
        scheme = "ws" if parts.scheme == "http" else "wss"  # http:// only for local test peers
        url = f"{scheme}://{parts.netloc}/openai/v1/realtime?model={quote(deployment, safe='')}"
        return ModelEndpoint(url=url, headers=(("api-key", key),), provider="azure-openai")

    openai_key = env.raw("OPENAI_API_KEY")
    if openai_key:
        model = env.raw("OPENAI_REALTIME_MODEL") or AgentSettings.model
        url = f"wss://api.openai.com/v1/realtime?model={quote(model, safe='')}"
        return ModelEndpoint(
            url=url, headers=(("Authorization", f"Bearer {openai_key}"),), provider="openai"
        )
    return None


def _agent_from_env(env: _Env) -> AgentSettings:
    greeting = env.raw("AGENT_GREETING")
    return AgentSettings(
        instructions=env.get("AGENT_INSTRUCTIONS", str, AgentSettings.instructions),
        voice=env.get("AGENT_VOICE", _voice, AgentSettings.voice),
        greeting=(
            AgentSettings.greeting if greeting is None else (None if greeting == "-" else greeting)
        ),
        model=env.get(
            "AZURE_OPENAI_DEPLOYMENT",
            str,
            env.get("OPENAI_REALTIME_MODEL", str, AgentSettings.model),
        ),
        vad_threshold=env.get("VAD_THRESHOLD", _unit_float, AgentSettings.vad_threshold),
        vad_prefix_padding_ms=env.get(
            "VAD_PREFIX_PADDING_MS", _positive_int, AgentSettings.vad_prefix_padding_ms
        ),
        vad_silence_duration_ms=env.get(
            "VAD_SILENCE_DURATION_MS", _positive_int, AgentSettings.vad_silence_duration_ms
        ),
        transcription_model=env.get(
            "INPUT_TRANSCRIPTION_MODEL", str, AgentSettings.transcription_model
        ),
    )


def _limits_from_env(env: _Env) -> CallLimits:
    d = CallLimits()
    limits = CallLimits(
        max_duration_s=env.get("CALL_MAX_DURATION_S", _positive_float, d.max_duration_s),
        idle_timeout_s=env.get("CALL_IDLE_TIMEOUT_S", _positive_float, d.idle_timeout_s),
        media_timeout_s=env.get("MEDIA_TIMEOUT_S", _positive_float, d.media_timeout_s),
        model_connect_timeout_s=env.get(
            "MODEL_CONNECT_TIMEOUT_S", _positive_float, d.model_connect_timeout_s
        ),
        close_timeout_s=env.get("CLOSE_TIMEOUT_S", _positive_float, d.close_timeout_s),
        playout_lead_ms=env.get("PLAYOUT_LEAD_MS", _positive_int, d.playout_lead_ms),
        append_batch_ms=env.get("APPEND_BATCH_MS", _positive_int, d.append_batch_ms),
        frame_ms=env.get("OUTBOUND_FRAME_MS", _positive_int, d.frame_ms),
        model_reconnect_budget_s=env.get(
            "MODEL_RECONNECT_BUDGET_S", _non_negative_float, d.model_reconnect_budget_s
        ),
        model_ping_interval_s=env.get(
            "MODEL_PING_INTERVAL_S", _positive_float, d.model_ping_interval_s
        ),
        model_gap_audio_ms=env.get("MODEL_GAP_AUDIO_MS", _positive_int, d.model_gap_audio_ms),
        max_failed_responses=env.get("MAX_FAILED_RESPONSES", _positive_int, d.max_failed_responses),
    )
    if limits.append_batch_ms % ACS_FRAME_MS:
        raise ConfigError(f"APPEND_BATCH_MS must be a multiple of {ACS_FRAME_MS} (ACS frames)")
    if limits.frame_ms % ACS_FRAME_MS or limits.frame_ms > limits.playout_lead_ms:
        raise ConfigError(
            f"OUTBOUND_FRAME_MS must be a multiple of {ACS_FRAME_MS} and at most PLAYOUT_LEAD_MS"
        )
    return limits


def _acs_from_env(env: _Env) -> AcsSettings | None:
    names = ("ACS_CONNECTION_STRING", "PUBLIC_BASE_URL", "ACS_RESOURCE_ID")
    present = [name for name in names if env.raw(name) is not None]
    if not present:
        return None
    missing = [name for name in names if name not in present]
    if missing:
        raise ConfigError(f"{', '.join(missing)} must be set together with {', '.join(present)}")
    connection_string = env.get("ACS_CONNECTION_STRING", str, "")
    _check_connection_string(connection_string)
    public_base_url = env.get("PUBLIC_BASE_URL", _https_base, "")
    _refuse_cleartext("PUBLIC_BASE_URL", public_base_url, "ACS's JWTs and the per-call tokens")
    jwks_url = env.get("ACS_JWKS_URL", str, DEFAULT_ACS_JWKS_URL)
    # Not a credential, but the keys that every JWT check trusts: over http:// anyone on the path
    # could swap them and forge ACS's tokens.
    _refuse_cleartext("ACS_JWKS_URL", jwks_url, "the keys that authenticate ACS's JWTs")
    return AcsSettings(
        connection_string=connection_string,
        public_base_url=public_base_url,
        resource_id=env.get("ACS_RESOURCE_ID", _resource_id, ""),
        jwks_url=jwks_url,
        jwt_issuer=env.get("ACS_JWT_ISSUER", str, DEFAULT_ACS_JWT_ISSUER),
    )


_GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


def _resource_id(value: str) -> str:
    """The JWT audience is the resource's *immutable id*, a GUID (docs/protocols/acs.md §5)."""
    if value.lower().startswith("/subscriptions/") or "/providers/" in value.lower():
        raise ValueError(
            "that is the ARM resource path; use the resource's Immutable Resource ID, a GUID "
            "(Azure portal: your Communication Services resource > Properties)"
        )
    if not _GUID.match(value):
        raise ValueError(
            "must be the resource's Immutable Resource ID, a GUID like "
            "6b0c6a0e-0000-4000-8000-000000000000 (Azure portal: resource > Properties)"
        )
    return value


def _check_connection_string(value: str) -> None:
    """What azure-communication's parser needs: ``endpoint=https://…;accesskey=<base64>``."""
    shape = "ACS_CONNECTION_STRING must look like 'endpoint=https://…;accesskey=…'"
    parts: dict[str, str] = {}
    for part in value.split(";"):
        key, sep, item = part.partition("=")
        if sep:
            parts[key.strip().lower()] = item.strip()
    endpoint, key = parts.get("endpoint", ""), parts.get("accesskey", "")
    if not endpoint or not key:
        raise ConfigError(shape)
    if urlsplit(endpoint).scheme not in {"https", "http"} or not urlsplit(endpoint).netloc:
        raise ConfigError(f"{shape}: the endpoint is not an https:// URL")
    try:
        base64.b64decode(key, validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(
            "ACS_CONNECTION_STRING: the accesskey is not base64 (copy the whole connection "
            "string from the portal: Keys > Connection string)"
        ) from None


def _observability_from_env(env: _Env) -> Observability:
    d = Observability()
    return Observability(
        log_format=env.get("LOG_FORMAT", _log_format, d.log_format),
        metrics_enabled=env.get("METRICS_ENABLED", _bool, d.metrics_enabled),
        recordings_dir=env.get("RECORDINGS_DIR", str, "") or None,
        recordings_retention_days=env.get(
            "RECORDINGS_RETENTION_DAYS", _non_negative_float, d.recordings_retention_days
        ),
    )


#: E.164: a plus and up to 15 digits, the first not zero.
_E164 = re.compile(r"\+[1-9][0-9]{6,14}")
#: ACS user ids are raw ids of the form ``8:acs:<resource>_<user>`` (``8:spool:``, and
#: ``8:dod-acs:``/``8:gcch-acs:`` in government clouds); the transfer sends them as
#: ``communicationUser``, so other ``8:`` ids (Teams ``8:orgid:``, …) are refused.
_ACS_USER = re.compile(r"8:(acs|spool|dod-acs|gcch-acs):[A-Za-z0-9_.:-]+")
_MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
_DTMF_TONES = frozenset("0123456789*#ABCD")


def _transfer_target(value: str) -> str:
    if _E164.fullmatch(value) or _ACS_USER.fullmatch(value):
        return value
    raise ValueError("must be an E.164 phone number (+14255550100) or an ACS user id (8:acs:...)")


def _module_name(value: str) -> str:
    if not _MODULE.fullmatch(value):
        raise ValueError("must be an importable module name like mypackage.tools")
    return value


def _bool(value: str) -> bool:
    lowered = value.lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError("must be true or false")


def _dtmf_terminator(value: str) -> str:
    if value.lower() == "none":
        return ""
    if len(value) != 1 or value not in _DTMF_TONES:
        raise ValueError("must be one keypad key (0-9 * # A-D) or 'none'")
    return value


def _actions_from_env(env: _Env) -> ActionSettings:
    d = ActionSettings()
    return ActionSettings(
        tools_module=env.get("AGENT_TOOLS", _module_name, "") or None,
        transfer_target=env.get("TRANSFER_TARGET", _transfer_target, "") or None,
        tool_timeout_s=env.get("TOOL_TIMEOUT_S", _positive_float, d.tool_timeout_s),
        max_concurrent_tools=env.get("TOOL_MAX_CONCURRENT", _positive_int, d.max_concurrent_tools),
        tool_time_budget_s=env.get("TOOL_TIME_BUDGET_S", _positive_float, d.tool_time_budget_s),
        goodbye_max_wait_s=env.get("GOODBYE_MAX_WAIT_S", _positive_float, d.goodbye_max_wait_s),
        transfer_timeout_s=env.get("TRANSFER_TIMEOUT_S", _positive_float, d.transfer_timeout_s),
        dtmf_enabled=env.get("DTMF_ENABLED", _bool, d.dtmf_enabled),
        dtmf_inter_digit_timeout_ms=env.get(
            "DTMF_INTER_DIGIT_TIMEOUT_MS", _positive_int, d.dtmf_inter_digit_timeout_ms
        ),
        dtmf_terminator=env.get("DTMF_TERMINATOR", _dtmf_terminator, d.dtmf_terminator),
        dtmf_max_digits=env.get("DTMF_MAX_DIGITS", _positive_int, d.dtmf_max_digits),
    )


def _switch(value: str) -> bool:
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ValueError("must be 1 or 0")


def _softphone_from_env(env: _Env) -> SoftphoneSettings | None:
    enabled = env.get("SOFTPHONE", _switch, False)
    token = env.raw("SOFTPHONE_TOKEN")
    if not enabled:
        if token is not None:
            raise ConfigError(
                "SOFTPHONE_TOKEN is set but SOFTPHONE is not 1: set SOFTPHONE=1 or unset it"
            )
        return None
    if token is None:
        # A generated token could only be shown by logging it; logs are not secret.
        raise ConfigError(
            "SOFTPHONE=1 needs SOFTPHONE_TOKEN, the secret in the page's URL "
            "(e.g. python -c 'import secrets; print(secrets.token_urlsafe(24))')"
        )
    if len(token) < SOFTPHONE_MIN_TOKEN_CHARS or re.fullmatch(r"[A-Za-z0-9_-]+", token) is None:
        raise ConfigError(
            f"SOFTPHONE_TOKEN must be at least {SOFTPHONE_MIN_TOKEN_CHARS} URL-safe characters "
            "(e.g. python -c 'import secrets; print(secrets.token_urlsafe(24))')"
        )
    return SoftphoneSettings(token=token)


def _redis_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in {"redis", "rediss", "unix"} or not (parts.netloc or parts.path):
        raise ValueError("must be a redis://, rediss:// or unix:// URL")
    return value


def _cluster_from_env(env: _Env) -> ClusterSettings:
    d = ClusterSettings()
    return ClusterSettings(
        redis_url=env.get("REDIS_URL", _redis_url, "") or None,
        instance_id=env.get("INSTANCE_ID", str, ""),
        lease_s=env.get("CALL_LEASE_S", _positive_float, d.lease_s),
        max_calls=env.get("CLUSTER_MAX_CONCURRENT_CALLS", _positive_int, 0) or None,
    )
