"""The tool sandbox: run a command or a Python snippet under bubblewrap, or refuse to.

What a sandboxed process gets::

    /usr, /lib*, /bin  read-only, from the host        /workspace  the agent's own directory,
    /etc               ld.so cache, localtime and         read-write (the current directory)
                       alternatives only (no passwd,   /tmp        a private tmpfs, size-capped
                       no shadow, no ssl keys)         /proc /dev  fresh, the sandbox's own
    network            none: a new network namespace with only its own loopback
    processes          a new pid namespace (sees only itself), session and IPC namespace
    environment        exactly PATH, HOME, LANG, TMPDIR plus the variables the caller injects
    limits             CPU seconds, address space, processes, file size, open files (rlimits),
                       a wall-clock timeout that kills every process of the sandbox, and a cap
                       on the bytes of stdout/stderr kept (the rest is counted and dropped)

How the process tree is built, and why::

    VM ─► bwrap (own process group) ─► [setpriv → per-agent uid] ─► prlimit ─► command
            │  namespaces, mounts            root only                rlimits applied
            └─ pid 1 of the sandbox: when bwrap dies, the kernel kills everything inside

* Limits are applied by ``prlimit`` *inside* the sandbox rather than by ``setrlimit`` on bwrap:
  ``RLIMIT_NPROC`` counts every process of a user, and set on bwrap it would count the VM's own
  threads and processes; set inside a new user namespace the kernel counts only the sandbox's.
* When the VM runs as root, the kernel never enforces ``RLIMIT_NPROC`` for uid 0 (and a user
  namespace would map the sandbox back to uid 0), so bwrap runs privileged, without a user
  namespace, and ``setpriv`` drops the command to an unprivileged uid derived from the agent id,
  with no capabilities and ``no_new_privs``. As a bonus, two agents' processes are then
  different users to the kernel.
* Secrets reach the process through bwrap's *environment*, never its argv: argv is readable by
  every user on the host in ``/proc/PID/cmdline``, the environment only by the same user.
* A Python snippet is handed over in a sealed memory file (``--ro-bind-data``), not on the
  command line (size limits, ``ps``) nor on stdin (which stays the program's).

Nothing here ever runs a tool unsandboxed: :meth:`Sandbox.check` probes bubblewrap, the helper
programs and namespace support once, and every run before it succeeds raises
:class:`SandboxUnavailable` naming what is missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import signal
import stat
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import blake3
import msgspec

from avm.errors import InvalidArgument, SandboxUnavailable

__all__ = [
    "WORKSPACE",
    "Sandbox",
    "SandboxLimits",
    "SandboxResult",
    "SandboxUnavailable",
]

log = logging.getLogger(__name__)

WORKSPACE = "/workspace"
_SNIPPET = "/tmp/.avm-snippet.py"
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_BASE_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "HOME": WORKSPACE,
    "LANG": "C.UTF-8",
    "TMPDIR": "/tmp",
    "PYTHONDONTWRITEBYTECODE": "1",
}
_ETC = ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/localtime",
        "/etc/alternatives")  # fmt: skip
_TOP_DIRS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_READ_CHUNK = 64 * 1024
# Per-agent uids (root mode) are drawn from a range no distribution allocates: above the
# subordinate-id ranges that user namespaces of ordinary users take.
_UID_BASE = 0x6000_0000
_UID_SPAN = 1 << 24


class SandboxLimits(msgspec.Struct, frozen=True, kw_only=True):
    """Resource limits of one sandboxed run."""

    cpu_s: int = 10
    memory_bytes: int = 1 << 30  # address space: generous, Python maps a lot it never touches
    processes: int = 64
    file_size_bytes: int = 64 << 20
    open_files: int = 256
    wall_timeout_s: float = 30.0
    output_bytes: int = 1 << 20  # kept per stream
    tmp_bytes: int = 64 << 20

    def __post_init__(self) -> None:
        for name in self.__struct_fields__:
            if not getattr(self, name) > 0:
                raise InvalidArgument(f"sandbox limit {name} must be positive")


class SandboxResult(msgspec.Struct, frozen=True, kw_only=True):
    """How a sandboxed run ended and what it printed (possibly truncated)."""

    exit_code: int  # negative: killed by that signal (by the wall-clock timeout, say)
    stdout: str
    stderr: str
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    timed_out: bool = False
    duration_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out


class Sandbox:
    """Runs commands and Python snippets under bubblewrap with a fixed policy.

    ``python`` is the interpreter snippets run with (default: the system's ``/usr/bin/python3``,
    else this interpreter, whose prefix is then bound read-only). ``extra_ro_binds`` adds host
    paths visible read-only at the same place inside. ``limits`` are the defaults of every run.
    """

    def __init__(
        self,
        *,
        bwrap: str | None = None,
        python: str | None = None,
        limits: SandboxLimits | None = None,
        extra_ro_binds: Sequence[str] = (),
    ) -> None:
        self.limits = limits or SandboxLimits()
        self.privileged = os.geteuid() == 0
        self._bwrap = bwrap if bwrap is not None else shutil.which("bwrap")
        self._prlimit = shutil.which("prlimit")
        self._setpriv = shutil.which("setpriv")
        self._python, python_binds = _interpreter(python)
        self._binds = _root_binds([*python_binds, *extra_ro_binds])
        self._ready: bool | None = None
        self._reason = ""
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        mode = "privileged" if self.privileged else "user-namespace"
        state = {None: "unchecked", True: "ready", False: "unavailable"}[self._ready]
        return f"<Sandbox {mode} {state}>"

    @property
    def python(self) -> str:
        """The interpreter Python snippets run with, as seen inside the sandbox."""
        return self._python

    # -- availability --------------------------------------------------------------------------

    @property
    def available(self) -> bool | None:
        """True or False once :meth:`check` ran; None before."""
        return self._ready

    @property
    def unavailable_reason(self) -> str:
        return self._reason

    async def check(self) -> None:
        """Probe once that sandboxes can start here; raise :class:`SandboxUnavailable` if not."""
        async with self._lock:
            if self._ready is None:
                self._reason = await self._probe()
                self._ready = not self._reason
                if self._ready:
                    log.debug(
                        "sandbox ready (%s mode)", "privileged" if self.privileged else "userns"
                    )
                else:
                    log.warning("sandboxed tools unavailable: %s", self._reason)
        if not self._ready:
            raise SandboxUnavailable(self._reason)

    async def _probe(self) -> str:
        missing = [
            f"{name} ({package})"
            for name, path, package in (
                ("bwrap", self._bwrap, "Debian package bubblewrap"),
                ("prlimit", self._prlimit, "util-linux"),
                ("setpriv", self._setpriv if self.privileged else "", "util-linux"),
            )
            if path is None
        ]
        if self._bwrap is not None and not os.access(self._bwrap, os.X_OK):
            missing.append(f"bwrap at {self._bwrap} (not an executable file)")
        if missing:
            return (
                "sandboxed tools need " + ", ".join(missing) + ", which this machine lacks; "
                "install them (apt-get install -y bubblewrap util-linux). AVM never runs a "
                "sandboxed tool without its sandbox"
            )
        if not self.privileged:
            hint = _userns_blocker()
            if hint:
                return f"bubblewrap cannot create user namespaces here: {hint}"
        with tempfile.TemporaryDirectory(prefix="avm-sandbox-probe-") as tmp:
            workspace = Path(tmp)
            try:
                result = await self._spawn(
                    ["true"], workspace, {}, None, self.limits, "probe", None
                )
            except OSError as exc:
                return f"cannot start bubblewrap ({self._bwrap}): {exc}"
        if result.exit_code != 0:
            detail = (result.stderr.strip() or f"exit code {result.exit_code}")[:500]
            return (
                f"bubblewrap could not create a sandbox: {detail}. Sandboxes need the kernel "
                "to allow namespaces for this user (user.max_user_namespaces > 0, and no "
                "AppArmor/sysctl restriction on unprivileged user namespaces), or AVM to run "
                "as root with CAP_SYS_ADMIN"
            )
        return ""

    # -- running -------------------------------------------------------------------------------

    def owner_for(self, agent_id: str) -> tuple[int, int] | None:
        """The uid/gid an agent's sandboxed processes run as, when it differs from the VM's."""
        if not self.privileged:
            return None
        uid = (
            _UID_BASE
            + int.from_bytes(blake3.blake3(agent_id.encode()).digest(4), "big") % _UID_SPAN
        )
        return uid, uid

    async def run(
        self,
        command: Sequence[str],
        *,
        workspace: str | os.PathLike[str],
        env: Mapping[str, str] | None = None,
        stdin: bytes | None = None,
        limits: SandboxLimits | None = None,
        agent_id: str = "",
    ) -> SandboxResult:
        """Run ``command`` (argv, resolved on the sandbox's PATH) with ``workspace`` as its cwd."""
        if not command or not all(isinstance(a, str) and "\0" not in a for a in command):
            raise InvalidArgument("a sandboxed command is a non-empty list of strings without NUL")
        await self.check()
        return await self._spawn(
            list(command), _workspace(workspace), _env(env), stdin, limits or self.limits,
            agent_id, None,
        )  # fmt: skip

    async def run_python(
        self,
        code: str,
        *,
        workspace: str | os.PathLike[str],
        env: Mapping[str, str] | None = None,
        stdin: bytes | None = None,
        limits: SandboxLimits | None = None,
        agent_id: str = "",
        args: Sequence[str] = (),
    ) -> SandboxResult:
        """Run a Python snippet (isolated mode: no user site, no PYTHON* variables)."""
        await self.check()
        fd = os.memfd_create("avm-snippet", os.MFD_CLOEXEC)
        try:
            os.write(fd, code.encode("utf-8"))
            os.lseek(fd, 0, os.SEEK_SET)
            return await self._spawn(
                [self._python, "-I", "-B", _SNIPPET, *args], _workspace(workspace), _env(env),
                stdin, limits or self.limits, agent_id, fd,
            )  # fmt: skip
        finally:
            os.close(fd)

    def _argv(
        self, command: list[str], workspace: Path, limits: SandboxLimits, agent_id: str,
        data_fd: int | None,
    ) -> list[str]:  # fmt: skip
        assert self._bwrap is not None
        assert self._prlimit is not None
        argv = [
            self._bwrap,
            "--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts",
            "--unshare-cgroup-try", "--die-with-parent", "--new-session",
            "--hostname", "sandbox",
        ]  # fmt: skip
        if not self.privileged:
            argv += ["--unshare-user", "--disable-userns"]
        argv += self._binds
        argv += [
            "--proc", "/proc", "--dev", "/dev",
            "--perms", "1777", "--size", str(limits.tmp_bytes), "--tmpfs", "/tmp",
            "--bind", str(workspace), WORKSPACE, "--chdir", WORKSPACE,
        ]  # fmt: skip
        if data_fd is not None:
            argv += ["--perms", "0444", "--ro-bind-data", str(data_fd), _SNIPPET]
        argv.append("--")
        owner = self.owner_for(agent_id)
        if owner is not None:
            assert self._setpriv is not None
            argv += [
                self._setpriv, "--reuid", str(owner[0]), "--regid", str(owner[1]),
                "--clear-groups", "--inh-caps=-all", "--bounding-set=-all",
            ]  # fmt: skip
        cpu = limits.cpu_s
        argv += [
            self._prlimit,
            f"--cpu={cpu}:{cpu + 1}",  # SIGXCPU at the soft limit, SIGKILL a second later
            f"--as={limits.memory_bytes}",
            f"--nproc={limits.processes}",
            f"--fsize={limits.file_size_bytes}",
            f"--nofile={limits.open_files}",
            "--",
            *command,
        ]
        return argv

    async def _spawn(
        self, command: list[str], workspace: Path, env: dict[str, str], stdin: bytes | None,
        limits: SandboxLimits, agent_id: str, data_fd: int | None,
    ) -> SandboxResult:  # fmt: skip
        owner = self.owner_for(agent_id)
        if owner is not None:
            _own(workspace, owner)
        argv = self._argv(command, workspace, limits, agent_id, data_fd)
        started = time.perf_counter()
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            pass_fds=() if data_fd is None else (data_fd,),
            start_new_session=True,  # its own process group, so one signal reaches all of it
        )
        assert proc.stdout is not None
        assert proc.stderr is not None
        out = asyncio.ensure_future(_drain(proc.stdout, limits.output_bytes))
        err = asyncio.ensure_future(_drain(proc.stderr, limits.output_bytes))
        feed = asyncio.ensure_future(_feed(proc.stdin, stdin))
        timed_out = False
        try:
            try:
                await asyncio.wait_for(proc.wait(), limits.wall_timeout_s)
            except TimeoutError:
                timed_out = True
                _kill_group(proc.pid)
                await proc.wait()
            # The pipes close when the last process inside exits; the pid namespace dies with
            # bwrap, so this wait is short, but bound it in case a pipe was passed elsewhere.
            done, _ = await asyncio.wait([out, err], timeout=5.0)
        finally:
            if proc.returncode is None:  # cancelled (the agent was killed): leave nothing behind
                _kill_group(proc.pid)
                with contextlib.suppress(ProcessLookupError):
                    await asyncio.shield(proc.wait())
            for task in (out, err, feed):
                task.cancel()
        duration = time.perf_counter() - started
        stdout, out_cut = out.result() if out in done else (b"", True)
        stderr, err_cut = err.result() if err in done else (b"", True)
        return SandboxResult(
            exit_code=proc.returncode if proc.returncode is not None else -signal.SIGKILL,
            stdout=_text(stdout, out_cut, limits.output_bytes),
            stderr=_text(stderr, err_cut, limits.output_bytes),
            stdout_truncated=out_cut,
            stderr_truncated=err_cut,
            timed_out=timed_out,
            duration_s=duration,
        )


