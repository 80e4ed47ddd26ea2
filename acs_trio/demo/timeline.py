"""A picture of one call (``timeline.png``), drawn with matplotlib.

Two lanes share one time axis (seconds since the media socket opened, the origin of every
``*_s`` in the report): what the caller sent and what the caller heard from the agent.  On them:
each utterance (shaded), barge-ins, every StopAudio the server sent, the time to first audio of
each answer, the part of a cut answer the model was told was heard (``audio_end_ms``), and, when
given, transcript lines in a third lane.  Uses matplotlib's object API (``Figure``, Agg canvas), not
pyplot: no global state, safe in the worker thread the demo writes its files from.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MultipleLocator

if TYPE_CHECKING:
    from ..testing.acs.report import CallReport

__all__ = ["COLORS", "Line", "call_picture", "waveform", "write_png"]

#: One colour per kind of thing on the picture (the legend uses the same).
COLORS = {
    "caller": "#2a6ee0",
    "agent": "#e07a14",
    "utterance": "#9ec5ff",
    "first_audio": "#555555",
    "barge_in": "#2a6ee0",
    "stop_audio": "#d01e1e",
    "truncate": "#9646be",
}
WIDTH_IN, LANE_IN, DPI = 12.0, 2.0, 100


@dataclass(frozen=True)
class Line:
    """One transcript line: who said ``text``, starting at ``t_s``."""

    t_s: float
    speaker: str
    text: str


def waveform(
    samples: np.ndarray, rate: int, columns: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(t_s, low, high)``: the min/max of each of ``columns`` slices, as a fraction of full scale.

    A min/max envelope draws like the waveform itself at any zoom, without plotting every sample.
    """
    n = len(samples)
    columns = max(1, min(columns, n))
    edges = np.linspace(0, n, columns + 1).astype(np.int64)
    scaled = samples.astype(np.float64) / 32768.0
    if n == 0:
        return np.zeros(1), np.zeros(1), np.zeros(1)
    low = np.minimum.reduceat(scaled, edges[:-1])
    high = np.maximum.reduceat(scaled, edges[:-1])
    return edges[:-1] / rate, low, high


def call_picture(
    report: CallReport,
    truncations: Sequence[int],
    rate: int,
    stereo: np.ndarray,
    *,
    transcript: Sequence[Line] = (),
) -> Figure:
    """One simulated call as a figure (the demo's ``timeline.png``).

    ``stereo`` is the simulator's recording (caller left, agent right as heard); its times and
    the report's ``*_s`` share one origin, the media socket opening.  ``truncations`` are the
    ``audio_end_ms`` the server sent, drawn from the start of the answer they cut.
    """
    lanes = 3 if transcript else 2
    fig = Figure(
        figsize=(WIDTH_IN, 1.4 + LANE_IN * (2 if lanes == 2 else 2.6)),
        dpi=DPI,
        layout="constrained",
    )
    axes = fig.subplots(lanes, 1, sharex=True, height_ratios=[1.0, 1.0, 0.6][:lanes])
    caller_ax, agent_ax = axes[0], axes[1]
    duration = max(len(stereo) / rate, 1.0)
    columns = int(WIDTH_IN * DPI)
    for ax, channel, name, label in (
        (caller_ax, 0, "caller", "caller\n(sent to ACS)"),
        (agent_ax, 1, "agent", "agent\n(as heard)"),
    ):
        t, low, high = waveform(stereo[:, channel], rate, columns)
        ax.fill_between(t, low, high, color=COLORS[name], linewidth=0.6, gid=name)
        ax.set_ylim(-1.05, 1.05)
        ax.set_ylabel(label, rotation=0, ha="right", va="center", color=COLORS[name])
        ax.set_yticks([])
        ax.grid(axis="x", color="#e4e4e4")
        ax.set_axisbelow(True)
    caller_ax.set_xlim(0, duration)
    caller_ax.xaxis.set_major_locator(MultipleLocator(1.0 if duration <= 30 else 5.0))
    axes[-1].set_xlabel("time since the media socket opened (s)")

    for turn in report.turns:
        caller_ax.axvspan(
            turn.speech_start_s,
            turn.speech_end_s,
            color=COLORS["utterance"],
            alpha=0.35,
            lw=0,
            gid="utterance",
        )
        caller_ax.text(
            turn.speech_start_s,
            0.97,
            f" utterance {turn.utterance}",
            va="top",
            fontsize=9,
            transform=caller_ax.get_xaxis_transform(),
        )
        if turn.barge_in:
            caller_ax.annotate(
                "barge-in",
                (turn.speech_start_s, -0.85),
                (-8, 0),
                textcoords="offset points",
                ha="right",
                va="center",
                fontsize=9,
                color=COLORS["barge_in"],
                fontweight="bold",
            )
        if turn.first_audio_s is not None and turn.ttfa_ms is not None:
            _first_audio(
                agent_ax, turn.speech_end_s, turn.first_audio_s, f"TTFA {turn.ttfa_ms:.0f} ms"
            )
    if report.greeting_first_audio_s is not None:
        _first_audio(agent_ax, 0.0, report.greeting_first_audio_s, "greeting")
    for stop in report.stop_audio_s:
        for ax in (caller_ax, agent_ax):
            ax.axvline(stop, color=COLORS["stop_audio"], lw=1.6, gid="stop_audio")
        latency = next(
            (
                t.stop_audio_latency_ms
                for t in report.turns
                if t.barge_in and t.speech_start_s <= stop
            ),
            None,
        )
        text = "StopAudio" + ("" if latency is None else f" +{latency:.0f} ms")
        caller_ax.text(
            stop,
            0.75,
            f" {text}",
            color=COLORS["stop_audio"],
            fontsize=9,
            transform=caller_ax.get_xaxis_transform(),
        )
    cut = next(
        (
            t
            for t in report.turns
            if t.first_audio_s is not None and any(s > t.first_audio_s for s in report.stop_audio_s)
        ),
        None,
    )
    if cut is not None and cut.first_audio_s is not None and truncations:
        end = cut.first_audio_s + truncations[0] / 1000
        agent_ax.axvspan(
            cut.first_audio_s, end, color=COLORS["truncate"], alpha=0.18, lw=0, gid="truncate"
        )
        agent_ax.text(
            end,
            0.1,
            f" truncate: audio_end_ms={truncations[0]}",
            fontsize=9,
            color=COLORS["truncate"],
            transform=agent_ax.get_xaxis_transform(),
        )
    if transcript:
        _transcript(axes[2], transcript)

    fig.suptitle(
        "acs-trio demo call: the agent is the local test peer (greeting, then echo), not a model",
        fontsize=12,
    )
    fig.legend(handles=_legend(), loc="outside lower center", ncols=7, fontsize=9, frameon=False)
    return fig


