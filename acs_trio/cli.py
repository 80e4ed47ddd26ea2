"""``acs-trio`` / ``python -m acs_trio``: one entry point, one subcommand per job.

Each subcommand lives in the module that owns the job and exposes ``main(argv) -> int``; this file
only dispatches, importing lazily so ``acs-trio simulate`` never loads the server's stack.
"""

from __future__ import annotations

import importlib
import sys

__all__ = ["main"]

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("acs_trio.server", "run the server (hypercorn, trio worker)"),
    "peer": ("acs_trio.local_peer.server", "run the local realtime test peer"),
    "simulate": ("acs_trio.simulator.cli", "play ACS against a running server"),
    "demo": ("acs_trio.demo", "run one offline demo call end to end and write demo-out/"),
}

USAGE = (
    "usage: acs-trio {"
    + ",".join(SUBCOMMANDS)
    + "} [options]\n\n"
    + "\n".join(f"  {name:<9} {help_text}" for name, (_, help_text) in SUBCOMMANDS.items())
)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in {"-h", "--help"}:
        print(USAGE)
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name not in SUBCOMMANDS:
        print(f"acs-trio: unknown command {name!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    module = importlib.import_module(SUBCOMMANDS[name][0])
    result: int = module.main(rest)
    return result
