"""Prompts and models: LOAD_PROMPT, LOAD_MODEL, RUN_MODEL, MAP_MODEL_CALL, REDUCE_MODEL_CALL.

Every model call goes through the linker's wrapped provider (the I/O manager), so pacing,
caching, coalescing and failover apply to map items and summaries as to single calls; gas is
reserved for the worst case (every input byte a token, every item writing ``max_tokens``) and
settled on the usage the provider reports.
"""

from __future__ import annotations

import asyncio
import inspect
from collections import Counter
from pathlib import Path
from typing import Any, NamedTuple

import msgspec

from avm._core.gas import to_mgas
from avm._core.host import Host
from avm._core.isa import Op
from avm._core.process import AgentProcess
from avm._core.runtime import Runtime
from avm.config import ModelConfig
from avm.errors import AvmError, CapabilityDenied, InstructionError, InvalidArgument, ModelError
from avm.llm.chat import ASSEMBLER, ConversationInput
from avm.llm.messages import to_messages
from avm.llm.prompts import Prompt
from avm.llm.tokens import upper_bound_tokens
from avm.llm.types import Message, ModelReply, ModelRequest, PrefixHint, ToolSpec
from avm.memory.errors import ContentError


def _prepare_prompt(rt: Runtime, proc: AgentProcess, args: tuple[Any, ...]) -> Prompt:
    proc.definition.capabilities.check_prompt(args[0])
    return rt.prompts.get(args[0])


def _reserve_prompt(rt: Runtime, proc: AgentProcess, prompt: Prompt) -> int:
    return to_mgas(rt.prices.load_prompt_per_token * prompt.tokens)


async def _load_prompt(rt: Runtime, proc: AgentProcess, prompt: Prompt, step: int) -> Any:
    return prompt, _reserve_prompt(rt, proc, prompt)


class _ModelCall(NamedTuple):
    name: str
    request: ModelRequest
    price_in: float
    price_out: float
    bound_in: int


def tool_specs(rt: Runtime, proc: AgentProcess, tools: Any) -> tuple[ToolSpec, ...]:
    """Tool names (checked against the agent's grants) and specs, as specs for a request."""
    specs: list[ToolSpec] = []
    for index, item in enumerate(tools or ()):
        if isinstance(item, ToolSpec):
            specs.append(item)
        elif isinstance(item, str):
            proc.definition.capabilities.check_tool(item)
            info = rt.tools.get(item).info()
            specs.append(ToolSpec(info.name, info.description, info.parameters))
        else:
            raise InvalidArgument(f"tools[{index}] must be a tool name or ToolSpec")
    return tuple(specs)


def _granted_model(rt: Runtime, proc: AgentProcess, name: str) -> ModelConfig:
    """Model ``name``'s configuration, if this agent may call it.

    Beyond the agent's own grants: a model that authenticates with a key-manager secret (a
    template's model) serves only the definition the secret was granted to, so no other agent
    spends that key, even one granted every model.
    """
    proc.definition.capabilities.check_model(name)
    config = rt.models.config(name)
    key = rt.models.key(name)
    if key is not None and key.definition != proc.definition.name:
        raise CapabilityDenied(
            f"model {name!r} authenticates with a secret granted to {key.definition!r}, "
            "so only its agents may call it"
        )
    return config


