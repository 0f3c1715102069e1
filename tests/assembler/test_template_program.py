"""The template interpreter: programs run as ordinary agents, through the instruction pipeline."""

from __future__ import annotations

import sqlite3
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest

import avm
from avm import assembler
from avm.assembler import ProgramError, TemplateError
from avm.keys.manager import KeyManager
from avm.keys.master import MasterKey
from avm.knowledge import KnowledgeStore, knowledge_tools
from avm.testing import FakeOpenAIServer, FakeReply, FakeToolCall

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "templates"


def image(source: str, base_dir: Path | None = None) -> assembler.Image:
    return assembler.build_text(textwrap.dedent(source), base_dir=base_dir)


async def journal_ops(vm: avm.VM, agent_id: str) -> list[str]:
    await vm._runtime().store.sync()  # reads and errors are committed with the next write
    with sqlite3.connect(Path(vm.config.state_dir) / "state.db") as db:
        rows = db.execute(
            "SELECT op FROM journal WHERE agent_id = ? ORDER BY step", (agent_id,)
        ).fetchall()
    return [op for (op,) in rows]


async def failure_of(handle: avm.AgentHandle) -> BaseException:
    with pytest.raises(avm.AgentFailed) as failed:
        await handle.result()
    cause = failed.value.__cause__
    assert cause is not None
    return cause


CONTROL = """
    name: control
    inputs:
      items: {type: list, default: [a, b, c]}
      limit: {type: integer, default: 2}
    program:
      - set: {seen: [], greeting: "hello ${agent_id}"}
        as: state
      - for_each: ${items}
        max: 5
        as: item
        do:
          - if: "${item} != 'b'"
            then:
              - kv_store: {key: "item/${item}", value: {item: "${item}", at: "${agent_id}"}}
            else:
              - kv_store: {key: skipped, value: "${item}"}
      - repeat: ${limit}
        max: 3
        as: i
        do:
          - kv_store: {key: "round/${i}", value: "${i}"}
      - kv_fetch: {key: item/c}
        as: stored
      - if: "${stored.item} == 'c' and not (${limit} > 2)"
        then:
          - set: yes
            as: verdict
          - kv_store: {key: verdict, value: "${verdict}"}
    result:
      greeting: ${state.greeting}
      stored: ${stored}
      literal: "$${not a reference}"
"""


async def test_program_runs_steps_binds_names_and_returns_its_result(vm: avm.VM) -> None:
    definition = assembler.register(vm, image(CONTROL))
    handle = vm.spawn(definition, agent_id="c1")
    assert await handle.result() == {
        "greeting": "hello c1",
        "stored": {"item": "c", "at": "c1"},
        "literal": "${not a reference}",
    }
    assert await journal_ops(vm, "c1") == [
        "KV_STORE",
        "KV_STORE",
        "KV_STORE",  # a, skipped b, c
        "KV_STORE",
        "KV_STORE",  # rounds 0 and 1
        "KV_FETCH",
        "KV_STORE",  # the verdict
    ]


async def test_inputs_are_checked_when_the_agent_starts(vm: avm.VM) -> None:
    definition = assembler.register(vm, image(CONTROL))
    cause = await failure_of(vm.spawn(definition, items="abc"))
    assert isinstance(cause, ProgramError)
    assert str(cause) == "template 'control', inputs.items: expected a value of type list, got str"
    cause = await failure_of(vm.spawn(definition, colour="red"))
    assert str(cause) == "template 'control', inputs: unknown input 'colour' (inputs: items, limit)"
    assert await vm.spawn(definition, items=["c"], limit=1).result() is not None


async def test_loop_bounds_hold_at_run_time(vm: avm.VM) -> None:
    definition = assembler.register(vm, image(CONTROL))
    cause = await failure_of(vm.spawn(definition, items=list("abcdef")))
    assert str(cause) == (
        "template 'control', program[1].for_each: the list has 6 items, more than the loop's "
        "max of 5"
    )
    cause = await failure_of(vm.spawn(definition, limit=4))
    assert (
        str(cause)
        == "template 'control', program[2].repeat: the count 4 exceeds the loop's max of 3"
    )


