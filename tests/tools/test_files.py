"""read_file / write_file: confined to the agent's workspace, symlinks and '..' refused."""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

import pytest

from avm.errors import CapabilityDenied, InvalidArgument, NotFound
from avm.keys import KeyManager
from avm.tools.builtin import Workspaces, read_file_tool, write_file_tool
from avm.tools.registry import Tool, ToolInvocation
from avm.tools.sandbox import Sandbox


def lexists(path: str) -> bool:
    return os.path.lexists(path)


def inv(agent: str = "agent-1", step: int = 0) -> ToolInvocation:
    return ToolInvocation(agent, step, f"{agent}:{step}")


async def read(tool: Tool, query: Any, agent: str = "agent-1") -> Any:
    return await tool.call_read(query, inv(agent))


async def write(tool: Tool, data: Any, agent: str = "agent-1") -> Any:
    return await tool.call_write(data, inv(agent))


@pytest.fixture
def tools(workspaces: Workspaces, keys: KeyManager) -> tuple[Tool, Tool]:
    return read_file_tool(workspaces, redactor=keys.redactor), write_file_tool(workspaces)


async def test_write_then_read(tools: tuple[Tool, Tool], workspaces: Workspaces) -> None:
    reader, writer = tools
    assert await write(writer, {"path": "notes/day1.md", "content": "hello"}) == {
        "path": "notes/day1.md",
        "size": 5,
    }
    await write(writer, {"path": "notes/day1.md", "content": " world", "append": True})
    result = await read(reader, "notes/day1.md")
    assert result["content"] == "hello world"
    assert result["encoding"] == "utf-8"
    assert (workspaces.path("agent-1") / "notes" / "day1.md").read_text() == "hello world"
    blob = bytes(range(256))
    await write(
        writer, {"path": "b.bin", "content": base64.b64encode(blob).decode(), "encoding": "base64"}
    )
    got = await read(reader, {"path": "b.bin"})
    assert got["encoding"] == "base64"
    assert base64.b64decode(got["content"]) == blob


async def test_agents_do_not_share_workspaces(tools: tuple[Tool, Tool]) -> None:
    reader, writer = tools
    await write(writer, {"path": "diary.txt", "content": "mine"}, agent="alice")
    with pytest.raises(NotFound):
        await read(reader, "diary.txt", agent="bob")


@pytest.mark.parametrize("path", ["../x", "a/../../x", "/etc/passwd", "a/../b", "..", "/"])
async def test_escapes_by_path_are_refused(tools: tuple[Tool, Tool], path: str) -> None:
    reader, writer = tools
    with pytest.raises((CapabilityDenied, InvalidArgument)):
        await read(reader, path)
    with pytest.raises((CapabilityDenied, InvalidArgument)):
        await write(writer, {"path": path, "content": "x"})


async def test_symlinks_anywhere_in_the_path_are_refused(
    tools: tuple[Tool, Tool], workspaces: Workspaces, tmp_path: Path
) -> None:
    reader, writer = tools
    root = workspaces.path("agent-1")
    secret = tmp_path / "host-secret.txt"
    secret.write_text("host data")
    (root / "link.txt").symlink_to(secret)
    (root / "dirlink").symlink_to(tmp_path)
    (root / "real").mkdir()
    (root / "real" / "inner").symlink_to("/etc")
    for path in ("link.txt", "dirlink/host-secret.txt", "real/inner/passwd"):
        with pytest.raises(CapabilityDenied, match="symlink"):
            await read(reader, path)
        with pytest.raises(CapabilityDenied, match="symlink"):
            await write(writer, {"path": path, "content": "overwrite"})
    assert secret.read_text() == "host data"


async def test_symlink_planted_by_the_sandbox_is_refused(
    tools: tuple[Tool, Tool], workspaces: Workspaces, sandbox: Sandbox
) -> None:
    """The classic: the agent's own process links to a host path the file tools would follow."""
    reader, writer = tools
    root = workspaces.path("agent-1")
    if not sandbox.available:
        return
    result = await sandbox.run(
        ["sh", "-c", "ln -s /etc/shadow shadow; ln -s / rootfs; mkdir d; ln -s /etc d/e"],
        workspace=root,
        agent_id="agent-1",
    )
    assert result.ok, result
    for path in ("shadow", "rootfs/etc/passwd", "d/e/passwd"):
        with pytest.raises(CapabilityDenied):
            await read(reader, path)
    with pytest.raises(CapabilityDenied):
        await write(writer, {"path": "rootfs/tmp/pwned", "content": "x"})
    assert not lexists("/tmp/pwned")


async def test_special_files_and_hard_links(
    tools: tuple[Tool, Tool], workspaces: Workspaces, tmp_path: Path
) -> None:
    reader, writer = tools
    root = workspaces.path("agent-1")
    os.mkfifo(root / "fifo")
    with pytest.raises(CapabilityDenied, match="regular file"):
        await read(reader, "fifo")  # refused at once, not blocked on
    outside = tmp_path / "outside.txt"
    outside.write_text("original")
    os.link(outside, root / "hard.txt")
    with pytest.raises(CapabilityDenied, match="hard links"):
        await write(writer, {"path": "hard.txt", "content": "changed"})
    assert outside.read_text() == "original"
    (root / "sub").mkdir()
    with pytest.raises(InvalidArgument, match="directory"):
        await read(reader, "sub")


async def test_read_is_capped_and_redacted(workspaces: Workspaces, keys: KeyManager) -> None:
    keys.set("api", "sk-very-secret-api-key-0001")
    reader = read_file_tool(workspaces, max_bytes=100, redactor=keys.redactor)
    root = workspaces.path("agent-1")
    (root / "log.txt").write_text("token=sk-very-secret-api-key-0001\n" + "y" * 500)
    result = await read(reader, "log.txt")
    assert result["truncated"]
    assert result["size"] == 534
    assert "sk-very-secret" not in result["content"]
    assert "token=[REDACTED:api]" in result["content"]


def test_workspace_names_are_safe(tmp_path: Path) -> None:
    ws = Workspaces(tmp_path)
    assert ws.dirname("trader-1") == "trader-1"
    for weird in ("../x", "a/b", "..", ".hidden", "ü"):
        name = ws.dirname(weird)
        assert name.startswith("~")
        assert "/" not in name
        assert ws.path(weird).parent == tmp_path
    assert ws.dirname("a/b") != ws.dirname("a_b")