def _prepare_model(rt: Runtime, proc: AgentProcess, args: tuple[Any, ...]) -> _ModelCall:
    name, value, max_tokens, temperature, tools, deferrable, cache = args
    config = _granted_model(rt, proc, name)
    prefix: PrefixHint | None = None
    if type(value) is tuple and len(value) == 1 and type(value[0]) is ConversationInput:
        messages, specs, prefix = _assemble(rt, value[0], tools)
    else:
        messages = to_messages(value)
        specs = tool_specs(rt, proc, tools) if tools else ()
    if rt.keys is not None:  # a secret value never reaches a model, whatever the agent passed
        redacted = rt.keys.redact(messages)
        if prefix is not None and redacted[: prefix.messages] != messages[: prefix.messages]:
            prefix = None  # the shared text had a secret in it: it is not what the key names
        messages = redacted
    request = ModelRequest(
        model=config.model,
        messages=messages,
        max_tokens=max_tokens or config.max_tokens,
        temperature=0.0 if temperature is None else float(temperature),
        tools=specs,
        priority=int(proc.priority),
        deferrable=bool(deferrable),
        cache=cache,
        prefix=prefix,
    )
    bound_in = 0
    for message in messages:
        bound_in += upper_bound_tokens(message.content) + 4
    return _ModelCall(name, request, config.price_in, config.price_out, bound_in)


def _assemble(
    rt: Runtime, conversation: ConversationInput, tools: Any
) -> tuple[tuple[Message, ...], tuple[ToolSpec, ...], PrefixHint]:
    """A conversation's text, read from the VM's content store at the I/O boundary."""
    if tools:
        raise InvalidArgument(
            "a conversation carries its own tools: pass them to ctx.conversation(tools=...)"
        )
    if rt.memory is None:
        raise InvalidArgument("this VM has no content store to read the conversation from")
    try:
        assembled = ASSEMBLER.assemble(rt.memory, conversation)
    except ContentError as exc:
        raise InvalidArgument(f"the conversation cannot be read: {exc}") from None
    return assembled.messages, assembled.tools, assembled.prefix


def _reserve_model(rt: Runtime, proc: AgentProcess, call: _ModelCall) -> int:
    return to_mgas(call.price_in * call.bound_in + call.price_out * call.request.max_tokens)


async def _run_model(rt: Runtime, proc: AgentProcess, call: _ModelCall, step: int) -> Any:
    # _complete's body, inline: one coroutine less on the path of every model call.
    name = call.name
    linked = rt.models.resolve(name)
    clock = rt.timers.clock
    started = clock.monotonic()
    try:
        reply: ModelReply = await linked.provider.complete(call.request)
    except AvmError:
        raise
    except Exception as exc:
        raise _untranslated(name, exc) from None
    return _account(rt, name, reply, call.price_in, call.price_out, started, clock.monotonic())


def _untranslated(name: str, exc: Exception) -> ModelError:
    """The error for a third-party provider's exception that it did not translate itself."""
    return ModelError(f"model {name!r} failed: {type(exc).__name__}: {exc}")


def _account(
    rt: Runtime,
    name: str,
    reply: ModelReply,
    price_in: float,
    price_out: float,
    started: float,
    finished: float,
) -> tuple[ModelReply, int]:
    """A finished model call, redacted and entered in the ledger; the reply and its milligas."""
    if rt.keys is not None:  # a secret never comes back from a model into the journal
        reply = rt.keys.redact(reply)
    usage = reply.usage
    mgas = to_mgas(price_in * usage.tokens_in + price_out * usage.tokens_out)
    rt.ledger.model_call(
        name,
        tokens_in=usage.tokens_in,
        tokens_out=usage.tokens_out,
        cached_tokens=usage.cached_tokens,
        mgas=mgas,
        latency_s=finished - started,
    )
    rt.model_requests.record(finished, finished - started)
    return reply, mgas


class ModelInfo(msgspec.Struct, frozen=True):
    """What LOAD_MODEL reports: the model, where it runs, and its size on disk (local)."""

    name: str
    provider: str
    model: str
    size_mb: float
    local: bool


def _prepare_load(rt: Runtime, proc: AgentProcess, args: tuple[Any, ...]) -> str:
    _granted_model(rt, proc, args[0])
    return str(args[0])


