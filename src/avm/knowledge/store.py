"""The knowledge store: public knowledge by namespace, private knowledge per agent, encrypted.

One SQLite file, ``knowledge.db`` in the state directory. Documents are chunked
(:mod:`avm.knowledge.chunking`) and each chunk is indexed with FTS5 and ranked with bm25.

*Public* knowledge (what agents gather and share: prices, posts, on-chain data) is stored and
indexed in plaintext, per namespace.

*Private* knowledge is never on disk in plaintext::

    agent key = HKDF(knowledge data key, "agent:" + agent id)  → encryption key ‖ term key
    priv_docs    owner tag, AES-256-GCM(title, source)
    priv_chunks  owner tag, AES-256-GCM(chunk text), bound by associated data to (owner, doc, seq)
    priv_index   FTS5 over HMAC(term key, term) for every term of the chunk, in sorted order

The knowledge data key is random and kept in the key manager, wrapped by the master key, so
rotating the master key re-wraps it in the same transaction as the secrets and nothing here
needs rewriting (the per-agent key is derived from the master key through it). The owner tag is
an HMAC of the agent id, so the file does not even list which agents have private knowledge.

A query is split into terms the same way, each term is hashed with the *querying* agent's term
key, and FTS5 matches hashes. Another agent's hashes are different for the same word, so its
chunks cannot match, and even a matched chunk would not decrypt under the wrong key. bm25 sees
the same term frequencies and chunk lengths it would on plaintext, so ranking is unchanged.

The trade-off, stated plainly. Keyed term hashes hide the words, not the statistics: someone
with the file (but not the key) sees, per agent, which chunks share a term, how often each
(hashed) term occurs, and how long each chunk is, which frequency analysis against a known
corpus can partly invert for common words. Hashes are sorted within a chunk, so word order is
not stored. Search is exact-term only: no prefixes, stemming or phrases. Stronger schemes
(padding, oblivious indexes) cost far more than this store is meant to; put knowledge that
must not leak even statistics somewhere search does not reach.
"""

from __future__ import annotations

import hmac
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from hashlib import sha256
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import msgspec

from avm.errors import InvalidArgument, NotFound, StorageError
from avm.keys.cipher import SealError, derive, open_sealed, seal
from avm.keys.manager import KeyManager
from avm.knowledge.chunking import DEFAULT_OVERLAP, DEFAULT_SIZE, chunk_text, terms

__all__ = ["DB_NAME", "KnowledgeHit", "KnowledgeStore", "Scope"]

