#!/usr/bin/env bash
# Regenerate acs_trio/testing/assets/{greeting,caller}.wav (24 kHz mono 16-bit PCM WAV).
#
# For the record only: the WAVs are committed and CI never runs this script.
# Needs espeak-ng and sox (Debian 12: `apt-get install -y espeak-ng sox`; made with espeak-ng 1.51,
# sox 14.4.2). espeak-ng writes 22050 Hz; sox resamples to 24000 Hz (the only PCM rate the Realtime
# GA API allows, docs/protocols/realtime.md §4) and normalises the peak to -3 dBFS; -R makes sox's
# dither repeatable, so a rerun gives the same bytes.
set -euo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
out="$here/acs_trio/testing/assets"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

fmt=(-r 24000 -c 1 -b 16 -e signed-integer)

speak() {  # speak <text> <out.wav>: espeak-ng en-us, 200 wpm, then 24 kHz mono s16
    espeak-ng -v en-us -s 200 -w "$tmp/raw.wav" "$1"
    sox -R "$tmp/raw.wav" "${fmt[@]}" "$2" silence 1 0.01 0.1% reverse silence 1 0.01 0.1% reverse \
        gain -n -3
}

# The local peer's greeting: one short sentence, no leading/trailing silence.
speak "Hi, test agent here. How can I help?" "$tmp/greeting.wav"
sox -R "$tmp/greeting.wav" "${fmt[@]}" "$out/greeting.wav"

# The caller sample: 0.3 s silence, utterance 1, 1.5 s silence, utterance 2, 0.7 s silence.
speak "Hi, I would like to check my order." "$tmp/u1.wav"
speak "Actually, wait, one more thing." "$tmp/u2.wav"
sox -R -n "${fmt[@]}" "$tmp/lead.wav" trim 0 0.3
sox -R -n "${fmt[@]}" "$tmp/gap.wav" trim 0 1.5
sox -R -n "${fmt[@]}" "$tmp/tail.wav" trim 0 0.7
sox -R "$tmp/lead.wav" "$tmp/u1.wav" "$tmp/gap.wav" "$tmp/u2.wav" "$tmp/tail.wav" \
    "${fmt[@]}" "$out/caller.wav"

for f in greeting caller; do
    soxi "$out/$f.wav" | grep -E 'Sample Rate|Channels|Precision|Duration'
    ls -l "$out/$f.wav"
done
