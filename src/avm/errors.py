"""Every error AVM raises, as one tree.

Nothing from ``sqlite3``, ``aiohttp`` or a provider SDK escapes the VM: adapters translate
lower-library exceptions at their boundary into one of these. Errors raised on behalf of an
agent name the agent, the instruction and its step, so a message alone says where it happened::

    AvmError
    ├── ConfigError                 bad VM, model, price or tool configuration
    │   └── MasterKeyError          no master key, an unsafe key file, or the wrong key
    ├── VMStateError                the VM is not started, or already closed
    ├── UnknownAgent                no agent with that id
    ├── AgentExists                 an agent with that id is already running
    ├── AgentFailed                 an agent's code raised; wraps the cause
    ├── AgentKilled                 an agent was killed before it finished
    ├── ArchiveError                an export archive is corrupt, truncated or conflicts
    ├── TemplateError               a template or image was rejected (every Problem listed)
    ├── ProgramError                a template program failed at run time (template, step)
    ├── ContentError                the content-addressed memory failed
    │   ├── InvalidRef              not a 32-byte BLAKE3 digest
    │   ├── ContentNotFound         no tier holds that hash (never stored, or collected)
    │   ├── RefcountError           unbalanced incref/decref
    │   ├── ContentCorrupt          bytes on disk no longer match their hash
    │   └── StoreClosed             the store was used after close()
    └── InstructionError            one instruction of one agent failed (agent, op, step)
        ├── InvalidArgument         an argument has the wrong type or value
        ├── CapabilityDenied        the agent was not granted that tool, model or prompt
        ├── NotAvailable            the instruction is defined but not implemented yet
        ├── NotFound                unknown tool, model, prompt or swarm peer
        ├── OutOfGas                the budget cannot cover the instruction
        ├── ReplayDivergence        replayed code issued another instruction than the journal
        ├── ToolError               a tool raised or returned something unusable
        │   └── SandboxUnavailable  sandboxed tools cannot run here (no bubblewrap/namespaces)
        ├── StorageError            KV or SQL failed
        │   └── SqlDenied           SQL tried to leave the agent's own database
        ├── SwarmError              messaging failed
        │   └── SwarmTimeout        no reply (or not enough replies) in time
        └── ModelError              a model call failed after the provider boundary
            ├── RateLimited         the provider said 429 and retries ran out
            ├── ModelTimeout        the provider did not answer in time
            └── ProviderUnavailable the provider is down (5xx, connection refused)
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

__all__ = [
    "AgentExists",
    "AgentFailed",
    "AgentKilled",
    "ArchiveError",
    "AvmError",
    "CapabilityDenied",
    "ConfigError",
    "ContentCorrupt",
    "ContentError",
    "ContentNotFound",
    "InstructionError",
    "InvalidArgument",
    "InvalidRef",
    "MasterKeyError",
    "ModelError",
    "ModelTimeout",
    "NotAvailable",
    "NotFound",
    "OutOfGas",
    "Problem",
    "ProgramError",
    "ProviderUnavailable",
    "RateLimited",
    "RefcountError",
    "ReplayDivergence",
    "SandboxUnavailable",
    "SqlDenied",
    "StorageError",
    "StoreClosed",
    "SwarmError",
    "SwarmTimeout",
    "TemplateError",
    "ToolError",
    "UnknownAgent",
    "VMStateError",
]


class AvmError(Exception):
    """Root of every error raised by AVM."""


class ConfigError(AvmError):
    """The VM, a model, a price table or a tool was configured wrongly."""


class MasterKeyError(ConfigError):
    """No master key, a malformed one, an unsafe key file, or a key that does not fit the store."""


class VMStateError(AvmError):
    """The VM was used before it started or after it closed."""


class UnknownAgent(AvmError):
    """No agent with the given id exists in this VM."""

    def __init__(self, agent_id: str) -> None:
        super().__init__(f"no agent with id {agent_id!r} in this VM")
        self.agent_id = agent_id


class AgentExists(AvmError):
    """An agent with the requested id is already running in this VM."""

    def __init__(self, agent_id: str) -> None:
        super().__init__(f"an agent with id {agent_id!r} is already running in this VM")
        self.agent_id = agent_id


class AgentFailed(AvmError):
    """An agent's own code raised an exception; ``__cause__`` holds it."""

    def __init__(self, agent_id: str, cause: BaseException) -> None:
        super().__init__(f"agent {agent_id!r} failed: {type(cause).__name__}: {cause}")
        self.agent_id = agent_id


class AgentKilled(AvmError):
    """An agent was killed (or the VM stopped) before it finished."""

    def __init__(self, agent_id: str) -> None:
        super().__init__(f"agent {agent_id!r} was killed before it finished")
        self.agent_id = agent_id


class ArchiveError(AvmError):
    """An agent archive cannot be imported: corrupt, truncated, tampered, or a conflict."""


class Problem(msgspec.Struct, frozen=True, kw_only=True):
    """One thing wrong with a template.

    ``line`` and ``column`` are 1-based. ``path`` is the field path inside the template, e.g.
    ``program[2].kv_store.key`` (empty for the document as a whole).
    """

    file: str
    line: int
    column: int
    path: str
    expected: str
    found: str
    hint: str = ""

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}"
        field = f" {self.path}:" if self.path else ""
        text = f"{where}:{field} expected {self.expected}, found {self.found}"
        return f"{text} ({self.hint})" if self.hint else text


