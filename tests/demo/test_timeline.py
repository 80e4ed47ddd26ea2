"""The timeline picture's pieces: the PNG encoder (decoded back by hand), the 5x7 font, the layout."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest

from acs_trio.demo.timeline import (
    ADVANCE,
    FONT,
    GLYPH_H,
    GLYPH_W,
    Lane,
    Mark,
    draw_text,
    encode_png,
    render_timeline,
    text_width,
)


def decode_png(data: bytes) -> np.ndarray:
    """Minimal decoder for what encode_png writes: checks signature, chunk CRCs, IHDR fields."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + body) & 0xFFFFFFFF
        chunks.append((kind, body))
        pos += 12 + length
    assert chunks[0][0] == b"IHDR" and chunks[-1] == (b"IEND", b"")
    width, height, depth, colour, compression, filtering, interlace = struct.unpack(
        ">IIBBBBB", chunks[0][1]
    )
    assert (depth, colour, compression, filtering, interlace) == (8, 2, 0, 0, 0)
    raw = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    rows = np.frombuffer(raw, dtype=np.uint8).reshape(height, 1 + width * 3)
    assert not rows[:, 0].any()  # filter type 0 on every row
    return rows[:, 1:].reshape(height, width, 3)


def test_png_round_trips_every_pixel() -> None:
    rng = np.random.default_rng(7)
    image = rng.integers(0, 256, size=(13, 21, 3), dtype=np.uint8)
    assert np.array_equal(decode_png(encode_png(image)), image)


def test_png_refuses_non_rgb() -> None:
    with pytest.raises(ValueError, match="height, width, 3"):
        encode_png(np.zeros((4, 4), dtype=np.uint8))


def test_font_has_distinct_5x7_glyphs_for_digits_letters_and_symbols() -> None:
    needed = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ -.:()/+%"
    assert set(needed) <= set(FONT)
    assert all(g.shape == (GLYPH_H, GLYPH_W) for g in FONT.values())
    drawn = {ch: g.tobytes() for ch, g in FONT.items() if ch != " "}
    assert len(set(drawn.values())) == len(drawn)  # e.g. "0" is not "O", "1" is not "I"
    assert not FONT[" "].any()


def test_draw_text_inks_only_its_box_and_reads_lower_case_as_upper() -> None:
    img = np.zeros((20, 40, 3), dtype=np.uint8)
    width = draw_text(img, 3, 4, "a1", (255, 0, 0), scale=2)
    assert width == text_width("A1", 2) == 2 * ADVANCE * 2 - 2
    ink = np.argwhere(img[:, :, 0] == 255)
    assert ink[:, 0].min() >= 4 and ink[:, 0].max() < 4 + 2 * GLYPH_H
    assert ink[:, 1].min() >= 3 and ink[:, 1].max() < 3 + width
    # The "A" at scale 2: each font pixel is a 2x2 block.
    block = img[4 : 4 + 14, 3 : 3 + 10, 0] == 255
    assert np.array_equal(block[::2, ::2], FONT["A"])
    assert not img[:, :, 1:].any()


def test_draw_text_clips_at_the_edges_and_draws_unknown_characters_as_question_marks() -> None:
    img = np.zeros((10, 10, 3), dtype=np.uint8)
    draw_text(img, -3, -2, "~W", (9, 9, 9), scale=1)  # must not raise
    expected = np.zeros((10, 10, 3), dtype=np.uint8)
    draw_text(expected, -3, -2, "?W", (9, 9, 9), scale=1)
    assert np.array_equal(img, expected) and img.any()


def test_timeline_shows_loud_audio_in_its_lane_and_marks_in_their_colour() -> None:
    rate = 1000
    loud = np.zeros(4000, dtype=np.int16)
    loud[1000:2000] = 20000  # 1..2 s
    lanes = [Lane("A", loud, (0, 0, 200)), Lane("B", np.zeros(4000, np.int16), (200, 0, 0))]
    img = render_timeline(
        lanes, rate, marks=[Mark(3.0, "X", 1, (0, 180, 0))], width=430, height=200
    )
    assert img.shape == (200, 430, 3) and img.dtype == np.uint8
    left, plot_w = 130, 430 - 130 - 20

    def x(t: float) -> int:
        return left + round(t / 4 * (plot_w - 1))

    lane_a = img[64 : 64 + 45, :]
    blue = np.all(lane_a == (0, 0, 200), axis=2)
    assert blue[:, x(1.5)].any() and not blue[:, x(0.5)].any() and not blue[:, x(2.5)].any()
    assert not np.all(img == (200, 0, 0), axis=2)[:, left:].any()  # lane B is silent
    assert np.all(img[120, x(3.0)] == (0, 180, 0))  # the mark's line in lane B
