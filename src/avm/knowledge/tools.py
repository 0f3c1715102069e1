"""``knowledge.search`` and ``knowledge.add``: the knowledge store as tools agents call.

An agent searches with ``READ_FROM_TOOL("knowledge.search", {"query": ...})`` and adds with
``WRITE_TO_TOOL("knowledge.add", {"text": ...})``. Private knowledge is always the *calling*
agent's own (the agent id comes from the invocation, never from the payload), so no argument
reaches another agent's store. Public namespaces are readable and writable only as configured
when the tools are built. An add carries the call's idempotency key, so a replayed or retried
add stores the document once.

Store calls run in a worker thread: SQLite and AES are fast, but not free, and the event loop
is every agent's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Sequence
from typing import Any

import msgspec

from avm.errors import CapabilityDenied, InvalidArgument
from avm.keys.redact import Redactor
from avm.knowledge.store import KnowledgeStore
from avm.tools.registry import Tool, ToolInvocation

__all__ = ["MAX_LIMIT", "knowledge_tools"]

MAX_LIMIT = 20


def _object(payload: Any, allowed: set[str], tool: str, first: str) -> dict[str, Any]:
    if isinstance(payload, str):
        payload = {first: payload}
    if not isinstance(payload, dict):
        raise InvalidArgument(f"{tool} takes an object with {first!r}")
    unknown = set(payload) - allowed
    if unknown:
        raise InvalidArgument(f"{tool} does not take {', '.join(sorted(unknown))}")
    return payload


def _one_of(values: Sequence[str]) -> dict[str, Any]:
    # JSON Schema forbids an empty enum; with nothing allowed, say so in the description.
    if values:
        return {"enum": list(values)}
    return {"type": "string", "description": "no public namespace is available"}


def knowledge_tools(
    store: KnowledgeStore,
    *,
    namespaces: Sequence[str] = ("public",),
    writable: Collection[str] = (),
    redactor: Redactor | None = None,
    prefix: str = "knowledge",
) -> tuple[Tool, Tool]:
    """Build the search and add tools.

    ``namespaces`` are the public namespaces searches may read (default: ``"public"``);
    ``writable`` those ``knowledge.add`` may write to with ``"scope": "public"``.
    """
    readable = tuple(namespaces)
    write_ok = frozenset(writable)

    async def search(query: Any, *, invocation: ToolInvocation) -> list[dict[str, Any]]:
        fields = _object(
            query, {"query", "scope", "namespace", "limit"}, f"{prefix}.search", "query"
        )
        text = fields.get("query")
        if not isinstance(text, str) or not text.strip():
            raise InvalidArgument("query must be a non-empty string")
        scope = fields.get("scope", "all")
        if scope not in ("all", "private", "public"):
            raise InvalidArgument("scope must be 'all', 'private' or 'public'")
        limit = fields.get("limit", 5)
        if not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
            raise InvalidArgument(f"limit must be an integer from 1 to {MAX_LIMIT}")
        chosen = readable
        if "namespace" in fields:
            if fields["namespace"] not in readable:
                raise CapabilityDenied(
                    f"public namespace {fields['namespace']!r} is not readable "
                    f"(readable: {', '.join(readable) or 'none'})"
                )
            chosen = (fields["namespace"],)
        hits = await asyncio.to_thread(
            store.search,
            invocation.agent_id,
            text,
            namespaces=() if scope == "private" else chosen,
            private=scope != "public",
            limit=limit,
        )
        out = [msgspec.structs.asdict(hit) for hit in hits]
        return out if redactor is None else redactor.redact(out)

    async def add(data: Any, *, invocation: ToolInvocation) -> dict[str, Any]:
        fields = _object(
            data, {"text", "title", "source", "scope", "namespace"}, f"{prefix}.add", "text"
        )
        text, title, source = fields.get("text"), fields.get("title", ""), fields.get("source", "")
        if not (isinstance(text, str) and isinstance(title, str) and isinstance(source, str)):
            raise InvalidArgument("text, title and source must be strings")
        scope = fields.get("scope", "private")
        key = invocation.idempotency_key
        if scope == "private":
            if "namespace" in fields:
                raise InvalidArgument("private knowledge has no namespace")
            doc = await asyncio.to_thread(
                store.add_private, invocation.agent_id, text, title=title, source=source,
                idempotency_key=key,
            )  # fmt: skip
            return {"doc": doc, "scope": "private"}
        if scope != "public":
            raise InvalidArgument("scope must be 'private' or 'public'")
        namespace = fields.get("namespace", readable[0] if len(readable) == 1 else None)
        if not isinstance(namespace, str) or namespace not in write_ok:
            raise CapabilityDenied(
                f"public namespace {namespace!r} is not writable "
                f"(writable: {', '.join(sorted(write_ok)) or 'none'})"
            )
        doc = await asyncio.to_thread(
            store.add_public, namespace, text, title=title, source=source, idempotency_key=key
        )
        return {"doc": doc, "scope": "public", "namespace": namespace}

    search_tool = Tool(
        name=f"{prefix}.search",
        description="Search your private knowledge and the shared public knowledge (bm25).",
        read=search,
        parameters={
            "type": "object",
            "properties": {
                "query": {"type": "string"},
                "scope": {"enum": ["all", "private", "public"]},
                "namespace": _one_of(readable),
                "limit": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT},
            },
            "required": ["query"],
            "additionalProperties": False,
        },
    )
    add_tool = Tool(
        name=f"{prefix}.add",
        description="Add a document to your private knowledge (encrypted) or a public namespace.",
        write=add,
        parameters={
            "type": "object",
            "properties": {
                "text": {"type": "string"},
                "title": {"type": "string"},
                "source": {"type": "string"},
                "scope": {"enum": ["private", "public"]},
                "namespace": _one_of(sorted(write_ok)),
            },
            "required": ["text"],
            "additionalProperties": False,
        },
    )
    return search_tool, add_tool