class TemplateError(AvmError):
    """A template or image was rejected; ``problems`` lists everything wrong with it."""

    def __init__(self, file: str, problems: Iterable[Problem]) -> None:
        self.file = file
        self.problems: tuple[Problem, ...] = tuple(
            sorted(problems, key=lambda p: (p.line, p.column, p.path, p.expected, p.found))
        )
        count = len(self.problems)
        lines = "\n".join(f"  {problem}" for problem in self.problems)
        noun = "problem" if count == 1 else "problems"
        super().__init__(f"{file}: {count} {noun}\n{lines}")


class ProgramError(AvmError):
    """A template program failed at run time on data the assembler could not see.

    ``step`` is the path of the failing step's field, e.g. ``program[3].for_each``.
    """

    def __init__(self, template: str, step: str, message: str) -> None:
        super().__init__(f"template {template!r}, {step}: {message}")
        self.template = template
        self.step = step
        self.message = message


class ContentError(AvmError):
    """Root of every error raised by :mod:`avm.memory`."""


class InvalidRef(ContentError, ValueError):
    """A value used as a content ref is not 32 bytes (or 64 hex digits)."""


class ContentNotFound(ContentError, LookupError):
    """No tier holds content with this hash: it was never stored, or it was garbage-collected."""

    def __init__(self, ref: bytes) -> None:
        super().__init__(
            f"no content with hash {ref.hex()} in the store (never stored, or reclaimed by "
            "garbage collection: hold it with incref() or pass it as a root to collect())"
        )
        self.ref = ref


class RefcountError(ContentError):
    """A hold was released that was never taken: the caller's incref/decref are unbalanced."""

    def __init__(self, ref: bytes, message: str) -> None:
        super().__init__(f"content {ref.hex()}: {message}")
        self.ref = ref


class ContentCorrupt(ContentError):
    """Bytes read from the cold tier do not hash to the ref they are stored under."""

    def __init__(self, ref: bytes, where: str) -> None:
        super().__init__(
            f"content {ref.hex()} read from {where} does not match its hash; the cold-tier file "
            "is damaged: restore it from a backup or drop the agents that reference it"
        )
        self.ref = ref


class StoreClosed(ContentError):
    """The content store was used after it was closed."""


class InstructionError(AvmError):
    """One instruction of one agent failed.

    ``agent_id``, ``op`` and ``step`` are filled in by the interpreter when the error passes
    through the instruction pipeline, so code deep inside a tool or provider can raise with
    just a message.
    """

    def __init__(
        self,
        message: str,
        *,
        agent_id: str | None = None,
        op: str | None = None,
        step: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.agent_id = agent_id
        self.op = op
        self.step = step

    def locate(self, agent_id: str, op: str, step: int) -> None:
        """Record where the error happened, unless a deeper layer already did."""
        if self.agent_id is None:
            self.agent_id, self.op, self.step = agent_id, op, step

    def __str__(self) -> str:
        if self.agent_id is None:
            return self.message
        return f"agent {self.agent_id!r}, step {self.step}, {self.op}: {self.message}"


class InvalidArgument(InstructionError):
    """An instruction argument has the wrong type or an out-of-range value."""


class CapabilityDenied(InstructionError):
    """The agent was not granted the tool, model or prompt it asked for."""


class NotAvailable(InstructionError):
    """The instruction is part of the set but is not implemented in this version."""


class NotFound(InstructionError):
    """An unknown tool, model, prompt, task or swarm peer was named."""


class OutOfGas(InstructionError):
    """The agent's remaining budget cannot cover the instruction."""

    def __init__(self, message: str, *, needed: float, available: float) -> None:
        super().__init__(message)
        self.needed = needed
        self.available = available


class ReplayDivergence(InstructionError):
    """On recovery, the agent's code issued a different instruction than its journal records.

    Agent code between instructions must be deterministic: time and randomness come from
    ``ctx.now()`` and ``ctx.random()``, which are journaled. The agent halts (its history is
    untouched) so the code can be fixed or the agent exported and inspected.
    """


class ToolError(InstructionError):
    """A tool raised, or returned a value that cannot be stored."""


class SandboxUnavailable(ToolError):
    """Sandboxed tools cannot run here: bubblewrap, a helper, or namespace support is missing."""


class StorageError(InstructionError):
    """A KV or SQL operation failed."""


class SqlDenied(StorageError):
    """SQL tried to reach outside the agent's own database (ATTACH, PRAGMA, extensions...)."""


class SwarmError(InstructionError):
    """Sending or receiving a swarm message failed."""


class SwarmTimeout(SwarmError):
    """No reply, or fewer replies than asked for, arrived in time."""


class ModelError(InstructionError):
    """A model call failed; raised only after the provider's own errors are translated."""


class RateLimited(ModelError):
    """The provider kept answering 429 until retries ran out."""

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class ModelTimeout(ModelError):
    """The provider did not answer within the request timeout."""


class ProviderUnavailable(ModelError):
    """The provider answered 5xx or could not be reached."""