async def _load_model(rt: Runtime, proc: AgentProcess, name: str, step: int) -> Any:
    config = rt.models.config(name)
    provider = rt.models.raw(name)
    load = getattr(provider, "load", None)
    size_mb = 0.0
    if load is not None:  # a local model: its weights come into memory now
        try:
            await load()
        except AvmError:
            raise
        except Exception as exc:
            raise ModelError(f"model {name!r} failed to load: {exc}") from None
        path = getattr(provider, "model_path", None)
        if isinstance(path, Path) and path.exists():
            size_mb = path.stat().st_size / 1e6
    info = ModelInfo(name, config.provider, config.model, round(size_mb, 3), load is not None)
    return info, to_mgas(rt.prices.load_model_per_mb * size_mb)


class MapItem(msgspec.Struct, frozen=True, omit_defaults=True):
    """One item of MAP_MODEL_CALL: its answer, or why it failed (the others still count)."""

    ok: bool
    text: str = ""
    error: str = ""


class _MapCall(NamedTuple):
    name: str
    requests: tuple[ModelRequest, ...]
    price_in: float
    price_out: float
    bound_in: int


_MAP_CONCURRENCY = 16  # items of one map in flight at once; the pacer limits the fleet


def _prepare_map(rt: Runtime, proc: AgentProcess, args: tuple[Any, ...]) -> _MapCall:
    name, dataset, max_tokens = args
    config = _granted_model(rt, proc, name)
    requests = []
    bound = 0
    for index, item in enumerate(dataset):
        try:
            messages = to_messages(item)
        except InvalidArgument as exc:
            raise InvalidArgument(f"dataset[{index}]: {exc.message}") from None
        if rt.keys is not None:
            messages = rt.keys.redact(messages)
        bound += sum(upper_bound_tokens(m.content) + 4 for m in messages)
        requests.append(
            ModelRequest(
                model=config.model,
                messages=messages,
                max_tokens=max_tokens or config.max_tokens,
                priority=int(proc.priority),
            )
        )
    return _MapCall(name, tuple(requests), config.price_in, config.price_out, bound)


def _reserve_map(rt: Runtime, proc: AgentProcess, call: _MapCall) -> int:
    per_item = rt.prices.map_model_per_item * len(call.requests)
    most_out = sum(r.max_tokens for r in call.requests)
    return to_mgas(per_item + call.price_in * call.bound_in + call.price_out * most_out)


async def _map_model(rt: Runtime, proc: AgentProcess, call: _MapCall, step: int) -> Any:
    gate = asyncio.Semaphore(_MAP_CONCURRENCY)
    spent = 0.0

    async def one(request: ModelRequest) -> MapItem:
        nonlocal spent
        async with gate:
            try:
                reply = await _complete(rt, call.name, request, call.price_in, call.price_out)
            except InstructionError as exc:
                return MapItem(False, error=f"{type(exc).__name__}: {exc.message}")
        spent += call.price_in * reply.usage.tokens_in + call.price_out * reply.usage.tokens_out
        return MapItem(True, text=reply.text)

    items = await asyncio.gather(*(one(r) for r in call.requests))
    cost = to_mgas(rt.prices.map_model_per_item * len(items) + spent)
    return list(items), cost


async def _complete(
    rt: Runtime, name: str, request: ModelRequest, price_in: float, price_out: float
) -> ModelReply:
    """One model call through the linker's wrapped provider, accounted in the ledger."""
    linked = rt.models.resolve(name)
    clock = rt.timers.clock
    started = clock.monotonic()
    try:
        reply: ModelReply = await linked.provider.complete(request)
    except AvmError:
        raise
    except Exception as exc:
        raise _untranslated(name, exc) from None
    return _account(rt, name, reply, price_in, price_out, started, clock.monotonic())[0]


class _Reduce(NamedTuple):
    kind: str
    values: list[Any]
    model: str | None  # for summarize


_BUILTIN_REDUCERS = ("concat", "count", "summarize", "vote")