def _first_audio(ax: Axes, since_s: float, at_s: float, label: str) -> None:
    """A dashed line at an answer's first audio, labelled, with an arrow from ``since_s``."""
    ax.axvline(at_s, color=COLORS["first_audio"], ls="--", lw=1.1, gid="first_audio")
    ax.text(
        at_s,
        0.97,
        f" {label}",
        va="top",
        fontsize=9,
        color=COLORS["first_audio"],
        transform=ax.get_xaxis_transform(),
    )
    if since_s > 0:
        ax.annotate(
            "",
            (at_s, 0.82),
            (since_s, 0.82),
            xycoords=ax.get_xaxis_transform(),
            arrowprops={"arrowstyle": "->", "color": COLORS["first_audio"], "lw": 1},
        )


def _transcript(ax: Axes, lines: Sequence[Line]) -> None:
    ax.set_ylim(0, 1)
    ax.set_ylabel("transcript", rotation=0, ha="right", va="center")
    ax.set_yticks([])
    speakers = list(dict.fromkeys(line.speaker for line in lines))  # first to speak on top
    for line in lines:
        row = speakers.index(line.speaker)
        color = COLORS.get(line.speaker, "#333333")
        y = 0.8 - 0.6 * row / max(1, len(speakers) - 1)
        ax.text(
            line.t_s,
            y,
            f"{line.speaker}: {line.text}",
            fontsize=9,
            color=color,
            va="center",
            clip_on=True,
        )


def _legend() -> list[Patch | Line2D]:
    return [
        Patch(color=COLORS["caller"], label="caller audio"),
        Patch(color=COLORS["agent"], label="agent audio (as heard)"),
        Patch(color=COLORS["utterance"], alpha=0.35, label="caller utterance"),
        Line2D([], [], color=COLORS["first_audio"], ls="--", label="first audio (TTFA)"),
        Line2D([], [], color=COLORS["stop_audio"], label="StopAudio sent"),
        Patch(
            color=COLORS["truncate"],
            alpha=0.18,
            label="sent before the cut (truncate audio_end_ms)",
        ),
    ]


def write_png(path: Path, figure: Figure) -> None:
    """Save ``figure`` as a PNG at its own size (``figsize`` × ``dpi``)."""
    figure.savefig(path, format="png", dpi=DPI)
