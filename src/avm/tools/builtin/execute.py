"""The ``execute`` tool: a command or a Python snippet, run in the agent's sandbox.

``WRITE_TO_TOOL("execute", {"python": "print(1 + 1)"})`` or ``{"command": ["ls", "-l"]}``
(a string command runs under ``sh -c``). The process runs under :class:`~avm.tools.sandbox.Sandbox`
with the agent's workspace as its directory; variables in ``env`` may be secret handles, which
are revealed into the process's environment only if the secret is granted for this tool. What
the process prints comes back redacted, so ``env`` or ``print(os.environ)`` shows
``[REDACTED:name]``, never the value.

It is a *write* tool: running code is an effect, journaled like any other, and a replayed
agent gets the recorded result instead of running the code again.
"""

from __future__ import annotations

from typing import Any

import msgspec

from avm.errors import InvalidArgument
from avm.keys.handles import as_handle
from avm.keys.manager import KeyManager
from avm.tools.builtin.workspace import Workspaces
from avm.tools.registry import Tool, ToolInvocation
from avm.tools.sandbox import Sandbox, SandboxLimits

__all__ = ["execute_tool"]

_FIELDS = {"command", "python", "args", "stdin", "timeout_s", "env"}


def execute_tool(
    sandbox: Sandbox,
    workspaces: Workspaces,
    *,
    keys: KeyManager | None = None,
    limits: SandboxLimits | None = None,
    name: str = "execute",
) -> Tool:
    """The sandboxed ``execute`` tool; ``limits`` (default: the sandbox's) cap every run."""
    base = limits or sandbox.limits

    def environment(raw: Any, invocation: ToolInvocation) -> dict[str, str]:
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            raise InvalidArgument("env must be an object of NAME: value")
        env: dict[str, str] = {}
        for var, value in raw.items():
            handle = as_handle(value)
            if handle is not None:
                if keys is None:
                    raise InvalidArgument(f"{name}: no key manager to resolve {handle}")
                env[var] = keys.reveal(handle, agent_id=invocation.agent_id, tool=name)
            elif isinstance(value, str):
                env[var] = value
            else:
                raise InvalidArgument(f"env {var} must be a string or a secret handle")
        return env

    async def run(data: Any, *, invocation: ToolInvocation) -> dict[str, Any]:
        if isinstance(data, str):
            data = {"command": data}
        if not isinstance(data, dict):
            raise InvalidArgument(f"{name} takes an object with 'command' or 'python'")
        unknown = set(data) - _FIELDS
        if unknown:
            raise InvalidArgument(f"{name} does not take {', '.join(sorted(unknown))}")
        if ("command" in data) == ("python" in data):
            raise InvalidArgument(f"{name} takes exactly one of 'command' or 'python'")
        limits = base
        if "timeout_s" in data:
            timeout = data["timeout_s"]
            if not isinstance(timeout, (int, float)) or not timeout > 0:
                raise InvalidArgument("timeout_s must be a positive number")
            limits = msgspec.structs.replace(
                base, wall_timeout_s=min(float(timeout), base.wall_timeout_s)
            )
        stdin = data.get("stdin")
        if stdin is not None and not isinstance(stdin, str):
            raise InvalidArgument("stdin must be a string")
        stdin_bytes = None if stdin is None else stdin.encode("utf-8")
        env = environment(data.get("env"), invocation)
        workspace = workspaces.path(invocation.agent_id)
        if "python" in data:
            code, args = data["python"], data.get("args", [])
            if not isinstance(code, str):
                raise InvalidArgument("python must be a string of code")
            if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
                raise InvalidArgument("args must be a list of strings")
            result = await sandbox.run_python(
                code, workspace=workspace, env=env, stdin=stdin_bytes, limits=limits,
                agent_id=invocation.agent_id, args=args,
            )  # fmt: skip
        else:
            command = data["command"]
            if isinstance(command, str):
                command = ["sh", "-c", command]
            if not isinstance(command, list) or not all(isinstance(a, str) for a in command):
                raise InvalidArgument("command must be a string or a list of strings")
            result = await sandbox.run(
                command, workspace=workspace, env=env, stdin=stdin_bytes, limits=limits,
                agent_id=invocation.agent_id,
            )  # fmt: skip
        out = msgspec.structs.asdict(result)
        return out if keys is None else keys.redact(out)

    return Tool(
        name=name,
        description=(
            "Run a shell command or a Python snippet in your sandbox (no network; your "
            f"workspace is the current directory; {base.cpu_s} s CPU, "
            f"{base.wall_timeout_s:g} s wall clock)."
        ),
        write=run,
        parameters={
            "type": "object",
            "properties": {
                "command": {
                    "oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]
                },
                "python": {"type": "string"},
                "args": {"type": "array", "items": {"type": "string"}},
                "stdin": {"type": "string"},
                "timeout_s": {"type": "number", "exclusiveMinimum": 0},
                "env": {"type": "object", "description": 'values: strings or {"$secret": NAME}'},
            },
            "additionalProperties": False,
        },
    )