DB_NAME = "knowledge.db"
MAX_DOCUMENT_CHARS = 4 << 20
MAX_QUERY_TERMS = 32
Scope = Literal["private", "public"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS pub_docs (
    id INTEGER PRIMARY KEY,
    namespace TEXT NOT NULL,
    title TEXT NOT NULL,
    source TEXT NOT NULL,
    added REAL NOT NULL,
    idem TEXT UNIQUE
);
CREATE VIRTUAL TABLE IF NOT EXISTS pub_chunks USING fts5(
    text, doc UNINDEXED, namespace UNINDEXED, seq UNINDEXED,
    tokenize = 'unicode61 remove_diacritics 2'
);
CREATE TABLE IF NOT EXISTS priv_docs (
    id INTEGER PRIMARY KEY,
    owner BLOB NOT NULL,
    nonce BLOB NOT NULL,
    meta BLOB NOT NULL,
    added REAL NOT NULL,
    idem BLOB UNIQUE
);
CREATE TABLE IF NOT EXISTS priv_chunks (
    id INTEGER PRIMARY KEY,
    owner BLOB NOT NULL,
    doc INTEGER NOT NULL REFERENCES priv_docs(id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    nonce BLOB NOT NULL,
    ciphertext BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS priv_chunks_doc ON priv_chunks(doc);
CREATE VIRTUAL TABLE IF NOT EXISTS priv_index USING fts5(
    terms, owner UNINDEXED, tokenize = 'ascii'
);
"""


class KnowledgeHit(msgspec.Struct, frozen=True, kw_only=True):
    """One chunk that matched a search; ``score`` is bm25, higher is better."""

    scope: Scope
    namespace: str | None
    doc: int
    seq: int
    title: str
    text: str
    score: float


class _AgentKeys:
    __slots__ = ("enc", "owner", "terms")

    def __init__(self, root: bytes, agent_id: str) -> None:
        material = derive(root, b"avm/knowledge/agent/v1:" + agent_id.encode(), length=64)
        self.enc, self.terms = material[:32], material[32:]
        self.owner = hmac.new(root, b"owner:" + agent_id.encode(), sha256).digest()[:16]

    def term(self, term: str) -> str:
        return hmac.new(self.terms, term.encode(), sha256).hexdigest()[:24]


def _chunk_ad(owner: bytes, doc: int, seq: int) -> bytes:
    return b"knowledge-chunk:" + owner + f":{doc}:{seq}".encode()


def _doc_ad(owner: bytes) -> bytes:
    return b"knowledge-doc:" + owner


def _match_query(words: list[str]) -> str | None:
    """An FTS5 query OR-ing the given terms, each quoted (agent text is never FTS5 syntax)."""
    unique = list(dict.fromkeys(words))[:MAX_QUERY_TERMS]
    if not unique:
        return None
    return " OR ".join('"' + w.replace('"', '""') + '"' for w in unique)


class KnowledgeStore:
    """Public and private knowledge of one state directory. Synchronous and thread-safe."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        keys: KeyManager,
        *,
        chunk_words: int = DEFAULT_SIZE,
        overlap_words: int = DEFAULT_OVERLAP,
    ) -> None:
        self.path = Path(path)
        self._root = keys.data_key("knowledge")
        self._chunk = (chunk_words, overlap_words)
        chunk_text("x", chunk_words, overlap_words)  # validate the sizes now, not at first add
        self._lock = threading.Lock()
        self._agents: dict[str, _AgentKeys] = {}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA foreign_keys = ON")
            self._db.execute("PRAGMA secure_delete = ON")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open the knowledge store {self.path}: {exc}") from None

    @classmethod
    def open(cls, state_dir: str | os.PathLike[str], keys: KeyManager) -> KnowledgeStore:
        return cls(Path(state_dir) / DB_NAME, keys)

    def close(self) -> None:
        with self._lock:
            self._db.close()
            self._agents.clear()

    def __enter__(self) -> KnowledgeStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<KnowledgeStore {self.path}>"

    def _keys(self, agent_id: str) -> _AgentKeys:
        if not agent_id:
            raise InvalidArgument("private knowledge needs an agent id")
        keys = self._agents.get(agent_id)
        if keys is None:
            keys = self._agents[agent_id] = _AgentKeys(self._root, agent_id)
        return keys

    def _chunks(self, text: str) -> list[str]:
        if not isinstance(text, str) or not text.strip():
            raise InvalidArgument("a knowledge document must be non-empty text")
        if len(text) > MAX_DOCUMENT_CHARS:
            raise InvalidArgument(
                f"a knowledge document is at most {MAX_DOCUMENT_CHARS} characters"
            )
        return chunk_text(text, *self._chunk)

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (the caller holds the lock); SQLite errors become StorageError,
        and any failure rolls everything back."""
        self._run("BEGIN IMMEDIATE")
        try:
            yield self._db
        except sqlite3.Error as exc:
            self._run("ROLLBACK")
            raise StorageError(f"knowledge store {self.path}: {exc}") from None
        except BaseException:
            self._run("ROLLBACK")
            raise
        self._run("COMMIT")

    def _run(self, sql: str, args: tuple[object, ...] = ()) -> list[Any]:
        try:
            return self._db.execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise StorageError(f"knowledge store {self.path}: {exc}") from None

    # -- public --------------------------------------------------------------------------------

    def add_public(
        self,
        namespace: str,
        text: str,
        *,
        title: str = "",
        source: str = "",
        idempotency_key: str | None = None,
    ) -> int:
        """Add a document to a public namespace; returns its id (the same id on a retry)."""
        if not namespace:
            raise InvalidArgument("public knowledge needs a namespace")
        chunks = self._chunks(text)
        with self._lock:
            if idempotency_key is not None:
                found = self._run("SELECT id FROM pub_docs WHERE idem = ?", (idempotency_key,))
                if found:
                    return int(found[0][0])
            with self._transaction() as db:
                doc = db.execute(
                    "INSERT INTO pub_docs (namespace, title, source, added, idem) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (namespace, title, source, time.time(), idempotency_key),
                ).lastrowid
                db.executemany(
                    "INSERT INTO pub_chunks (text, doc, namespace, seq) VALUES (?, ?, ?, ?)",
                    [(chunk, doc, namespace, seq) for seq, chunk in enumerate(chunks)],
                )
        assert doc is not None
        return doc

    def search_public(self, namespace: str, query: str, *, limit: int = 5) -> list[KnowledgeHit]:
        match = _match_query(terms(query))
        if match is None:
            return []
        with self._lock:
            rows = self._run(
                "SELECT c.doc, c.seq, c.text, d.title, bm25(pub_chunks) FROM pub_chunks c "
                "JOIN pub_docs d ON d.id = c.doc "
                "WHERE pub_chunks MATCH ? AND c.namespace = ? ORDER BY bm25(pub_chunks) LIMIT ?",
                (match, namespace, limit),
            )
        return [
            KnowledgeHit(
                scope="public",
                namespace=namespace,
                doc=int(doc),
                seq=int(seq),
                title=str(title),
                text=str(text),
                score=-float(rank),
            )
            for doc, seq, text, title, rank in rows
        ]

    # -- private -------------------------------------------------------------------------------

    def add_private(
        self,
        agent_id: str,
        text: str,
        *,
        title: str = "",
        source: str = "",
        idempotency_key: str | None = None,
    ) -> int:
        """Add a document to an agent's private knowledge, encrypted; returns its id."""
        keys = self._keys(agent_id)
        chunks = self._chunks(text)
        idem = None if idempotency_key is None else keys.term("idem:" + idempotency_key)
        meta_nonce, meta = seal(
            keys.enc, json.dumps({"title": title, "source": source}).encode(), _doc_ad(keys.owner)
        )
        with self._lock:
            if idem is not None:
                found = self._run("SELECT id FROM priv_docs WHERE idem = ?", (idem,))
                if found:
                    return int(found[0][0])
            with self._transaction() as db:
                doc = db.execute(
                    "INSERT INTO priv_docs (owner, nonce, meta, added, idem) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (keys.owner, meta_nonce, meta, time.time(), idem),
                ).lastrowid
                assert doc is not None
                for seq, chunk in enumerate(chunks):
                    nonce, ct = seal(keys.enc, chunk.encode(), _chunk_ad(keys.owner, doc, seq))
                    row = db.execute(
                        "INSERT INTO priv_chunks (owner, doc, seq, nonce, ciphertext) "
                        "VALUES (?, ?, ?, ?, ?)",
                        (keys.owner, doc, seq, nonce, ct),
                    ).lastrowid
                    hashed = " ".join(sorted(keys.term(t) for t in terms(chunk)))
                    db.execute(
                        "INSERT INTO priv_index (rowid, terms, owner) VALUES (?, ?, ?)",
                        (row, hashed, keys.owner),
                    )
        return doc

    def search_private(self, agent_id: str, query: str, *, limit: int = 5) -> list[KnowledgeHit]:
        keys = self._keys(agent_id)
        match = _match_query([keys.term(t) for t in terms(query)])
        if match is None:
            return []
        with self._lock:
            rows = self._run(
                "SELECT c.doc, c.seq, c.nonce, c.ciphertext, d.nonce, d.meta, bm25(priv_index) "
                "FROM priv_index i JOIN priv_chunks c ON c.id = i.rowid "
                "JOIN priv_docs d ON d.id = c.doc "
                "WHERE priv_index MATCH ? AND i.owner = ? AND c.owner = ? "
                "ORDER BY bm25(priv_index) LIMIT ?",
                (match, keys.owner, keys.owner, limit),
            )
        hits = []
        for doc, seq, nonce, ct, meta_nonce, meta, rank in rows:
            try:
                text = open_sealed(keys.enc, nonce, ct, _chunk_ad(keys.owner, doc, seq))
                info = json.loads(open_sealed(keys.enc, meta_nonce, meta, _doc_ad(keys.owner)))
            except SealError:
                raise StorageError(
                    f"private knowledge chunk {doc}:{seq} of agent {agent_id!r} does not decrypt; "
                    "the store was tampered with or the knowledge key changed"
                ) from None
            hits.append(
                KnowledgeHit(
                    scope="private",
                    namespace=None,
                    doc=int(doc),
                    seq=int(seq),
                    title=str(info.get("title", "")),
                    text=text.decode(),
                    score=-float(rank),
                )
            )
        return hits

    def remove_private(self, agent_id: str, doc: int) -> None:
        """Delete one of an agent's private documents (and its chunks and index rows)."""
        keys = self._keys(agent_id)
        with self._lock:
            found = self._run(
                "SELECT 1 FROM priv_docs WHERE id = ? AND owner = ?", (doc, keys.owner)
            )
            if not found:
                raise NotFound(f"agent {agent_id!r} has no private document {doc}")
            with self._transaction() as db:
                db.execute(
                    "DELETE FROM priv_index WHERE rowid IN "
                    "(SELECT id FROM priv_chunks WHERE doc = ?)",
                    (doc,),
                )
                db.execute("DELETE FROM priv_chunks WHERE doc = ?", (doc,))
                db.execute("DELETE FROM priv_docs WHERE id = ?", (doc,))

    # -- both ----------------------------------------------------------------------------------

    def search(
        self,
        agent_id: str,
        query: str,
        *,
        namespaces: tuple[str, ...] = (),
        private: bool = True,
        limit: int = 5,
    ) -> list[KnowledgeHit]:
        """Search the agent's private knowledge and the given public namespaces.

        bm25 scores of different indexes are not comparable, so results are interleaved by
        rank (best private, best of each namespace, second best...) rather than sorted.
        """
        lists: list[list[KnowledgeHit]] = []
        if private:
            lists.append(self.search_private(agent_id, query, limit=limit))
        lists += [self.search_public(ns, query, limit=limit) for ns in namespaces]
        merged: list[KnowledgeHit] = []
        for rank in range(limit):
            merged += [hits[rank] for hits in lists if rank < len(hits)]
        return merged[:limit]
