"""An agent's conversation as refs: a shared prefix and a persistent list of message hashes.

A :class:`Conversation` holds no text. Its prefix is three refs — the tool schemas, the shared
system prompt, the agent's own prompt — and its history is a persistent (immutable, shared-tail)
linked list of message refs. :meth:`Conversation.append` stores the new message and returns a
new conversation whose list points at the old one: the history is never copied, and the old
value stays valid (a retry or a fork starts from it for free).

Text is assembled only at the I/O boundary, by :meth:`Conversation.assemble`, in the order
provider prompt caches key on::

    tools  →  shared system prompt  →  per-agent prompt  →  history, oldest first

Every agent of a fleet that shares tools and a system prompt therefore sends a byte-identical
prefix, which OpenAI-compatible servers, vLLM, llama.cpp and Anthropic cache across requests.
``prefix_key`` names that prefix, so the I/O layer can group requests that share it.

Messages are stored as deterministic msgpack of :class:`avm.llm.types.Message` (the same
message is the same bytes, hence stored once across agents); prompts are stored as their UTF-8
text, so a prompt registered in the VM's library and the same prompt in a conversation are one
piece of content.

Lifetime: a conversation stores with ``hold=False``. While it is live, pass :meth:`refs` as GC
roots; to keep it beyond that (passivation, checkpoints), :meth:`save` stores it as one held
link list, and :meth:`load` rebuilds it from that ref.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import blake3
import msgspec

from avm.llm.types import Message, ToolSpec
from avm.memory.errors import ContentError
from avm.memory.refs import ContentRef, check_ref
from avm.memory.store import ContentStore

__all__ = ["AssembledPrompt", "Conversation"]

_encoder = msgspec.msgpack.Encoder(order="deterministic")
_message_decoder = msgspec.msgpack.Decoder(Message)
_tools_decoder = msgspec.msgpack.Decoder(tuple[ToolSpec, ...])

# Which prefix parts a saved conversation has, as bits of its one-byte payload.
_HAS_TOOLS, _HAS_SYSTEM, _HAS_AGENT = 1, 2, 4
_SAVE_VERSION = b"\x01"


class _Node(msgspec.Struct, frozen=True, gc=False):
    """One cell of the history list. ``gc=False`` is safe: a node only points at older nodes."""

    ref: ContentRef
    parent: _Node | None


class AssembledPrompt(msgspec.Struct, frozen=True):
    """What a model request is built from: tools, then messages in cache-friendly order."""

    tools: tuple[ToolSpec, ...]
    messages: tuple[Message, ...]
    prefix_key: ContentRef


class Conversation:
    """Refs to a conversation's prefix and history (see the module docstring)."""

    __slots__ = ("_head", "_length", "agent_prompt", "system", "tools")

    def __init__(
        self,
        *,
        tools: ContentRef | None = None,
        system: ContentRef | None = None,
        agent_prompt: ContentRef | None = None,
    ) -> None:
        self.tools = tools
        self.system = system
        self.agent_prompt = agent_prompt
        self._head: _Node | None = None
        self._length = 0

    @classmethod
    def start(
        cls,
        store: ContentStore,
        *,
        tools: Sequence[ToolSpec] | ContentRef | None = None,
        system: str | ContentRef | None = None,
        agent_prompt: str | ContentRef | None = None,
    ) -> Conversation:
        """A new, empty conversation. Text given is stored; refs given are used as they are
        (e.g. the ref of a prompt the VM registered once for the whole fleet)."""
        return cls(
            tools=_tools_ref(store, tools),
            system=_text_ref(store, system),
            agent_prompt=_text_ref(store, agent_prompt),
        )

    # -- growing -------------------------------------------------------------------------

    def append(self, store: ContentStore, message: Message | str) -> Conversation:
        """A conversation one message longer (a ``str`` is a user message); this one is kept."""
        if isinstance(message, str):
            message = Message("user", message)
        return self.append_ref(store.put(_encoder.encode(message), hold=False))

    def extend(self, store: ContentStore, messages: Iterable[Message | str]) -> Conversation:
        """A conversation with every message of ``messages`` appended, in order."""
        conversation = self
        for message in messages:
            conversation = conversation.append(store, message)
        return conversation

    def append_ref(self, ref: bytes) -> Conversation:
        """Append a message already in the store, e.g. a broadcast stored once for a fleet."""
        grown = Conversation(tools=self.tools, system=self.system, agent_prompt=self.agent_prompt)
        grown._head = _Node(check_ref(ref), self._head)
        grown._length = self._length + 1
        return grown

    # -- reading -------------------------------------------------------------------------

    def __len__(self) -> int:
        """The number of messages in the history (the prefix not counted)."""
        return self._length

    @property
    def last(self) -> ContentRef | None:
        """The newest message's ref; ``None`` while the history is empty."""
        return None if self._head is None else self._head.ref

    def history(self) -> tuple[ContentRef, ...]:
        """The history's message refs, oldest first."""
        refs: list[ContentRef] = []
        node = self._head
        while node is not None:
            refs.append(node.ref)
            node = node.parent
        refs.reverse()
        return tuple(refs)

    def refs(self) -> Iterator[ContentRef]:
        """Every ref this conversation needs: what to pass as GC roots while it is live."""
        for ref in (self.tools, self.system, self.agent_prompt):
            if ref is not None:
                yield ref
        node = self._head
        while node is not None:
            yield node.ref
            node = node.parent

    @property
    def prefix_key(self) -> ContentRef:
        """A hash naming the shared, cacheable prefix (tools and shared system prompt)."""
        return ContentRef(blake3.blake3((self.tools or b"") + (self.system or b"")).digest())

    def assemble(self, store: ContentStore) -> AssembledPrompt:
        """Read the referenced content and lay it out for a model request.

        Messages: the shared system prompt, then the per-agent prompt (both as system
        messages, kept separate so the shared one stays a byte-identical prefix), then the
        history. Tools go in ``tools``; providers put them before the messages.
        """
        tools: tuple[ToolSpec, ...] = ()
        if self.tools is not None:
            tools = _tools_decoder.decode(store.get(self.tools))
        messages: list[Message] = []
        if self.system is not None:
            messages.append(Message("system", store.text(self.system)))
        if self.agent_prompt is not None:
            messages.append(Message("system", store.text(self.agent_prompt)))
        for ref in self.history():
            messages.append(_message_decoder.decode(store.get(ref)))
        return AssembledPrompt(tools, tuple(messages), self.prefix_key)

    def messages(self, store: ContentStore) -> tuple[Message, ...]:
        """Just the messages of :meth:`assemble`."""
        return self.assemble(store).messages

    # -- saving --------------------------------------------------------------------------

    def save(self, store: ContentStore, *, hold: bool = True) -> ContentRef:
        """Store the conversation as one link list; its ref (held unless ``hold=False``).

        A passivated agent or a checkpoint keeps just this ref: the link list keeps every
        message and prompt alive through garbage collection.
        """
        mask = 0
        children: list[bytes] = []
        for bit, ref in (
            (_HAS_TOOLS, self.tools),
            (_HAS_SYSTEM, self.system),
            (_HAS_AGENT, self.agent_prompt),
        ):
            if ref is not None:
                mask |= bit
                children.append(ref)
        children.extend(self.history())
        return store.put_links(children, _SAVE_VERSION + bytes([mask]), hold=hold)

    @classmethod
    def load(cls, store: ContentStore, ref: bytes) -> Conversation:
        """The conversation :meth:`save` stored under ``ref``."""
        children, payload = store.read_links(ref)
        if len(payload) != 2 or payload[:1] != _SAVE_VERSION:
            raise ContentError(f"content {bytes(ref).hex()} is not a saved conversation")
        mask = payload[1]
        parts: list[ContentRef | None] = []
        index = 0
        for bit in (_HAS_TOOLS, _HAS_SYSTEM, _HAS_AGENT):
            if mask & bit:
                parts.append(children[index])
                index += 1
            else:
                parts.append(None)
        conversation = cls(tools=parts[0], system=parts[1], agent_prompt=parts[2])
        for child in children[index:]:
            conversation._head = _Node(child, conversation._head)
        conversation._length = len(children) - index
        return conversation

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Conversation):
            return NotImplemented
        return (
            self.tools == other.tools
            and self.system == other.system
            and self.agent_prompt == other.agent_prompt
            and self.history() == other.history()
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<Conversation of {self._length} message(s), prefix {self.prefix_key.hex()[:12]}>"


def _text_ref(store: ContentStore, value: str | bytes | None) -> ContentRef | None:
    if value is None:
        return None
    if isinstance(value, str):
        return store.put(value, hold=False)
    return check_ref(value)


def _tools_ref(store: ContentStore, value: Sequence[ToolSpec] | bytes | None) -> ContentRef | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return check_ref(value)
    return store.put(_encoder.encode(tuple(value)), hold=False)
