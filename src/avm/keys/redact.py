"""The redactor: every live secret value, and its simple encodings, cut out of text.

Whatever leaves a tool, a model or a log record may carry a secret by accident (a service that
echoes its request headers, a process that prints its environment, an error message quoting a
URL). The redactor replaces each occurrence with ``[REDACTED:name]`` before the text is
journaled, returned to an agent, or written to a log.

For every secret it looks for the raw value, its hex (both cases), URL-encoding, and base64 in
both alphabets. Base64 is the subtle one: the encoding of a secret embedded in longer data
depends on its byte offset modulo 3, so for each of the three alignments the *stable core* of
the encoding is searched, the characters fully determined by the secret's own bits, whatever
surrounds it. Encoded forms shorter than :data:`MIN_ENCODED` characters are not searched (they
would match innocent text too often); the raw value always is. So base64 is caught at every
alignment for secrets of 7 bytes or more, which every real API key is.

Matching is one pass with one compiled pattern over all variants of all secrets. The pattern is
a trie folded into a regular expression (variants sharing a prefix share a branch), so the work
per position grows with the depth of the trie, not with the number of secrets, the way an
Aho–Corasick automaton behaves. The pattern is rebuilt lazily after the set of secrets changes.
"""

from __future__ import annotations

import base64
import logging
import re
import threading
import urllib.parse
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

import msgspec

__all__ = ["MIN_ENCODED", "RedactingFilter", "Redactor"]

MIN_ENCODED = 8

T = TypeVar("T")
_Trie = dict[str, "_Trie"]
_BTrie = dict[bytes, "_BTrie"]
_END = ""


