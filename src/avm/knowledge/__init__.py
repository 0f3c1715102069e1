"""Knowledge: what agents know, private (encrypted per agent) or public (shared by namespace).

::

    store = KnowledgeStore.open(state_dir, keys)          # keys: an open avm.keys.KeyManager
    store.add_private("analyst-1", text, title="thesis")  # ciphertext + keyed term index
    store.add_public("market", text, title="BTC daily")   # plaintext FTS5
    store.search("analyst-1", "btc halving", namespaces=("market",))
    for tool in knowledge_tools(store, namespaces=("market",), writable=("market",)):
        vm.tools.add(tool)                                 # knowledge.search / knowledge.add
"""

from avm.knowledge.chunking import chunk_text, terms
from avm.knowledge.store import DB_NAME, KnowledgeHit, KnowledgeStore, Scope
from avm.knowledge.tools import knowledge_tools

__all__ = [
    "DB_NAME",
    "KnowledgeHit",
    "KnowledgeStore",
    "Scope",
    "chunk_text",
    "knowledge_tools",
    "terms",
]
