"""The shared prefix of model requests: system prompt and tools, encoded once, reused as bytes.

Thousands of agents send the same leading system messages and the same tool schemas with every
call; only their conversations differ. This module owns :class:`SharedPrefix` (that leading part
of a request, with its BLAKE3 digest, a token estimate, and its wire encoding per provider
dialect, each built on first use) and :class:`PrefixTable` (the bounded table that finds the
prefix of a request in about a microsecond). Providers splice the cached bytes into the request
body with :class:`msgspec.Raw`, so a 50 KB system prompt costs a memory copy per call instead of
a JSON escape pass; the response cache hashes the digest instead of the 50 KB.

A request that carries a :class:`~avm.llm.types.PrefixHint` (a conversation's, see
:mod:`avm.llm.chat`) is looked up by the hint's key, which names the prefix's content, and the
hint says how many leading messages are shared. Otherwise lookup is by the prefix's *values*:
the system texts (whose ``str`` hash Python caches on the object, and whose equality check
short-circuits on identity) and, for tools, their name, description and the identity of their
``parameters`` dict. A tool schema is therefore treated as
immutable once it has been sent: build a new dict to change a tool, do not edit the old one.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Any, Final, TypeVar

import blake3
import msgspec

from avm.errors import ModelError
from avm.llm.types import Message, ModelRequest, ToolSpec

__all__ = ["PREFIXES", "PrefixTable", "SharedPrefix"]

T = TypeVar("T")

_CANONICAL: Final = msgspec.msgpack.Encoder(order="deterministic")


class SharedPrefix:
    """The leading system messages and the tools of a request, as one reusable unit.

    ``count`` is how many leading messages belong to it; ``texts`` their contents; ``digest``
    a 32-byte BLAKE3 hash of the canonical encoding of texts and tools; ``chars`` the size of
    its text, for token estimates.
    """

    __slots__ = ("_encoded", "chars", "count", "digest", "texts", "tools")

    def __init__(self, texts: tuple[str, ...], tools: tuple[ToolSpec, ...]) -> None:
        self.texts = texts
        self.tools = tools
        self.count = len(texts)
        try:
            encoded = _CANONICAL.encode((texts, tools))
        except (TypeError, ValueError, OverflowError) as exc:  # msgspec.EncodeError included
            names = ", ".join(t.name for t in tools) or "none"
            raise ModelError(
                f"cannot encode the request's tools ({names}): {exc}; a tool's parameters must "
                "be a JSON Schema made of dicts, lists, strings, numbers, booleans and null"
            ) from None
        self.digest = blake3.blake3(encoded).digest()
        self.chars = sum(len(t) for t in texts) + sum(
            len(t.name) + len(t.description) + 64 for t in tools
        )
        self._encoded: dict[str, Any] = {}

    def encoded(self, dialect: str, build: Callable[[SharedPrefix], T]) -> T:
        """The prefix in one provider's wire form, built by ``build`` on first use."""
        value = self._encoded.get(dialect)
        if value is None:
            value = self._encoded[dialect] = build(self)
        return value

    @property
    def encoded_bytes(self) -> int:
        """Bytes held by the cached encodings (Raw values and lists of them)."""
        total = 0
        for value in self._encoded.values():
            total += _size(value)
        return total


def _size(value: object) -> int:
    if isinstance(value, msgspec.Raw):
        return len(value)
    if isinstance(value, (bytes, bytearray)):
        return len(value)
    if isinstance(value, (list, tuple)):
        return sum(_size(v) for v in value)
    return 0


def _is_plain_system(message: Message) -> bool:
    # Only bare system messages are shared: a name or tool fields make a message individual.
    return (
        message.role == "system"
        and message.name is None
        and message.tool_call_id is None
        and not message.tool_calls
    )


class PrefixTable:
    """Finds the :class:`SharedPrefix` of a request.

    Holds at most ``max_entries`` prefixes of at most ``max_chars`` characters in all (each is
    kept as text and in up to a few encoded forms), dropping the least recently used first. A
    request with neither leading system messages nor tools has no prefix (None).
    """

    def __init__(self, max_entries: int = 1024, max_chars: int = 32 * 1024 * 1024) -> None:
        if max_entries < 1 or max_chars < 1:
            raise ValueError("max_entries and max_chars must be at least 1")
        self.max_entries = max_entries
        self.max_chars = max_chars
        self._chars = 0
        self._entries: collections.OrderedDict[tuple[Any, ...], SharedPrefix] = (
            collections.OrderedDict()
        )
        self.hits = 0
        self.misses = 0
        self._last_request: ModelRequest | None = None
        self._last_prefix: SharedPrefix | None = None

    def __len__(self) -> int:
        return len(self._entries)

    def of(self, request: ModelRequest) -> SharedPrefix | None:
        # The wrappers and the provider ask about the same request object one after another
        # with no await in between; remembering the last answer halves the lookups. Holding
        # the request keeps its id from being reused while it is remembered.
        if request is self._last_request:
            return self._last_prefix
        prefix = self._lookup(request)
        self._last_request = request
        self._last_prefix = prefix
        return prefix

    def _lookup(self, request: ModelRequest) -> SharedPrefix | None:
        messages = request.messages
        if request.prefix is not None:
            return self._hinted(request)
        count = 0
        for message in messages:
            if message.role != "system" or not _is_plain_system(message):
                break
            count += 1
        # The last message is the question; a request that is all system messages still
        # shares everything but its last one.
        if count == len(messages) and count:
            count -= 1
        tools = request.tools
        if not count and not tools:
            return None
        if count == 1:
            texts: tuple[str, ...] = (messages[0].content,)
        else:
            texts = tuple([m.content for m in messages[:count]])
        key = (texts, tuple([(t.name, t.description, id(t.parameters)) for t in tools]))
        return self._find(key, texts, tools)

    def _hinted(self, request: ModelRequest) -> SharedPrefix | None:
        """The prefix its builder named: looked up by the hint's key, no text compared."""
        hint = request.prefix
        assert hint is not None
        count = hint.messages
        messages = request.messages
        plain = 0 <= count <= len(messages)
        for index in range(count if plain else 0):
            if not _is_plain_system(messages[index]):
                plain = False
                break
        if not plain:
            raise ModelError(
                f"the request's prefix hint covers {count} leading message(s), but the request "
                f"has {len(messages)} and the shared ones must be plain system messages"
            )
        if not count and not request.tools:
            return None
        texts = tuple([m.content for m in messages[:count]])
        return self._find((bytes(hint.key), count), texts, request.tools)

    def _find(
        self, key: tuple[Any, ...], texts: tuple[str, ...], tools: tuple[ToolSpec, ...]
    ) -> SharedPrefix:
        entries = self._entries
        prefix = entries.get(key)
        if prefix is not None:
            self.hits += 1
            if len(entries) > 1:
                entries.move_to_end(key)
            return prefix
        self.misses += 1
        # The entry keeps the tools (and so their parameters dicts) alive, which keeps the
        # ids in its key from being reused by other objects.
        prefix = entries[key] = SharedPrefix(texts, tools)
        self._chars += prefix.chars
        while len(entries) > 1 and (
            len(entries) > self.max_entries or self._chars > self.max_chars
        ):
            _, dropped = entries.popitem(last=False)
            self._chars -= dropped.chars
        return prefix

    def clear(self) -> None:
        self._entries.clear()
        self._chars = 0
        self._last_request = self._last_prefix = None


PREFIXES: Final = PrefixTable()
"""The process-wide table every provider and wrapper consults, so a prefix is encoded once."""