async def test_missing_data_is_a_program_error_naming_the_step(vm: avm.VM) -> None:
    source = """
        name: lookup
        program:
          - kv_fetch: {key: nothing-here}
            as: found
          - kv_store: {key: copy, value: "${found.field}"}
    """
    definition = assembler.register(vm, image(source))
    cause = await failure_of(vm.spawn(definition))
    assert isinstance(cause, ProgramError)
    assert str(cause) == (
        "template 'lookup', program[1].kv_store: ${found.field}: ${found} is null, "
        "which has no fields"
    )


async def test_declarations_become_the_agents_definition(vm: avm.VM) -> None:
    vm.model("default", "openai:fake", base_url="http://127.0.0.1:9")
    vm.prompts.add("house-style", "Be brief.")

    @vm.tool("news")
    async def news(query: Any) -> list[str]:
        return []

    source = """
        name: declared
        budget: 42
        priority: background
        models:
          own: {spec: "openai:gpt-4o-mini", base_url: "https://api.example.com/v1",
                price_in: 0.5, price_out: 1.5, max_tokens: 64}
          shared: {use: default}
        prompts:
          mine: Think step by step.
          theirs: {use: house-style}
        tools:
          news:
        program:
          - load_prompt: {prompt_id: mine}
    """
    definition = assembler.register(vm, image(source))
    assert definition.name == "declared"
    assert definition.budget == 42
    assert definition.priority is avm.Priority.BACKGROUND
    capabilities = definition.capabilities
    assert capabilities.tools == {"news"}
    assert capabilities.models == {"declared/own", "default"}
    assert capabilities.prompts == {"declared/mine", "house-style"}
    config = vm.models.config("declared/own")
    assert (config.provider, config.model, config.base_url) == (
        "openai",
        "gpt-4o-mini",
        "https://api.example.com/v1",
    )
    assert (config.price_in, config.price_out, config.max_tokens) == (0.5, 1.5, 64)
    handle = vm.spawn(definition)
    assert handle.gas_budget == 42
    await handle.result()
    assert vm.prompts.get("declared/mine").text == "Think step by step."


async def test_registration_lists_everything_the_vm_lacks(vm: avm.VM) -> None:
    @vm.tool("feed")
    async def feed(query: Any) -> str:
        return ""

    source = """
        name: needy
        models:
          m: {use: default}
        prompts:
          p: {use: house-style}
        tools:
          news:
          feed: {access: write}
        program:
          - kv_store: {key: a, value: 1}
    """
    with pytest.raises(avm.ConfigError) as refused:
        assembler.register(vm, image(source))
    assert str(refused.value) == (
        "template 'needy' cannot run in this VM: tool 'news' is not registered in this VM; "
        "tool 'feed' cannot be written to, but the template writes it; model 'm' uses "
        "'default', which this VM does not have; prompt 'p' uses 'house-style', which this VM "
        "does not hold"
    )
    assert "needy" not in vm.definitions


# -- capabilities ------------------------------------------------------------------------------

TOOLS = """
    name: toolbox
    inputs:
      which: string
    tools:
      news:
      orders: {access: write}
    program:
      - read_from_tool: {api: "${which}", query: {q: 1}}
        as: data
    result: ${data}
"""


def toolbox_vm(vm: avm.VM, calls: list[str]) -> None:
    @vm.tool("news")
    async def news(query: Any) -> str:
        calls.append("news")
        return "headline"

    @vm.tool("vault")
    async def vault(query: Any) -> str:
        calls.append("vault")
        return "the crown jewels"

    @vm.tool("orders", kind="both")
    async def orders(data: Any) -> str:
        calls.append("orders")
        return "ok"


