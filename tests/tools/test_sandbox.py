"""The sandbox, attacked for real: network, file system, processes, memory, CPU, output, env.

Every test runs real bubblewrap. If this machine cannot create sandboxes, each test instead
asserts the clear refusal (see ``conftest.py``); nothing here ever runs unsandboxed.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Sequence
from pathlib import Path

import psutil
import pytest

from avm.tools.sandbox import Sandbox, SandboxLimits, SandboxResult, SandboxUnavailable


def make_dir(path: Path) -> None:
    path.mkdir(exist_ok=True)


def exists(path: str | Path) -> bool:
    return os.path.lexists(path)


async def sh(
    sandbox: Sandbox, script: str, workspace: Path, **kwargs: object
) -> SandboxResult | None:
    return await run(sandbox, ["sh", "-c", script], workspace, **kwargs)


async def run(
    sandbox: Sandbox, command: Sequence[str], workspace: Path, **kwargs: object
) -> SandboxResult | None:
    """Run in the sandbox; where it is unavailable, assert the refusal and return None."""
    make_dir(workspace)
    if sandbox.available is False:
        with pytest.raises(SandboxUnavailable, match=r"bubblewrap|bwrap|namespace"):
            await sandbox.run(command, workspace=workspace, **kwargs)  # type: ignore[arg-type]
        return None
    return await sandbox.run(command, workspace=workspace, agent_id="agent-1", **kwargs)  # type: ignore[arg-type]


async def python(
    sandbox: Sandbox, code: str, workspace: Path, **kwargs: object
) -> SandboxResult | None:
    make_dir(workspace)
    if sandbox.available is False:
        with pytest.raises(SandboxUnavailable):
            await sandbox.run_python(code, workspace=workspace, **kwargs)  # type: ignore[arg-type]
        return None
    return await sandbox.run_python(code, workspace=workspace, agent_id="agent-1", **kwargs)  # type: ignore[arg-type]


async def test_missing_bubblewrap_is_refused_never_bypassed(tmp_path: Path) -> None:
    sb = Sandbox(bwrap="/nonexistent/bwrap")
    marker = tmp_path / "ran"
    with pytest.raises(SandboxUnavailable, match=r"bwrap.*bubblewrap.*never runs"):
        await sb.run(["touch", str(marker)], workspace=tmp_path)
    with pytest.raises(SandboxUnavailable):
        await sb.run_python("open('x', 'w')", workspace=tmp_path)
    assert not marker.exists()
    assert sb.available is False
    assert "bubblewrap" in sb.unavailable_reason


async def test_command_runs_in_workspace(sandbox: Sandbox, tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    result = await sh(sandbox, "echo hello > greeting.txt; pwd; cat greeting.txt", ws)
    if result is None:
        return
    assert result.ok, result
    assert result.stdout == "/workspace\nhello\n"
    assert (ws / "greeting.txt").read_text() == "hello\n"


async def test_python_snippet(sandbox: Sandbox, tmp_path: Path) -> None:
    result = await python(
        sandbox, "import sys; print(sum(range(10)), sys.flags.isolated)", tmp_path / "ws"
    )
    if result is None:
        return
    assert result.ok, result
    assert result.stdout == "45 1\n"


async def test_no_network_even_to_host_loopback(sandbox: Sandbox, tmp_path: Path) -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    try:
        code = (
            "import socket\n"
            "s = socket.socket()\n"
            "s.settimeout(3)\n"
            "try:\n"
            f"    s.connect(('127.0.0.1', {port}))\n"
            "    print('CONNECTED')\n"
            "except OSError as e:\n"
            "    print('refused', e.errno)\n"
            "try:\n"
            "    socket.getaddrinfo('example.com', 80)\n"
            "    print('DNS')\n"
            "except OSError:\n"
            "    print('no dns')\n"
        )
        result = await python(sandbox, code, tmp_path / "ws")
    finally:
        server.close()
    if result is None:
        return
    assert "CONNECTED" not in result.stdout
    assert "refused" in result.stdout
    assert "no dns" in result.stdout


async def test_cannot_write_outside_workspace(sandbox: Sandbox, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    targets = f"/usr/evil /etc/evil /evil /bin/evil {outside}/evil /proc/sys/kernel/hostname"
    script = (
        f"for p in {targets}; do "
        '  (echo x > "$p") 2>/dev/null && echo "WROTE $p"; '
        "done; echo x > /tmp/private && echo tmp-ok"
    )
    result = await sh(sandbox, script, tmp_path / "ws")
    if result is None:
        return
    assert "WROTE" not in result.stdout, result.stdout
    assert "tmp-ok" in result.stdout  # /tmp is writable, but private to the sandbox
    assert not exists(outside / "evil")
    assert not exists("/tmp/private")
    assert not exists("/usr/evil")


async def test_host_secrets_are_not_visible(sandbox: Sandbox, tmp_path: Path) -> None:
    result = await sh(
        sandbox,
        "cat /etc/shadow; cat /etc/passwd; ls /root /home; ls /proc | grep -c '^[0-9]'",
        tmp_path / "ws",
    )
    if result is None:
        return
    assert "root:" not in result.stdout
    assert "No such file" in result.stderr
    # Only the sandbox's own processes exist in its pid namespace.
    assert int(result.stdout.strip().splitlines()[-1]) <= 4


async def test_environment_is_scrubbed_and_injected(
    sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AVM_HOST_ONLY", "host-value-should-not-leak")
    result = await run(sandbox, ["env"], tmp_path / "ws", env={"INJECTED": "yes"})
    if result is None:
        return
    names = {line.split("=", 1)[0] for line in result.stdout.splitlines()}
    assert "AVM_HOST_ONLY" not in names
    assert "INJECTED=yes" in result.stdout
    assert names <= {"PATH", "HOME", "LANG", "TMPDIR", "PYTHONDONTWRITEBYTECODE", "PWD", "INJECTED"}


async def test_fork_bomb_hits_the_process_limit(sandbox: Sandbox, tmp_path: Path) -> None:
    code = (
        "import os\n"
        "n = 0\n"
        "try:\n"
        "    for _ in range(10_000):\n"
        "        if os.fork() == 0:\n"
        "            import time; time.sleep(30); os._exit(0)\n"
        "        n += 1\n"
        "except OSError as e:\n"
        "    print('limited after', n, e.strerror)\n"
    )
    limits = SandboxLimits(processes=20, wall_timeout_s=15)
    started = time.monotonic()
    result = await python(sandbox, code, tmp_path / "ws", limits=limits)
    if result is None:
        return
    assert "limited after" in result.stdout, result
    forked = int(result.stdout.split()[2])
    assert forked < 20
    assert time.monotonic() - started < 15  # limited, not timed out
    await asyncio.sleep(0.2)
    owner = sandbox.owner_for("agent-1")
    if owner is not None:  # and nothing of it is left behind
        assert not [p for p in psutil.process_iter(["uids"]) if p.info["uids"].real == owner[0]]


async def test_memory_hog_is_stopped(sandbox: Sandbox, tmp_path: Path) -> None:
    code = "blocks = []\nwhile True:\n    blocks.append(bytearray(64 << 20))\n"
    limits = SandboxLimits(memory_bytes=256 << 20)
    result = await python(sandbox, code, tmp_path / "ws", limits=limits)
    if result is None:
        return
    assert result.exit_code != 0
    assert "MemoryError" in result.stderr


async def test_runaway_cpu_is_killed_by_the_cpu_limit(sandbox: Sandbox, tmp_path: Path) -> None:
    limits = SandboxLimits(cpu_s=1, wall_timeout_s=20)
    result = await python(sandbox, "while True:\n    pass\n", tmp_path / "ws", limits=limits)
    if result is None:
        return
    assert not result.timed_out
    assert result.exit_code != 0
    assert result.duration_s < 10


async def test_wall_timeout_kills_the_whole_group(sandbox: Sandbox, tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    # A duration no other process on the machine uses, so the leftover check finds only ours.
    script = "(sleep 59.317; echo late > late.txt) & (sh -c 'sleep 59.317' &) ; sleep 59.317"
    limits = SandboxLimits(wall_timeout_s=0.5)
    result = await sh(sandbox, script, ws, limits=limits)
    if result is None:
        return
    assert result.timed_out
    assert result.duration_s < 5
    await asyncio.sleep(0.3)
    leftovers = [
        p for p in psutil.process_iter(["cmdline"]) if p.info["cmdline"] == ["sleep", "59.317"]
    ]
    assert not leftovers
    assert not (ws / "late.txt").exists()


async def test_huge_output_is_truncated(sandbox: Sandbox, tmp_path: Path) -> None:
    limits = SandboxLimits(output_bytes=10_000)
    result = await python(
        sandbox, "import sys\nsys.stdout.write('x' * 5_000_000)\n", tmp_path / "ws", limits=limits
    )
    if result is None:
        return
    assert result.ok
    assert result.stdout_truncated
    assert result.stdout.startswith("x" * 10_000)
    assert "[output truncated" in result.stdout
    assert len(result.stdout) < 10_200


async def test_file_size_limit(sandbox: Sandbox, tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    limits = SandboxLimits(file_size_bytes=1 << 20)
    result = await sh(sandbox, "head -c 5000000 /dev/zero > big; echo $?", ws, limits=limits)
    if result is None:
        return
    assert (ws / "big").stat().st_size <= 1 << 20


async def test_stdin_reaches_the_program(sandbox: Sandbox, tmp_path: Path) -> None:
    result = await run(sandbox, ["wc", "-c"], tmp_path / "ws", stdin=b"12345")
    if result is None:
        return
    assert result.stdout.strip() == "5"


async def test_invalid_arguments(sandbox: Sandbox, tmp_path: Path) -> None:
    from avm.errors import InvalidArgument

    with pytest.raises(InvalidArgument):
        await sandbox.run([], workspace=tmp_path)
    if sandbox.available:
        with pytest.raises(InvalidArgument, match="not valid"):
            await sandbox.run(["true"], workspace=tmp_path, env={"BAD NAME": "x"})
        with pytest.raises(InvalidArgument, match="does not exist"):
            await sandbox.run(["true"], workspace=tmp_path / "missing")
        link = tmp_path / "link"
        link.symlink_to(tmp_path)
        with pytest.raises(InvalidArgument, match="symlink"):
            await sandbox.run(["true"], workspace=link)


async def test_cancelled_run_leaves_nothing_behind(sandbox: Sandbox, tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    if not sandbox.available:
        return
    task = asyncio.ensure_future(sandbox.run(["sleep", "61"], workspace=ws, agent_id="agent-1"))
    await asyncio.sleep(0.3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.3)
    assert not [p for p in psutil.process_iter(["cmdline"]) if p.info["cmdline"] == ["sleep", "61"]]
