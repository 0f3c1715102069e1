"""The context an agent's code receives: one method per instruction of the instruction set.

Every method is a thin call into the instruction pipeline, so gas, capabilities, scheduling and
the journal apply the same way to every effect. Agent code should reach the world only through
these methods: that is what lets the VM meter, persist and replay it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Coroutine, Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

from avm._core.host.models import MapItem, ModelInfo, tool_specs
from avm._core.interpreter import instruction
from avm._core.isa import Op
from avm.errors import VMStateError
from avm.llm.chat import Chat
from avm.llm.prompts import Prompt
from avm.llm.types import Message, ModelReply, ToolSpec
from avm.storage.agent_sql import SqlResult
from avm.swarm.mailbox import Envelope
from avm.tools.registry import ToolInfo

if TYPE_CHECKING:
    from avm._core.process import AgentProcess
    from avm._core.runtime import Runtime

__all__ = ["Context"]

# SWARM_WAIT's arguments for a receive with no task and no timeout.
_ANY_MESSAGE: tuple[Any, ...] = (None, None, None)

SqlParams = Sequence[Any] | Mapping[str, Any]
ModelInput = str | Chat | Sequence[str | Prompt | Message | Mapping[str, Any]]


class Context:
    __slots__ = ("_proc", "_rt")

    def __init__(self, rt: Runtime, proc: AgentProcess) -> None:
        self._rt = rt
        self._proc = proc

    @property
    def agent_id(self) -> str:
        return self._proc.id

    @property
    def step(self) -> int:
        """The number the next instruction will get in this agent's journal."""
        return self._proc.step

    def _x(self, op: Op, *args: Any) -> Coroutine[Any, Any, Any]:
        # The pipeline's own awaitable, not a wrapper awaiting it: every agent parked in an
        # instruction keeps its chain of suspended frames in RAM, and a frame here would add
        # ~300 bytes to each of them. The waiting instructions below return it as it is too;
        # for them it is a WaitingInstruction, which parks with no frame at all.
        return instruction(self._rt, self._proc, op, args)

    # -- time & tasks ------------------------------------------------------------------------

    def wait(self, delay_s: float) -> Coroutine[Any, Any, None]:
        """WAIT: suspend this agent for ``delay_s`` seconds."""
        return self._x(Op.WAIT, delay_s)

    def wait_for_response(
        self, task_id: str, *, timeout_s: float | None = None
    ) -> Coroutine[Any, Any, Any]:
        """WAIT_FOR_RESPONSE: the data of the first reply to ``task_id``."""
        return self._x(Op.WAIT_FOR_RESPONSE, task_id, timeout_s)

    async def schedule_task(
        self, task_id: str, interval_s: float, *, count: int | None = None
    ) -> AsyncIterator[int]:
        """SCHEDULE_TASK: iterate over the ticks of a recurring task (tick 0 is immediate).

        Each iteration is one instruction that waits for the next tick on a fixed grid.
        ``count`` stops after that many ticks.
        """
        done = 0
        while count is None or done < count:
            tick = await self._x(Op.SCHEDULE_TASK, task_id, interval_s)
            yield cast(int, tick.tick)
            done += 1

    async def now(self) -> float:
        """The wall-clock time, journaled: replay returns the time the agent first saw.

        Agent code must take time (and randomness) from the context, never from ``time`` or
        ``random`` directly, so that recovery re-runs it deterministically.
        """
        return cast(float, await self._x(Op.NOW))

    async def random(self) -> float:
        """A random float in [0, 1), journaled like :meth:`now`."""
        return cast(float, await self._x(Op.RANDOM))

    # -- prompts & models --------------------------------------------------------------------

    async def load_prompt(self, prompt_id: str) -> Prompt:
        """LOAD_PROMPT: a registered prompt."""
        return cast(Prompt, await self._x(Op.LOAD_PROMPT, prompt_id))

    async def load_model(self, model_id: str) -> ModelInfo:
        """LOAD_MODEL: warm a model; a local model loads its weights (gas by their size)."""
        return cast(ModelInfo, await self._x(Op.LOAD_MODEL, model_id))

    def conversation(
        self,
        *,
        system: str | Prompt | None = None,
        prompt: str | Prompt | None = None,
        tools: Sequence[str | ToolSpec] | None = None,
    ) -> Chat:
        """A new conversation kept in the VM's content store, to pass to :meth:`run_model`.

        ``system`` is the system prompt the fleet shares, ``prompt`` this agent's own, ``tools``
        tool names (checked against this agent's grants) or specs. The chat holds refs, not
        text: every agent's copy of a shared prompt is one piece of content, and a model call
        journals the refs. Growing it (``append``, ``add``, ``append_reply``) returns a new chat
        and is not an instruction: content is stored under its hash, so a re-run agent stores
        the same bytes under the same refs.
        """
        memory = self._rt.memory
        if memory is None:
            raise VMStateError("the VM's content store is not open: is the VM running?")
        specs = tool_specs(self._rt, self._proc, tools) if tools else None
        keep = self._rt.keeper(self._proc.id)
        return Chat.start(memory, system=system, prompt=prompt, tools=specs, keep=keep)

    async def run_model(
        self,
        model: str,
        input: ModelInput,
        *,
        max_tokens: int | None = None,
        temperature: float | None = None,
        tools: Sequence[str | ToolSpec] | None = None,
        deferrable: bool = False,
        cache: bool | None = None,
    ) -> ModelReply:
        """RUN_MODEL: run ``model`` on a string, a list of prompts/messages, or a conversation
        from :meth:`conversation` (whose tools go with it: do not pass ``tools`` then).

        ``deferrable`` lets the VM send the call through the provider's batch API (cheaper,
        slower); ``cache`` overrides the model's response-cache policy for this call.
        """
        arg: Any
        if isinstance(input, str):
            arg = input
        elif isinstance(input, Chat):
            arg = (input.as_input(),)  # refs: the journal digests these, not the text
        else:
            arg = list(input)
        tool_arg = None if tools is None else list(tools)
        reply = await self._x(
            Op.RUN_MODEL, model, arg, max_tokens, temperature, tool_arg, deferrable or None, cache
        )
        return cast(ModelReply, reply)

    async def map_model_call(
        self, model: str, dataset: Sequence[Any], *, max_tokens: int | None = None
    ) -> list[MapItem]:
        """MAP_MODEL_CALL: run ``model`` over every item (a prompt or a message list), in
        parallel; results come back in dataset order, each ``ok`` with its text or not with
        its error."""
        items = await self._x(Op.MAP_MODEL_CALL, model, list(dataset), max_tokens)
        return cast(list[MapItem], items)

    async def reduce_model_call(self, agg_type: str, results: Sequence[Any]) -> Any:
        """REDUCE_MODEL_CALL: aggregate results: ``concat``, ``vote``, ``count``,
        ``summarize`` (or ``summarize:MODEL``), or a reducer registered with ``vm.reducer``."""
        return await self._x(Op.REDUCE_MODEL_CALL, agg_type, list(results))

    # -- swarm -------------------------------------------------------------------------------

    async def swarm_connect(self, swarm_id: str) -> int:
        """SWARM_CONNECT: join a swarm; return how many members it has now."""
        return cast(int, await self._x(Op.SWARM_CONNECT, swarm_id))

    def swarm_fetch(
        self,
        data_type: str,
        request_id: str,
        *,
        to: str | None = None,
        query: Any = None,
        timeout_s: float | None = None,
    ) -> Coroutine[Any, Any, Any]:
        """SWARM_FETCH: ask agent ``to`` (or every member of swarm ``data_type``) and return
        the first reply's data."""
        return self._x(Op.SWARM_FETCH, data_type, request_id, to, query, timeout_s)

    async def swarm_broadcast(self, message: str, data: Any = None) -> str:
        """SWARM_BROADCAST: send ``data`` to every other member of swarm ``message``.

        Returns the task id that members may reply to (see :meth:`swarm_wait`).
        """
        return cast(str, await self._x(Op.SWARM_BROADCAST, message, data, None))

    async def reply(self, envelope: Envelope, data: Any = None) -> str:
        """Answer a received message or request (a SWARM_BROADCAST addressed to its task)."""
        return cast(str, await self._x(Op.SWARM_BROADCAST, envelope.topic, data, envelope.id))

    def receive(self, *, timeout_s: float | None = None) -> Coroutine[Any, Any, Envelope]:
        """SWARM_WAIT with no task: the next message in this agent's mailbox."""
        if timeout_s is None:
            # The parked instruction keeps its arguments: one tuple for every such receive.
            return instruction(self._rt, self._proc, Op.SWARM_WAIT, _ANY_MESSAGE)
        return self._x(Op.SWARM_WAIT, None, None, timeout_s)

    def swarm_wait(
        self, task_id: str, *, k: int = 1, timeout_s: float | None = None
    ) -> Coroutine[Any, Any, list[Envelope]]:
        """SWARM_WAIT: wait for ``k`` replies to ``task_id`` (k of n)."""
        return self._x(Op.SWARM_WAIT, task_id, k, timeout_s)

    # -- execution state ---------------------------------------------------------------------

    async def load_execution_state(self) -> Any:
        """LOAD_EXECUTION_STATE: the last saved state, or None."""
        return await self._x(Op.LOAD_EXECUTION_STATE)

    async def save_execution_state(self, state: Any) -> None:
        """SAVE_EXECUTION_STATE: persist ``state`` (any msgpack-encodable value)."""
        await self._x(Op.SAVE_EXECUTION_STATE, state)

    async def reset_execution_state(self) -> None:
        """RESET_EXECUTION_STATE: forget the saved state."""
        await self._x(Op.RESET_EXECUTION_STATE)

    # -- tools -------------------------------------------------------------------------------

    async def get_tools_list(self) -> list[ToolInfo]:
        """GET_TOOLS_LIST: the tools this agent may use."""
        return cast(list[ToolInfo], await self._x(Op.GET_TOOLS_LIST))

    async def read_from_tool(self, api: str, query: Any = None) -> Any:
        """READ_FROM_TOOL: read from tool ``api``."""
        return await self._x(Op.READ_FROM_TOOL, api, query)

    async def write_to_tool(self, api: str, data: Any = None) -> Any:
        """WRITE_TO_TOOL: write ``data`` to tool ``api``; returns the tool's status."""
        return await self._x(Op.WRITE_TO_TOOL, api, data)

    # -- storage -----------------------------------------------------------------------------

    async def sql_execute(self, query: str, params: SqlParams = ()) -> SqlResult:
        """SQL_EXECUTE: one statement on this agent's own database."""
        return cast(SqlResult, await self._x(Op.SQL_EXECUTE, query, params))

    async def sql_fetch(self, query: str, params: SqlParams = ()) -> list[list[Any]]:
        """SQL_FETCH: the rows of a read-only query on this agent's own database."""
        return cast(list[list[Any]], await self._x(Op.SQL_FETCH, query, params))

    async def kv_store(self, key: str, value: Any) -> None:
        """KV_STORE: store ``value`` under ``key`` in this agent's KV space."""
        await self._x(Op.KV_STORE, key, value)

    async def kv_fetch(self, key: str) -> Any:
        """KV_FETCH: the value under ``key``, or None."""
        return await self._x(Op.KV_FETCH, key)

    # -- GPU ---------------------------------------------------------------------------------

    async def allocate_gpu(self, gpu_id: str | int, time_s: float) -> Any:
        """ALLOCATE_GPU: lease a GPU for ``time_s`` seconds."""
        return await self._x(Op.ALLOCATE_GPU, gpu_id, time_s)

    async def release_gpu(self) -> None:
        """RELEASE_GPU: give the leased GPU back."""
        await self._x(Op.RELEASE_GPU)

    async def list_gpus(self) -> list[Any]:
        """LIST_GPUS: the GPUs this VM can lease."""
        return cast(list[Any], await self._x(Op.LIST_GPUS))

    async def check_gpu_load(self) -> Any:
        """CHECK_GPU_LOAD: the leased GPU's load."""
        return await self._x(Op.CHECK_GPU_LOAD)
