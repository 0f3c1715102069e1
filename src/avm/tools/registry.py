"""The tool registry: named tools an agent reads from and writes to.

A tool is one or two async Python functions (``read(query)``, ``write(data)``) with a
description and a JSON Schema of its input. A function that declares a keyword parameter named
``invocation`` also receives a :class:`ToolInvocation` telling it which agent and step called it
and the idempotency key of that call, derived from (agent, step), so a tool can recognise a
write it has already applied.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec

from avm.errors import ConfigError, NotFound

__all__ = ["Tool", "ToolFunction", "ToolInfo", "ToolInvocation", "ToolRegistry"]

ToolFunction = Callable[..., Awaitable[Any]]
ToolKind = Literal["read", "write", "both"]


class ToolInvocation(msgspec.Struct, frozen=True):
    agent_id: str
    step: int
    idempotency_key: str


class ToolInfo(msgspec.Struct, frozen=True):
    """What ``GET_TOOLS_LIST`` tells an agent about one tool."""

    name: str
    description: str
    can_read: bool
    can_write: bool
    parameters: dict[str, Any]


def _wants_invocation(fn: ToolFunction) -> bool:
    try:
        return "invocation" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


#: ``confine(name, hosts, owner)``: a copy of a network tool named ``name`` that reaches only
#: ``hosts`` (of those the tool may reach), as template ``owner`` declared them.
Confine = Callable[[str, frozenset[str], str], "Tool"]


@dataclass(slots=True)
class Tool:
    """A named tool. ``confine`` is set by tools that reach the network through AVM's HTTP
    boundary (the ``http`` tool, service connectors): the assembler uses it to give a
    template's agents a copy limited to the hosts the template declares."""

    name: str
    description: str = ""
    read: ToolFunction | None = None
    write: ToolFunction | None = None
    parameters: dict[str, Any] = field(default_factory=lambda: {"type": "object"})
    confine: Confine | None = None
    _read_wants: bool = False
    _write_wants: bool = False

    def __post_init__(self) -> None:
        for fn in (self.read, self.write):
            if fn is not None and not inspect.iscoroutinefunction(fn):
                raise ConfigError(f"tool {self.name!r}: {fn!r} must be an async function")
        self._read_wants = self.read is not None and _wants_invocation(self.read)
        self._write_wants = self.write is not None and _wants_invocation(self.write)

    def info(self) -> ToolInfo:
        return ToolInfo(
            self.name, self.description, self.read is not None, self.write is not None,
            self.parameters,
        )  # fmt: skip

    async def call_read(self, query: Any, invocation: ToolInvocation) -> Any:
        assert self.read is not None
        if self._read_wants:
            return await self.read(query, invocation=invocation)
        return await self.read(query)

    async def call_write(self, data: Any, invocation: ToolInvocation) -> Any:
        assert self.write is not None
        if self._write_wants:
            return await self.write(data, invocation=invocation)
        return await self.write(data)


class ToolRegistry:
    def __init__(self) -> None:
        self._tools: dict[str, Tool] = {}

    def add(self, tool: Tool) -> Tool:
        existing = self._tools.get(tool.name)
        if existing is not None:
            # One name, a reader and a writer registered separately: merge them.
            if (tool.read and existing.read) or (tool.write and existing.write):
                raise ConfigError(f"tool {tool.name!r} is already registered")
            existing.read = existing.read or tool.read
            existing.write = existing.write or tool.write
            existing.description = existing.description or tool.description
            existing.__post_init__()
            return existing
        self._tools[tool.name] = tool
        return tool

    def register(
        self,
        name: str,
        *,
        kind: ToolKind = "read",
        description: str = "",
        parameters: dict[str, Any] | None = None,
    ) -> Callable[[ToolFunction], ToolFunction]:
        """Decorator: register an async function as a tool's reader, writer, or both."""

        def decorate(fn: ToolFunction) -> ToolFunction:
            self.add(
                Tool(
                    name=name,
                    description=description or (inspect.getdoc(fn) or "").split("\n")[0],
                    read=fn if kind in ("read", "both") else None,
                    write=fn if kind in ("write", "both") else None,
                    parameters=parameters or {"type": "object"},
                )
            )
            return fn

        return decorate

    def replace(self, tool: Tool) -> Tool:
        """Register ``tool``, replacing any tool of that name (a template registered again)."""
        self._tools[tool.name] = tool
        return tool

    def get(self, name: str) -> Tool:
        tool = self._tools.get(name)
        if tool is None:
            known = ", ".join(sorted(self._tools)) or "none"
            raise NotFound(f"unknown tool {name!r} (registered: {known})")
        return tool

    def names(self) -> Iterable[str]:
        return self._tools.keys()

    def infos(self, allowed: frozenset[str] | None) -> list[ToolInfo]:
        return [
            tool.info()
            for name, tool in sorted(self._tools.items())
            if allowed is None or name in allowed
        ]