def _text_of(value: Any) -> Any:
    """Map results reduce by their text; anything else by itself."""
    if isinstance(value, MapItem):
        return value.text if value.ok else None
    if isinstance(value, dict) and "ok" in value:
        return value.get("text") if value.get("ok") else None
    return value


def _prepare_reduce(rt: Runtime, proc: AgentProcess, args: tuple[Any, ...]) -> _Reduce:
    agg_type, results = args
    kind, _, model = agg_type.partition(":")
    values = [v for v in map(_text_of, results) if v is not None]
    if kind == "summarize":
        name = model or "default"
        _granted_model(rt, proc, name)
        return _Reduce(kind, values, name)
    if kind not in _BUILTIN_REDUCERS and agg_type not in rt.reducers:
        known = ", ".join([*_BUILTIN_REDUCERS, *sorted(rt.reducers)])
        raise InvalidArgument(f"unknown aggregation {agg_type!r}; use one of {known}")
    return _Reduce(kind if kind in _BUILTIN_REDUCERS else agg_type, values, None)


def _summary_request(rt: Runtime, proc: AgentProcess, reduce: _Reduce) -> ModelRequest:
    assert reduce.model is not None
    config = rt.models.config(reduce.model)
    listing = "\n".join(f"- {value}" for value in reduce.values)
    prompt = f"Summarize these results in a few sentences:\n{listing}"
    return ModelRequest(
        model=config.model,
        messages=to_messages(prompt),
        max_tokens=config.max_tokens,
        priority=int(proc.priority),
    )


def _reserve_reduce(rt: Runtime, proc: AgentProcess, reduce: _Reduce) -> int:
    fee = rt.prices.reduce_model_per_item * len(reduce.values)
    if reduce.kind != "summarize":
        return to_mgas(fee)
    assert reduce.model is not None
    config = rt.models.config(reduce.model)
    request = _summary_request(rt, proc, reduce)
    bound = sum(upper_bound_tokens(m.content) + 4 for m in request.messages)
    return to_mgas(fee + config.price_in * bound + config.price_out * request.max_tokens)


async def _reduce_model(rt: Runtime, proc: AgentProcess, reduce: _Reduce, step: int) -> Any:
    fee = rt.prices.reduce_model_per_item * len(reduce.values)
    values = reduce.values
    if reduce.kind == "concat":
        return "\n".join(str(v) for v in values), to_mgas(fee)
    if reduce.kind == "count":
        return len(values), to_mgas(fee)
    if reduce.kind == "vote":
        counts = Counter(str(v).strip() for v in values)
        winner = counts.most_common(1)[0][0] if counts else None
        return {"winner": winner, "counts": dict(counts)}, to_mgas(fee)
    if reduce.kind == "summarize":
        assert reduce.model is not None
        config = rt.models.config(reduce.model)
        request = _summary_request(rt, proc, reduce)
        reply = await _complete(rt, reduce.model, request, config.price_in, config.price_out)
        usage = reply.usage
        return reply.text, to_mgas(
            fee + config.price_in * usage.tokens_in + config.price_out * usage.tokens_out
        )
    reducer = rt.reducers[reduce.kind]
    try:
        result = reducer(values)
        if inspect.isawaitable(result):
            result = await result
    except AvmError:
        raise
    except Exception as exc:
        raise InvalidArgument(
            f"reducer {reduce.kind!r} failed: {type(exc).__name__}: {exc}"
        ) from None
    return result, to_mgas(fee)


HOSTS = {
    Op.LOAD_PROMPT: Host(_prepare_prompt, _reserve_prompt, _load_prompt),
    Op.LOAD_MODEL: Host(_prepare_load, lambda rt, proc, name: 0, _load_model),
    Op.RUN_MODEL: Host(_prepare_model, _reserve_model, _run_model),
    Op.MAP_MODEL_CALL: Host(_prepare_map, _reserve_map, _map_model),
    Op.REDUCE_MODEL_CALL: Host(_prepare_reduce, _reserve_reduce, _reduce_model),
}
