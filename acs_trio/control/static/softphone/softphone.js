// The softphone page (docs/softphone.md).  The page plays ACS: its media socket speaks the ACS
// media protocol (AudioMetadata, then 20 ms AudioData frames of 24 kHz PCM16 mono; it plays
// the AudioData it receives and obeys StopAudio by flushing its playback queue at once).
// A second socket, the side channel, brings the call's transcript and latency events.
"use strict";

const CALL_RATE = 24000;
const FRAME_BYTES = 960;
const VOICE_RMS = 0.01; // -40 dBFS: the page's own speech detector, for its latency figure
const SPEECH_END_HANGOVER_S = 0.3;

const $ = (id) => document.getElementById(id);

const state = {
  phase: "idle",
  events: null,
  media: null,
  context: null,
  stream: null,
  capture: null,
  playback: null,
  callId: "",
  counters: {
    framesSent: 0,
    framesReceived: 0,
    framesPlayed: 0,
    stopAudio: 0,
    flushes: 0,
    events: 0,
    badMessages: 0,
  },
  flushMs: [], // StopAudio received -> playback queue empty, ms (page)
  pageTtfaMs: [], // page speech end -> first agent audio played, ms (page)
  serverTtfaMs: [],
  greetingMs: null,
  bargeInMs: [],
  speaking: false,
  lastVoiced: null,
  pendingSpeechEnd: null,
  level: 0,
  stopSent: new Map(),
  nextFlushId: 1,
  dirty: true,
};

function setPhase(phase, detail) {
  state.phase = phase;
  document.body.dataset.state = phase;
  $("state").textContent = detail ? `${phase}: ${detail}` : phase;
  const button = $("call");
  button.textContent = phase === "in-call" || phase === "connecting" ? "Hang up" : "Call";
  button.classList.toggle("hangup", phase === "in-call" || phase === "connecting");
}

