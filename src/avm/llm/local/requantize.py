"""Converting a GGUF model's weights to a type with faster batched kernels, once, on disk.

The SmolLM2 file ships with Q4_1 weights. On x86 CPUs llama.cpp multiplies Q4_1 weights one
row-column dot product at a time, so a batch of 16 tokens costs nearly 16 single tokens and
continuous batching gains little. Q8_0 and BF16 weights go through tiled matrix kernels
(llamafile's tinyBLAS) where a batch is much cheaper per token; a Q8_0 copy is also faster for a
single sequence. The result is the same model, but like any kernel change it moves low-order
bits, so greedy texts can differ from the Q4_1 file's after a few tokens.

The provider's default, ``weights="auto"``, picks by CPU (:func:`auto_weights`): BF16 where the
CPU has BF16 dot-product instructions (AVX-512 BF16 or AMX; the fastest batched path measured,
see BENCHMARKS.md), Q8_0 on other x86 CPUs with AVX2, and the file as it is elsewhere or when
the converted copy would be large (a small model only: converting a 7B model to BF16 would
take 14 GB of RAM).

Only types that hold the Q4_1 values exactly or nearly so are offered: BF16 and F16 (exact up
to rounding) and Q8_0 (an 8-bit grid far finer than the 4-bit one). Re-quantizing to another
low-bit type would reach faster kernels on x86 (llama.cpp "repacks" Q4_0, IQ4_NL and Q4_K
weights into interleaved blocks for a batched GEMM), but it rounds every weight a second time
onto a grid that does not contain the Q4_1 values, which makes a different model: measured on
SmolLM2, Q4_0 and IQ4_NL copies pick the shipped file's next token at only 69% and 78% of
positions of fixed text (BF16 96%; ``tests/llm/test_local_fidelity.py`` holds that line), for
a batched decode step only about 8% faster than BF16's at SmolLM2's real context lengths. The
K-quants do not apply here: they need rows of a multiple of 256 weights, and most of SmolLM2's
are 576 wide, so a "Q6_K" conversion is Q8_0 in all but the FFN down projections.

This module owns the conversion (``llama_model_quantize``, under a second for SmolLM2) and its
cache: the converted file is kept under ``$AVM_CACHE_DIR/models`` or
``$XDG_CACHE_HOME/avm/models`` (default ``~/.cache/avm/models``), named after the source file's
path, size and modification time, and renamed into place only when complete, so that
concurrent processes never read a half-written file.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import time
from pathlib import Path
from typing import Final, Literal

import llama_cpp

from avm.errors import ConfigError
from avm.llm.local.model import init_backend

__all__ = ["WeightChoice", "WeightType", "auto_weights", "default_cache_dir", "requantized"]

logger = logging.getLogger(__name__)

WeightType = Literal["q8_0", "bf16", "f16"]
WeightChoice = Literal["auto", "as_is", "q8_0", "bf16", "f16"]

# ``auto`` converts only files below this size (a BF16 copy is up to about 4x a 4-bit file).
AUTO_MAX_SOURCE_BYTES: Final = 384 * 1024 * 1024
_FTYPES: Final[dict[str, int]] = {
    "q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0,
    "bf16": llama_cpp.LLAMA_FTYPE_MOSTLY_BF16,
    "f16": llama_cpp.LLAMA_FTYPE_MOSTLY_F16,
}


def default_cache_dir() -> Path:
    """Where converted models are kept: ``$AVM_CACHE_DIR``, else the XDG cache directory."""
    explicit = os.environ.get("AVM_CACHE_DIR")
    if explicit:
        return Path(explicit) / "models"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "avm" / "models"


def auto_weights(
    source: Path, cpu_flags: frozenset[str] | None = None
) -> Literal["as_is", "q8_0", "bf16"]:
    """The weight type ``weights="auto"`` serves ``source`` with on this CPU (see the module)."""
    try:
        size = source.stat().st_size
    except OSError:
        return "as_is"  # the loader then reports the missing file in its own words
    if size > AUTO_MAX_SOURCE_BYTES:
        return "as_is"
    flags = _cpu_flags() if cpu_flags is None else cpu_flags
    if "avx512_bf16" in flags or "amx_bf16" in flags:
        return "bf16"
    if "avx2" in flags:
        return "q8_0"
    return "as_is"


def _cpu_flags() -> frozenset[str]:
    """The feature flags of the first CPU in ``/proc/cpuinfo``; empty where there is none."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    return frozenset(line.partition(":")[2].split())
    except OSError:
        pass
    return frozenset()


def requantized(source: Path, weights: WeightType, cache_dir: Path | None = None) -> Path:
    """A copy of ``source`` with ``weights``-typed weights, converted now unless cached.

    Raises :class:`~avm.errors.ConfigError` when the type is unknown or the conversion fails.
    """
    ftype = _FTYPES.get(weights)
    if ftype is None:
        raise ConfigError(f"unknown weight type {weights!r}; choose one of {sorted(_FTYPES)}")
    stat = source.stat()
    identity = f"{source.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()
    digest = hashlib.sha256(identity).hexdigest()[:16]
    directory = cache_dir if cache_dir is not None else default_cache_dir()
    target = directory / f"{source.stem}-{digest}.{weights}.gguf"
    if target.is_file():
        return target
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the model cache {str(directory)!r}: {exc}") from exc
    init_backend()  # so that the quantizer's progress lines go to logging, not stderr
    partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.allow_requantize = True  # the source is already quantized (Q4_1)
    params.nthread = 1
    started = time.perf_counter()
    status = llama_cpp.llama_model_quantize(
        str(source).encode(), str(partial).encode(), ctypes.byref(params)
    )
    if status != 0 or not partial.is_file():
        partial.unlink(missing_ok=True)
        raise ConfigError(
            f"could not convert {source.name} to {weights} (llama_model_quantize returned"
            f" {status}); use weights='as_is'"
        )
    os.replace(partial, target)
    logger.info(
        "converted %s to %s weights in %.2f s: %s",
        source.name,
        weights,
        time.perf_counter() - started,
        target,
    )
    return target
