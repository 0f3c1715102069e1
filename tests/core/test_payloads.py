"""Large payloads are journaled by content hash: stored once, durable with their entry, replayed
exactly; swarm membership is durable state that a checkpoint recovery keeps."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

import avm
from avm import Context
from avm._core.journal import PAYLOAD_THRESHOLD, blob_key, payload_ref, ref_key
from avm.testing import FakeOpenAIServer, wait_until

BACKENDS = ("sqlite", "postgres")  # run each test on both state stores

BIG = "".join(f"line {n}: a system prompt long enough to be stored by hash\n" for n in range(900))


async def test_blobs_are_idempotent_and_read_your_writes(
    open_state: Callable[[], Any],
) -> None:
    store = await open_state()
    data = b"x" * 5000
    key = blob_key(data)
    store.put_blobs([(key, data), (key, data)])
    assert await store.get_blob(key) == data  # queued, not yet committed
    await store.sync()
    store.put_blobs([(key, data)])  # already stored: nothing new
    await store.sync()
    assert await store.get_blob(blob_key(b"other")) is None
    await store.aclose()
    reopened = await open_state()
    assert await reopened.get_blob(key) == data


async def test_shared_prompt_is_stored_once_and_replays(
    make_vm: Callable[..., avm.VM], open_state: Callable[[], Any]
) -> None:
    assert len(BIG.encode()) > 40_000

    def define(vm: avm.VM) -> avm.AgentDefinition:
        vm.prompts.add("system", BIG)

        @vm.agent(name="reader")
        async def reader(ctx: Context) -> tuple[int, str]:
            prompt = await ctx.load_prompt("system")
            message = await ctx.receive()  # the host stops while the agents wait here
            return prompt.tokens, prompt.text[:20] + str(message.data)

        return reader

    async with make_vm() as vm:
        reader = define(vm)
        handles = [vm.spawn(reader, agent_id=f"r{n}") for n in range(20)]
        await wait_until(lambda: all(h.wait_reason is avm.WaitReason.MESSAGE for h in handles))

    store = await open_state()
    entries = [e for n in range(20) for e in await store.journal_entries(f"r{n}")]
    loads = [e for e in entries if e.op == "LOAD_PROMPT"]
    assert len(loads) == 20
    keys = {ref_key(e.result) for e in loads}
    assert len(keys) == 1  # one payload, referred to by every agent's entry
    (key,) = keys
    assert key is not None
    assert all(len(e.result) == 33 for e in loads)
    blob = await store.get_blob(key)
    assert blob is not None
    assert BIG.encode() in blob
    await store.aclose()

    async with make_vm() as vm:
        define(vm)
        await vm.recovered()
        for n in range(20):
            await vm.post(f"r{n}", n)
        results = [await vm.handle(f"r{n}").result() for n in range(20)]
    assert [text for _, text in results] == [BIG[:20] + str(n) for n in range(20)]
    assert {tokens for tokens, _ in results} == {results[0][0]}
    assert results[0][0] > 1000


async def test_small_results_stay_inline(
    make_vm: Callable[..., avm.VM], open_state: Callable[[], Any]
) -> None:
    async with make_vm() as vm:

        @vm.agent(name="small")
        async def small(ctx: Context) -> None:
            await ctx.kv_store("k", "v" * (PAYLOAD_THRESHOLD // 2))
            await ctx.kv_fetch("k")

        await vm.spawn(small, agent_id="s").result()
    store = await open_state()
    entries = await store.journal_entries("s")
    assert [ref_key(e.result) for e in entries] == [None, None]


async def test_large_checkpoint_is_stored_by_hash_and_recovered(
    make_vm: Callable[..., avm.VM], open_state: Callable[[], Any]
) -> None:
    def define(vm: avm.VM) -> avm.AgentDefinition:
        @vm.agent(name="chat")
        async def chat(ctx: Context) -> int:
            state = await ctx.load_execution_state() or {"log": []}
            while len(state["log"]) < 3:
                message = await ctx.receive()
                state["log"].append(message.data)
                await ctx.save_execution_state(state)
            return sum(len(text) for text in state["log"])

        return chat

    long = "y" * 3000
    async with make_vm() as vm:
        chat = define(vm)
        handle = vm.spawn(chat, agent_id="c")
        await vm.post("c", long)
        await vm.post("c", long)
        await wait_until(lambda: handle.step == 6 and handle.wait_reason is avm.WaitReason.MESSAGE)

    store = await open_state()
    saved = await store.state_get("c")
    assert saved is not None
    assert ref_key(saved) is not None
    blob = await store.get_blob(ref_key(saved) or b"")
    assert blob is not None
    assert blob.count(b"y") == 6000
    await store.aclose()

    async with make_vm() as vm:
        define(vm)
        await vm.recovered()  # from the checkpoint: LOAD_EXECUTION_STATE reads the blob
        await vm.post("c", "z")
        assert await vm.handle("c").result() == 6001


async def test_missing_payload_is_a_clear_error(
    make_vm: Callable[..., avm.VM], open_state: Callable[[], Any]
) -> None:
    async with make_vm() as vm:

        @vm.agent(name="saver")
        async def saver(ctx: Context) -> Any:
            await ctx.save_execution_state({"big": "q" * 4000})
            return await ctx.load_execution_state()

        assert (await vm.spawn(saver, agent_id="v").result())["big"] == "q" * 4000

    store = await open_state()
    missing = payload_ref(blob_key(b"never stored"))
    store.state_put("v", missing)
    await store.sync()
    await store.aclose()
    async with make_vm() as vm:

        @vm.agent(name="loader")
        async def loader(ctx: Context) -> Any:
            return await ctx.load_execution_state()

        with pytest.raises(avm.AgentFailed) as failed:
            await vm.spawn(loader, agent_id="v").result()
    assert "agent 'v''s execution state refers to payload blake3:" in str(failed.value)
    assert "missing" in str(failed.value)


async def test_membership_survives_checkpoint_recovery(make_vm: Callable[..., avm.VM]) -> None:
    """Connect once, checkpoint after each message; recovery starts after the connect."""

    def define(vm: avm.VM) -> avm.AgentDefinition:
        @vm.agent(name="listener")
        async def listener(ctx: Context) -> list[Any]:
            state = await ctx.load_execution_state()
            if state is None:
                await ctx.swarm_connect("news")
                state = []
                await ctx.save_execution_state(state)
            while len(state) < 2:
                message = await ctx.receive()
                state.append(message.data)
                await ctx.save_execution_state(state)
            return list(state)

        return listener

    async with make_vm() as vm:
        listener = define(vm)
        handle = vm.spawn(listener, agent_id="l")
        await wait_until(lambda: handle.wait_reason is avm.WaitReason.MESSAGE)
        assert await vm.publish("news", "first") == 1
        await wait_until(lambda: handle.step == 6 and handle.wait_reason is avm.WaitReason.MESSAGE)

    async with make_vm() as vm:
        define(vm)
        await vm.recovered()
        # Replay started after the checkpoint at step 4: SWARM_CONNECT (step 1) was not replayed.
        assert await vm.publish("news", "second") == 1
        assert await vm.handle("l").result() == ["first", "second"]


def test_model_digest_counts_large_prompts_by_hash_exactly() -> None:
    """Same content, same digest (whatever the object); any changed byte, another digest."""
    from avm._core.journal import digest_args, digest_model_args
    from avm.llm.prompts import Prompt

    prompt = Prompt("system", BIG, 100)
    again = Prompt("system", BIG, 100)  # an equal prompt, another object
    edited = Prompt("system", BIG[:-2] + "!\n", 100)
    args = ("default", [prompt, "question"], None, None, None, None, None)
    digest = digest_model_args(args)
    assert digest == digest_model_args(args)
    assert digest == digest_model_args(("default", [again, "question"], *args[2:]))
    assert digest != digest_model_args(("default", [edited, "question"], *args[2:]))
    assert digest != digest_model_args(("default", [prompt, "question?"], *args[2:]))
    assert digest != digest_model_args(("default", [BIG, "question"], *args[2:]))
    # Small inputs digest exactly as every other instruction's arguments do.
    small = ("default", ["hello"], None, None, None, None, None)
    assert digest_model_args(small) == digest_args(small)


def test_model_digest_counts_a_large_system_message_by_hash_exactly() -> None:
    """A program's one system Message for all its agents: same rule as a Prompt."""
    from avm._core.journal import digest_args, digest_model_args

    shared = avm.Message("system", BIG)
    args = ("default", [shared, "question"], None, None, None, None, None)
    digest = digest_model_args(args)
    assert digest == digest_model_args(args)
    again = avm.Message("system", BIG)  # equal content, another object
    assert digest == digest_model_args(("default", [again, "question"], *args[2:]))
    for other in (
        avm.Message("system", BIG[:-2] + "!\n"),
        avm.Message("user", BIG),
        avm.Message("system", BIG, name="other"),
    ):
        assert digest != digest_model_args(("default", [other, "question"], *args[2:]))
    assert digest != digest_model_args(("default", [BIG, "question"], *args[2:]))
    small = ("default", [avm.Message("system", "short"), "question"], None, None, None, None, None)
    assert digest_model_args(small) == digest_args(small)


async def test_model_call_on_a_large_prompt_replays(
    make_vm: Callable[..., avm.VM], fake_server: FakeOpenAIServer
) -> None:
    def define(vm: avm.VM) -> avm.AgentDefinition:
        vm.model("default", "openai:fake-gpt", base_url=fake_server.base_url)
        vm.prompts.add("system", BIG)

        @vm.agent(name="asker")
        async def asker(ctx: Context) -> str:
            prompt = await ctx.load_prompt("system")
            reply = await ctx.run_model("default", [prompt, "what now?"])
            message = await ctx.receive()
            return f"{reply.text}/{message.data}"

        return asker

    async with make_vm() as vm:
        handle = vm.spawn(define(vm), agent_id="a")
        await wait_until(lambda: handle.wait_reason is avm.WaitReason.MESSAGE)
    calls = len(fake_server.requests)
    async with make_vm() as vm:
        define(vm)
        await vm.recovered()
        await vm.post("a", "go")
        assert await vm.handle("a").result() == "echo: what now?/go"
    assert len(fake_server.requests) == calls  # replayed, not asked again
