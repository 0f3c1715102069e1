"""One loaded GGUF model and its llama.cpp context: the ctypes handles and what reads them.

This module owns :class:`LocalModel`: loading the weights and creating the context (its KV
cache, thread count, batch size, number of sequences), tokenizing, rendering a token back to
bytes, applying the model's chat template, and freeing it all. It is the only module that holds
llama.cpp pointers other than the decode loop in :mod:`avm.llm.local.engine`.

Threading. llama-cpp-python loads libllama with ``ctypes.CDLL``, so every call releases the
GIL: a long ``llama_decode`` does not stall the asyncio loop. The *context* (KV cache, logits)
is not thread-safe and is touched only by the engine's decode thread. The *vocabulary* is
immutable after loading, so tokenizing, detokenizing and the chat template (which reads only
the template string) are safe from any thread, and the provider does them on the caller's
side, in parallel with decoding.

llama.cpp's own log lines are routed into :mod:`logging` (logger ``avm.llm.local.llama_cpp``)
instead of being printed to stderr: its debug and info chatter at DEBUG, its warnings at INFO
(they are mostly about choices made on purpose, such as a context shorter than the model's
training context), its errors at ERROR. The log hook is process-wide in llama.cpp; the last one
installed wins.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import llama_cpp

from avm.errors import ConfigError, ModelError

__all__ = ["ContextSettings", "LocalModel", "init_backend"]

logger = logging.getLogger(__name__)
_llama_logger = logging.getLogger("avm.llm.local.llama_cpp")

# ggml_log_level (NONE, DEBUG, INFO, WARN, ERROR) -> logging level; 5 (CONT) continues the
# previous line at its level.
_LOG_LEVELS: Final = {
    0: logging.DEBUG,
    1: logging.DEBUG,
    2: logging.DEBUG,
    3: logging.INFO,
    4: logging.ERROR,
}
_log_state = {"level": logging.DEBUG}
_backend_lock = threading.Lock()
_backend_ready = False


@llama_cpp.llama_log_callback  # type: ignore[untyped-decorator]
def _log_to_logging(level: int, text: bytes | None, _user_data: ctypes.c_void_p) -> None:
    # Called from whichever thread llama.cpp logs on, with the GIL re-acquired by ctypes.
    if level == 5:
        log_level = _log_state["level"]
    else:
        log_level = _LOG_LEVELS.get(level, logging.DEBUG)
        _log_state["level"] = log_level
    if text and _llama_logger.isEnabledFor(log_level):
        _llama_logger.log(log_level, "%s", text.decode(errors="replace").rstrip("\n"))


def init_backend() -> None:
    """Route llama.cpp's logs into :mod:`logging` and initialise its backend, once."""
    global _backend_ready
    with _backend_lock:
        if not _backend_ready:
            llama_cpp.llama_log_set(_log_to_logging, ctypes.c_void_p(0))
            llama_cpp.llama_backend_init()
            _backend_ready = True


@dataclass(frozen=True, slots=True)
class ContextSettings:
    """How the llama.cpp context is built (the provider documents each size)."""

    n_ctx: int
    n_seq: int
    n_batch: int
    n_threads: int
    flash_attn: bool = True
    kv_unified: bool = True


