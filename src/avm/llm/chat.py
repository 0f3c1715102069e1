"""Conversations as model input: what an agent holds, what RUN_MODEL journals, and the text.

Three pieces, one path::

    agent code                    RUN_MODEL arguments                 the I/O boundary
    Chat  ──ctx.run_model──►  (ConversationInput,)  ──prepare──►  Assembler ─► ModelRequest
    (refs + the VM's store)    refs only: journaled as a            messages, tools and a
                               digest of ~300 bytes                 PrefixHint

- :class:`Chat` is a :class:`avm.memory.Conversation` bound to the VM's content store
  (``ctx.conversation(...)`` makes one). Growing it stores the new message and returns a new
  chat; the old one stays valid. No instruction is needed for that: a put is content-addressed,
  so re-running the agent after a crash stores the same bytes under the same refs.
- :class:`ConversationInput` is the chat's refs as a msgspec struct: what ``ctx.run_model``
  passes in place of text. The journal digests instruction arguments, so a 50 KB system prompt
  costs the journal a 32-byte ref instead of a 50 KB hash, and replay matches it exactly (a ref
  is the hash of its content).
- :class:`Assembler` turns those refs into messages, in the order :meth:`Conversation.assemble`
  lays out (tools, shared system prompt, per-agent prompt, history), plus a
  :class:`~avm.llm.types.PrefixHint` naming the shared part by the conversation's
  ``prefix_key``. It remembers what it decoded, so every agent's request carries the *same*
  ``str`` object for a shared system prompt: the I/O layer's prefix table, response cache and
  providers then treat it as one prefix, encoded once.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterator, Sequence
from typing import Final, TypeVar, get_args

import msgspec

from avm.errors import InvalidArgument
from avm.llm.prompts import Prompt
from avm.llm.types import Message, ModelReply, PrefixHint, Role, ToolCall, ToolSpec
from avm.memory.conversation import Conversation
from avm.memory.refs import ContentRef
from avm.memory.store import ContentStore

__all__ = ["ASSEMBLER", "Assembled", "Assembler", "Chat", "ConversationInput"]

_ROLES: Final = frozenset(get_args(Role))
_message_decoder: Final = msgspec.msgpack.Decoder(Message)
_tools_decoder: Final = msgspec.msgpack.Decoder(tuple[ToolSpec, ...])


class ConversationInput(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """A conversation's refs, as RUN_MODEL takes and the journal digests them."""

    tools: bytes | None
    system: bytes | None
    agent_prompt: bytes | None
    history: tuple[bytes, ...]


