"""Prompts and models: LOAD_PROMPT and RUN_MODEL (LOAD_MODEL, MAP/REDUCE come later)."""

from __future__ import annotations

from typing import Any, NamedTuple

from avm._core.gas import to_mgas
from avm._core.host import Host
from avm._core.isa import Op
from avm._core.process import AgentProcess
from avm._core.runtime import Runtime
from avm.errors import AvmError, InvalidArgument, ModelError
from avm.llm.messages import to_messages
from avm.llm.prompts import Prompt
from avm.llm.tokens import upper_bound_tokens
from avm.llm.types import Message, ModelReply, ModelRequest, ToolSpec


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


def _tool_specs(rt: Runtime, proc: AgentProcess, tools: Any) -> tuple[ToolSpec, ...]:
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


def _prepare_model(rt: Runtime, proc: AgentProcess, args: tuple[Any, ...]) -> _ModelCall:
    name, value, max_tokens, temperature, tools, deferrable, cache = args
    proc.definition.capabilities.check_model(name)
    config = rt.models.config(name)
    messages: tuple[Message, ...] = to_messages(value)
    if rt.keys is not None:  # a secret value never reaches a model, whatever the agent passed
        messages = rt.keys.redact(messages)
    request = ModelRequest(
        model=config.model,
        messages=messages,
        max_tokens=max_tokens or config.max_tokens,
        temperature=0.0 if temperature is None else float(temperature),
        tools=_tool_specs(rt, proc, tools),
        priority=int(proc.priority),
        deferrable=bool(deferrable),
        cache=cache,
    )
    bound_in = sum(upper_bound_tokens(m.content) + 4 for m in messages)
    return _ModelCall(name, request, config.price_in, config.price_out, bound_in)


def _reserve_model(rt: Runtime, proc: AgentProcess, call: _ModelCall) -> int:
    return to_mgas(call.price_in * call.bound_in + call.price_out * call.request.max_tokens)


async def _run_model(rt: Runtime, proc: AgentProcess, call: _ModelCall, step: int) -> Any:
    linked = rt.models.resolve(call.name)
    clock = rt.timers.clock
    started = clock.monotonic()
    try:
        reply: ModelReply = await linked.provider.complete(call.request)
    except AvmError:
        raise
    except Exception as exc:  # a third-party provider that did not translate its errors
        raise ModelError(f"model {call.name!r} failed: {type(exc).__name__}: {exc}") from None
    finished = clock.monotonic()
    if rt.keys is not None:  # nor comes back from one into the journal
        reply = rt.keys.redact(reply)
    usage = reply.usage
    cost = to_mgas(call.price_in * usage.tokens_in + call.price_out * usage.tokens_out)
    rt.ledger.model_call(
        call.name,
        tokens_in=usage.tokens_in,
        tokens_out=usage.tokens_out,
        cached_tokens=usage.cached_tokens,
        mgas=cost,
        latency_s=finished - started,
    )
    rt.model_requests.record(finished, finished - started)
    return reply, cost


HOSTS = {
    Op.LOAD_PROMPT: Host(_prepare_prompt, _reserve_prompt, _load_prompt),
    Op.RUN_MODEL: Host(_prepare_model, _reserve_model, _run_model),
}