async def _drain(stream: asyncio.StreamReader, cap: int) -> tuple[bytes, bool]:
    """Keep the first ``cap`` bytes; read and drop the rest so the writer never blocks."""
    kept = bytearray()
    truncated = False
    while chunk := await stream.read(_READ_CHUNK):
        room = cap - len(kept)
        if room > 0:
            kept += chunk[:room]
        if len(chunk) > room:
            truncated = True
    return bytes(kept), truncated


async def _feed(pipe: asyncio.StreamWriter | None, data: bytes | None) -> None:
    if pipe is None:
        return
    try:
        if data:
            pipe.write(data)
            await pipe.drain()
    except (BrokenPipeError, ConnectionResetError):
        pass  # the program exited without reading all its input: its business
    finally:
        pipe.close()


def _text(data: bytes, truncated: bool, cap: int) -> str:
    text = data.decode("utf-8", errors="replace")
    if truncated:
        text += f"\n[output truncated: only the first {cap} bytes were kept]"
    return text


def _own(workspace: Path, owner: tuple[int, int]) -> None:
    """Give the workspace directory to the agent's sandbox uid (root mode), once."""
    info = os.stat(workspace)
    if (info.st_uid, info.st_gid) != owner:
        os.chown(workspace, *owner)


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _workspace(path: str | os.PathLike[str]) -> Path:
    workspace = Path(path)
    try:
        info = workspace.lstat()
    except FileNotFoundError:
        raise InvalidArgument(f"sandbox workspace {workspace} does not exist") from None
    if not stat.S_ISDIR(info.st_mode):
        raise InvalidArgument(f"sandbox workspace {workspace} is not a directory (or is a symlink)")
    return workspace.resolve()