def test_a_literal_undeclared_tool_is_refused_at_build_time() -> None:
    with pytest.raises(TemplateError) as refused:
        image(TOOLS.replace('"${which}"', "vault"))
    assert [str(p) for p in refused.value.problems] == [
        "<template>:9:27: program[0].read_from_tool.api: expected a tool declared under tools: "
        "(news, orders), found 'vault' (declare it under tools:)"
    ]


async def test_a_computed_undeclared_tool_is_denied_by_the_pipeline(vm: avm.VM) -> None:
    calls: list[str] = []
    toolbox_vm(vm, calls)
    definition = assembler.register(vm, image(TOOLS))
    assert await vm.spawn(definition, which="news").result() == "headline"
    handle = vm.spawn(definition, agent_id="thief", which="vault")
    cause = await failure_of(handle)
    assert isinstance(cause, avm.CapabilityDenied)
    assert str(cause) == (
        "agent 'thief', step 0, READ_FROM_TOOL: tool 'vault' was not granted to this agent "
        "(news, orders)"
    )
    # The denial is an instruction like any other: journaled as an error, replayed as one.
    assert await journal_ops(vm, "thief") == ["READ_FROM_TOOL"]
    assert calls == ["news"]


async def test_a_declared_tool_is_used_only_with_its_declared_access(vm: avm.VM) -> None:
    calls: list[str] = []
    toolbox_vm(vm, calls)
    definition = assembler.register(vm, image(TOOLS))
    cause = await failure_of(vm.spawn(definition, which="orders"))
    assert isinstance(cause, avm.CapabilityDenied)
    assert str(cause) == (
        "agent 'toolbox-1', step 0, READ_FROM_TOOL: template 'toolbox' declares tool 'orders' "
        "with access write, so it may not be read"
    )
    assert calls == []


async def test_a_computed_model_name_outside_the_template_is_denied(
    vm: avm.VM, fake_server: FakeOpenAIServer
) -> None:
    vm.model("default", "openai:fake", base_url=fake_server.base_url)
    vm.model("expensive", "openai:fake-large", base_url=fake_server.base_url)
    source = """
        name: chooser
        inputs:
          model: string
        models:
          m: {use: default}
        program:
          - run_model: {model: "${model}", input: hi}
            as: reply
        result: ${reply.text}
    """
    definition = assembler.register(vm, image(source))
    assert await vm.spawn(definition, model="m").result() == "echo: hi"
    cause = await failure_of(vm.spawn(definition, model="expensive"))
    assert isinstance(cause, avm.CapabilityDenied)
    assert fake_server.completion_count == 1


# -- react ---------------------------------------------------------------------------------------

REACT = """
    name: researcher
    models:
      m: {use: default}
    tools:
      lookup:
        description: Look a word up
        schema:
          type: object
          properties: {word: {type: string}}
          required: [word]
      ledger: {access: write}
    program:
      - react:
          model: m
          input: ["Define ${agent_id}"]
          tools: [lookup, ledger]
          max_turns: 4
          max_tokens: 50
        as: answer
    result:
      text: ${answer.text}
      tokens_in: ${answer.usage.tokens_in}
"""


def react_vm(vm: avm.VM, server: FakeOpenAIServer, seen: list[tuple[str, Any]]) -> None:
    vm.model("default", "openai:fake", base_url=server.base_url)

    @vm.tool("lookup", description="registered description")
    async def lookup(query: Any) -> Any:
        seen.append(("lookup", query))
        if query.get("word") == "boom":
            raise RuntimeError("dictionary on fire")
        return {"word": query["word"], "meaning": "a small thing"}

    @vm.tool("ledger", kind="write")
    async def ledger(data: Any) -> str:
        seen.append(("ledger", data))
        return "recorded"


