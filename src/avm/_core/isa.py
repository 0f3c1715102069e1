"""The instruction set: one definition of every instruction an agent can execute.

This table is the contract shared by every front end (the Python ``ctx``, template programs, the
HTTP API) and by the journal. Each :class:`InstructionSpec` names the instruction, its parameters
(with the types the pipeline validates), what it returns, the gas formula it is metered by (the
price names refer to :class:`avm.config.GasPrices`), its effect class, and what the agent waits on
while it runs.

The effect class decides what recovery does with an instruction that was in flight when the host
died: ``READ`` and ``CONTROL`` are simply performed again, ``STATE`` commits atomically with its
journal entry, and ``EXTERNAL`` writes carry an idempotency key derived from (agent, step).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from avm._core.states import WaitReason
from avm.errors import InvalidArgument

__all__ = ["INSTRUCTIONS", "Effect", "Family", "InstructionSpec", "Op", "Param"]


class Op(enum.StrEnum):
    """Opcodes of the instruction set."""

    WAIT = "WAIT"
    WAIT_FOR_RESPONSE = "WAIT_FOR_RESPONSE"
    SCHEDULE_TASK = "SCHEDULE_TASK"
    LOAD_PROMPT = "LOAD_PROMPT"
    LOAD_MODEL = "LOAD_MODEL"
    RUN_MODEL = "RUN_MODEL"
    MAP_MODEL_CALL = "MAP_MODEL_CALL"
    REDUCE_MODEL_CALL = "REDUCE_MODEL_CALL"
    SWARM_CONNECT = "SWARM_CONNECT"
    SWARM_FETCH = "SWARM_FETCH"
    SWARM_BROADCAST = "SWARM_BROADCAST"
    SWARM_WAIT = "SWARM_WAIT"
    LOAD_EXECUTION_STATE = "LOAD_EXECUTION_STATE"
    SAVE_EXECUTION_STATE = "SAVE_EXECUTION_STATE"
    RESET_EXECUTION_STATE = "RESET_EXECUTION_STATE"
    GET_TOOLS_LIST = "GET_TOOLS_LIST"
    READ_FROM_TOOL = "READ_FROM_TOOL"
    WRITE_TO_TOOL = "WRITE_TO_TOOL"
    SQL_EXECUTE = "SQL_EXECUTE"
    SQL_FETCH = "SQL_FETCH"
    KV_STORE = "KV_STORE"
    KV_FETCH = "KV_FETCH"
    ALLOCATE_GPU = "ALLOCATE_GPU"
    RELEASE_GPU = "RELEASE_GPU"
    LIST_GPUS = "LIST_GPUS"
    CHECK_GPU_LOAD = "CHECK_GPU_LOAD"
    # Intrinsics: not in the design's table, but journaled like instructions so that agent code
    # which needs the time or a random number stays deterministic under replay.
    NOW = "NOW"
    RANDOM = "RANDOM"


class Family(enum.StrEnum):
    TIME = "time & tasks"
    MODEL = "prompts & models"
    SWARM = "swarm"
    STATE = "execution state"
    TOOLS = "tools"
    STORAGE = "storage"
    GPU = "GPU"


class Effect(enum.StrEnum):
    """What an instruction does to the world, which decides how it is recovered."""

    CONTROL = "control"  # waits and timers: no effect beyond time passing
    READ = "read"  # observes; safe to perform again
    STATE = "state"  # writes the agent's own VM-held state, atomically with its journal entry
    EXTERNAL = "external"  # writes outside the VM (tools, models, messages): at most once


_NUMBER = (int, float)


def _non_negative(value: Any) -> str | None:
    return None if value >= 0 else "must not be negative"


def _positive(value: Any) -> str | None:
    return None if value > 0 else "must be positive"


def _non_empty(value: Any) -> str | None:
    return None if value else "must not be empty"


@dataclass(frozen=True, slots=True)
class Param:
    """One parameter: its name, accepted types, and an optional value check."""

    name: str
    types: tuple[type, ...]
    optional: bool = False
    check: Callable[[Any], str | None] | None = None

    def validate(self, value: Any) -> str | None:
        """Return why ``value`` is unacceptable, or None."""
        if value is None:
            return None if self.optional else "is required"
        # bool is an int subclass; a flag is never a meaningful number here.
        if not isinstance(value, self.types) or (
            isinstance(value, bool) and bool not in self.types and object not in self.types
        ):
            expected = " or ".join(t.__name__ for t in self.types)
            return f"must be {expected}, got {type(value).__name__}"
        return self.check(value) if self.check is not None else None


@dataclass(frozen=True, slots=True)
class InstructionSpec:
    """Everything the VM knows about one instruction."""

    op: Op
    family: Family
    params: tuple[Param, ...]
    returns: str
    gas: str  # the formula, with price names from GasPrices (or the model's prices)
    effect: Effect
    waits_on: WaitReason | None
    summary: str
    available: bool = True
    intrinsic: bool = False

    def validate(self, args: tuple[Any, ...]) -> None:
        """Check positional ``args`` against the parameters; raise InvalidArgument if wrong."""
        if len(args) != len(self.params):
            raise InvalidArgument(
                f"{self.op} takes {len(self.params)} arguments "
                f"({', '.join(p.name for p in self.params)}), got {len(args)}"
            )
        for param, value in zip(self.params, args, strict=True):
            problem = param.validate(value)
            if problem is not None:
                raise InvalidArgument(f"argument {param.name!r} {problem}")

    def bind(self, arguments: Mapping[str, Any]) -> tuple[Any, ...]:
        """Turn named arguments (templates, HTTP) into the positional form, rejecting extras."""
        names = {p.name for p in self.params}
        unknown = sorted(set(arguments) - names)
        if unknown:
            raise InvalidArgument(
                f"{self.op} has no argument {', '.join(map(repr, unknown))}; "
                f"it takes {', '.join(p.name for p in self.params) or 'no arguments'}"
            )
        return tuple(arguments.get(p.name) for p in self.params)


def _spec(
    op: Op,
    family: Family,
    params: tuple[Param, ...],
    returns: str,
    gas: str,
    effect: Effect,
    waits_on: WaitReason | None,
    summary: str,
    *,
    available: bool = True,
    intrinsic: bool = False,
) -> InstructionSpec:
    return InstructionSpec(
        op, family, params, returns, gas, effect, waits_on, summary, available, intrinsic
    )


_TIMEOUT = Param("timeout_s", _NUMBER, optional=True, check=_non_negative)
_T, _M, _S, _X = Family.TIME, Family.MODEL, Family.SWARM, Family.STATE
_TL, _ST, _G = Family.TOOLS, Family.STORAGE, Family.GPU
_W = WaitReason

INSTRUCTIONS: Mapping[Op, InstructionSpec] = {
    spec.op: spec
    for spec in (
        _spec(Op.WAIT, _T, (Param("delay_s", _NUMBER, check=_non_negative),),
              "None", "free", Effect.CONTROL, _W.TIMER,
              "Suspend the agent for delay_s seconds."),
        _spec(Op.WAIT_FOR_RESPONSE, _T, (Param("task_id", (str,), check=_non_empty), _TIMEOUT),
              "the first reply's data", "free", Effect.READ, _W.MESSAGE,
              "Wait for one reply to a task this agent sent."),
        _spec(Op.SCHEDULE_TASK, _T,
              (Param("task_id", (str,), check=_non_empty),
               Param("interval_s", _NUMBER, check=_positive)),
              "the tick number", "free", Effect.CONTROL, _W.TIMER,
              "Wait for the next tick of a recurring task."),
        _spec(Op.LOAD_PROMPT, _M, (Param("prompt_id", (str,), check=_non_empty),),
              "Prompt", "load_prompt_per_token · tokens", Effect.READ, None,
              "Load a registered prompt."),
        _spec(Op.LOAD_MODEL, _M, (Param("model_id", (str,), check=_non_empty),),
              "ModelInfo", "load_model_per_mb · model_size_mb", Effect.READ, _W.MODEL,
              "Warm a model (a local model loads its weights)."),
        _spec(Op.RUN_MODEL, _M,
              (Param("model", (str,), check=_non_empty),
               Param("input", (str, list, tuple), check=_non_empty),
               Param("max_tokens", (int,), optional=True, check=_positive),
               Param("temperature", _NUMBER, optional=True, check=_non_negative),
               Param("tools", (list, tuple), optional=True),
               Param("deferrable", (bool,), optional=True),
               Param("cache", (bool,), optional=True)),
              "ModelReply", "price_in · tokens_in + price_out · tokens_out",
              Effect.EXTERNAL, _W.MODEL, "Run a model on a prompt or conversation."),
        _spec(Op.MAP_MODEL_CALL, _M,
              (Param("model", (str,), check=_non_empty), Param("dataset", (list, tuple)),
               Param("max_tokens", (int,), optional=True, check=_positive)),
              "list of MapItem, in dataset order",
              "map_model_per_item · len(dataset) + tokens at model prices",
              Effect.EXTERNAL, _W.MODEL, "Run a model over every item of a dataset, in parallel."),
        _spec(Op.REDUCE_MODEL_CALL, _M,
              (Param("agg_type", (str,), check=_non_empty), Param("results", (list, tuple))),
              "the aggregate",
              "reduce_model_per_item · len(results) (+ summary tokens)",
              Effect.EXTERNAL, _W.MODEL,
              "Aggregate results: concat, vote, count, summarize[:model], or a reducer."),
        _spec(Op.SWARM_CONNECT, _S, (Param("swarm_id", (str,), check=_non_empty),),
              "members now in the swarm", "swarm_connect", Effect.CONTROL, None,
              "Join a swarm: its broadcasts reach this agent from now on."),
        _spec(Op.SWARM_FETCH, _S,
              (Param("data_type", (str,), check=_non_empty),
               Param("request_id", (str,), check=_non_empty),
               Param("to", (str,), optional=True, check=_non_empty),
               Param("query", (object,), optional=True), _TIMEOUT),
              "the first reply's data", "swarm_fetch_per_peer · peers_asked",
              Effect.EXTERNAL, _W.MESSAGE,
              "Ask one agent, or every member of swarm data_type, and await the first reply."),
        _spec(Op.SWARM_BROADCAST, _S,
              (Param("message", (str,), check=_non_empty), Param("data", (object,), optional=True),
               Param("reply_to", (str,), optional=True, check=_non_empty)),
              "task id that replies answer", "free", Effect.EXTERNAL, _W.MESSAGE,
              "Send data to every member of swarm `message`, or as a reply to task reply_to."),
        _spec(Op.SWARM_WAIT, _S,
              (Param("task_id", (str,), optional=True, check=_non_empty),
               Param("k", (int,), optional=True, check=_positive), _TIMEOUT),
              "Envelope, or a list of k replies", "free", Effect.READ, _W.MESSAGE,
              "Receive the next message, or wait for k replies to a task (k of n)."),
        _spec(Op.LOAD_EXECUTION_STATE, _X, (), "the saved state or None", "load_state",
              Effect.READ, None, "Load the agent's saved execution state."),
        _spec(Op.SAVE_EXECUTION_STATE, _X, (Param("state", (object,)),), "None", "save_state",
              Effect.STATE, _W.STORAGE, "Save the agent's execution state."),
        _spec(Op.RESET_EXECUTION_STATE, _X, (), "None", "reset_state", Effect.STATE,
              _W.STORAGE, "Forget the agent's execution state."),
        _spec(Op.GET_TOOLS_LIST, _TL, (), "list of ToolInfo", "get_tools_list", Effect.READ,
              None, "List the tools this agent may use."),
        _spec(Op.READ_FROM_TOOL, _TL,
              (Param("api", (str,), check=_non_empty), Param("query", (object,), optional=True)),
              "the tool's data", "read_tool_per_byte · response_size", Effect.READ, _W.TOOL,
              "Read from a tool."),
        _spec(Op.WRITE_TO_TOOL, _TL,
              (Param("api", (str,), check=_non_empty), Param("data", (object,), optional=True)),
              "the tool's status", "write_tool_per_byte · data_size", Effect.EXTERNAL, _W.TOOL,
              "Write to a tool (carries an idempotency key)."),
        _spec(Op.SQL_EXECUTE, _ST,
              (Param("query", (str,), check=_non_empty), Param("params", (list, tuple, dict))),
              "SqlResult", "sql_execute_per_op · compiled_ops", Effect.STATE, _W.STORAGE,
              "Execute one SQL statement on the agent's own database."),
        _spec(Op.SQL_FETCH, _ST,
              (Param("query", (str,), check=_non_empty), Param("params", (list, tuple, dict))),
              "list of rows", "sql_fetch_per_row · rows", Effect.READ, None,
              "Run a query on the agent's own database and return its rows."),
        _spec(Op.KV_STORE, _ST,
              (Param("key", (str,), check=_non_empty), Param("value", (object,), optional=True)),
              "None", "kv_store_per_byte · value_size", Effect.STATE, _W.STORAGE,
              "Store a value under a key in the agent's own KV space."),
        _spec(Op.KV_FETCH, _ST, (Param("key", (str,), check=_non_empty),),
              "the value or None", "kv_fetch_per_byte · value_size", Effect.READ, None,
              "Fetch a value by key from the agent's own KV space."),
        _spec(Op.ALLOCATE_GPU, _G,
              (Param("gpu_id", (str, int)), Param("time_s", _NUMBER, check=_positive)),
              "lease", "gpu_per_second · time_s", Effect.EXTERNAL, None,
              "Lease a GPU.", available=False),
        _spec(Op.RELEASE_GPU, _G, (), "None", "release_gpu", Effect.EXTERNAL, None,
              "Release the leased GPU.", available=False),
        _spec(Op.LIST_GPUS, _G, (), "list of GPUs", "list_gpus", Effect.READ, None,
              "List GPUs.", available=False),
        _spec(Op.CHECK_GPU_LOAD, _G, (), "load", "check_gpu_load", Effect.READ, None,
              "Report the leased GPU's load.", available=False),
        _spec(Op.NOW, _T, (), "wall-clock seconds since the epoch", "free", Effect.READ, None,
              "The current time, journaled so replay sees the same value.", intrinsic=True),
        _spec(Op.RANDOM, _T, (), "a float in [0, 1)", "free", Effect.READ, None,
              "A random number, journaled so replay sees the same value.", intrinsic=True),
    )
}  # fmt: skip
