"""The ``read_file`` and ``write_file`` tools: an agent's files, in its own workspace only.

Both run the confined file operations of :mod:`avm.tools.builtin.workspace` in a worker thread
(a large file must not stall the event loop every agent shares). Text comes and goes as UTF-8;
anything else as base64 with ``"encoding": "base64"``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from typing import Any

from avm.errors import InvalidArgument
from avm.keys.redact import Redactor
from avm.tools.builtin.workspace import MAX_PATH, Workspaces, read_confined, write_confined
from avm.tools.registry import Tool, ToolInvocation

__all__ = ["read_file_tool", "write_file_tool"]

_ENCODINGS = ("utf-8", "base64")


def _fields(payload: Any, allowed: set[str], tool: str) -> dict[str, Any]:
    if isinstance(payload, str):
        payload = {"path": payload}
    if not isinstance(payload, dict):
        raise InvalidArgument(f"{tool} takes an object with a 'path', got {type(payload).__name__}")
    unknown = set(payload) - allowed
    if unknown:
        raise InvalidArgument(f"{tool} does not take {', '.join(sorted(unknown))}")
    return payload


def read_file_tool(
    workspaces: Workspaces, *, max_bytes: int = 1 << 20, redactor: Redactor | None = None
) -> Tool:
    """``READ_FROM_TOOL("read_file", {"path": "notes/today.md"})``."""

    async def read(query: Any, *, invocation: ToolInvocation) -> dict[str, Any]:
        fields = _fields(query, {"path", "encoding"}, "read_file")
        root = workspaces.path(invocation.agent_id)
        data, size = await asyncio.to_thread(read_confined, root, fields.get("path"), max_bytes)
        encoding = fields.get("encoding")
        if encoding not in (None, *_ENCODINGS):
            raise InvalidArgument(f"encoding must be one of {_ENCODINGS}, got {encoding!r}")
        if encoding != "base64":
            try:
                content = data.decode("utf-8")
                encoding = "utf-8"
            except UnicodeDecodeError:
                encoding = "base64"
        if encoding == "base64":
            # Redact before encoding: a secret inside binary data is found in its raw form.
            raw = redactor.redact_bytes(data) if redactor is not None else data
            content = base64.b64encode(raw).decode("ascii")
        elif redactor is not None:
            content = redactor.redact_text(content)
        return {
            "path": fields["path"],
            "content": content,
            "encoding": encoding,
            "size": size,
            "truncated": size > len(data),
        }

    return Tool(
        name="read_file",
        description=f"Read a file from your workspace (at most {max_bytes} bytes are returned).",
        read=read,
        parameters={
            "type": "object",
            "properties": {
                "path": {
                    "type": "string",
                    "maxLength": MAX_PATH,
                    "description": "relative to your workspace; no '..', no symlinks",
                },
                "encoding": {"enum": list(_ENCODINGS)},
            },
            "required": ["path"],
            "additionalProperties": False,
        },
    )


def write_file_tool(workspaces: Workspaces, *, max_bytes: int = 8 << 20) -> Tool:
    """``WRITE_TO_TOOL("write_file", {"path": "out.txt", "content": "..."})``."""

    async def write(data: Any, *, invocation: ToolInvocation) -> dict[str, Any]:
        fields = _fields(data, {"path", "content", "encoding", "append"}, "write_file")
        content = fields.get("content", "")
        encoding = fields.get("encoding", "utf-8")
        if encoding == "base64":
            try:
                raw = base64.b64decode(content, validate=True)
            except (binascii.Error, ValueError, TypeError):
                raise InvalidArgument("content is not valid base64") from None
        elif encoding == "utf-8" and isinstance(content, str):
            raw = content.encode("utf-8")
        else:
            raise InvalidArgument("content must be a string (encoding 'utf-8' or 'base64')")
        if len(raw) > max_bytes:
            raise InvalidArgument(
                f"content is {len(raw)} bytes; write_file takes at most {max_bytes}"
            )
        agent = invocation.agent_id
        root = workspaces.path(agent)
        size = await asyncio.to_thread(
            write_confined, root, fields.get("path"), raw,
            append=bool(fields.get("append", False)), owner=workspaces.owner(agent),
        )  # fmt: skip
        return {"path": fields["path"], "size": size}

    return Tool(
        name="write_file",
        description=f"Write (or append to) a file in your workspace, at most {max_bytes} bytes.",
        write=write,
        parameters={
            "type": "object",
            "properties": {
                "path": {"type": "string", "maxLength": MAX_PATH},
                "content": {"type": "string"},
                "encoding": {"enum": list(_ENCODINGS)},
                "append": {"type": "boolean"},
            },
            "required": ["path", "content"],
            "additionalProperties": False,
        },
    )
