"""AVM, the Agent Virtual Machine: many LLM agents as metered, journaled green threads.

A minimal program::

    import avm

    vm = avm.VM()

    @vm.agent(budget=5_000)
    async def greeter(ctx: avm.Context, name: str) -> str:
        await ctx.kv_store("greeted", name)
        return f"hello {name}"

    async with vm:
        print(await vm.spawn(greeter, name="ada").result())
"""

from avm._core.context import Context
from avm._core.isa import INSTRUCTIONS, Effect, InstructionSpec, Op
from avm._core.process import AgentDefinition, Capabilities
from avm._core.states import AgentState, Priority, WaitReason
from avm._core.vm import VM, AgentHandle, VMStats
from avm.config import GasPrices, ModelConfig, VMConfig
from avm.errors import (
    AgentExists,
    AgentFailed,
    AgentKilled,
    ArchiveError,
    AvmError,
    CapabilityDenied,
    ConfigError,
    ContentCorrupt,
    ContentError,
    ContentNotFound,
    InstructionError,
    InvalidArgument,
    InvalidRef,
    MasterKeyError,
    ModelError,
    ModelTimeout,
    NotAvailable,
    NotFound,
    OutOfGas,
    Problem,
    ProgramError,
    ProviderUnavailable,
    RateLimited,
    RefcountError,
    ReplayDivergence,
    SandboxUnavailable,
    SqlDenied,
    StorageError,
    StoreClosed,
    SwarmError,
    SwarmTimeout,
    TemplateError,
    ToolError,
    UnknownAgent,
    VMStateError,
)
from avm.llm.prompts import Prompt
from avm.llm.provider import ModelProvider
from avm.llm.types import Message, ModelReply, ModelRequest, ToolCall, ToolSpec, Usage
from avm.storage.agent_sql import SqlResult
from avm.swarm.mailbox import Envelope
from avm.tools.registry import ToolInfo, ToolInvocation

__all__ = [
    "INSTRUCTIONS",
    "VM",
    "AgentDefinition",
    "AgentExists",
    "AgentFailed",
    "AgentHandle",
    "AgentKilled",
    "AgentState",
    "ArchiveError",
    "AvmError",
    "Capabilities",
    "CapabilityDenied",
    "ConfigError",
    "ContentCorrupt",
    "ContentError",
    "ContentNotFound",
    "Context",
    "Effect",
    "Envelope",
    "GasPrices",
    "InstructionError",
    "InstructionSpec",
    "InvalidArgument",
    "InvalidRef",
    "MasterKeyError",
    "Message",
    "ModelConfig",
    "ModelError",
    "ModelProvider",
    "ModelReply",
    "ModelRequest",
    "ModelTimeout",
    "NotAvailable",
    "NotFound",
    "Op",
    "OutOfGas",
    "Priority",
    "Problem",
    "ProgramError",
    "Prompt",
    "ProviderUnavailable",
    "RateLimited",
    "RefcountError",
    "ReplayDivergence",
    "SandboxUnavailable",
    "SqlDenied",
    "SqlResult",
    "StorageError",
    "StoreClosed",
    "SwarmError",
    "SwarmTimeout",
    "TemplateError",
    "ToolCall",
    "ToolError",
    "ToolInfo",
    "ToolInvocation",
    "ToolSpec",
    "UnknownAgent",
    "Usage",
    "VMConfig",
    "VMStateError",
    "VMStats",
    "WaitReason",
]

__version__ = "0.1.0"