class LocalModel:
    """A GGUF model loaded into one llama.cpp context with a unified KV cache.

    The KV cache is *unified*: one pool of ``n_ctx`` cells shared by all ``n_seq`` sequences,
    so a prompt prefix evaluated once can be shared by many sequences (a cell may belong to
    several sequences) and a sequence may use as much of the pool as it needs.
    """

    def __init__(self, path: Path, settings: ContextSettings) -> None:
        if not path.is_file():
            raise ConfigError(f"local model file {str(path)!r} does not exist")
        init_backend()
        self.path = path
        self.settings = settings
        model_params = llama_cpp.llama_model_default_params()
        model_params.n_gpu_layers = 0
        model = llama_cpp.llama_model_load_from_file(str(path).encode(), model_params)
        if not model:
            raise ConfigError(
                f"llama.cpp could not load {str(path)!r}: not a GGUF model it supports"
                " (set logger 'avm.llm.local.llama_cpp' to DEBUG to see why)"
            )
        self._model: int | None = model
        self._ctx: int | None = None
        try:
            params = llama_cpp.llama_context_default_params()
            params.n_ctx = settings.n_ctx
            params.n_batch = settings.n_batch
            params.n_ubatch = settings.n_batch
            params.n_seq_max = settings.n_seq
            params.n_threads = settings.n_threads
            params.n_threads_batch = settings.n_threads
            params.kv_unified = settings.kv_unified
            params.no_perf = True
            params.flash_attn_type = (
                llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO
                if settings.flash_attn
                else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
            )
            ctx = llama_cpp.llama_init_from_model(model, params)
            if not ctx:
                raise ConfigError(
                    f"llama.cpp could not create a context for {str(path)!r} with"
                    f" {settings}; try a smaller n_ctx or fewer sequences"
                )
            self._ctx = ctx
            vocab = llama_cpp.llama_model_get_vocab(model)
            memory = llama_cpp.llama_get_memory(ctx)
            if not vocab or not memory:
                raise ConfigError(f"{str(path)!r} has no vocabulary or no KV cache")
            self.vocab: int = vocab
            self.memory: int = memory
            self.n_vocab: int = llama_cpp.llama_vocab_n_tokens(vocab)
            self.n_ctx: int = llama_cpp.llama_n_ctx(ctx)
            self.n_ctx_train: int = llama_cpp.llama_model_n_ctx_train(model)
            self.add_bos: bool = bool(llama_cpp.llama_vocab_get_add_bos(vocab))
            template = llama_cpp.llama_model_chat_template(model, None)
            self.chat_template: bytes | None = template or None
            self.description = self._describe(model)
        except BaseException:
            self.close()
            raise
        # token id -> bytes, filled lazily; a completion renders the same few thousand tokens.
        self._pieces: dict[int, bytes] = {}

    @property
    def ctx(self) -> int:
        if self._ctx is None:
            raise ModelError(f"local model {self.path.name} is closed")
        return self._ctx

    @staticmethod
    def _describe(model: int) -> str:
        buf = ctypes.create_string_buffer(256)
        n = llama_cpp.llama_model_desc(model, buf, len(buf))
        return buf.value.decode(errors="replace") if n > 0 else "unknown model"

    def close(self) -> None:
        """Free the context and the weights; safe to call twice."""
        ctx, self._ctx = self._ctx, None
        if ctx is not None:
            llama_cpp.llama_free(ctx)
        model, self._model = self._model, None
        if model is not None:
            llama_cpp.llama_model_free(model)

    # --- text <-> tokens -------------------------------------------------------------------

    def tokenize(self, text: str, *, add_bos: bool = True) -> list[int]:
        """Token ids of ``text``; control tokens written in the text (``<|im_start|>``) are
        parsed as such, which is what a chat-templated prompt needs."""
        # "replace": a lone surrogate in agent text must not make the whole request fail.
        data = text.encode(errors="replace")
        # A token is at least one byte, plus room for BOS.
        capacity = len(data) + 2
        buf = (llama_cpp.llama_token * capacity)()
        n = llama_cpp.llama_tokenize(self.vocab, data, len(data), buf, capacity, add_bos, True)
        if n < 0:
            raise ModelError(f"could not tokenize {len(data)} bytes of prompt (code {n})")
        return list(buf[:n])

    def piece(self, token: int) -> bytes:
        """The bytes a token stands for; control tokens render as nothing."""
        cached = self._pieces.get(token)
        if cached is not None:
            return cached
        buf = ctypes.create_string_buffer(64)
        n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, False)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, False)
        piece = buf.raw[: max(n, 0)]
        self._pieces[token] = piece
        return piece

    def is_end_of_generation(self, token: int) -> bool:
        return bool(llama_cpp.llama_vocab_is_eog(self.vocab, token))

    def apply_chat_template(
        self, messages: Sequence[tuple[str, str]], *, add_assistant: bool
    ) -> str:
        """Render ``(role, content)`` pairs with the model's chat template.

        ``add_assistant`` ends the text with the header that opens the assistant's turn.
        llama.cpp recognises the common templates (ChatML for SmolLM2) from the template text
        the GGUF carries; it does not run Jinja.
        """
        if self.chat_template is None:
            raise ModelError(f"{self.path.name} has no chat template")
        if not messages:
            return ""
        # Keep the encoded strings referenced while the C array points into them.
        encoded = [
            (role.encode(errors="replace"), content.encode(errors="replace"))
            for role, content in messages
        ]
        chat = (llama_cpp.llama_chat_message * len(encoded))()
        for slot, (role, content) in zip(chat, encoded, strict=True):
            slot.role = role
            slot.content = content
        capacity = 2 * sum(len(r) + len(c) for r, c in encoded) + 256
        for _ in range(2):
            buf = ctypes.create_string_buffer(capacity)
            n = llama_cpp.llama_chat_apply_template(
                self.chat_template, chat, len(encoded), add_assistant, buf, capacity
            )
            if n < 0:
                raise ModelError(
                    f"llama.cpp does not support the chat template of {self.path.name}"
                )
            if n <= capacity:
                return buf.raw[:n].decode(errors="replace")
            capacity = n
        raise ModelError("chat template output kept growing")  # pragma: no cover