def _b64_cores(value: bytes) -> set[bytes]:
    """Base64 fragments present in any encoding containing ``value``, for each byte alignment."""
    cores: set[bytes] = set()
    n = len(value)
    for shift in range(3):
        encoded = base64.b64encode(b"\0" * shift + value + b"\0\0\0")
        first = -(-8 * shift // 6)  # first character made only of the secret's bits
        last = (8 * (shift + n)) // 6  # one past the last such character
        core = encoded[first:last]
        cores.add(core)
    cores.add(base64.b64encode(value))  # the whole value alone, padding included
    cores |= {c.replace(b"+", b"-").replace(b"/", b"_") for c in cores}
    return cores


def variants(value: bytes) -> set[bytes]:
    """The byte strings that reveal ``value``: raw, hex, URL-encoded and base64 forms."""
    found = {value}
    encoded: set[bytes] = {value.hex().encode(), value.hex().upper().encode()}
    encoded |= _b64_cores(value)
    quoted = urllib.parse.quote_from_bytes(value, safe="").encode()
    encoded |= {quoted, quoted.replace(b"%20", b"+"), _lower_escapes(quoted)}
    found |= {v for v in encoded if len(v) >= MIN_ENCODED}
    return {v for v in found if v}


def _lower_escapes(quoted: bytes) -> bytes:
    return re.sub(rb"%[0-9A-F]{2}", lambda m: m.group(0).lower(), quoted)


def _fold_str(words: Iterable[str]) -> str:
    root: dict[str, Any] = {}
    for word in words:
        node = root
        for ch in word:
            node = node.setdefault(ch, {})
        node[_END] = {}
    return _emit_str(root)


def _emit_str(node: dict[str, Any]) -> str:
    # Iterative over single-child chains (long secrets, e.g. PEM keys, would otherwise recurse
    # once per character); recursive only at branch points, which are few.
    branches: list[str] = []
    for ch, child in sorted(node.items()):
        if ch == _END:
            continue
        chain = [ch]
        while len(child) == 1 and _END not in child:
            ((nxt, child),) = child.items()
            chain.append(nxt)
        branches.append(re.escape("".join(chain)) + _emit_str(child))
    if not branches:
        return ""
    body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
    if _END in node:
        return f"(?:{body})?" if len(branches) == 1 else body + "?"
    return body


def _fold_bytes(words: Iterable[bytes]) -> bytes:
    # Bytes are folded through latin-1, a one-to-one map of byte values onto code points.
    return _fold_str(w.decode("latin-1") for w in words).encode("latin-1")


class Redactor:
    """Replaces every live secret value (and its encodings) with ``[REDACTED:name]``."""

    def __init__(self, secrets: Mapping[str, bytes] | None = None) -> None:
        self._secrets: dict[str, bytes] = dict(secrets or {})
        self._lock = threading.Lock()
        self._text: re.Pattern[str] | None = None
        self._bytes: re.Pattern[bytes] | None = None
        self._names_text: dict[str, str] = {}
        self._names_bytes: dict[bytes, str] = {}
        self._stale = True

    def __repr__(self) -> str:
        return f"<Redactor of {len(self._secrets)} secrets>"

    def __len__(self) -> int:
        return len(self._secrets)

    def set(self, name: str, value: bytes) -> None:
        with self._lock:
            self._secrets[name] = value
            self._stale = True

    def discard(self, name: str) -> None:
        with self._lock:
            if self._secrets.pop(name, None) is not None:
                self._stale = True

    def replace_all(self, secrets: Mapping[str, bytes]) -> None:
        with self._lock:
            self._secrets = dict(secrets)
            self._stale = True

    def _compiled(self) -> tuple[re.Pattern[str] | None, re.Pattern[bytes] | None]:
        if self._stale:
            with self._lock:
                if self._stale:
                    self._rebuild()
        return self._text, self._bytes

    def _rebuild(self) -> None:
        names_bytes: dict[bytes, str] = {}
        # Sorted so that when two secrets share a variant the owner is stable between builds.
        for name, value in sorted(self._secrets.items()):
            for variant in variants(value):
                names_bytes.setdefault(variant, name)
        names_text: dict[str, str] = {}
        for variant, name in names_bytes.items():
            try:
                names_text.setdefault(variant.decode("utf-8"), name)
            except UnicodeDecodeError:
                continue  # a non-UTF-8 secret can only appear raw in bytes, not in text
        self._names_bytes, self._names_text = names_bytes, names_text
        self._bytes = re.compile(_fold_bytes(names_bytes)) if names_bytes else None
        self._text = re.compile(_fold_str(names_text)) if names_text else None
        self._stale = False

    def redact_text(self, text: str) -> str:
        pattern, _ = self._compiled()
        if pattern is None:
            return text
        names = self._names_text
        return pattern.sub(lambda m: f"[REDACTED:{names[m.group(0)]}]", text)

    def redact_bytes(self, data: bytes) -> bytes:
        _, pattern = self._compiled()
        if pattern is None:
            return data
        names = self._names_bytes
        return pattern.sub(lambda m: f"[REDACTED:{names[m.group(0)]}]".encode(), data)

    def redact(self, value: T) -> T:
        """Redact every string and bytes value inside ``value`` (dicts, lists, tuples, structs)."""
        return self._walk(value, 0)  # type: ignore[no-any-return]

    def _walk(self, value: Any, depth: int) -> Any:
        if isinstance(value, str):
            return self.redact_text(value)
        if isinstance(value, (bytes, bytearray, memoryview)):
            return self.redact_bytes(bytes(value))
        if depth > 64:  # deeper than any real payload; do not recurse without end
            return value
        if isinstance(value, dict):
            return {self._walk(k, depth + 1): self._walk(v, depth + 1) for k, v in value.items()}
        if isinstance(value, list):
            return [self._walk(v, depth + 1) for v in value]
        if isinstance(value, tuple):
            return tuple(self._walk(v, depth + 1) for v in value)
        if isinstance(value, msgspec.Struct):
            changes = {f: self._walk(getattr(value, f), depth + 1) for f in value.__struct_fields__}
            return msgspec.structs.replace(value, **changes)
        return value

    def contains_secret(self, text: str | bytes) -> bool:
        text_pattern, bytes_pattern = self._compiled()
        if isinstance(text, str):
            return text_pattern is not None and text_pattern.search(text) is not None
        return bytes_pattern is not None and bytes_pattern.search(text) is not None


class RedactingFilter(logging.Filter):
    """A logging filter that redacts secrets from a record's message, exception and stack.

    Attach it to *handlers* (``handler.addFilter(...)``): a filter on a logger does not see
    records propagated from its child loggers, a filter on a handler sees everything it emits.
    """

    def __init__(self, redactor: Redactor, name: str = "") -> None:
        super().__init__(name)
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        redactor = self.redactor
        message = record.getMessage()
        clean = redactor.redact_text(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redactor.redact_text(record.exc_text)
        if record.stack_info:
            record.stack_info = redactor.redact_text(record.stack_info)
        return True
