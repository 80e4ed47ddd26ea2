"""Caller audio on its way to the model: format, silence, resampling, batching.  Pure and sync.

ACS sends 20 ms frames (docs/protocols/acs.md §4.3); the model wants PCM16 at 24 kHz
(docs/protocols/realtime.md §4) and each message costs the server CPU regardless of its size
(docs/performance.md, "Earlier measurements"), so frames are batched into one ``input_audio_buffer.append`` per
``append_batch_ms``.
"""

from __future__ import annotations

from ..errors import ProtocolError
from ..wire.acs_media import SUPPORTED_SAMPLE_RATES, AudioData, AudioMetadata
from ..wire.realtime import MODEL_SAMPLE_RATE, input_audio_append
from .resample import Resampler

__all__ = ["CallerAudio"]


class CallerAudio:
    """Turns ACS AudioData frames into ``input_audio_buffer.append`` messages."""

    def __init__(self, append_batch_ms: int) -> None:
        self.sample_rate = MODEL_SAMPLE_RATE  # until AudioMetadata says otherwise
        self._resampler: Resampler | None = None
        self._silent_frame = bytes(MODEL_SAMPLE_RATE // 50 * 2)
        self._batch: list[bytes] = []
        self._batch_bytes = 0
        self._batch_target = MODEL_SAMPLE_RATE * 2 * append_batch_ms // 1000

    def configure(self, meta: AudioMetadata) -> None:
        """Apply AudioMetadata.

        Raises:
            ProtocolError: a format the bridge cannot carry (not mono PCM at 16 or 24 kHz).
        """
        if (
            meta.encoding.upper() != "PCM"
            or meta.channels != 1
            or meta.sample_rate not in SUPPORTED_SAMPLE_RATES
        ):
            raise ProtocolError(f"unsupported audio format {meta}")
        self.sample_rate = meta.sample_rate
        self._silent_frame = bytes(meta.sample_rate // 50 * 2)
        same_rate = meta.sample_rate == MODEL_SAMPLE_RATE
        self._resampler = None if same_rate else Resampler(meta.sample_rate, MODEL_SAMPLE_RATE)

    def push(self, audio: AudioData) -> str | None:
        """Add one frame; returns an append message when a batch is complete.

        Frames flagged ``silent`` are forwarded as the audio they are (zeros when ACS sent no
        data), so the model's server VAD keeps a true timeline (docs/protocols/acs.md §4.2).
        """
        pcm = audio.pcm or (self._silent_frame if audio.silent else b"")
        if self._resampler is not None:
            pcm = self._resampler.process(pcm)
        self._batch.append(pcm)
        self._batch_bytes += len(pcm)
        if self._batch_bytes < self._batch_target:
            return None
        message = input_audio_append(b"".join(self._batch))
        self._batch.clear()
        self._batch_bytes = 0
        return message
