"""The codec: a bounded sample reservoir, dictionaries that must earn their version."""

from __future__ import annotations

import os
import platform
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st
from memory_workloads import chat_message

from avm.memory import RAW, ZSTD, Codec, ContentError, ContentStore, Tier


def test_reservoir_is_bounded_by_count_and_bytes() -> None:
    codec = Codec(reservoir=100, reservoir_bytes=20_000, first_training=10**9)
    for i in range(5000):
        codec.observe(chat_message(i))
    assert codec._sample_bytes <= 20_000
    assert len(codec._samples) <= 100
    assert codec.ram_bytes() < 2 * 1024 * 1024


def test_samples_are_gathered_only_shortly_before_a_training() -> None:
    codec = Codec(background=False, reservoir=200, dict_size=4096, first_training=400)
    for i in range(400):
        codec.observe(chat_message(i))
    assert codec.version == 1
    # The next training is at 1,600 pieces seen; samples come from the last 800 before it.
    for i in range(400, 800):
        codec.observe(chat_message(i))
        assert codec._samples == []
    codec.observe(chat_message(800))
    assert len(codec._samples) == 1
    for i in range(801, 1599):
        codec.observe(chat_message(i))
    assert len(codec._samples) == 200
    codec.observe(chat_message(1599))
    assert codec.version == 2
    assert codec._samples == []


def test_small_and_large_content_is_not_sampled() -> None:
    codec = Codec(sample_max=1000, first_training=10**9)
    codec.observe(b"tiny")
    codec.observe(b"x" * 5000)
    assert codec._samples == []


def test_trainings_follow_a_geometric_schedule() -> None:
    codec = Codec(first_training=200, retrain_factor=4.0, background=False)
    versions = []
    for i in range(3500):
        codec.observe(chat_message(i))
        versions.append(codec.version)
    assert [versions.index(v) + 1 for v in (1, 2)] == [200, 800]  # then 3,200
    assert codec.version == 3
    assert [info.version for info in codec.dictionaries] == [1, 2, 3]


def test_a_dictionary_that_does_not_help_is_not_installed() -> None:
    codec = Codec(background=False, first_training=10**9, dict_size=4096)
    for _ in range(400):
        codec.observe(os.urandom(1000))  # noise: nothing for a dictionary to learn
    assert codec.train_now() is None
    assert codec.version == ZSTD


def test_unknown_dictionary_versions_are_an_error() -> None:
    codec = Codec()
    with pytest.raises(ContentError, match="dictionary version 7"):
        codec.decompress(7, b"\x28\xb5\x2f\xfd")


def test_old_versions_decode_after_the_context_cache_turns_over() -> None:
    codec = Codec(background=False, first_training=300, retrain_factor=1.25)
    packed = []
    i = 0
    while codec.version < 6:
        codec.observe(chat_message(i))
        i += 1
        if codec.version > len(packed):
            packed.append((codec.compress(chat_message(-i)), chat_message(-i)))
    assert len(packed) == 6
    for (codec_id, data), original in packed:
        assert codec.decompress(codec_id, data) == original
    assert len(codec._decompressors) <= 4


MAGIC = b"\x28\xb5\x2f\xfd"


def framed(data: bytes, dictionary: bytes | None = None) -> bytes:
    """``data`` compressed as the codec did before frames went bare (magic number first)."""
    compressor = zstandard.ZstdCompressor(
        dict_data=None if dictionary is None else zstandard.ZstdCompressionDict(dictionary),
        write_checksum=False,
        write_dict_id=False,
    )
    return compressor.compress(data)


def test_frames_are_bare_and_frames_with_a_magic_number_still_decode() -> None:
    codec = Codec(background=False, first_training=10**9)
    message = chat_message(7)
    codec_id, bare = codec.compress(message)
    assert codec_id == ZSTD
    assert not bare.startswith(MAGIC)
    for i in range(300):
        codec.observe(chat_message(i))
    assert codec.train_now() == 1
    dictionary = codec._dicts[1]
    for codec_id, old in ((ZSTD, framed(message)), (1, framed(message, dictionary))):
        assert old.startswith(MAGIC)
        assert codec.decompress(codec_id, old) == message
        assert codec.decompress(codec_id, memoryview(old)) == message
        assert codec.content_size(codec_id, memoryview(old)) == len(message)
    # And the current format still decodes after the old one was read under the same version.
    codec_id, bare = codec.compress(message)
    assert codec_id == 1
    assert codec.decompress(codec_id, bare) == message


def test_cold_rows_written_with_a_magic_number_still_load(tmp_path: Path) -> None:
    message = chat_message(3)
    with ContentStore(tmp_path) as store:
        ref = store.put(message)
        store.demote([ref], Tier.COLD)
    with sqlite3.connect(tmp_path / "content.db") as db:  # as an older version wrote it
        db.execute(
            "UPDATE content SET codec = ?, data = ? WHERE hash = ?", (ZSTD, framed(message), ref)
        )
    with ContentStore(tmp_path, budget="4MiB") as store:
        assert store.get(ref) == message
        store.demote([ref], Tier.WARM)
        assert store.get(ref) == message


@settings(max_examples=100)
@given(st.binary(max_size=4000) | st.builds(chat_message, st.integers(0, 10**6)))
def test_compress_round_trips(data: bytes) -> None:
    codec = Codec()
    codec_id, stored = codec.compress(data)
    assert codec.decompress(codec_id, stored) == data
    assert codec.content_size(codec_id, stored) == len(data)
    if codec_id == RAW:
        assert stored is data
    else:
        assert len(stored) < len(data)


_MAPPED_AFTER_TRAINING = """
import ctypes
from memory_workloads import chat_message
from avm.memory import Codec

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()
    )]

mallinfo2 = ctypes.CDLL(None).mallinfo2
mallinfo2.restype = MallInfo2
codec = Codec(background=False, first_training=10**9)
for i in range(1500):
    codec.observe(chat_message(i))
assert codec.train_now() == 1
before = mallinfo2().hblkhd
buffer = bytearray(2 * 1024 * 1024)
print(mallinfo2().hblkhd - before >= len(buffer))
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="a property of glibc's malloc")
def test_training_leaves_large_buffers_mapped_on_their_own() -> None:
    # Training frees tables of several MB; glibc would then serve every smaller buffer from its
    # heap, where growing arrays leave holes. The codec keeps the threshold where it started.
    # In a fresh process: this one's heap may have room for anything from earlier tests.
    result = subprocess.run(
        [sys.executable, "-c", _MAPPED_AFTER_TRAINING],
        capture_output=True,
        text=True,
        check=True,
        cwd=os.path.dirname(__file__),  # for memory_workloads
    )
    assert result.stdout.strip() == "True"
