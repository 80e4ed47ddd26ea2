"""The servers a run compares ("arms"): this tree, the same tree with other settings, another ref.

``--compare REF`` installs REF in its own venv, once, and keeps it for the next run:
``git worktree add --detach bench/out/ref-<sha> REF``, then ``python -m venv .venv`` there and
``pip install -e .`` into it (so the other server runs its own code and its own pinned
dependencies, not this tree's).  Both servers start with ``python -m acs_trio serve``, which works on
every ref since the CLI was added, whatever the module layout behind it (``acs_trio.server`` before
the layout move, ``acs_trio.control.server`` after).

``--arm NAME:VAR=VALUE,VAR=VALUE`` adds this tree again with extra environment (e.g.
``--arm batch20:APPEND_BATCH_MS=20``): the way to compare settings in one run.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Arm:
    label: str
    python: str = sys.executable
    cwd: Path = REPO
    env: dict[str, str] = field(default_factory=dict)
    git: str = ""


def git(*args: str, cwd: Path = REPO) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout.strip()


def this_tree(label: str = "this", env: dict[str, str] | None = None) -> Arm:
    head = git("rev-parse", "--short", "HEAD")
    dirty = bool(git("status", "--porcelain", "acs_trio"))
    return Arm(label, env=env or {}, git=head + ("+dirty" if dirty else ""))


def parse_arm(spec: str) -> Arm:
    """``NAME:VAR=VALUE,VAR=VALUE`` → this tree with that environment."""
    label, _, pairs = spec.partition(":")
    env = dict(pair.split("=", 1) for pair in pairs.split(",") if pair)
    return this_tree(label, env)


def install_ref(ref: str, out_dir: Path) -> Arm:
    """REF checked out under ``out_dir/ref-<sha>`` with its own venv (reused when present)."""
    sha = git("rev-parse", "--verify", f"{ref}^{{commit}}")
    short = sha[:7]
    tree = (out_dir / f"ref-{short}").resolve()
    python = tree / ".venv" / "bin" / "python"
    stamp = tree / ".venv" / "installed"
    if not tree.exists():
        print(f"compare: git worktree add --detach {tree} {short}", flush=True)
        git("worktree", "add", "--detach", str(tree), sha)
    if not stamp.exists():
        print(f"compare: installing {short} into {tree}/.venv (a minute or two)", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(tree / ".venv")], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "-e", str(tree)], check=True, cwd=tree
        )
        stamp.write_text(sha + "\n")
    return Arm(f"ref {short}", python=str(python), cwd=tree, git=short)
