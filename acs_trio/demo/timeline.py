"""A picture of one call (``timeline.png``) drawn with numpy alone, encoded as PNG with zlib.

Why no plotting library: matplotlib is not a dependency of the server, and the picture is simple —
energy envelopes of two audio lanes, a time axis, a few vertical marks and labels.  Text uses a
built-in 5x7 bitmap font (digits, upper-case letters, a few symbols; lower case is drawn upper
case, anything else as ``?``), scaled by whole pixels.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from ..testing.acs.report import CallReport, TurnReport

__all__ = [
    "FONT",
    "Lane",
    "Mark",
    "Span",
    "call_picture",
    "draw_text",
    "encode_png",
    "render_timeline",
    "text_width",
    "write_png",
]

Color = tuple[int, int, int]
Image = np.ndarray  # uint8 [height, width, 3]

# 5x7 glyphs, rows top to bottom, '#' = ink.
_ART = {
    "0": ".###.|#...#|#..##|#.#.#|##..#|#...#|.###.", "1": "..#..|.##..|..#..|..#..|..#..|..#..|.###.",
    "2": ".###.|#...#|....#|...#.|..#..|.#...|#####", "3": "#####|...#.|..#..|...#.|....#|#...#|.###.",
    "4": "...#.|..##.|.#.#.|#..#.|#####|...#.|...#.", "5": "#####|#....|####.|....#|....#|#...#|.###.",
    "6": "..##.|.#...|#....|####.|#...#|#...#|.###.", "7": "#####|....#|...#.|..#..|.#...|.#...|.#...",
    "8": ".###.|#...#|#...#|.###.|#...#|#...#|.###.", "9": ".###.|#...#|#...#|.####|....#|...#.|.##..",
    "A": ".###.|#...#|#...#|#####|#...#|#...#|#...#", "B": "####.|#...#|#...#|####.|#...#|#...#|####.",
    "C": ".###.|#...#|#....|#....|#....|#...#|.###.", "D": "###..|#..#.|#...#|#...#|#...#|#..#.|###..",
    "E": "#####|#....|#....|####.|#....|#....|#####", "F": "#####|#....|#....|####.|#....|#....|#....",
    "G": ".###.|#...#|#....|#.###|#...#|#...#|.####", "H": "#...#|#...#|#...#|#####|#...#|#...#|#...#",
    "I": ".###.|..#..|..#..|..#..|..#..|..#..|.###.", "J": "..###|...#.|...#.|...#.|...#.|#..#.|.##..",
    "K": "#...#|#..#.|#.#..|##...|#.#..|#..#.|#...#", "L": "#....|#....|#....|#....|#....|#....|#####",
    "M": "#...#|##.##|#.#.#|#.#.#|#...#|#...#|#...#", "N": "#...#|#...#|##..#|#.#.#|#..##|#...#|#...#",
    "O": ".###.|#...#|#...#|#...#|#...#|#...#|.###.", "P": "####.|#...#|#...#|####.|#....|#....|#....",
    "Q": ".###.|#...#|#...#|#...#|#.#.#|#..#.|.##.#", "R": "####.|#...#|#...#|####.|#.#..|#..#.|#...#",
    "S": ".####|#....|#....|.###.|....#|....#|####.", "T": "#####|..#..|..#..|..#..|..#..|..#..|..#..",
    "U": "#...#|#...#|#...#|#...#|#...#|#...#|.###.", "V": "#...#|#...#|#...#|#...#|#...#|.#.#.|..#..",
    "W": "#...#|#...#|#...#|#.#.#|#.#.#|#.#.#|.#.#.", "X": "#...#|#...#|.#.#.|..#..|.#.#.|#...#|#...#",
    "Y": "#...#|#...#|.#.#.|..#..|..#..|..#..|..#..", "Z": "#####|....#|...#.|..#..|.#...|#....|#####",
    " ": ".....|.....|.....|.....|.....|.....|.....", "-": ".....|.....|.....|.###.|.....|.....|.....",
    ".": ".....|.....|.....|.....|.....|.##..|.##..", ",": ".....|.....|.....|.....|.##..|..#..|.#...",
    ":": ".....|.##..|.##..|.....|.##..|.##..|.....", "(": "...#.|..#..|.#...|.#...|.#...|..#..|...#.",
    ")": ".#...|..#..|...#.|...#.|...#.|..#..|.#...", "/": ".....|....#|...#.|..#..|.#...|#....|.....",
    "+": ".....|..#..|..#..|#####|..#..|..#..|.....", "=": ".....|.....|#####|.....|#####|.....|.....",
    "%": "##...|##..#|...#.|..#..|.#...|#..##|...##", "_": ".....|.....|.....|.....|.....|.....|#####",
    ">": ".#...|..#..|...#.|....#|...#.|..#..|.#...", "<": "...#.|..#..|.#...|#....|.#...|..#..|...#.",
    "'": "..#..|..#..|.#...|.....|.....|.....|.....", "?": ".###.|#...#|....#|...#.|..#..|.....|..#..",
    "!": "..#..|..#..|..#..|..#..|..#..|.....|..#..", "#": ".#.#.|.#.#.|#####|.#.#.|#####|.#.#.|.#.#.",
    "[": ".###.|.#...|.#...|.#...|.#...|.#...|.###.", "]": ".###.|...#.|...#.|...#.|...#.|...#.|.###.",
}  # fmt: skip

#: Character → boolean ink mask of shape (7, 5).
FONT: dict[str, np.ndarray] = {
    ch: np.array([[c == "#" for c in row] for row in art.split("|")], dtype=bool)
    for ch, art in _ART.items()
}
GLYPH_W, GLYPH_H, ADVANCE = 5, 7, 6

WHITE, INK, GRID = (255, 255, 255), (40, 40, 40), (225, 225, 225)


def text_width(text: str, scale: int = 1) -> int:
    return max(0, len(text) * ADVANCE * scale - scale)


def draw_text(img: Image, x: int, y: int, text: str, color: Color, scale: int = 1) -> int:
    """Draw ``text`` with its top-left corner at (x, y), clipped to the image; returns its width."""
    h, w = img.shape[:2]
    for i, ch in enumerate(text.upper()):
        glyph = FONT.get(ch, FONT["?"])
        big = np.repeat(np.repeat(glyph, scale, axis=0), scale, axis=1)
        gx, gy = x + i * ADVANCE * scale, y
        x0, y0 = max(gx, 0), max(gy, 0)
        x1, y1 = min(gx + big.shape[1], w), min(gy + big.shape[0], h)
        if x0 < x1 and y0 < y1:
            region = img[y0:y1, x0:x1]
            region[big[y0 - gy : y1 - gy, x0 - gx : x1 - gx]] = color
    return text_width(text, scale)


def encode_png(rgb: Image) -> bytes:
    """8-bit RGB PNG (colour type 2, no interlace, filter 0 on every row), zlib-compressed."""
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError("expected an array of shape (height, width, 3)")
    height, width = rgb.shape[:2]
    raw = np.zeros((height, width * 3 + 1), dtype=np.uint8)  # column 0: filter type 0 (None)
    raw[:, 1:] = rgb.astype(np.uint8).reshape(height, width * 3)

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw.tobytes(), 9))
        + chunk(b"IEND", b"")
    )


def write_png(path: Path, rgb: Image) -> None:
    path.write_bytes(encode_png(rgb))


@dataclass(frozen=True)
class Lane:
    """One audio lane: a label (``|`` splits lines) and mono PCM16 samples."""

    label: str
    samples: np.ndarray
    color: Color


@dataclass(frozen=True)
class Mark:
    """A vertical line at ``t_s`` in lane ``lane`` (or across all lanes), labelled beside it."""

    t_s: float
    label: str
    lane: int
    color: Color
    across: bool = False


@dataclass(frozen=True)
class Span:
    """A shaded stretch of lane ``lane`` from ``start_s`` to ``end_s``, labelled under it."""

    start_s: float
    end_s: float
    label: str
    lane: int
    color: Color = (150, 70, 190)


def _envelope(samples: np.ndarray, columns: int, total: int) -> np.ndarray:
    """Level per pixel column in 0..1 (−60..0 dBFS), over ``total`` samples (zero padded)."""
    padded = np.zeros(total, dtype=np.float64)
    padded[: min(total, len(samples))] = samples[:total]
    edges = np.linspace(0, total, columns + 1).astype(np.int64)
    power = np.add.reduceat(padded**2, edges[:-1]) / np.maximum(np.diff(edges), 1)
    dbfs = 10 * np.log10(np.maximum(power, 1e-12) / 32768.0**2)
    return np.asarray(np.clip((dbfs + 60) / 60, 0, 1))


def render_timeline(
    lanes: Sequence[Lane],
    rate: int,
    *,
    marks: Sequence[Mark] = (),
    spans: Sequence[Span] = (),
    legend: Sequence[tuple[str, Color]] = (),
    title: str = "",
    width: int = 1200,
    height: int = 360,
) -> Image:
    """The call as an RGB image: title, legend, one envelope lane per channel, marks, time axis."""
    img = np.full((height, width, 3), WHITE, dtype=np.uint8)
    left, right, top, axis_h = 130, 20, 64, 46
    plot_w = width - left - right
    lane_h = (height - top - axis_h) // max(1, len(lanes))
    total = max((len(lane.samples) for lane in lanes), default=0)
    duration = max(total / rate, 1.0)

    def x_of(t: float) -> int:
        return left + round(min(max(t, 0.0), duration) / duration * (plot_w - 1))

    draw_text(img, 10, 8, title, INK, 2)
    x = 10
    for name, color in legend:
        img[36:48, x : x + 20] = color
        x += 26 + draw_text(img, x + 26, 35, name, INK, 2) + 24
    step = next(s for s in (1, 2, 5, 10, 30, 60, 120, 300, 600) if duration / s <= 20 or s == 600)
    ticks = np.arange(0, duration + 1e-9, step)
    for t in ticks:  # grid
        img[top : top + lane_h * len(lanes), x_of(float(t))] = GRID
    for i, lane in enumerate(lanes):
        y0 = top + i * lane_h
        mid, half = y0 + lane_h // 2, lane_h // 2 - 6
        for span in (s for s in spans if s.lane == i):
            x0, x1 = x_of(span.start_s), x_of(span.end_s)
            shade = np.array(span.color) * 0.25 + np.array(WHITE) * 0.75
            img[y0 + 2 : y0 + lane_h - 2, x0 : x1 + 1] = shade.astype(np.uint8)
        level = _envelope(lane.samples.astype(np.float64), plot_w, total)
        for col in np.nonzero(level > 0)[0]:
            extent = max(1, int(level[col] * half))
            img[mid - extent : mid + extent + 1, left + int(col)] = lane.color
        img[mid, left : left + plot_w] = (190, 190, 190)
        img[y0 + lane_h - 1, left : left + plot_w] = (200, 200, 200)
        for row, line in enumerate(lane.label.split("|")):
            draw_text(img, 10, y0 + 8 + row * 18, line, lane.color, 2)
    placed: list[tuple[int, int, int, int]] = []

    def place(x: int, y: int, text: str, color: Color) -> None:
        w = text_width(text, 2)
        x = min(x, width - right - w)
        while any(
            x < bx1 and bx0 < x + w and y < by1 and by0 < y + 14 for bx0, by0, bx1, by1 in placed
        ):
            y += 18
        img[y - 2 : y + 16, x - 2 : x + w + 2] = WHITE
        draw_text(img, x, y, text, color, 2)
        placed.append((x - 2, y - 2, x + w + 2, y + 16))

    for span in spans:
        y = top + span.lane * lane_h + lane_h - 24
        x0, x1 = x_of(span.start_s), x_of(span.end_s)
        img[y + 18 : y + 20, x0 : x1 + 1] = span.color
        if span.label:
            place(x0, y, span.label, span.color)
    for mark in marks:  # every line first, so no line crosses a label
        y0 = top if mark.across else top + mark.lane * lane_h
        y1 = top + len(lanes) * lane_h if mark.across else y0 + lane_h
        img[y0:y1, x_of(mark.t_s) : x_of(mark.t_s) + 2] = mark.color
    for mark in marks:
        y0 = top if mark.across else top + mark.lane * lane_h
        place(x_of(mark.t_s) + 5, y0 + 4, mark.label, mark.color)
    axis_y = top + lane_h * len(lanes) + 2
    img[axis_y, left : left + plot_w] = INK
    for t in ticks:
        xt = x_of(float(t))
        img[axis_y : axis_y + 6, xt] = INK
        label = f"{t:g}"
        draw_text(img, xt - text_width(label, 2) // 2, axis_y + 10, label, INK, 2)
    draw_text(img, 10, axis_y + 10, "TIME (S)", INK, 2)
    return img


def call_picture(
    report: CallReport, truncations: Sequence[int], rate: int, stereo: np.ndarray
) -> Image:
    """One simulated call as a picture (the demo's ``timeline.png``).

    ``stereo`` is the simulator's recording (caller left, agent right as heard); its times and
    the report's ``*_s`` share one origin, the media socket opening.  ``truncations`` are the
    ``audio_end_ms`` the server sent, drawn from the start of the answer they cut.
    """
    caller, agent, stop, cut, note = (
        (40, 110, 220),
        (230, 120, 20),
        (210, 30, 30),
        (150, 70, 190),
        (110, 110, 110),
    )
    lanes = [
        Lane("CALLER|(LEFT)", stereo[:, 0], caller),
        Lane("AGENT|(RIGHT)|AS HEARD", stereo[:, 1], agent),
    ]
    marks: list[Mark] = []
    spans: list[Span] = []
    if report.greeting_first_audio_s is not None:
        marks.append(Mark(report.greeting_first_audio_s, "GREETING", 1, note))
    for turn in report.turns:
        if turn.first_audio_s is not None and turn.ttfa_ms is not None:
            marks.append(Mark(turn.first_audio_s, f"TTFA {turn.ttfa_ms:.0f} MS", 1, note))
        stops = [t for t in report.stop_audio_s if t >= turn.speech_start_s]
        if turn.barge_in and stops:
            latency = turn.stop_audio_latency_ms
            label = "STOPAUDIO" + ("" if latency is None else f" +{latency:.0f} MS")
            marks.append(Mark(stops[0], label, 0, stop, across=True))
    cut_turn = next((t for t in report.turns if _was_cut(t, report)), None)
    if cut_turn is not None and cut_turn.first_audio_s is not None and truncations:
        start = cut_turn.first_audio_s
        end = start + truncations[0] / 1000
        spans.append(Span(start, end, "", 1, cut))
        marks.append(Mark(end, f"TRUNCATE {truncations[0]} MS", 1, cut))
    legend = [
        ("CALLER", caller),
        ("AGENT", agent),
        ("FIRST AUDIO", note),
        ("STOPAUDIO", stop),
        ("TRUNCATE (AUDIO SENT)", cut),
    ]
    title = "ACS-TRIO DEMO CALL - AGENT IS THE LOCAL TEST PEER (GREETING + ECHO), NOT A MODEL"
    return render_timeline(lanes, rate, marks=marks, spans=spans, legend=legend, title=title)


def _was_cut(turn: TurnReport, report: CallReport) -> bool:
    """The answer to ``turn`` was cut if a StopAudio came after its first audio."""
    return turn.first_audio_s is not None and any(
        t > turn.first_audio_s for t in report.stop_audio_s
    )