async def test_react_runs_tool_calls_through_the_pipeline_until_the_model_answers(
    vm: avm.VM, fake_server: FakeOpenAIServer
) -> None:
    seen: list[tuple[str, Any]] = []
    react_vm(vm, fake_server, seen)
    fake_server.script(
        FakeReply(
            text="Let me check.",
            tool_calls=(
                FakeToolCall("lookup", {"word": "atom"}, id="c1"),
                FakeToolCall("ledger", {"note": "looked up atom"}, id="c2"),
            ),
        ),
        FakeToolCall("lookup", {"word": "boom"}, id="c3"),
        FakeToolCall("lookup", "{not json", id="c4"),
        FakeToolCall("nonexistent", {}, id="c5"),
    )
    definition = assembler.register(vm, image(REACT))
    handle = vm.spawn(definition, agent_id="r1")
    result = await handle.result()
    # Four model calls (max_turns): the last reply still asks for a tool; it is returned as is.
    assert fake_server.completion_count == 4
    assert result["text"] == ""
    assert seen == [
        ("lookup", {"word": "atom"}),
        ("ledger", {"note": "looked up atom"}),
        ("lookup", {"word": "boom"}),
    ]
    assert await journal_ops(vm, "r1") == [
        "RUN_MODEL",
        "READ_FROM_TOOL",
        "WRITE_TO_TOOL",
        "RUN_MODEL",
        "READ_FROM_TOOL",
        "RUN_MODEL",
        "RUN_MODEL",
    ]
    last = fake_server.requests[-1]
    tool_messages = [m for m in last["messages"] if m["role"] == "tool"]
    assert [m["tool_call_id"] for m in tool_messages] == ["c1", "c2", "c3", "c4"]
    assert tool_messages[0]["content"] == '{"meaning":"a small thing","word":"atom"}'
    assert tool_messages[1]["content"] == "recorded"
    assert tool_messages[2]["content"] == (
        "error: tool 'lookup' failed: RuntimeError: dictionary on fire"
    )
    assert tool_messages[3]["content"].startswith("error: the arguments are not valid JSON")
    offered = {t["function"]["name"]: t["function"] for t in last["tools"]}
    assert offered["lookup"]["description"] == "Look a word up"  # the template's own schema
    assert offered["lookup"]["parameters"]["required"] == ["word"]
    assert offered["ledger"]["description"] == ""  # no schema declared: the VM's registration


async def test_react_stops_when_the_model_answers_and_answers_unknown_tools(
    vm: avm.VM, fake_server: FakeOpenAIServer
) -> None:
    seen: list[tuple[str, Any]] = []
    react_vm(vm, fake_server, seen)
    fake_server.script(FakeToolCall("nonexistent", {}, id="x1"), "An atom is small.")
    definition = assembler.register(vm, image(REACT))
    result = await vm.spawn(definition, agent_id="r2").result()
    assert result["text"] == "An atom is small."
    assert result["tokens_in"] > 0
    assert seen == []
    answer = next(m for m in fake_server.requests[-1]["messages"] if m["role"] == "tool")
    assert answer["content"] == (
        "error: no tool named 'nonexistent' is offered here (offered: ledger, lookup)"
    )


