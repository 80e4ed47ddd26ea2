"""Tools the agent can call: the ``@tool`` decorator, its JSON schema, and the ``AGENT_TOOLS`` loader.

A tool is a plain Python function::

    from acs_trio.tools import ToolContext, tool

    @tool
    def lookup_order(order_id: str, ctx: ToolContext) -> dict[str, str]:
        \"\"\"Look up an order by its number.

        Args:
            order_id: The order number the caller reads out, e.g. "A1001".
        \"\"\"
        return {"status": "shipped"}

The model sees ``{"type": "function", "name": "lookup_order", "description": "Look up an order by
its number.", "parameters": {...}}`` in ``session.update`` (docs/protocols/realtime.md §2.1): the
description is the docstring's first paragraph, each parameter's type comes from its annotation
(``str``, ``int``, ``float``, ``bool``, ``list[...]``, ``Literal[...]``, ``X | None``) and its
description from the docstring's ``Args:`` section; a parameter with a default is optional.

A parameter annotated :class:`ToolContext` is not shown to the model: it receives the calling
call's own context (call id, caller number, a scratch dict that lives as long as the call).  That
is all a tool learns about the server: it cannot reach another call.

``async def`` tools run as tasks in the call's nursery (child cancel scope, cancelled with the
call); plain ``def`` tools run in a worker thread (``trio.to_thread.run_sync``, abandoned on
cancel: keep them short and side-effect safe).  The return value is sent to the model as JSON
(``json.dumps(value, default=str)``); raise :class:`ToolError` to send the model a message
instead of a traceback.  docs/tools.md has the rules for errors, timeouts and limits.

``AGENT_TOOLS=package.module`` loads every ``@tool`` of that module at start-up
(:func:`load_tools`); an import error or a bad tool stops the server with one line.
"""

from __future__ import annotations

import importlib
import inspect
import json
import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, overload

from .errors import ConfigError

__all__ = ["Tool", "ToolContext", "ToolError", "load_tools", "tool"]

#: Realtime function names: letters, digits, ``_`` and ``-``, at most 64 (as Chat Completions).
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
#: The built-in tools' names; a custom tool may not take them.
RESERVED_NAMES = frozenset({"end_call", "transfer_call"})
_JSON_TYPES: dict[Any, str] = {str: "string", int: "integer", float: "number", bool: "boolean"}


class ToolError(Exception):
    """Raised by a tool: its message goes to the model as ``{"error": message}``."""


@dataclass
class ToolContext:
    """What one call's tools may know about it; one object per call, never shared."""

    call_id: str
    #: The caller's phone number (or raw ACS id), as the IncomingCall event named it.
    caller: str
    #: Per-call scratch space: tools of the same call may keep state here between calls.
    scratch: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Tool:
    """A function the model may call, with the JSON schema it is described by."""

    name: str
    description: str
    parameters: dict[str, Any]
    func: Callable[..., Any]
    #: Name of the parameter that receives the :class:`ToolContext`, if any.
    context_param: str | None = None
    #: Per-tool deadline (seconds), capped by ``TOOL_TIMEOUT_S``.
    timeout_s: float | None = None
    #: ``X | None`` parameters without a default: None when the model leaves them out.
    none_if_missing: tuple[str, ...] = ()

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.func)

    def declaration(self) -> dict[str, Any]:
        """The ``session.tools`` entry (docs/protocols/realtime.md §2.1)."""
        return {
            "type": "function",
            "name": self.name,
            "description": self.description,
            "parameters": self.parameters,
        }

    def parse_arguments(self, arguments: str) -> dict[str, Any]:
        """The model's JSON arguments, checked against :attr:`parameters`.

        Raises:
            ToolError: not JSON, not an object, a missing/unknown argument or a wrong type.
        """
        try:
            value = json.loads(arguments or "{}")
        except (ValueError, RecursionError) as exc:
            raise ToolError(f"arguments are not valid JSON: {exc}") from None
        if not isinstance(value, dict):
            raise ToolError("arguments must be a JSON object")
        properties: dict[str, Any] = self.parameters["properties"]
        unknown = sorted(set(value) - set(properties))
        if unknown:
            raise ToolError(f"unknown argument(s): {', '.join(unknown)}")
        missing = [name for name in self.parameters.get("required", []) if name not in value]
        if missing:
            raise ToolError(f"missing argument(s): {', '.join(missing)}")
        for name, arg in value.items():
            if arg is None and name in self.parameters.get("required", []):
                raise ToolError(f"argument {name!r} may not be null")
            problem = _type_problem(arg, properties[name])
            if problem:
                raise ToolError(f"argument {name!r} {problem}")
        for name in self.none_if_missing:
            value.setdefault(name, None)
        return value


@overload
def tool(func: Callable[..., Any], /) -> Tool: ...
@overload
def tool(
    *, name: str | None = None, timeout_s: float | None = None
) -> Callable[[Callable[..., Any]], Tool]: ...


def tool(
    func: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    timeout_s: float | None = None,
) -> Tool | Callable[[Callable[..., Any]], Tool]:
    """Make ``func`` a :class:`Tool`: ``@tool`` or ``@tool(name=..., timeout_s=...)``.

    Raises:
        TypeError: a parameter without a supported annotation, or a bad name.
    """

    def make(f: Callable[..., Any]) -> Tool:
        return _make_tool(f, name or f.__name__, timeout_s)

    return make if func is None else make(func)


