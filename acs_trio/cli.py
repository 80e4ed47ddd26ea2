"""``acs-trio`` / ``python -m acs_trio``: one entry point, one subcommand per job.

Each subcommand lives in the module that owns the job and exposes ``main(argv) -> int``; this file
only dispatches, importing lazily so ``acs-trio simulate`` never loads the server's stack.
"""

from __future__ import annotations

import importlib
import sys

__all__ = ["main"]

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("acs_trio.control.server", "run the server (hypercorn, trio worker)"),
    "peer": ("acs_trio.testing.realtime.server", "run the local realtime test peer"),
    "simulate": ("acs_trio.testing.acs.cli", "play ACS against a running server"),
    "phone": (
        "acs_trio.demo.phone",
        "talk to the agent from a browser: the softphone page (local test peer or your model)",
    ),
    "demo": (
        "acs_trio.demo.offline_call",
        "run one offline demo call end to end and write demo-out/",
    ),
}

#: ``serve --local-peer`` composes the server with a stand-in, so it lives in the demo wing.
LOCAL_PEER_SERVE = "acs_trio.demo.serve_local"

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
    target = SUBCOMMANDS[name][0]
    if name == "serve" and "--local-peer" in rest:
        target = LOCAL_PEER_SERVE
    try:
        module = importlib.import_module(target)
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith(("acs_trio.testing", "acs_trio.demo")):
            # The server image leaves out the stand-ins and the demo (Dockerfile, .dockerignore).
            print(
                f"acs-trio: {name!r} needs {exc.name}, which this install leaves out",
                file=sys.stderr,
            )
            return 2
        raise
    result: int = module.main(rest)
    return result
