"""The per-level table on the terminal, the JSON file and the PNG plot."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

Stats = dict[str, Any]


@dataclass
class LevelRow:
    calls: int
    window_s: float
    hop_in: Stats
    hop_out: Stats
    ttfa: Stats
    barge: Stats
    teardown: Stats
    setup: Stats
    gen_lag: Stats
    cpu_pct: float
    cpu_s_per_call_min: float | None
    rss_kb: int
    rss_per_call_kb: float | None
    fds: int
    gen_cpu_pct: float
    failed_calls: int
    failures: dict[str, int] = field(default_factory=dict)
    events: dict[str, int] = field(default_factory=dict)
    arm: str = ""
    hop_in_last: Stats = field(default_factory=dict)
    hop_out_first: Stats = field(default_factory=dict)
    out_pacing: Stats = field(default_factory=dict)
    out_total: Stats = field(default_factory=dict)
    truncate_err: Stats = field(default_factory=dict)
    round: int = 0

    def ok(self, p99_ms: float) -> bool:
        p99s = [self.hop_in["p99"], self.hop_out["p99"]]
        return self.failed_calls == 0 and all(p is not None and p < p99_ms for p in p99s)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _f(value: float | None, width: int = 6, digits: int = 1) -> str:
    return f"{value:{width}.{digits}f}" if value is not None else " " * (width - 1) + "-"


def print_table(rows: list[LevelRow], *, header: bool = True) -> None:
    if header:
        print(
            "arm          calls | ACS→model every frame ms p50/p99/max | model→ACS every frame, pacing excluded, ms p50/p99/max | "
            "pacing ms p50/p99 | TTFA+ ms p50/p99 | barge ms p50/p99 | "
            "teardown ms p50/max | CPU %  | CPU-s/call-min | RSS KB/call | failed | gen CPU % | gen lag ms max"
        )
    for r in rows:
        pacing = r.out_pacing or {"p50": None, "p99": None}
        print(
            f"{r.arm[:12]:12s} {r.calls:5d} | {_f(r.hop_in['p50'])} {_f(r.hop_in['p99'])} {_f(r.hop_in['max'])} | "
            f"{_f(r.hop_out['p50'])} {_f(r.hop_out['p99'])} {_f(r.hop_out['max'])} | "
            f"{_f(pacing['p50'])} {_f(pacing['p99'])} | "
            f"{_f(r.ttfa['p50'])} {_f(r.ttfa['p99'])} | {_f(r.barge['p50'])} {_f(r.barge['p99'])} | "
            f"{_f(r.teardown['p50'])} {_f(r.teardown['max'])} | {r.cpu_pct:6.1f} | {_f(r.cpu_s_per_call_min, 7, 3)}        | "
            f"{_f(r.rss_per_call_kb, 7, 0)}     | {r.failed_calls:6d} | {r.gen_cpu_pct:9.1f} | {_f(r.gen_lag['max'])}",
            flush=True,
        )
        if r.failures:
            print(f"      failures: {r.failures}", flush=True)


def write_json(path: Path, result: dict[str, Any]) -> Path:
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


def write_plot(path: Path, rows: list[LevelRow], *, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = list(dict.fromkeys(r.arm for r in rows))
    fig, (lat, cpu) = plt.subplots(2, 1, figsize=(9, 8), sharex=True)
    for arm in arms:
        mine = [r for r in rows if r.arm == arm]
        n = [r.calls for r in mine]
        tag = f"{arm}: " if len(arms) > 1 else ""
        for key, label, style in (
            ("hop_in", "ACS frame → model append (every frame)", "o-"),
            ("hop_out", "model delta → ACS frame (every frame, pacing excluded)", "s-"),
        ):
            lat.plot(n, [r.__dict__[key]["p99"] for r in mine], style, label=f"{tag}{label} p99")
        cpu.plot(n, [r.cpu_s_per_call_min for r in mine], "o-", label=f"{tag}CPU-s per call-minute")
    lat.axhline(5, color="red", linewidth=0.8, linestyle=":", label="5 ms target")
    lat.set_yscale("log")
    lat.set_ylabel("added latency p99, ms (log)")
    lat.legend(fontsize=7)
    lat.grid(True, which="both", alpha=0.3)
    lat.set_title(title, fontsize=10)
    cpu.set_ylabel("server CPU-s per call-minute")
    cpu.set_xlabel("concurrent calls")
    cpu.set_ylim(bottom=0)
    cpu.grid(True, alpha=0.3)
    cpu.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
