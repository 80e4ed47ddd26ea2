// AudioWorklet processors of the softphone (docs/softphone.md): capture and playback.
// They run on the audio rendering thread at the AudioContext's rate (usually 48 kHz) and
// convert to and from the call's 24 kHz PCM16 mono.
"use strict";

const CALL_RATE = 24000;
const FRAME_SAMPLES = CALL_RATE / 50; // 20 ms at 24 kHz = 480 samples = 960 bytes

// Streaming resampler: a windowed-sinc low-pass (when the output rate is lower, against
// aliasing) followed by linear interpolation.  State is kept across blocks.
class Resampler {
  constructor(inRate, outRate) {
    this.step = inRate / outRate;
    this.pos = 0; // position of the next output sample, in input samples, relative to `prev`
    this.prev = 0;
    this.taps = null;
    if (inRate > outRate) {
      const n = 31;
      const cutoff = (0.45 * outRate) / inRate; // normalised to the input rate
      const taps = new Float32Array(n);
      let sum = 0;
      for (let i = 0; i < n; i++) {
        const m = i - (n - 1) / 2;
        const sinc = m === 0 ? 2 * cutoff : Math.sin(2 * Math.PI * cutoff * m) / (Math.PI * m);
        const window = 0.54 - 0.46 * Math.cos((2 * Math.PI * i) / (n - 1));
        taps[i] = sinc * window;
        sum += taps[i];
      }
      for (let i = 0; i < n; i++) taps[i] /= sum;
      this.taps = taps;
      this.history = new Float32Array(n);
      this.hpos = 0;
    }
  }

  filter(x) {
    const taps = this.taps;
    const n = taps.length;
    this.history[this.hpos] = x;
    let acc = 0;
    let j = this.hpos;
    for (let i = 0; i < n; i++) {
      acc += taps[i] * this.history[j];
      j = j === 0 ? n - 1 : j - 1;
    }
    this.hpos = (this.hpos + 1) % n;
    return acc;
  }

  // Feed input samples; calls emit(sample) for each output sample.
  process(input, emit) {
    for (let i = 0; i < input.length; i++) {
      const x = this.taps ? this.filter(input[i]) : input[i];
      // Output samples falling between prev (at 0) and x (at 1).
      while (this.pos <= 1) {
        emit(this.prev + (x - this.prev) * this.pos);
        this.pos += this.step;
      }
      this.pos -= 1;
      this.prev = x;
    }
  }
}

// Microphone -> 20 ms frames of 24 kHz PCM16, each with its level and the audio clock time.
class CaptureProcessor extends AudioWorkletProcessor {
  constructor() {
    super();
    this.resampler = new Resampler(sampleRate, CALL_RATE);
    this.frame = new Int16Array(FRAME_SAMPLES);
    this.fill = 0;
    this.sumSquares = 0;
  }

  process(inputs) {
    const channel = inputs[0] && inputs[0][0];
    if (!channel) return true;
    this.resampler.process(channel, (s) => {
      const clamped = Math.max(-1, Math.min(1, s));
      this.frame[this.fill++] = clamped < 0 ? clamped * 0x8000 : clamped * 0x7fff;
      this.sumSquares += clamped * clamped;
      if (this.fill === FRAME_SAMPLES) {
        const rms = Math.sqrt(this.sumSquares / FRAME_SAMPLES);
        const pcm = this.frame;
        this.port.postMessage({ pcm: pcm.buffer, rms, time: currentTime }, [pcm.buffer]);
        this.frame = new Int16Array(FRAME_SAMPLES);
        this.fill = 0;
        this.sumSquares = 0;
      }
    });
    return true;
  }
}

