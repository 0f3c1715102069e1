"""The execute tool: secrets in a sandboxed process's environment, and what comes back out."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from avm import Context
from avm.errors import CapabilityDenied, InvalidArgument
from avm.keys import KeyManager, SecretHandle
from avm.tools.builtin import Workspaces, execute_tool
from avm.tools.registry import Tool, ToolInvocation
from avm.tools.sandbox import Sandbox, SandboxUnavailable

SECRET = "sk-exec-4b7d1e9a2c6f8035"


def inv(agent: str = "agent-1", step: int = 0) -> ToolInvocation:
    return ToolInvocation(agent, step, f"{agent}:{step}")


@pytest.fixture
def execute(sandbox: Sandbox, workspaces: Workspaces, keys: KeyManager) -> Tool:
    keys.set("api-key", SECRET)
    keys.grant("api-key", tool="execute", agent="agent-1")
    return execute_tool(sandbox, workspaces, keys=keys)


async def call(tool: Tool, sandbox: Sandbox, data: Any, agent: str = "agent-1") -> Any:
    if not sandbox.available:
        with pytest.raises(SandboxUnavailable):
            await tool.call_write(data, inv(agent))
        return None
    return await tool.call_write(data, inv(agent))


async def test_a_tool_that_echoes_its_environment_leaks_nothing(
    execute: Tool, sandbox: Sandbox
) -> None:
    code = (
        "import base64, os, sys\n"
        "v = os.environ['API_KEY']\n"
        "print(dict(os.environ))\n"
        "print('b64', base64.b64encode(('prefix:' + v).encode()).decode())\n"
        "print('hex', v.encode().hex())\n"
        "print('raw', v, file=sys.stderr)\n"
        "print('len', len(v))\n"
    )
    result = await call(
        execute, sandbox, {"python": code, "env": {"API_KEY": SecretHandle("api-key")}}
    )
    if result is None:
        return
    assert result["exit_code"] == 0, result
    everything = repr(result)
    assert SECRET not in everything
    assert SECRET.encode().hex() not in everything
    assert base64.b64encode(SECRET.encode()).decode()[:16] not in everything
    assert "'API_KEY': '[REDACTED:api-key]'" in result["stdout"]
    assert "hex [REDACTED:api-key]" in result["stdout"]
    assert "raw [REDACTED:api-key]" in result["stderr"]
    assert f"len {len(SECRET)}" in result["stdout"]  # the process did get the real value


async def test_secret_not_granted_to_the_tool_or_agent(
    execute: Tool, sandbox: Sandbox, keys: KeyManager
) -> None:
    data = {"command": "env", "env": {"API_KEY": {"$secret": "api-key"}}}
    with pytest.raises(CapabilityDenied):
        await execute.call_write(data, inv("agent-2"))
    keys.revoke("api-key", tool="execute", agent="agent-1")
    keys.grant("api-key", tool="http", agent="agent-1")
    with pytest.raises(CapabilityDenied, match="for tool 'execute'"):
        await execute.call_write(data, inv("agent-1"))


async def test_command_forms_and_validation(execute: Tool, sandbox: Sandbox) -> None:
    result = await call(execute, sandbox, {"command": ["echo", "a b"]})
    if result is not None:
        assert result["stdout"] == "a b\n"
        result = await call(execute, sandbox, {"command": "echo $((6 * 7))", "timeout_s": 5})
        assert result["stdout"] == "42\n"
        result = await call(
            execute,
            sandbox,
            {"python": "import sys; print(sys.argv[1:], input())", "args": ["x"], "stdin": "in\n"},
        )
        assert result["stdout"] == "['x'] in\n"
    bad_calls: list[dict[str, Any]] = [
        {},
        {"command": "x", "python": "y"},
        {"command": 5},
        {"python": "1", "timeout_s": -1},
        {"command": "x", "shell": True},
        {"command": "x", "env": {"A": 1}},
    ]
    for bad in bad_calls:
        with pytest.raises(InvalidArgument):
            await execute.call_write(bad, inv())


async def test_execute_from_an_agent_in_the_vm(
    vm: Any, sandbox: Sandbox, workspaces: Workspaces, keys: KeyManager
) -> None:
    keys.set("api-key", SECRET)
    keys.grant("api-key", tool="execute", definition="coder")
    keys.definition_of = lambda agent_id: agent_id.rsplit("-", 1)[0]  # ids are NAME-N
    vm.tools.add(execute_tool(sandbox, workspaces, keys=keys))

    @vm.agent(name="coder", tools=["execute"])
    async def coder(ctx: Context, key: SecretHandle) -> Any:
        return await ctx.write_to_tool(
            "execute", {"command": "echo $TOKEN > token.txt; cat token.txt", "env": {"TOKEN": key}}
        )

    handle = vm.spawn(coder, key=keys.handle("api-key"))
    if not sandbox.available:
        with pytest.raises(Exception, match=r"bubblewrap|namespace"):
            await handle.result()
        return
    result = await handle.result()
    assert result["stdout"] == "[REDACTED:api-key]\n"
    # The process really had the value: it wrote it into its own workspace.
    assert (workspaces.path(handle.id) / "token.txt").read_text() == SECRET + "\n"
