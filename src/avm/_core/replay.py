"""Replay: returning journaled results to an agent re-run after its host died.

A recovering agent is re-run from its entry point. Each instruction it issues is matched against
the next journal entry of its current incarnation: the same opcode and the same argument digest
return the recorded result (or raise the recorded error) without performing anything; anything
else halts the agent with :class:`ReplayDivergence`. When the entries run out the agent is live.

When the agent has a checkpoint (its latest SAVE or RESET_EXECUTION_STATE), replay starts after
it: the re-run agent's first instruction must be LOAD_EXECUTION_STATE, which returns the
checkpointed state without taking a step, and the entries after the checkpoint follow. So an
agent written as a loop that loads its state at the top and saves it at the end of each round
recovers in time proportional to one round, not to its age.

Replay restores the in-memory effects of the instructions the VM does not persist elsewhere:
schedule grids (SCHEDULE_TASK). Swarm membership is durable state that recovery restores before
replay starts, since a checkpoint can start replay after the SWARM_CONNECT; a replayed
SWARM_CONNECT only confirms it.
"""

from __future__ import annotations

from typing import Any

import msgspec

from avm import errors
from avm._core.chat_state import decode_state
from avm._core.host.models import MapItem, ModelInfo
from avm._core.host.time import ScheduleTick, restore_schedule
from avm._core.isa import Op
from avm._core.journal import EntryStatus, JournalEntry, args_digester
from avm._core.process import AgentProcess
from avm._core.runtime import Runtime
from avm.errors import InstructionError, ReplayDivergence
from avm.llm.prompts import Prompt
from avm.llm.types import ModelReply
from avm.storage.agent_sql import SqlResult
from avm.swarm.mailbox import Envelope
from avm.tools.registry import ToolInfo

__all__ = ["replay"]

# Results whose type msgpack alone cannot restore; everything else decodes as plain data.
_RESULT_TYPES: dict[Op, Any] = {
    Op.LOAD_PROMPT: Prompt,
    Op.RUN_MODEL: ModelReply,
    Op.SWARM_WAIT: Envelope | list[Envelope],
    Op.GET_TOOLS_LIST: list[ToolInfo],
    Op.SQL_EXECUTE: SqlResult,
    Op.SCHEDULE_TASK: ScheduleTick,
    Op.LOAD_MODEL: ModelInfo,
    Op.MAP_MODEL_CALL: list[MapItem],
}
_decoders = {op: msgspec.msgpack.Decoder(t) for op, t in _RESULT_TYPES.items()}
_plain = msgspec.msgpack.Decoder()
_DIGESTS = {op: args_digester(op.value) for op in Op}


def replay(rt: Runtime, proc: AgentProcess, op: Op, args: tuple[Any, ...]) -> Any:
    """Return the journaled outcome of the instruction the recovering agent just issued."""
    if proc.resume_state is not None:
        state, proc.resume_state = proc.resume_state, None
        if op is not Op.LOAD_EXECUTION_STATE:
            raise ReplayDivergence(
                f"recovering from a checkpoint before step {proc.step}: the agent's first "
                f"instruction must be LOAD_EXECUTION_STATE, but it issued {op}",
                agent_id=proc.id,
                op=op.value,
                step=proc.step,
            )
        _finish_if_done(rt, proc)
        return decode_state(state, rt.memory, rt.keeper(proc.id))
    assert proc.replay is not None
    entry = proc.replay.popleft()
    step = proc.step
    proc.step = step + 1
    _finish_if_done(rt, proc)
    if entry.op != op.value or entry.args_digest != _DIGESTS[op](args):
        what = "different arguments" if entry.op == op.value else op.value
        raise ReplayDivergence(
            f"journal has {entry.op} at this step, but the agent now issued {what}; "
            "agent code must be deterministic between instructions",
            agent_id=proc.id,
            op=op.value,
            step=step,
        )
    if entry.status is EntryStatus.ERROR:
        raise _recorded_error(entry)
    if op is Op.LOAD_EXECUTION_STATE:
        result = decode_state(entry.result, rt.memory, rt.keeper(proc.id))
    else:
        result = _decoders.get(op, _plain).decode(entry.result)
    _restore_effects(rt, proc, op, args, result)
    return result


def _finish_if_done(rt: Runtime, proc: AgentProcess) -> None:
    if not proc.replay and proc.resume_state is None:
        proc.replay = None
        rt.recovery.done(proc.id)


def _recorded_error(entry: JournalEntry) -> InstructionError:
    recorded = _plain.decode(entry.result)
    cls = getattr(errors, str(recorded.get("error")), None)
    if not (isinstance(cls, type) and issubclass(cls, InstructionError)):
        cls = InstructionError
    error = InstructionError.__new__(cls)
    InstructionError.__init__(
        error, str(recorded.get("message")), agent_id=entry.agent_id, op=entry.op, step=entry.step
    )
    return error


def _restore_effects(
    rt: Runtime, proc: AgentProcess, op: Op, args: tuple[Any, ...], result: Any
) -> None:
    if op is Op.SWARM_CONNECT:
        if proc.topics is None:
            proc.topics = []
        if args[0] not in proc.topics:
            proc.topics.append(args[0])
        rt.bus.join(args[0], proc.id)
    elif op is Op.SCHEDULE_TASK:
        restore_schedule(proc, args, result)
