"""Content refs: BLAKE3 digests that are the same bytes in every process, run and machine."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from avm.memory import ContentStore, InvalidRef, hash_content, ref_from_hex
from avm.memory.refs import check_ref

# Official BLAKE3 test vectors (github.com/BLAKE3-team/BLAKE3, test_vectors.json): input byte i
# is i % 251, default 32-byte output.
KNOWN = {
    0: "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262",
    1: "2d3adedff11b61f14c886e35afa036736dcd87a74d27b5c1510225d0f592e213",
    1023: "10108970eeda3eb932baac1428c7a2163b0e924c9a9e25b35bba72b28f70bd11",
    1024: "42214739f095a406f3fc83deb889744ac00df831c10daa55189b5d121c855af7",
}


def vector_input(length: int) -> bytes:
    return bytes(i % 251 for i in range(length))


@pytest.mark.parametrize("length", sorted(KNOWN))
def test_refs_are_blake3_of_the_stored_bytes(store: ContentStore, length: int) -> None:
    data = vector_input(length)
    assert hash_content(data).hex() == KNOWN[length]
    assert store.put(data).hex() == KNOWN[length]


def test_text_is_hashed_as_utf8(store: ContentStore) -> None:
    text = "prix: 12 €, 株価"
    assert store.put(text) == hash_content(text.encode()) == store.put(text.encode())


def test_hashes_are_the_same_in_another_process() -> None:
    samples = [b"", b"abc", "système".encode(), vector_input(5000)]
    script = (
        "import sys; from avm.memory import hash_content\n"
        "for line in sys.stdin: print(hash_content(bytes.fromhex(line.strip())).hex())"
    )
    # A fresh interpreter with a different PYTHONHASHSEED: nothing may depend on hash().
    result = subprocess.run(
        [sys.executable, "-c", script],
        input="\n".join(sample.hex() for sample in samples),
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "12345"},
    )
    assert result.stdout.split() == [hash_content(sample).hex() for sample in samples]


@settings(max_examples=200)
@given(st.binary(max_size=4096))
def test_same_bytes_same_ref(data: bytes) -> None:
    assert hash_content(data) == hash_content(bytearray(data)) == hash_content(memoryview(data))
    assert len(hash_content(data)) == 32


@given(st.binary(min_size=32, max_size=32))
def test_hex_round_trip(raw: bytes) -> None:
    assert ref_from_hex(raw.hex()) == raw


@pytest.mark.parametrize("bad", [b"short", b"x" * 33, "not bytes", 42, None])
def test_invalid_refs_are_refused(bad: object) -> None:
    with pytest.raises(InvalidRef):
        check_ref(bad)


@pytest.mark.parametrize("bad", ["zz" * 32, "ab" * 31])
def test_invalid_hex_is_refused(bad: str) -> None:
    with pytest.raises(InvalidRef):
        ref_from_hex(bad)
