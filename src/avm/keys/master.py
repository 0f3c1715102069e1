"""The master key: where it comes from, and the checks it must pass before AVM uses it.

The master key is the one secret AVM cannot keep itself; it unlocks the secrets database and,
through it, every agent's private knowledge. It is read, in this order, from

1. an explicit key file (``--key-file``, ``KeyManager.open(key_file=...)``);
2. the environment variable ``AVM_MASTER_KEY``: 32 bytes, base64-encoded;
3. the file named by ``AVM_MASTER_KEY_FILE``.

A key file must be a regular file (not a symlink), owned by the user running AVM, and readable
by nobody else (mode 0600 or stricter): a key that others can read is already leaked, so AVM
refuses it rather than warn. :func:`write_key_file` creates files that pass these checks.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
import stat
from collections.abc import Mapping
from pathlib import Path

from avm.errors import MasterKeyError
from avm.keys.cipher import KEY_BYTES, derive

__all__ = [
    "KEY_ENV",
    "KEY_FILE_ENV",
    "MasterKey",
    "MasterKeyError",
    "load_master_key",
    "read_key_file",
    "write_key_file",
]

KEY_ENV = "AVM_MASTER_KEY"
KEY_FILE_ENV = "AVM_MASTER_KEY_FILE"


class MasterKey:
    """32 bytes of key material and where they came from. Never printed, never logged."""

    __slots__ = ("_material", "source")

    def __init__(self, material: bytes, source: str) -> None:
        if len(material) != KEY_BYTES:
            raise MasterKeyError(
                f"the master key from {source} is {len(material)} bytes; it must be "
                f"{KEY_BYTES} bytes, base64-encoded (make one with `avm secrets keygen`)"
            )
        self._material = material
        self.source = source

    def __repr__(self) -> str:
        return f"<MasterKey from {self.source}>"

    def __reduce__(self) -> tuple[object, ...]:
        # Pickling would copy key material into whatever the pickle is sent to.
        raise TypeError("a MasterKey cannot be pickled")

    @classmethod
    def generate(cls) -> MasterKey:
        return cls(os.urandom(KEY_BYTES), "a fresh random key")

    @classmethod
    def from_base64(cls, text: str, source: str) -> MasterKey:
        try:
            material = base64.b64decode(text.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise MasterKeyError(
                f"the master key from {source} is not valid base64; it must be "
                f"{KEY_BYTES} random bytes, base64-encoded"
            ) from None
        return cls(material, source)

    def encode(self) -> str:
        """The base64 text form, for a key file or the ``AVM_MASTER_KEY`` variable."""
        return base64.b64encode(self._material).decode("ascii")

    def derive(self, purpose: bytes) -> bytes:
        """A sub-key for one purpose; the master key itself never encrypts anything."""
        return derive(self._material, purpose)


def read_key_file(path: str | os.PathLike[str]) -> MasterKey:
    """Read a key file, refusing one that is a symlink, not ours, or readable by others."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise MasterKeyError(f"master key file {path} does not exist") from None
    except OSError as exc:
        raise MasterKeyError(f"cannot open master key file {path}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise MasterKeyError(f"master key file {path} is not a regular file")
        mode = stat.S_IMODE(info.st_mode)
        if mode & 0o077:
            raise MasterKeyError(
                f"master key file {path} has mode {mode:04o}: others can read it, so AVM will "
                f"not use it. Make it private with `chmod 600 {path}` (and treat the key as "
                "leaked if anyone else could have read it)"
            )
        if info.st_uid != os.geteuid():
            raise MasterKeyError(
                f"master key file {path} is owned by uid {info.st_uid}, not by the user running "
                f"AVM (uid {os.geteuid()})"
            )
        data = os.read(fd, 4096)
    finally:
        os.close(fd)
    return MasterKey.from_base64(data.decode("ascii", "replace"), f"key file {path}")


def write_key_file(
    path: str | os.PathLike[str], key: MasterKey, *, overwrite: bool = False
) -> Path:
    """Write ``key`` to ``path`` with mode 0600, durably (written, synced, then renamed).

    The file is created under a temporary name and renamed into place, so a crash never leaves
    a half-written key file behind; ``overwrite=False`` refuses to replace an existing key.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise MasterKeyError(f"master key file {path} already exists; refusing to overwrite it")
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # the umask may have removed bits, never added any; be explicit
        os.write(fd, (key.encode() + "\n").encode("ascii"))
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    return path


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        with contextlib.suppress(OSError):  # some file systems cannot sync a directory
            os.fsync(fd)
    finally:
        os.close(fd)


def load_master_key(
    key_file: str | os.PathLike[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
) -> MasterKey:
    """Find the master key: an explicit file, ``AVM_MASTER_KEY``, then ``AVM_MASTER_KEY_FILE``."""
    env = os.environ if environ is None else environ
    if key_file is not None:
        return read_key_file(key_file)
    text = env.get(KEY_ENV)
    if text:
        return MasterKey.from_base64(text, f"${KEY_ENV}")
    named = env.get(KEY_FILE_ENV)
    if named:
        return read_key_file(named)
    raise MasterKeyError(
        f"no master key: set {KEY_ENV} to 32 random bytes in base64, or point {KEY_FILE_ENV} "
        "at a key file with mode 0600 (`avm secrets keygen` writes one)"
    )
