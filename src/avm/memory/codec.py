"""Compression of content leaving the hot tier: zstd with dictionaries trained on the fleet.

A fleet's messages are small (a few hundred bytes to a few KiB) and alike: the same roles,
field names, tool-call shapes and phrases recur in every agent. Plain zstd gets little out of a
300-byte message because it has no history to refer back to; a dictionary trained on earlier
messages supplies that history (on 1.7 KB chat turns, ``bench/memory.py`` measures 2.9x with
plain zstd and 4.5x with a trained dictionary). This module owns that dictionary's life:

* **sampling** — every new small piece of content the store sees is offered to
  :meth:`Codec.observe`, which keeps a bounded reservoir, so memory for samples is capped
  whatever the fleet size. Once a dictionary is in use, samples are gathered only from the
  last ``4 x reservoir`` pieces before the next training (uniformly over them): the samples
  are then the most recent content, and between trainings, which grow further apart, the
  codec holds none (up to 1 MiB that would otherwise stay in RAM all along);
* **training and versioning** — when enough has been seen (1,000 samples, then 4x as many each
  time after) a new dictionary is trained from the reservoir, on a worker thread so the event
  loop never stalls (zstd releases the GIL while training). It is checked against plain zstd on
  the samples and installed as version ``n + 1`` only if it compresses them at least 2% smaller;
* **decoding any version** — every compressed value records the codec that produced it
  (:data:`RAW`, :data:`ZSTD` or a dictionary version), so content compressed under version 3
  still decodes after version 7 is current. Versions are handed to a persistence hook when
  installed (the cold tier writes them to disk before any row that needs them) and loaded back
  through a loader hook after a restart;
* **bare frames** — a zstd frame normally opens with a 4-byte magic number. Every stored value
  already records its codec, so frames are written without it (4 bytes less per entry: 2.6%
  of the fleet benchmark's turns, 154 bytes compressed). Frames written before that (cold
  rows in an older state directory) still decode: a bare frame opens with its header byte,
  whose reserved bit (``0x08``) is always clear, so it can never begin with the magic's first
  byte, ``0x28``.

The codec is used from one thread (the store's); only training runs on the worker thread, and it
shares nothing mutable with the caller: it gets its own list of samples and returns a result.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import functools
import logging
import platform
import random
from collections import OrderedDict
from collections.abc import Callable

import msgspec
import zstandard

from avm.errors import ConfigError
from avm.memory.errors import ContentError

__all__ = ["RAW", "ZSTD", "Codec", "DictionaryInfo"]

log = logging.getLogger(__name__)

RAW = -1
"""Codec id of bytes stored as they are (too small, or incompressible)."""
ZSTD = 0
"""Codec id of zstd without a dictionary. Ids from 1 up are dictionary versions."""

# Below this size a zstd frame (7+ bytes of header) rarely pays for itself.
_MIN_COMPRESS = 64
# A compressed copy must save at least 1/16 of the bytes, or the data is kept raw: decompressing
# on every promotion is not worth a few percent.
_MIN_SAVING = 1 / 16
# Samples are gathered from the last (this x reservoir size) pieces seen before a training.
_SAMPLING_SPAN = 4
# A new dictionary must make the samples at least this much smaller than plain zstd does.
_MIN_DICT_GAIN = 0.02
# What a zstd decompression context holds besides the dictionary (measured with
# ZstdDecompressor().memory_size() on zstandard 0.25: ~96 KB).
_DCTX_BYTES = 96 * 1024
# Decompression contexts kept at once (the plain one and the latest dictionaries, typically).
_DCTX_CACHE = 4
# The first byte of a frame with zstd's magic number (28 b5 2f fd): one written before frames
# went bare (see the module docstring).
_MAGIC_FIRST = 0x28
# Cache key of the context for such frames under codec ``c``: ``c + _FRAMED`` (ids are int16).
_FRAMED = 1 << 16
_BARE = zstandard.FORMAT_ZSTD1_MAGICLESS


# glibc's mallopt() parameter, and the default it starts the process with.
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD = 128 * 1024


@functools.cache
def _pin_mmap_threshold() -> None:
    """Keep glibc's mmap threshold where it starts (once per process; glibc only).

    glibc serves allocations of 128 KiB and more with ``mmap``, and gives them back to the
    system when freed; but freeing one *raises* that threshold to its size, for good. Training
    a dictionary allocates and frees tables of several MB, after which every array and buffer
    below that size (the warm table's slot arrays and index among them) grows inside the heap
    instead, where each reallocation leaves a hole behind: at 10,000 resident agents that
    fragmentation came to ~3 MB of RSS. Setting the threshold explicitly, even to its default,
    turns the adjustment off.
    """
    if platform.libc_ver()[0] != "glibc":
        return
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)
    except (OSError, AttributeError) as exc:
        log.debug("cannot pin the malloc mmap threshold: %s", exc)


class DictionaryInfo(msgspec.Struct, frozen=True):
    """One trained dictionary version: its size, and how it did against plain zstd."""

    version: int
    size: int
    samples: int
    sample_bytes: int
    ratio: float  # sample bytes / bytes compressed with this dictionary
    plain_ratio: float  # sample bytes / bytes compressed with plain zstd, same level


class _Trained(msgspec.Struct, frozen=True):
    data: bytes
    info: DictionaryInfo


def _train(version: int, samples: list[bytes], dict_size: int, level: int) -> _Trained | None:
    """Train and evaluate one dictionary (runs on the worker thread; touches no shared state)."""
    _pin_mmap_threshold()
    try:
        pool: list[bytes | bytearray | memoryview] = list(samples)
        trained = zstandard.train_dictionary(dict_size, pool, level=level)
    except zstandard.ZstdError as exc:
        log.debug("dictionary training on %d samples failed: %s", len(samples), exc)
        return None
    # Evaluate on a spread of the training samples: the dictionary must beat plain zstd on the
    # very data it came from, or it is not worth a version.
    probe = samples[:: max(1, len(samples) // 256)]
    with_dict = zstandard.ZstdCompressor(level=level, dict_data=trained, write_checksum=False)
    plain = zstandard.ZstdCompressor(level=level, write_checksum=False)
    total = sum(len(sample) for sample in probe)
    dict_total = sum(len(with_dict.compress(sample)) for sample in probe)
    plain_total = sum(len(plain.compress(sample)) for sample in probe)
    info = DictionaryInfo(
        version=version,
        size=len(trained),
        samples=len(samples),
        sample_bytes=sum(len(sample) for sample in samples),
        ratio=round(total / max(1, dict_total), 3),
        plain_ratio=round(total / max(1, plain_total), 3),
    )
    if dict_total > plain_total * (1 - _MIN_DICT_GAIN):
        log.debug("dictionary v%d does not beat plain zstd (%s); not installed", version, info)
        return None
    return _Trained(trained.as_bytes(), info)


class Codec:
    """zstd compression with trained, versioned dictionaries (see the module docstring).

    ``first_training`` samples trigger the first training, and each later one waits until
    ``retrain_factor`` times as many have been seen in total. ``background=False`` trains
    inline (deterministic, for tests); :meth:`train_now` always trains inline.
    """

    def __init__(
        self,
        *,
        level: int = 3,
        dict_size: int = 16 * 1024,
        sample_max: int = 4 * 1024,
        reservoir: int = 2_000,
        reservoir_bytes: int = 1024 * 1024,
        first_training: int = 1_000,
        retrain_factor: float = 4.0,
        background: bool = True,
        seed: int = 0,
    ) -> None:
        if retrain_factor <= 1:
            raise ConfigError(f"retrain_factor must be greater than 1, got {retrain_factor}")
        self.level = level
        self.dict_size = dict_size
        self.sample_max = sample_max
        self.reservoir_size = reservoir
        self.reservoir_bytes = reservoir_bytes
        self._sampling_span = _SAMPLING_SPAN * reservoir
        self.background = background
        self.retrain_factor = retrain_factor
        self.on_new_dictionary: Callable[[int, bytes], None] | None = None
        self.dictionary_loader: Callable[[int], bytes | None] | None = None
        self._random = random.Random(seed)
        self._samples: list[bytes] = []
        self._sample_bytes = 0
        self._seen_since = 0  # sampled from since the reservoir was last emptied
        self._seen_total = 0
        self._next_training = first_training
        self._version = 0  # current dictionary version; 0 = none yet
        self._last_version = 0  # highest version known (installed here or found on disk)
        self._plain = self._compressor_for(None)
        self._compressor = self._plain
        # Every known dictionary's bytes (16 KiB each), but decompression contexts (~96 KB
        # each) only for the few versions read most recently: old versions are rarely read.
        self._dicts: dict[int, bytes] = {}
        # Keyed by codec id, plus _FRAMED for a context that reads frames with a magic number.
        self._decompressors: OrderedDict[int, zstandard.ZstdDecompressor] = OrderedDict()
        self._decompressors[ZSTD] = zstandard.ZstdDecompressor(format=_BARE)
        self._infos: list[DictionaryInfo] = []
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._pending: concurrent.futures.Future[_Trained | None] | None = None
        self._fixed_bytes = 0
        self._recount()

    # -- what the store asks -------------------------------------------------------------

    @property
    def version(self) -> int:
        """The dictionary version new content is compressed with (0: none trained yet)."""
        return self._version

    @property
    def dictionaries(self) -> tuple[DictionaryInfo, ...]:
        """Every dictionary trained by this codec since it was created, oldest first."""
        return tuple(self._infos)

    def observe(self, data: bytes) -> None:
        """Offer a newly stored piece of content as a training sample (reservoir sampling)."""
        if self._pending is not None and self._pending.done():
            self._install_pending()
        size = len(data)
        if size < _MIN_COMPRESS or size > self.sample_max:
            return
        self._seen_total += 1
        if self._seen_total + self._sampling_span <= self._next_training and self._version != ZSTD:
            return  # a dictionary is in use and the next training is still far off
        self._seen_since += 1
        samples = self._samples
        if len(samples) < self.reservoir_size and self._sample_bytes + size <= self.reservoir_bytes:
            samples.append(data)
            self._sample_bytes += size
        else:
            # Full (by count or bytes): replace a random sample with probability k/seen,
            # which keeps the reservoir uniform; skip if the swap would break the byte cap.
            slot = self._random.randrange(self._seen_since)
            if slot < len(samples):
                grown = self._sample_bytes + size - len(samples[slot])
                if grown <= self.reservoir_bytes:
                    self._sample_bytes = grown
                    samples[slot] = data
        if self._seen_total >= self._next_training and self._pending is None:
            self._start_training()

    def compress(self, data: bytes) -> tuple[int, bytes]:
        """``(codec id, stored bytes)`` for ``data``: the current dictionary, or raw if no gain."""
        if self._pending is not None and self._pending.done():
            self._install_pending()
        size = len(data)
        if size < _MIN_COMPRESS:
            return RAW, data
        packed = self._compressor.compress(data)
        if len(packed) > size - size * _MIN_SAVING:
            return RAW, data
        # python-zstandard returns a bytes object that keeps its whole compress-bound
        # allocation (input size plus margin) and only shortens its length: held as is, a
        # "compressed" entry would use more RAM than the original. Copy it to its true size.
        return self._version, bytes(memoryview(packed))

    def decompress(self, codec: int, data: bytes | memoryview) -> bytes:
        """The original bytes of ``data``, which ``codec`` produced (a view is read, not kept)."""
        if codec == RAW:
            return data if type(data) is bytes else bytes(data)
        if data and data[0] == _MAGIC_FIRST:
            codec += _FRAMED
        decompressor = self._decompressors.get(codec)
        if decompressor is None:
            decompressor = self._decompressor(codec)
        return decompressor.decompress(data)

    @staticmethod
    def content_size(codec: int, data: bytes | memoryview) -> int:
        """The original size of ``data`` without decompressing it (zstd frames record it)."""
        if codec == RAW:
            return len(data)
        if data and data[0] == _MAGIC_FIRST:
            return int(zstandard.frame_content_size(data))
        return int(zstandard.get_frame_parameters(data, format=_BARE).content_size)

    def ram_bytes(self) -> int:
        """RAM this codec holds: samples, dictionaries and (de)compression contexts (estimate).

        The compression context is asked live: zstd sizes its workspace on first use and grows
        it for larger inputs (about 450 KB at level 3 once it has compressed anything).
        """
        return self._sample_bytes + self._fixed_bytes + self._compressor.memory_size()

    def _recount(self) -> None:
        # The parts that change only when a version is added, kept precomputed because the
        # store adds ram_bytes() to its budget check on every insert.
        self._fixed_bytes = sum(map(len, self._dicts.values())) + _DCTX_BYTES * len(
            self._decompressors
        )

    # -- training ------------------------------------------------------------------------

    def train_now(self) -> int | None:
        """Train a dictionary from the current samples inline; the new version, or ``None``."""
        if self._pending is not None:
            self._pending.result()
            self._install_pending()
        version = self._last_version + 1
        samples = self._take_samples()
        trained = _train(version, samples, self.dict_size, self.level)
        return self._install(trained)

    def wait_for_training(self) -> None:
        """Block until a training in progress (if any) is installed; used by tests and close."""
        if self._pending is not None:
            self._pending.result()
            self._install_pending()

    def _take_samples(self) -> list[bytes]:
        samples = self._samples
        self._samples = []
        self._sample_bytes = 0
        self._seen_since = 0
        self._next_training = max(
            self._next_training + 1, int(self._seen_total * self.retrain_factor)
        )
        return samples

    def _start_training(self) -> None:
        if self._sample_bytes < 4 * self.dict_size:
            # Too little text to train a useful dictionary yet: wait for twice as much.
            self._next_training = self._seen_total * 2
            return
        version = self._last_version + 1
        samples = self._take_samples()
        if not self.background:
            self._install(_train(version, samples, self.dict_size, self.level))
            return
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="avm-zstd-train"
            )
        self._pending = self._executor.submit(_train, version, samples, self.dict_size, self.level)

    def _install_pending(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            self._install(pending.result())

    def _install(self, trained: _Trained | None) -> int | None:
        if trained is None:
            return None
        version = trained.info.version
        if version <= self._last_version:
            # A version with this number was found on disk meanwhile; renumber.
            version = self._last_version + 1
            trained = _Trained(trained.data, msgspec.structs.replace(trained.info, version=version))
        if self.on_new_dictionary is not None:
            self.on_new_dictionary(version, trained.data)
        self._add_version(version, trained.data)
        self._compressor = self._compressor_for(trained.data)
        self._version = version
        self._recount()
        self._infos.append(trained.info)
        log.debug("installed zstd dictionary %s", trained.info)
        return version

    # -- versions found on disk ----------------------------------------------------------

    def restore(self, version: int, data: bytes, *, current: bool) -> None:
        """Register a dictionary persisted by an earlier run; ``current`` resumes using it."""
        self._add_version(version, data)
        if current and version >= self._version:
            self._compressor = self._compressor_for(data)
            self._version = version
        self._recount()

    def _compressor_for(self, dictionary: bytes | None) -> zstandard.ZstdCompressor:
        # Content is compressed one entry at a time, mostly small: a 128 KiB window and small
        # match tables lose nothing on it, and cut the context from ~1.1 MB to ~0.6 MB at
        # level 3 with a dictionary. No checksum (the store checks BLAKE3 on every disk read),
        # and neither dictionary id nor magic number (the entry records its codec).
        params = zstandard.ZstdCompressionParameters.from_level(
            self.level,
            window_log=17,
            hash_log=14,
            chain_log=14,
            write_checksum=0,
            write_dict_id=0,
            write_content_size=1,
            format=_BARE,
        )
        return zstandard.ZstdCompressor(
            dict_data=None if dictionary is None else zstandard.ZstdCompressionDict(dictionary),
            compression_params=params,
        )

    def _add_version(self, version: int, data: bytes) -> None:
        self._dicts[version] = data
        self._last_version = max(self._last_version, version)
        self._recount()

    def _decompressor(self, key: int) -> zstandard.ZstdDecompressor:
        """A decompression context for cache ``key`` (see ``_FRAMED``), made on demand."""
        framed = key >= _FRAMED
        version = key - _FRAMED if framed else key
        if version == ZSTD:
            dictionary = None
        else:
            data = self._dicts.get(version)
            if data is None and self.dictionary_loader is not None:
                data = self.dictionary_loader(version)
                if data is not None:
                    self._add_version(version, data)
            if data is None:
                raise ContentError(
                    f"zstd dictionary version {version} is not in memory or on disk; content "
                    "compressed with it cannot be decoded (was the cold-tier file replaced?)"
                )
            dictionary = zstandard.ZstdCompressionDict(data)
        decompressor = zstandard.ZstdDecompressor(
            dict_data=dictionary, format=zstandard.FORMAT_ZSTD1 if framed else _BARE
        )
        self._decompressors[key] = decompressor
        while len(self._decompressors) > _DCTX_CACHE:
            oldest = next(iter(self._decompressors))
            if oldest == ZSTD:  # the plain context is always needed; keep it
                self._decompressors.move_to_end(ZSTD)
                continue
            del self._decompressors[oldest]
        self._recount()
        return decompressor

    def close(self) -> None:
        """Stop the training thread; a training in progress is waited for and discarded."""
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None
        self._pending = None
