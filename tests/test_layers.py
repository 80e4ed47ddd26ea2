"""The layers of the package, checked on every module's imports (``ast``, nothing is executed).

docs/architecture.md draws the same table.  A layer may import only the layers below it, and the
product never imports the stand-ins in ``testing/`` or the ``demo/`` that composes them — the way
``trio`` never imports ``trio.testing``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "acs_trio"

#: layer -> what it may import from the package (besides itself) and third-party roots it may not.
RULES: dict[str, tuple[set[str], set[str]]] = {
    "api": ({"base", "wire", "call", "control"}, set()),
    "base": ({"base"}, {"quart", "quart_trio", "hypercorn", "trio_websocket"}),
    "wire": ({"base"}, {"trio", "quart", "quart_trio", "hypercorn", "trio_websocket", "httpx"}),
    "call": ({"base", "wire"}, {"quart", "quart_trio", "hypercorn", "trio_websocket", "httpx"}),
    "control": ({"base", "wire", "call"}, set()),
    "cli": (set(), set()),  # dispatches by module *name* (strings), imports nothing of ours
    "testing": ({"base", "wire", "testing"}, set()),
    "demo": ({"base", "wire", "call", "control", "testing", "demo"}, set()),
}
WINGS = {"testing", "demo"}


def layer_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "api"  # acs_trio/__init__.py re-exports the public API from the layers
    if parts[1] in {"wire", "call", "control", "testing", "demo"}:
        return parts[1]
    if parts[1] in {"cli", "__main__"}:
        return "cli"
    return "base"  # config, errors, _httpx


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_in(source: str, module: str, *, is_package: bool) -> list[str]:
    """Absolute module names imported by ``source`` standing at ``module``."""
    package = module if is_package else module.rpartition(".")[0]
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.append(target)
            found += [f"{target}.{alias.name}" for alias in node.names]  # `from . import x`
    return found


def violations(module: str, imported: list[str]) -> list[str]:
    mine = layer_of(module)
    allowed, forbidden_roots = RULES[mine]
    found = []
    for target in imported:
        root = target.split(".")[0]
        if root == "acs_trio" and target != "acs_trio":
            theirs = layer_of(target)
            if theirs != mine and theirs not in allowed:
                found.append(f"{module} ({mine}) imports {target} ({theirs})")
        elif root in forbidden_roots:
            found.append(f"{module} ({mine}) imports {target}")
    return found


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports_of(module: str) -> list[str]:
    path = MODULES[module]
    return imports_in(path.read_text(), module, is_package=path.name == "__init__.py")


@pytest.mark.parametrize("module", sorted(MODULES))
def test_each_module_imports_only_the_layers_below_it(module: str) -> None:
    assert violations(module, imports_of(module)) == []


def test_the_product_never_imports_the_wings() -> None:
    offenders = [
        f"{module} -> {target}"
        for module in MODULES
        if layer_of(module) not in WINGS
        for target in imports_of(module)
        if target.startswith("acs_trio.") and layer_of(target) in WINGS
    ]
    assert offenders == []


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("acs_trio.control.app", "from ..testing.realtime import serve_local_peer\n"),
        ("acs_trio.control.app", "from acs_trio.demo import main\n"),
        ("acs_trio.call.bridge", "from ..control.app import create_app\n"),
        ("acs_trio.call.bridge", "from trio_websocket import ConnectionClosed\n"),
        ("acs_trio.wire.realtime", "import trio\n"),
    ],
)
def test_the_guard_catches_a_planted_import(module: str, source: str) -> None:
    assert violations(module, imports_in(source, module, is_package=False)) != []
