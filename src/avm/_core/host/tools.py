"""Tools: GET_TOOLS_LIST, READ_FROM_TOOL, WRITE_TO_TOOL.

A tool's own exceptions become :class:`ToolError` here, at the tool boundary. Writes carry an
idempotency key derived from (agent, step), stable across replays, so a tool can recognise a
write it already applied.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from avm._core.gas import to_mgas
from avm._core.host import Host, flat, free, passthrough
from avm._core.isa import Op
from avm._core.journal import encode_value
from avm._core.process import AgentProcess
from avm._core.runtime import Runtime
from avm.errors import AvmError, CapabilityDenied, InvalidArgument, ToolError
from avm.tools.registry import Tool, ToolInvocation


async def _list(rt: Runtime, proc: AgentProcess, args: Any, step: int) -> Any:
    infos = rt.tools.infos(proc.definition.capabilities.tools)
    return infos, to_mgas(rt.prices.get_tools_list)


class _Call(NamedTuple):
    tool: Tool
    payload: Any
    size: int


def _tool(rt: Runtime, proc: AgentProcess, name: str, mode: str) -> Tool:
    proc.definition.capabilities.check_tool(name)
    tool = rt.tools.get(name)
    if (tool.read if mode == "read" else tool.write) is None:
        raise CapabilityDenied(f"tool {name!r} cannot be {mode}")
    return tool


def _prepare_read(rt: Runtime, proc: AgentProcess, args: tuple[Any, ...]) -> _Call:
    return _Call(_tool(rt, proc, args[0], "read"), args[1], 0)


def _prepare_write(rt: Runtime, proc: AgentProcess, args: tuple[Any, ...]) -> _Call:
    tool = _tool(rt, proc, args[0], "written to")
    return _Call(tool, args[1], len(encode_value(args[1], "data")))


def _invocation(proc: AgentProcess, step: int) -> ToolInvocation:
    return ToolInvocation(proc.id, step, f"{proc.id}:{step}")


def _result_size(tool: Tool, value: Any) -> int:
    try:
        return len(encode_value(value))
    except InvalidArgument as exc:
        raise ToolError(f"tool {tool.name!r} returned an unstorable value: {exc}") from None


async def _call(rt: Runtime, call: _Call, invocation: ToolInvocation, write: bool) -> Any:
    """Call the tool, translating its failures; with a key manager, nothing that leaves the
    tool (its result or its error) carries a secret value into the journal or the agent."""
    try:
        if write:
            value = await call.tool.call_write(call.payload, invocation)
        else:
            value = await call.tool.call_read(call.payload, invocation)
    except AvmError:
        raise
    except Exception as exc:
        message = f"tool {call.tool.name!r} failed: {type(exc).__name__}: {exc}"
        if rt.keys is not None:
            message = rt.keys.redactor.redact_text(message)
        raise ToolError(message) from None
    return value if rt.keys is None else rt.keys.redact(value)


async def _read(rt: Runtime, proc: AgentProcess, call: _Call, step: int) -> Any:
    value = await _call(rt, call, _invocation(proc, step), write=False)
    return value, to_mgas(rt.prices.read_tool_per_byte * _result_size(call.tool, value))


def _reserve_write(rt: Runtime, proc: AgentProcess, call: _Call) -> int:
    return to_mgas(rt.prices.write_tool_per_byte * call.size)


async def _write(rt: Runtime, proc: AgentProcess, call: _Call, step: int) -> Any:
    status = await _call(rt, call, _invocation(proc, step), write=True)
    _result_size(call.tool, status)
    return status, _reserve_write(rt, proc, call)


HOSTS = {
    Op.GET_TOOLS_LIST: Host(passthrough, flat(lambda rt: to_mgas(rt.prices.get_tools_list)), _list),
    Op.READ_FROM_TOOL: Host(_prepare_read, free, _read),
    Op.WRITE_TO_TOOL: Host(_prepare_write, _reserve_write, _write),
}