def load_tools(module_name: str) -> list[Tool]:
    """Every :class:`Tool` defined at the top level of ``module_name`` (``AGENT_TOOLS``).

    Raises:
        ConfigError: the module cannot be imported, has no tools, or a name is reserved or taken
        twice (one line naming ``AGENT_TOOLS`` and the fix).
    """
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # any import-time error of user code is a configuration error
        raise ConfigError(
            f"AGENT_TOOLS={module_name!r}: cannot import it ({type(exc).__name__}: {exc}); "
            "set it to an importable module with @tool functions"
        ) from None
    tools = [value for value in vars(module).values() if isinstance(value, Tool)]
    if not tools:
        raise ConfigError(
            f"AGENT_TOOLS={module_name!r} defines no @tool functions "
            "(decorate them with acs_trio.tools.tool)"
        )
    seen: set[str] = set()
    for found in tools:
        if found.name in RESERVED_NAMES:
            raise ConfigError(
                f"AGENT_TOOLS={module_name!r}: tool name {found.name!r} is built in; rename it"
            )
        if found.name in seen:
            raise ConfigError(f"AGENT_TOOLS={module_name!r}: two tools are named {found.name!r}")
        seen.add(found.name)
    return tools


# --- schema from the signature and the docstring -------------------------------------------------


def _make_tool(func: Callable[..., Any], name: str, timeout_s: float | None) -> Tool:
    if not _NAME.fullmatch(name):
        raise TypeError(f"tool name {name!r} must be 1-64 letters, digits, '_' or '-'")
    if timeout_s is not None and not timeout_s > 0:
        raise TypeError(f"tool {name!r}: timeout_s must be positive")
    description, arg_docs = _parse_docstring(inspect.getdoc(func) or "")
    hints = typing.get_type_hints(func)
    properties: dict[str, Any] = {}
    required: list[str] = []
    none_if_missing: list[str] = []
    context_param: str | None = None
    for param in inspect.signature(func).parameters.values():
        if param.kind in {param.VAR_POSITIONAL, param.VAR_KEYWORD, param.POSITIONAL_ONLY}:
            raise TypeError(f"tool {name!r}: parameter {param.name!r} must be a named parameter")
        hint = hints.get(param.name)
        if hint is ToolContext or ToolContext in typing.get_args(hint):
            context_param = param.name
            continue
        if hint is None:
            raise TypeError(f"tool {name!r}: parameter {param.name!r} needs a type annotation")
        schema, optional = _schema_of(hint, f"tool {name!r} parameter {param.name!r}")
        if param.name in arg_docs:
            schema["description"] = arg_docs[param.name]
        properties[param.name] = schema
        if param.default is param.empty:
            (none_if_missing if optional else required).append(param.name)
    parameters: dict[str, Any] = {
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": False,
    }
    return Tool(
        name,
        description or name,
        parameters,
        func,
        context_param,
        timeout_s,
        tuple(none_if_missing),
    )


def _schema_of(hint: Any, where: str) -> tuple[dict[str, Any], bool]:
    """JSON schema of one annotation, and whether it admits None."""
    origin = typing.get_origin(hint)
    if origin in {typing.Union, types.UnionType}:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"{where}: only 'X | None' unions are supported")
        return _schema_of(args[0], where)[0], True
    if origin is Literal:
        values = list(typing.get_args(hint))
        kinds = {type(v) for v in values}
        if len(kinds) != 1 or next(iter(kinds)) not in _JSON_TYPES:
            raise TypeError(f"{where}: Literal values must all be str, int, float or bool")
        return {"type": _JSON_TYPES[next(iter(kinds))], "enum": values}, False
    if origin is list:
        (item,) = typing.get_args(hint) or (str,)
        return {"type": "array", "items": _schema_of(item, where)[0]}, False
    if hint in _JSON_TYPES:
        return {"type": _JSON_TYPES[hint]}, False
    raise TypeError(f"{where}: unsupported annotation {hint!r} (use str, int, float, bool, list)")


def _parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """First paragraph, and ``name: text`` entries of a Google-style ``Args:`` section."""
    paragraphs = doc.split("\n\n")
    description = " ".join(paragraphs[0].split()) if paragraphs and paragraphs[0] else ""
    args: dict[str, str] = {}
    in_args = False
    current: str | None = None
    for line in doc.splitlines():
        stripped = line.strip()
        if stripped in {"Args:", "Arguments:", "Parameters:"}:
            in_args, current = True, None
            continue
        if not in_args:
            continue
        if not stripped:
            current = None
            continue
        if not line.startswith((" ", "\t")):
            in_args = False  # the next section
            continue
        match = re.fullmatch(r"(\w+)(?:\s*\([^)]*\))?:\s*(.*)", stripped)
        if match:
            current = match[1]
            args[current] = match[2]
        elif current is not None:
            args[current] += " " + stripped
    return description, args


def _type_problem(value: Any, schema: Mapping[str, Any]) -> str | None:
    """Why ``value`` does not fit ``schema`` (the subset :func:`_schema_of` makes), or None."""
    if value is None:
        return None  # optional arguments may be null; required ones were checked for presence
    kind = schema.get("type")
    ok = {
        "string": isinstance(value, str),
        "integer": isinstance(value, int) and not isinstance(value, bool),
        "number": isinstance(value, int | float) and not isinstance(value, bool),
        "boolean": isinstance(value, bool),
        "array": isinstance(value, list),
    }.get(str(kind), True)
    if not ok:
        return f"must be a {kind}, not {type(value).__name__}"
    if "enum" in schema and value not in schema["enum"]:
        return f"must be one of {schema['enum']}"
    if kind == "array":
        for element in value:
            problem = _type_problem(element, schema.get("items", {}))
            if problem:
                return f"element {problem}"
    return None