function wsUrl(path) {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}${path}`;
}

function b64FromPcm(int16) {
  const bytes = new Uint8Array(int16.length * 2);
  const view = new DataView(bytes.buffer);
  for (let i = 0; i < int16.length; i++) view.setInt16(i * 2, int16[i], true);
  let binary = "";
  for (let i = 0; i < bytes.length; i++) binary += String.fromCharCode(bytes[i]);
  return btoa(binary);
}

function pcmFromB64(data) {
  const binary = atob(data);
  const samples = new Int16Array(binary.length >> 1);
  for (let i = 0; i < samples.length; i++) {
    const lo = binary.charCodeAt(2 * i);
    const hi = binary.charCodeAt(2 * i + 1);
    samples[i] = (hi << 24) >> 16 | lo;
  }
  return samples;
}

async function startCall() {
  setPhase("connecting");
  clearCall();
  try {
    state.stream = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true, autoGainControl: true },
    });
    state.context = new AudioContext({ latencyHint: "interactive" });
    await state.context.audioWorklet.addModule("worklet.js");
    const source = state.context.createMediaStreamSource(state.stream);
    state.capture = new AudioWorkletNode(state.context, "softphone-capture", {
      numberOfInputs: 1,
      numberOfOutputs: 0,
    });
    state.playback = new AudioWorkletNode(state.context, "softphone-playback", {
      numberOfInputs: 0,
      numberOfOutputs: 1,
      outputChannelCount: [1],
      processorOptions: { prebufferFrames: 2, maxQueuedFrames: 500 },
    });
    source.connect(state.capture);
    state.playback.connect(state.context.destination);
    state.playback.port.onmessage = (event) => onPlayback(event.data);
    $("context-rate").textContent = String(state.context.sampleRate);
    await state.context.resume();
  } catch (error) {
    endCall(`no microphone: ${error}`);
    return;
  }
  const events = new WebSocket(wsUrl(location.pathname.replace(/\/$/, "") + "/events"));
  state.events = events;
  events.onmessage = (message) => onEvent(JSON.parse(message.data));
  events.onclose = () => {
    if (state.phase !== "ended") endCall("side channel closed");
  };
}

function openMedia(path) {
  const media = new WebSocket(wsUrl(path));
  state.media = media;
  media.onopen = () => {
    // docs/protocols/acs.md §4.2: AudioMetadata first, then 20 ms AudioData frames.
    media.send(
      JSON.stringify({
        kind: "AudioMetadata",
        audioMetadata: {
          subscriptionId: crypto.randomUUID(),
          encoding: "PCM",
          sampleRate: CALL_RATE,
          channels: 1,
          length: FRAME_BYTES,
        },
      }),
    );
    state.capture.port.onmessage = (event) => onCaptured(event.data);
    setPhase("in-call", state.callId);
  };
  media.onmessage = (message) => onMedia(message.data);
  media.onclose = (event) => {
    state.capture.port.onmessage = null;
    if (state.phase === "in-call" || state.phase === "connecting") {
      setPhase("ending", `media closed (${event.code})`);
    }
  };
}

function onCaptured(frame) {
  const pcm = new Int16Array(frame.pcm);
  state.level = frame.rms;
  trackSpeech(frame.rms >= VOICE_RMS, frame.time);
  if (state.media && state.media.readyState === WebSocket.OPEN) {
    state.media.send(
      JSON.stringify({
        kind: "AudioData",
        audioData: {
          timestamp: new Date().toISOString(),
          participantRawID: `8:softphone:${state.callId}`,
          data: b64FromPcm(pcm),
          silent: frame.rms < 1 / 32768,
        },
      }),
    );
    state.counters.framesSent++;
  }
  state.dirty = true;
}

function trackSpeech(voiced, time) {
  if (voiced) {
    state.speaking = true;
    state.lastVoiced = time;
  } else if (state.speaking && time - state.lastVoiced >= SPEECH_END_HANGOVER_S) {
    state.speaking = false;
    state.pendingSpeechEnd = state.lastVoiced;
  }
}

function onMedia(raw) {
  let message;
  try {
    message = JSON.parse(raw);
  } catch (error) {
    state.counters.badMessages++;
    return;
  }
  // Keys as ACS reads them: case-insensitive (docs/protocols/acs.md §4.4).
  const kind = String(message.Kind || message.kind || "").toLowerCase();
  if (kind === "audiodata") {
    const body = message.AudioData || message.audioData || {};
    const data = body.Data || body.data;
    if (typeof data !== "string") {
      state.counters.badMessages++;
      return;
    }
    const pcm = pcmFromB64(data);
    state.playback.port.postMessage({ type: "frame", pcm: pcm.buffer }, [pcm.buffer]);
    state.counters.framesReceived++;
  } else if (kind === "stopaudio") {
    const id = state.nextFlushId++;
    state.stopSent.set(id, performance.now());
    state.playback.port.postMessage({ type: "flush", id });
    state.counters.stopAudio++;
  } else {
    state.counters.badMessages++;
  }
  state.dirty = true;
}

function onPlayback(msg) {
  state.counters.framesPlayed = msg.stats.framesPlayed;
  if (msg.type === "flushed") {
    const sent = state.stopSent.get(msg.id);
    state.stopSent.delete(msg.id);
    state.flushMs.push(performance.now() - sent);
    state.counters.flushes = msg.stats.flushes;
  } else if (msg.type === "playing" && state.pendingSpeechEnd !== null) {
    state.pageTtfaMs.push((msg.time - state.pendingSpeechEnd) * 1000);
    state.pendingSpeechEnd = null;
  }
  state.dirty = true;
}

function onEvent(event) {
  state.counters.events++;
  switch (event.type) {
    case "call":
      state.callId = event.call_id;
      openMedia(event.media_path);
      break;
    case "transcript":
      addTranscript(event.role, event.text, event.item_id);
      break;
    case "speech_started":
      addTranscript("caller", "…", "");
      break;
    case "speech_stopped":
      break;
    case "latency":
      if (event.metric === "ttfa") state.serverTtfaMs.push(event.ms);
      else if (event.metric === "greeting_ttfa") state.greetingMs = event.ms;
      else if (event.metric === "barge_in") state.bargeInMs.push(event.ms);
      break;
    case "call_ended":
      $("end-reason").textContent = event.reason;
      endCall(event.reason);
      break;
    default:
      break;
  }
  state.dirty = true;
}

// The caller's turn appears as "…" when speech starts and is replaced by its transcript when
// the model's transcription arrives (the local test peer does not transcribe).
function addTranscript(role, text, itemId) {
  const list = $("transcript");
  if (role === "caller" && itemId) {
    const pending = list.querySelector('li.caller[data-pending="1"]');
    if (pending) {
      pending.querySelector(".text").textContent = text;
      pending.dataset.pending = "0";
      pending.dataset.item = itemId;
      return;
    }
  }
  const item = document.createElement("li");
  item.className = role;
  item.dataset.role = role;
  item.dataset.item = itemId;
  item.dataset.pending = role === "caller" && !itemId ? "1" : "0";
  const who = document.createElement("span");
  who.className = "who";
  who.textContent = role === "agent" ? "Agent" : "You";
  const body = document.createElement("span");
  body.className = "text";
  body.textContent = text;
  item.append(who, body);
  list.append(item);
  list.scrollTop = list.scrollHeight;
}

function hangUp() {
  setPhase("ending", "hanging up");
  // A hang-up is the media socket closing, as when ACS ends a call.
  if (state.media && state.media.readyState <= WebSocket.OPEN) state.media.close(1000, "hang up");
  else endCall("hung up");
}

function endCall(reason) {
  setPhase("ended", reason);
  if (state.media && state.media.readyState <= WebSocket.OPEN) state.media.close(1000, "call ended");
  if (state.events && state.events.readyState <= WebSocket.OPEN) state.events.close(1000, "call ended");
  if (state.stream) state.stream.getTracks().forEach((track) => track.stop());
  if (state.context) state.context.close();
  state.media = state.events = state.stream = state.context = null;
  state.level = 0;
  state.dirty = true;
}

function clearCall() {
  for (const key of Object.keys(state.counters)) state.counters[key] = 0;
  state.flushMs = [];
  state.pageTtfaMs = [];
  state.serverTtfaMs = [];
  state.bargeInMs = [];
  state.greetingMs = null;
  state.pendingSpeechEnd = null;
  state.speaking = false;
  $("transcript").replaceChildren();
  $("end-reason").textContent = "";
}

const fmt = (values) => (values.length ? values.map((v) => v.toFixed(0)).join(", ") : "–");

function render() {
  if (!state.dirty) return;
  state.dirty = false;
  const c = state.counters;
  $("frames-sent").textContent = c.framesSent;
  $("frames-received").textContent = c.framesReceived;
  $("frames-played").textContent = c.framesPlayed;
  $("stop-audio").textContent = c.stopAudio;
  $("flushes").textContent = c.flushes;
  $("bad-messages").textContent = c.badMessages;
  $("events").textContent = c.events;
  const db = state.level > 0 ? 20 * Math.log10(state.level) : -Infinity;
  $("mic-level").value = Math.max(0, Math.min(1, (db + 60) / 60));
  $("mic-db").textContent = db > -90 ? `${db.toFixed(0)} dBFS` : "silence";
  $("greeting-ttfa").textContent = state.greetingMs === null ? "–" : state.greetingMs.toFixed(0);
  $("server-ttfa").textContent = fmt(state.serverTtfaMs);
  $("page-ttfa").textContent = fmt(state.pageTtfaMs);
  $("barge-in").textContent = fmt(state.bargeInMs);
  $("flush-ms").textContent = fmt(state.flushMs);
}

$("call").addEventListener("click", () => {
  if (state.phase === "in-call" || state.phase === "connecting") hangUp();
  else if (state.phase !== "ending") startCall();
});
window.addEventListener("pagehide", () => endCall("page closed"));
setInterval(render, 100);
setPhase("idle");
// For tests and the curious: the numbers behind the page.
window.softphone = state;