async def test_template_and_python_agents_issue_the_same_instructions(
    make_vm: Callable[..., avm.VM], tmp_path: Path
) -> None:
    source = """
        name: twin
        setup:
          - sql_execute: {query: "CREATE TABLE t (i INTEGER)"}
        program:
          - repeat: 3
            as: i
            do:
              - sql_execute: {query: "INSERT INTO t VALUES (?)", params: ["${i}"]}
              - kv_store: {key: "k${i}", value: {i: "${i}"}}
          - sql_fetch: {query: "SELECT count(*) FROM t"}
            as: rows
        result: ${rows.0.0}
    """

    async def twin(ctx: avm.Context) -> int:
        await ctx.sql_execute("CREATE TABLE t (i INTEGER)")
        for i in range(3):
            await ctx.sql_execute("INSERT INTO t VALUES (?)", [i])
            await ctx.kv_store(f"k{i}", {"i": i})
        rows = await ctx.sql_fetch("SELECT count(*) FROM t")
        return int(rows[0][0])

    async with make_vm() as vm:
        template = assembler.register(vm, image(source))
        python = vm.agent(name="python-twin")(twin)
        assert await vm.spawn(template, agent_id="t").result() == 3
        assert await vm.spawn(python, agent_id="p").result() == 3
    state = tmp_path / "state"
    with sqlite3.connect(state / "state.db") as db:
        rows = {
            agent: db.execute(
                "SELECT op, args_digest, gas FROM journal WHERE agent_id = ? ORDER BY step",
                (agent,),
            ).fetchall()
            for agent in ("t", "p")
        }
    assert rows["t"] == rows["p"]  # same opcodes, same argument digests, same gas


def test_images_are_plain_data_that_round_trip() -> None:
    built = image(REACT)
    assert msgspec.json.decode(built.data)["program"][0]["react"]["tools"] == ["ledger", "lookup"]


async def test_the_researcher_example_runs_react_over_its_questions(
    make_vm: Callable[..., avm.VM], tmp_path: Path, fake_server: FakeOpenAIServer
) -> None:
    text = (EXAMPLES / "researcher.yaml").read_text(encoding="utf-8")
    text = text.replace("https://api.openai.com/v1", fake_server.base_url)
    # The declared model secret comes from the key manager; the server refuses any other key.
    keys = KeyManager.open(tmp_path / "state", MasterKey.generate())
    keys.set("OPENAI_API_KEY", "sk-test-researcher")
    fake_server.api_key = "sk-test-researcher"
    # Its private knowledge (the playbook, read at build time) is loaded into the agent's own
    # store when it starts, and the model's knowledge.search call finds it there.
    store = KnowledgeStore.open(tmp_path / "state", keys)
    async with make_vm(keys=keys) as vm:
        for tool in knowledge_tools(store, namespaces=()):
            vm.tools.add(tool)
        await _run_researcher(vm, text, fake_server, store)
    # Another agent's private search finds nothing of it.
    assert store.search_private("someone-else", "listing") == []
    store.close()
    keys.close()


async def _run_researcher(
    vm: avm.VM, text: str, fake_server: FakeOpenAIServer, store: KnowledgeStore
) -> None:
    fake_server.script(
        FakeToolCall("knowledge.search", {"query": "listing"}, id="k1"),
        "Listings bring liquidity; the playbook weighs them heavily.",
        "Unlocks add supply.",
    )
    definition = assembler.register(vm, image(text, base_dir=EXAMPLES), knowledge=store)
    assert definition.capabilities.models == {"researcher/thinker"}
    handle = vm.spawn(definition, agent_id="res")
    assert await handle.result() is None
    assert fake_server.completion_count == 3
    first, second = fake_server.requests[0], fake_server.requests[1]
    assert first["model"] == "gpt-4o-mini"
    assert first["messages"][0]["role"] == "system"  # the loaded prompt
    assert first["tools"][0]["function"]["parameters"]["required"] == ["query"]
    found = second["messages"][-1]
    assert found["role"] == "tool"
    assert "A listing on a tier-one exchange outweighs a quiet session" in found["content"]
    assert "knowledge/playbook.md" in found["content"]
    state = Path(vm.config.state_dir)
    await vm._runtime().store.sync()
    with sqlite3.connect(state / "state.db") as db:
        answers = dict(db.execute("SELECT key, value FROM kv WHERE agent_id = 'res'"))
    assert {key: msgspec.msgpack.decode(value) for key, value in answers.items()} == {
        "answer/What moves BTC on a listing?": (
            "Listings bring liquidity; the playbook weighs them heavily."
        ),
        "answer/Why do token unlocks matter?": "Unlocks add supply.",
    }
