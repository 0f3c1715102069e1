"""Loading the master key: environment, key files, and the permission check."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest

from avm.keys import (
    KEY_ENV,
    KEY_FILE_ENV,
    MasterKey,
    MasterKeyError,
    load_master_key,
    read_key_file,
    write_key_file,
)


def test_key_from_environment() -> None:
    key = MasterKey.generate()
    loaded = load_master_key(environ={KEY_ENV: key.encode()})
    assert loaded.encode() == key.encode()
    assert KEY_ENV in loaded.source


def test_no_key_says_how_to_make_one() -> None:
    with pytest.raises(MasterKeyError, match=f"{KEY_ENV}.*{KEY_FILE_ENV}"):
        load_master_key(environ={})


@pytest.mark.parametrize("text", ["not base64!!", "c2hvcnQ=", ""])
def test_malformed_key_is_refused(text: str) -> None:
    with pytest.raises(MasterKeyError):
        MasterKey.from_base64(text, "test")


def test_key_file_written_0600_and_read_back(tmp_path: Path) -> None:
    key = MasterKey.generate()
    path = write_key_file(tmp_path / "master.key", key)
    assert path.stat().st_mode & 0o777 == 0o600
    assert read_key_file(path).encode() == key.encode()
    assert load_master_key(environ={KEY_FILE_ENV: str(path)}).encode() == key.encode()
    with pytest.raises(MasterKeyError, match="already exists"):
        write_key_file(path, MasterKey.generate())


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_key_file_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = write_key_file(tmp_path / "master.key", MasterKey.generate())
    os.chmod(path, mode)
    with pytest.raises(MasterKeyError, match=f"mode {mode:04o}.*chmod 600"):
        read_key_file(path)


def test_key_file_symlink_is_refused(tmp_path: Path) -> None:
    real = write_key_file(tmp_path / "real.key", MasterKey.generate())
    link = tmp_path / "link.key"
    link.symlink_to(real)
    with pytest.raises(MasterKeyError, match="cannot open"):
        read_key_file(link)


def test_master_key_never_shows_its_material() -> None:
    key = MasterKey.generate()
    assert key.encode() not in repr(key)
    assert key.encode() not in str(key)
    with pytest.raises(TypeError):
        pickle.dumps(key)
