"""Agent workspaces: one private directory per agent, and file access confined to it.

Every path an agent names is relative to its workspace and is walked one component at a time
from an open directory descriptor, each step opened with ``O_NOFOLLOW`` (the ``openat`` way),
so there is no moment where a name is resolved against the host file system: ``..``, absolute
paths, and symlinks anywhere in the path are refused, including a symlink planted by the
agent's own sandboxed process (``ln -s /etc/passwd x`` inside the sandbox is a link to the
*host's* /etc/passwd for anything outside it). Only regular files are read or written (no FIFOs
that would block, no devices), and a file with more than one hard link is not written, since
its other name may be outside the workspace.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from collections.abc import Callable
from pathlib import Path

import blake3

from avm.errors import CapabilityDenied, InvalidArgument, NotFound

__all__ = ["MAX_PATH", "Workspaces", "read_confined", "write_confined"]

MAX_PATH = 1024
_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

Owner = Callable[[str], "tuple[int, int] | None"]


class Workspaces:
    """Maps agent ids to their workspace directories under ``root``, creating them on demand.

    ``owner`` (usually :meth:`avm.tools.sandbox.Sandbox.owner_for`) says which uid/gid an
    agent's sandboxed processes run as, so its workspace and the files the file tools create
    in it are theirs.
    """

    def __init__(self, root: str | os.PathLike[str], *, owner: Owner | None = None) -> None:
        self.root = Path(root)
        self._owner = owner

    def __repr__(self) -> str:
        return f"<Workspaces {self.root}>"

    @staticmethod
    def dirname(agent_id: str) -> str:
        """The directory name of an agent's workspace: the id itself when it is a safe name."""
        if _SAFE_ID.fullmatch(agent_id) and agent_id not in {".", ".."}:
            return agent_id
        # '~' never starts a safe name, so a hashed name cannot collide with a plain one.
        slug = re.sub(r"[^A-Za-z0-9_.\-]", "_", agent_id)[:32]
        return f"~{slug}-{blake3.blake3(agent_id.encode()).hexdigest(8)}"

    def owner(self, agent_id: str) -> tuple[int, int] | None:
        return None if self._owner is None else self._owner(agent_id)

    def path(self, agent_id: str) -> Path:
        """The agent's workspace directory, created (mode 0700) if it does not exist yet."""
        if not agent_id:
            raise InvalidArgument("an agent id is needed to find a workspace")
        self.root.mkdir(parents=True, exist_ok=True, mode=0o711)
        path = self.root / self.dirname(agent_id)
        try:
            path.mkdir(mode=0o700)
        except FileExistsError:
            pass
        else:
            owner = self.owner(agent_id)
            if owner is not None:
                os.chown(path, *owner)
        if path.is_symlink() or not path.is_dir():
            raise CapabilityDenied(f"workspace of agent {agent_id!r} at {path} is not a directory")
        return path


def _components(relative: object) -> list[str]:
    if not isinstance(relative, str) or not relative:
        raise InvalidArgument("path must be a non-empty string relative to the workspace")
    if "\0" in relative or len(relative) > MAX_PATH:
        raise InvalidArgument(f"path is longer than {MAX_PATH} characters or contains NUL")
    if relative.startswith("/"):
        raise CapabilityDenied(
            f"path {relative!r} is absolute; paths are relative to the agent's workspace"
        )
    parts = [p for p in relative.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise CapabilityDenied(f"path {relative!r} contains '..'; it may not leave the workspace")
    if not parts or relative.endswith("/"):
        raise InvalidArgument(f"path {relative!r} does not name a file")
    return parts


def _denied_component(parent: int, name: str, relative: str) -> CapabilityDenied:
    try:
        info = os.lstat(name, dir_fd=parent)
    except OSError:
        info = None
    what = "a symlink" if info is not None and stat.S_ISLNK(info.st_mode) else "not a directory"
    return CapabilityDenied(f"path {relative!r}: component {name!r} is {what}; refused")


def _walk(
    root: Path, parts: list[str], relative: str, create: bool, owner: tuple[int, int] | None
) -> int:
    """Open the directory holding the last component; returns its descriptor."""
    fd = os.open(root, _DIR_FLAGS)
    try:
        for name in parts[:-1]:
            try:
                nxt = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise NotFound(
                        f"path {relative!r}: directory {name!r} does not exist"
                    ) from None
                os.mkdir(name, 0o755, dir_fd=fd)
                if owner is not None:
                    os.chown(name, *owner, dir_fd=fd, follow_symlinks=False)
                nxt = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise _denied_component(fd, name, relative) from None
                raise
            os.close(fd)
            fd = nxt
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_file(parent: int, name: str, relative: str, flags: int, mode: int = 0o644) -> int:
    try:
        return os.open(
            name, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, mode, dir_fd=parent
        )
    except FileNotFoundError:
        raise NotFound(f"file {relative!r} does not exist in the workspace") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise CapabilityDenied(f"path {relative!r} is a symlink; refused") from None
        if exc.errno == errno.EISDIR:
            raise InvalidArgument(f"path {relative!r} is a directory") from None
        raise


def read_confined(root: Path, relative: object, max_bytes: int) -> tuple[bytes, int]:
    """Read at most ``max_bytes`` of a regular file inside ``root``; returns (data, file size)."""
    parts = _components(relative)
    assert isinstance(relative, str)
    parent = _walk(root, parts, relative, create=False, owner=None)
    try:
        fd = _open_file(parent, parts[-1], relative, os.O_RDONLY)
    finally:
        os.close(parent)
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise InvalidArgument(f"path {relative!r} is a directory")
        if not stat.S_ISREG(info.st_mode):
            raise CapabilityDenied(f"path {relative!r} is not a regular file; refused")
        os.set_blocking(fd, True)
        chunks: list[bytes] = []
        remaining = max_bytes
        while remaining > 0 and (chunk := os.read(fd, min(remaining, 1 << 20))):
            chunks.append(chunk)
            remaining -= len(chunk)
        return b"".join(chunks), info.st_size
    finally:
        os.close(fd)


def write_confined(
    root: Path, relative: object, data: bytes, *, append: bool, owner: tuple[int, int] | None
) -> int:
    """Write (or append) a regular file inside ``root``, creating directories as needed."""
    parts = _components(relative)
    assert isinstance(relative, str)
    parent = _walk(root, parts, relative, create=True, owner=owner)
    try:
        fd = _open_file(parent, parts[-1], relative, os.O_WRONLY | os.O_CREAT)
    finally:
        os.close(parent)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise CapabilityDenied(f"path {relative!r} is not a regular file; refused")
        if info.st_nlink > 1:
            raise CapabilityDenied(f"file {relative!r} has other hard links; refused")
        if owner is not None and (info.st_uid, info.st_gid) != owner:
            os.fchown(fd, *owner)
        os.set_blocking(fd, True)
        if append:
            os.lseek(fd, 0, os.SEEK_END)
        else:
            os.ftruncate(fd, 0)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        return os.lseek(fd, 0, os.SEEK_CUR)
    finally:
        os.close(fd)
