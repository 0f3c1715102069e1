"""Content-addressed memory: every large byte string held once, tiered under a RAM budget.

The pieces, one module each:

* :mod:`~avm.memory.refs` — :data:`ContentRef`, the 32-byte BLAKE3 name of content;
* :mod:`~avm.memory.store` — :class:`ContentStore`: put/get, holds, link lists, persistence;
* :mod:`~avm.memory.tiers` — hot (bytes in RAM), warm (zstd in RAM), cold (SQLite on disk);
* :mod:`~avm.memory.packed` — ``PackedTable``: the warm tier's entries in flat arrays and
  shared chunks, no Python object per entry;
* :mod:`~avm.memory.codec` — zstd with dictionaries trained on the fleet's own messages;
* :mod:`~avm.memory.budget` — :class:`MemoryBudget` and the LRU moves it drives;
* :mod:`~avm.memory.conversation` — :class:`Conversation`: prompts and history as refs;
* :mod:`~avm.memory.holds` — :class:`HoldTable`: which content each agent holds, once each;
* :mod:`~avm.memory.passivation` — :class:`PassivatedAgent`: an idle agent in ~250 bytes;
* :mod:`~avm.memory.gc` — :func:`collect`: mark from roots and holds, sweep RAM and disk;
* :mod:`~avm.memory.stats` — :class:`MemoryStats`: bytes per tier, dedup, compression, hits;
* :mod:`~avm.memory.errors` — the :class:`ContentError` branch of the error tree.

A minimal use::

    from avm.memory import ContentStore, Conversation, collect

    with ContentStore(state_dir, budget="2GB") as store:
        chat = Conversation.start(store, system=SHARED_PROMPT, agent_prompt="You are Ada.")
        chat = chat.append(store, "What moved the market today?")
        request_messages = chat.messages(store)  # text is read only here
        collect(store, roots=chat.refs())  # reclaim whatever no live conversation names
"""

from avm.memory.budget import MemoryBudget
from avm.memory.codec import RAW, ZSTD, Codec, DictionaryInfo
from avm.memory.conversation import AssembledPrompt, Conversation
from avm.memory.errors import (
    ContentCorrupt,
    ContentError,
    ContentNotFound,
    InvalidRef,
    RefcountError,
    StoreClosed,
)
from avm.memory.gc import GcReport, collect
from avm.memory.passivation import PassivatedAgent, roots_of
from avm.memory.refs import HASH_SIZE, Content, ContentRef, hash_content, ref_from_hex
from avm.memory.stats import GcStats, MemoryStats, TierStats
from avm.memory.store import ContentStore
from avm.memory.tiers import Tier

__all__ = [
    "HASH_SIZE",
    "RAW",
    "ZSTD",
    "AssembledPrompt",
    "Codec",
    "Content",
    "ContentCorrupt",
    "ContentError",
    "ContentNotFound",
    "ContentRef",
    "ContentStore",
    "Conversation",
    "DictionaryInfo",
    "GcReport",
    "GcStats",
    "InvalidRef",
    "MemoryBudget",
    "MemoryStats",
    "PassivatedAgent",
    "RefcountError",
    "StoreClosed",
    "Tier",
    "TierStats",
    "collect",
    "hash_content",
    "ref_from_hex",
    "roots_of",
]
