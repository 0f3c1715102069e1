"""Execution state, KV and SQL: the agent's own storage.

Everything is keyed by the agent's id, which the agent cannot choose: KV keys and state live in
rows owned by the agent, SQL runs on the agent's own database file.
"""

from __future__ import annotations

from typing import Any

from avm._core.chat_state import (
    decode_state,
    encode_state,
    load_chat_content,
    persist_chat_content,
)
from avm._core.gas import to_mgas
from avm._core.host import Host, NeedsGas, flat, free, passthrough
from avm._core.isa import Op
from avm._core.journal import (
    PAYLOAD_THRESHOLD,
    EntryFlag,
    blob_key,
    decode_value,
    encode_value,
    payload_ref,
    resolve_payload,
)
from avm._core.process import AgentProcess
from avm._core.runtime import Runtime
from avm.errors import InvalidArgument
from avm.memory.refs import ContentRef
from avm.storage.agent_sql import SqlOverLimit

_MAX_KEY = 1024


async def _load_state(rt: Runtime, proc: AgentProcess, args: Any, step: int) -> Any:
    data = await rt.store.state_get(proc.id)
    if data is None:
        return None, to_mgas(rt.prices.load_state)
    data = await resolve_payload(data, rt.store.get_blob, f"agent {proc.id!r}'s execution state")
    await load_chat_content(rt.store, rt.memory, data)
    return decode_state(data, rt.memory, rt.keeper(proc.id)), to_mgas(rt.prices.load_state)


# A prepared SAVE_EXECUTION_STATE: the encoded state and the refs its conversations need.
_Save = tuple[bytes, list[ContentRef]]


def _prepare_save(rt: Runtime, proc: AgentProcess, args: tuple[Any, ...]) -> _Save:
    return encode_state(args[0], "state")


async def _save_state(rt: Runtime, proc: AgentProcess, save: _Save, step: int) -> Any:
    store = rt.store
    data, refs = save
    if refs:
        # What the state's conversations refer to, in the batch of the save that needs it.
        assert rt.memory is not None  # a chat exists only where the VM has a content store
        persist_chat_content(store, rt.memory, refs, rt.durable_refs)
    if len(data) > PAYLOAD_THRESHOLD:
        # A large state is kept by content: saved again unchanged (or loaded, which journals
        # the same bytes as its result) it is stored once.
        key = blob_key(data)
        store.put_blobs(((key, data),))
        data = payload_ref(key)
    store.state_put(proc.id, data)
    return None, to_mgas(rt.prices.save_state)


async def _reset_state(rt: Runtime, proc: AgentProcess, args: Any, step: int) -> Any:
    rt.store.state_put(proc.id, None)
    return None, to_mgas(rt.prices.reset_state)


# A prepared KV_STORE: the key, the encoded value and its cost, which is known once the value
# is encoded. A plain tuple: this is made for every store, and a NamedTuple costs twice as much.
_Put = tuple[str, bytes, int]


def _check_key(key: str) -> str:
    if len(key) > _MAX_KEY:
        raise InvalidArgument(f"key is {len(key)} characters long; the limit is {_MAX_KEY}")
    return key


def _prepare_put(rt: Runtime, proc: AgentProcess, args: tuple[Any, ...]) -> _Put:
    key = _check_key(args[0])
    data = encode_value(args[1])
    return key, data, to_mgas(rt.prices.kv_store_per_byte * len(data))


def _reserve_put(rt: Runtime, proc: AgentProcess, put: _Put) -> int:
    return put[2]


async def _kv_store(rt: Runtime, proc: AgentProcess, put: _Put, step: int) -> Any:
    key, data, mgas = put
    rt.store.kv_put(proc.id, key, data)
    return None, mgas


def _prepare_fetch(rt: Runtime, proc: AgentProcess, args: tuple[Any, ...]) -> str:
    return _check_key(args[0])


async def _kv_fetch(rt: Runtime, proc: AgentProcess, key: str, step: int) -> Any:
    data = await rt.store.kv_get(proc.id, key)
    if data is None:
        return None, 0
    return decode_value(data), to_mgas(rt.prices.kv_fetch_per_byte * len(data))


def _params(args: tuple[Any, ...]) -> Any:
    params = args[1]
    return list(params) if isinstance(params, tuple) else params


async def _sql_execute(rt: Runtime, proc: AgentProcess, args: tuple[Any, ...], step: int) -> Any:
    unit = max(1, to_mgas(rt.prices.sql_execute_per_op))
    if step == proc.recovered_step:
        # This statement may have committed just before the crash that its journal entry missed.
        done = rt.sql.applied(proc.id, step)
        if done is not None:
            proc.flags |= EntryFlag.DEDUPLICATED
            return done, unit
    available = proc.gas.available
    # What the agent can pay for: its free budget plus the one unit reserved for this call.
    limit = None if available is None else (available + unit) // unit
    try:
        result, units = rt.sql.execute(proc.id, args[0], _params(args), step, limit)
    except SqlOverLimit as over:
        if over.hard_cap:
            raise
        raise NeedsGas((over.units + 1) * unit) from None
    return result, to_mgas(rt.prices.sql_execute_per_op * units)


async def _sql_fetch(rt: Runtime, proc: AgentProcess, args: tuple[Any, ...], step: int) -> Any:
    rows = rt.sql.fetch(proc.id, args[0], _params(args))
    return rows, to_mgas(rt.prices.sql_fetch_per_row * len(rows))


HOSTS = {
    Op.LOAD_EXECUTION_STATE: Host(
        passthrough, flat(lambda rt: to_mgas(rt.prices.load_state)), _load_state
    ),
    Op.SAVE_EXECUTION_STATE: Host(
        _prepare_save, flat(lambda rt: to_mgas(rt.prices.save_state)), _save_state
    ),
    Op.RESET_EXECUTION_STATE: Host(
        passthrough, flat(lambda rt: to_mgas(rt.prices.reset_state)), _reset_state
    ),
    Op.KV_STORE: Host(_prepare_put, _reserve_put, _kv_store),
    Op.KV_FETCH: Host(_prepare_fetch, free, _kv_fetch),
    Op.SQL_EXECUTE: Host(
        passthrough, flat(lambda rt: max(1, to_mgas(rt.prices.sql_execute_per_op))), _sql_execute
    ),
    Op.SQL_FETCH: Host(passthrough, free, _sql_fetch),
}
