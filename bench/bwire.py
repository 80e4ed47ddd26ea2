"""Markers hidden in the audio, the per-call turn script, and the model events the fake peer sends.

Why markers: the load generator measures how long the *bridge* holds a message, so it must know,
for a message leaving the server, which message entered it and when.  The server forwards PCM
untouched at 24 kHz (no resampling), so the first 24 bytes of a 20 ms frame survive the trip:

* caller frame (ACS → server → model append): ``<IIIqI`` = magic, call id, frame seq, send time
  (``time.monotonic_ns``, system-wide on Linux, so it would also work across processes), pad;
* every 20 ms frame of each model delta (model → server → ACS AudioData): ``<IIIIq`` = magic,
  call id, response number, frame number within the response (0 = the response's first), the
  delta's send time.  Outbound AudioData carry whole 20 ms frames (``OUTBOUND_FRAME_MS`` is a
  multiple of 20) from the response's start, so every marker sits at a multiple of 1,280 base64
  characters of an outbound message.

24 bytes are exactly 32 base64 characters, so a marker can be read from the first 32 characters
of a frame's base64 without decoding the rest, and a frame's base64 is marker + a pre-encoded tail.
"""

from __future__ import annotations

import binascii
import struct
from dataclasses import dataclass, field

FRAME_BYTES = 960  # 20 ms PCM16 mono at 24 kHz (docs/protocols/acs.md §4.3)
FRAME_B64 = 1280
MARK_BYTES = 24
MARK_B64 = 32
CALLER_MAGIC = 0xACCA11E5
DELTA_MAGIC = 0xDE17A5ED
_CALLER = struct.Struct("<IIIqI")
_DELTA = struct.Struct("<IIIIq")


def caller_marker_b64(call_id: int, seq: int, t_ns: int) -> str:
    return binascii.b2a_base64(
        _CALLER.pack(CALLER_MAGIC, call_id, seq, t_ns, 0), newline=False
    ).decode()


def delta_marker_b64(call_id: int, resp: int, frame: int, t_ns: int) -> str:
    return binascii.b2a_base64(
        _DELTA.pack(DELTA_MAGIC, call_id, resp, frame, t_ns), newline=False
    ).decode()


def read_caller_marker(b64: bytes | str) -> tuple[int, int, int] | None:
    """(call id, seq, send ns) from the first 32 base64 chars of a caller frame, or None."""
    try:
        magic, call_id, seq, t_ns, _ = _CALLER.unpack(binascii.a2b_base64(b64[:MARK_B64]))
    except (binascii.Error, struct.error):
        return None
    return (call_id, seq, t_ns) if magic == CALLER_MAGIC else None


def read_delta_marker(b64: bytes | str) -> tuple[int, int, int, int] | None:
    """(call id, response, delta, send ns) from a frame's first 32 base64 chars, or None."""
    try:
        magic, call_id, resp, delta, t_ns = _DELTA.unpack(binascii.a2b_base64(b64[:MARK_B64]))
    except (binascii.Error, struct.error):
        return None
    return (call_id, resp, delta, t_ns) if magic == DELTA_MAGIC else None


def noise_tail_b64(nbytes: int, seed: int) -> str:
    """Base64 of ``nbytes`` of deterministic low-level noise (a line is never digital silence)."""
    import random

    rng = random.Random(seed)
    pcm = struct.pack(f"<{nbytes // 2}h", *(rng.randint(-800, 800) for _ in range(nbytes // 2)))
    return binascii.b2a_base64(pcm, newline=False).decode()


# --- the turn script ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Action:
    seq: int  # the model acts when it has received caller frame ``seq``
    kind: str  # "start" (speech_started) or "stop" (speech_stopped + answer)
    turn: int
    barge: bool = False  # a "start" that interrupts an answer still playing


@dataclass
class Script:
    """What happens in one call, in caller-frame numbers (20 ms each).

    The caller speaks ``speech`` frames, is silent ``silence`` frames (the model's VAD hangover),
    then the model answers ``answer`` frames of audio.  The next turn starts ``gap`` frames after
    the answer ends, except every ``barge_every``-th answer, into which the caller barges
    ``barge_after`` frames after it started.  The fake model knows the script (it is not a VAD).
    """

    end_seq: int
    actions: list[Action] = field(default_factory=list)
    speech: list[tuple[int, int]] = field(default_factory=list)
    answer_frames: int = 100
    greeting_frames: int = 50

    def speaking(self, seq: int) -> bool:
        return any(a <= seq < b for a, b in self.speech)


def build_script(
    call_id: int,
    total_frames: int,
    *,
    greeting: int = 50,
    speech: int = 75,
    silence: int = 25,
    answer: int = 100,
    gap: int = 25,
    barge_every: int = 3,
    barge_after: int = 50,
) -> Script:
    script = Script(end_seq=total_frames, answer_frames=answer, greeting_frames=greeting)
    start = greeting + gap
    turn = 1
    barge_next = False
    while True:
        stop = start + speech + silence
        if stop + answer + gap > total_frames:
            break
        script.actions.append(Action(start, "start", turn, barge=barge_next))
        script.actions.append(Action(stop, "stop", turn))
        script.speech.append((start, start + speech))
        barge_next = barge_every > 0 and (call_id + turn) % barge_every == barge_every - 1
        start = stop + barge_after if barge_next else stop + answer + gap
        turn += 1
        if barge_next and start + speech + silence + answer + gap > total_frames:
            break  # no turn left to barge with: the answer plays out
    return script