class Chat:
    """A conversation bound to a content store; every change returns a new chat.

    ::

        chat = ctx.conversation(system=SHARED_PROMPT, prompt="You are Ada.", tools=["lookup"])
        chat = chat.append("user", "What moved the market today?")
        reply = await ctx.run_model("default", chat)
        chat = chat.append_reply(reply)
    """

    __slots__ = ("_keep", "conversation", "store")

    def __init__(
        self,
        store: ContentStore,
        conversation: Conversation,
        keep: Callable[[ContentRef], None] | None = None,
    ) -> None:
        self.store = store
        self.conversation = conversation
        self._keep = keep

    @classmethod
    def start(
        cls,
        store: ContentStore,
        *,
        system: str | Prompt | None = None,
        prompt: str | Prompt | None = None,
        tools: Sequence[ToolSpec] | None = None,
        keep: Callable[[ContentRef], None] | None = None,
    ) -> Chat:
        """A new, empty chat; the texts and tool schemas given are stored (once per content).

        ``keep`` is called with every ref the chat stores, now and as it grows: the agent
        context passes one that makes the agent hold the content (a GC root until the agent is
        deleted), since the store itself keeps chat content unheld.
        """
        for name, value in (("system", system), ("prompt", prompt)):
            if value is not None and not isinstance(value, str | Prompt):
                raise InvalidArgument(
                    f"conversation {name} must be a str or a Prompt, got {type(value).__name__}"
                )
        specs = None
        if tools:
            specs = list(tools)
            for index, spec in enumerate(specs):
                if not isinstance(spec, ToolSpec):
                    raise InvalidArgument(
                        f"conversation tools[{index}] must be a ToolSpec, got {type(spec).__name__}"
                    )
        conversation = Conversation.start(
            store,
            tools=specs,
            system=system.text if isinstance(system, Prompt) else system,
            agent_prompt=prompt.text if isinstance(prompt, Prompt) else prompt,
        )
        if keep is not None:
            for ref in conversation.refs():
                keep(ref)
        return cls(store, conversation, keep)

    def append(self, role: Role, text: str) -> Chat:
        """This chat with one more message of ``role`` saying ``text``."""
        if role not in _ROLES:
            known = ", ".join(sorted(_ROLES))
            raise InvalidArgument(f"message role must be one of {known}, got {role!r}")
        if not isinstance(text, str):
            raise InvalidArgument(f"message text must be a str, got {type(text).__name__}")
        return self.add(Message(role, text))

    def add(self, message: Message | str) -> Chat:
        """This chat with ``message`` appended (a ``str`` is a user message)."""
        if not isinstance(message, Message | str):
            raise InvalidArgument(
                f"a conversation message must be a Message or a str, got {type(message).__name__}"
            )
        if type(message) is str:
            message = Message("user", message)  # what Conversation.append would make of it
        grown = self.conversation.append(self.store, message)
        last = grown.last
        assert last is not None
        # The next model call on this chat reads this message back; hand the assembler the
        # message itself, so it neither reads the store nor decodes what was just encoded.
        ASSEMBLER.learn(last, message)
        if self._keep is not None:
            self._keep(last)
        return Chat(self.store, grown, self._keep)

    def append_reply(self, reply: ModelReply) -> Chat:
        """This chat with a model's reply appended as the assistant's turn (tool calls too)."""
        return self.add(Message("assistant", reply.text, tool_calls=reply.tool_calls))

    def as_input(self) -> ConversationInput:
        """The refs RUN_MODEL takes for this chat."""
        conversation = self.conversation
        return ConversationInput(
            conversation.tools,
            conversation.system,
            conversation.agent_prompt,
            conversation.history(),
        )

    def messages(self) -> tuple[Message, ...]:
        """The messages a model call on this chat sends (read from the store)."""
        return ASSEMBLER.assemble(self.store, self.as_input()).messages

    @property
    def prefix_key(self) -> ContentRef:
        """The name of the shared prefix (tools and system prompt), as the I/O layer keys it."""
        return self.conversation.prefix_key

    def refs(self) -> Iterator[ContentRef]:
        """Every ref this chat needs: GC roots while it is live."""
        return self.conversation.refs()

    def __len__(self) -> int:
        """The number of messages after the prompts."""
        return len(self.conversation)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Chat):
            return NotImplemented
        return self.conversation == other.conversation

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<Chat of {len(self)} message(s), prefix {self.prefix_key.hex()[:12]}>"


class Assembled(msgspec.Struct, frozen=True):
    """A conversation laid out for a model request."""

    messages: tuple[Message, ...]
    tools: tuple[ToolSpec, ...]
    prefix: PrefixHint


_Decoded = Message | tuple[ToolSpec, ...] | PrefixHint
_D = TypeVar("_D", Message, tuple[ToolSpec, ...], PrefixHint)