// 24 kHz PCM16 frames from the server -> speakers, through a small jitter buffer.
// Playback starts once `prebufferFrames` frames are queued, or once fewer have waited as long
// (the end of a response), and again after an underrun;
// {type: "flush"} (StopAudio) empties the queue at once.
class PlaybackProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const opts = (options && options.processorOptions) || {};
    // The queue counts samples at the context rate: a 20 ms frame is FRAME_SAMPLES * ratio.
    const frameAtContextRate = FRAME_SAMPLES * (sampleRate / CALL_RATE);
    this.prebuffer = (opts.prebufferFrames || 2) * frameAtContextRate;
    this.maxQueued = (opts.maxQueuedFrames || 500) * frameAtContextRate; // 10 s: bounded memory
    this.chunks = []; // Float32Array at the context rate
    this.offset = 0; // read position in chunks[0]
    this.queued = 0; // samples at the context rate
    this.playing = false;
    this.waitingSince = null; // audio clock time the queued, not yet playing audio arrived
    this.resampler = new Resampler(CALL_RATE, sampleRate);
    this.ratio = sampleRate / CALL_RATE;
    this.stats = { framesIn: 0, framesPlayed: 0, underruns: 0, flushes: 0, dropped: 0 };
    this.playedSamples = 0;
    this.port.onmessage = (event) => this.onMessage(event.data);
  }

  onMessage(msg) {
    if (msg.type === "frame") {
      const int16 = new Int16Array(msg.pcm);
      const floats = new Float32Array(int16.length);
      for (let i = 0; i < int16.length; i++) floats[i] = int16[i] / 0x8000;
      const out = [];
      this.resampler.process(floats, (s) => out.push(s));
      this.chunks.push(Float32Array.from(out));
      this.queued += out.length;
      if (!this.playing && this.waitingSince === null) this.waitingSince = currentTime;
      this.stats.framesIn++;
      while (this.queued > this.maxQueued && this.chunks.length > 1) {
        const dropped = this.chunks.shift();
        this.queued -= dropped.length - this.offset;
        this.offset = 0;
        this.stats.dropped++;
      }
    } else if (msg.type === "flush") {
      const droppedSamples = this.queued;
      this.chunks = [];
      this.offset = 0;
      this.queued = 0;
      this.playing = false;
      this.waitingSince = null;
      this.stats.flushes++;
      this.port.postMessage({
        type: "flushed",
        id: msg.id,
        droppedMs: (droppedSamples / sampleRate) * 1000,
        time: currentTime,
        stats: this.stats,
      });
    }
  }

  process(inputs, outputs) {
    const out = outputs[0][0];
    // Start at the prebuffer, or once audio short of it has waited as long (a response's end).
    const waited =
      this.waitingSince !== null && currentTime - this.waitingSince >= this.prebuffer / sampleRate;
    if (!this.playing && this.queued > 0 && (this.queued >= this.prebuffer || waited)) {
      this.playing = true;
      this.waitingSince = null;
      this.port.postMessage({ type: "playing", time: currentTime, stats: this.stats });
    }
    let written = 0;
    if (this.playing) {
      while (written < out.length && this.chunks.length) {
        const chunk = this.chunks[0];
        const n = Math.min(out.length - written, chunk.length - this.offset);
        out.set(chunk.subarray(this.offset, this.offset + n), written);
        written += n;
        this.offset += n;
        this.queued -= n;
        if (this.offset === chunk.length) {
          this.chunks.shift();
          this.offset = 0;
        }
      }
      this.playedSamples += written;
      const frameAtContextRate = FRAME_SAMPLES * this.ratio;
      while (this.playedSamples >= frameAtContextRate) {
        this.playedSamples -= frameAtContextRate;
        this.stats.framesPlayed++;
        if (this.stats.framesPlayed % 5 === 0) {
          this.port.postMessage({ type: "progress", time: currentTime, stats: this.stats });
        }
      }
      if (written < out.length) {
        this.playing = false; // ran dry: wait for the prebuffer again
        this.stats.underruns++;
        this.port.postMessage({ type: "idle", time: currentTime, stats: this.stats });
      }
    }
    out.fill(0, written);
    for (let i = 1; i < outputs[0].length; i++) outputs[0][i].set(out);
    return true;
  }
}

registerProcessor("softphone-capture", CaptureProcessor);
registerProcessor("softphone-playback", PlaybackProcessor);