def _env(extra: Mapping[str, str] | None) -> dict[str, str]:
    env = dict(_BASE_ENV)
    for name, value in (extra or {}).items():
        if _ENV_NAME.fullmatch(name) is None:
            raise InvalidArgument(f"environment variable name {name!r} is not valid")
        if not isinstance(value, str) or "\0" in value:
            raise InvalidArgument(f"environment variable {name} must be a string without NUL")
        env[name] = value
    return env


def _interpreter(python: str | None) -> tuple[str, list[str]]:
    """The snippet interpreter and the host paths it needs bound read-only."""
    if python is not None:
        return python, []
    if os.access("/usr/bin/python3", os.X_OK):
        return "/usr/bin/python3", []
    real = os.path.realpath(sys.executable)
    if real.startswith("/usr/"):
        return real, []
    prefix = os.path.realpath(sys.base_prefix)
    return os.path.join(prefix, "bin", os.path.basename(real)), [prefix]


def _root_binds(extra: Sequence[str]) -> list[str]:
    """bwrap arguments for the read-only host view, following the host's /usr merge."""
    args = ["--ro-bind", "/usr", "/usr"]
    for top in _TOP_DIRS:
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    # bwrap would create /etc as 0700 root in privileged mode, hiding it from the sandbox uid.
    args += ["--perms", "0755", "--dir", "/etc"]
    for path in _ETC:
        if os.path.exists(path):
            args += ["--ro-bind", path, path]
    for path in extra:
        args += ["--ro-bind", path, path]
    return args


def _userns_blocker() -> str:
    """Why this kernel refuses unprivileged user namespaces, or "" if it seems not to."""
    checks = (
        ("/proc/sys/user/max_user_namespaces", "0", "user.max_user_namespaces is 0"),
        ("/proc/sys/kernel/unprivileged_userns_clone", "0",
         "kernel.unprivileged_userns_clone is 0"),
        ("/proc/sys/kernel/apparmor_restrict_unprivileged_userns", "1",
         "kernel.apparmor_restrict_unprivileged_userns is 1 (AppArmor blocks them)"),
    )  # fmt: skip
    for path, bad, message in checks:
        try:
            if Path(path).read_text().strip() == bad:
                return message
        except OSError:
            continue
    return ""