class Assembler:
    """Refs to request parts, remembering up to ``max_bytes`` of decoded content (LRU).

    Remembering is what keeps a shared system prompt one ``str`` object across agents; content
    is immutable under its ref, so a remembered value never goes stale.
    """

    def __init__(self, max_bytes: int = 64 * 1024 * 1024) -> None:
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be at least 1, got {max_bytes}")
        self.max_bytes = max_bytes
        self._bytes = 0
        self._memo: collections.OrderedDict[object, tuple[_Decoded, int]] = (
            collections.OrderedDict()
        )
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._memo)

    def assemble(self, store: ContentStore, conversation: ConversationInput) -> Assembled:
        messages: list[Message] = []
        system = conversation.system
        if system is not None:
            messages.append(self._system(store, system))
        if conversation.agent_prompt is not None:
            messages.append(self._system(store, conversation.agent_prompt))
        for ref in conversation.history:
            messages.append(self._message(store, ref))
        tools: tuple[ToolSpec, ...] = ()
        if conversation.tools is not None:
            tools = self._tools(store, conversation.tools)
        return Assembled(tuple(messages), tools, self._hint(conversation.tools, system))

    def clear(self) -> None:
        self._memo.clear()
        self._bytes = 0

    def learn(self, ref: bytes, message: Message | str) -> None:
        """Remember ``message`` as the content stored under ``ref`` (its msgpack encoding).

        Only a message that decoding its stored bytes would give back equal is remembered; any
        other is left to be read and checked on assembly, as before.
        """
        if ref in self._memo or type(message) is not Message or not _decodes_to_itself(message):
            return
        self._remember(ref, message, len(message.content) + _MESSAGE_OVERHEAD)

    def _system(self, store: ContentStore, ref: bytes) -> Message:
        found = self._recall(ref)
        if found is not None:
            assert isinstance(found, Message)
            return found
        data = store.get(ref)
        return self._remember(ref, Message("system", data.decode()), len(data))

    def _message(self, store: ContentStore, ref: bytes) -> Message:
        found = self._recall(ref)
        if found is not None:
            assert isinstance(found, Message)
            return found
        data = store.get(ref)
        return self._remember(ref, _message_decoder.decode(data), len(data))

    def _tools(self, store: ContentStore, ref: bytes) -> tuple[ToolSpec, ...]:
        found = self._recall(ref)
        if found is not None:
            assert isinstance(found, tuple)
            return found
        data = store.get(ref)
        return self._remember(ref, _tools_decoder.decode(data), len(data))

    def _hint(self, tools: bytes | None, system: bytes | None) -> PrefixHint:
        key = (tools, system)
        found = self._recall(key)
        if found is not None:
            assert isinstance(found, PrefixHint)
            return found
        named = Conversation(
            tools=None if tools is None else ContentRef(tools),
            system=None if system is None else ContentRef(system),
        ).prefix_key
        return self._remember(key, PrefixHint(named, 0 if system is None else 1), 64)

    def _recall(self, key: object) -> _Decoded | None:
        memo = self._memo
        found = memo.get(key)
        if found is None:
            self.misses += 1
            return None
        self.hits += 1
        memo.move_to_end(key)
        return found[0]

    def _remember(self, key: object, value: _D, size: int) -> _D:
        memo = self._memo
        memo[key] = (value, size)
        self._bytes += size
        while self._bytes > self.max_bytes and len(memo) > 1:
            _, (_, dropped) = memo.popitem(last=False)
            self._bytes -= dropped
        return value


# What a remembered message counts for beyond its text: roughly its encoding's other fields.
_MESSAGE_OVERHEAD: Final = 32


def _decodes_to_itself(message: Message) -> bool:
    """Whether decoding ``message``'s encoding as a :class:`Message` gives an equal message:
    every field's type is what the decoder checks for."""
    if message.role not in _ROLES:
        return False
    if type(message.content) is not str:
        return False
    for optional in (message.tool_call_id, message.name):
        if optional is not None and type(optional) is not str:
            return False
    calls = message.tool_calls
    if type(calls) is not tuple:
        return False
    for call in calls:
        if type(call) is not ToolCall:
            return False
        if type(call.id) is not str or type(call.name) is not str:
            return False
        if type(call.arguments) is not str:
            return False
    return True


ASSEMBLER: Final = Assembler()
"""The process-wide assembler: one decoded copy of each shared prompt for every VM."""
