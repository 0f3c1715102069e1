"""A template's model key is a key-manager secret, resolved only where the provider calls out.

The fake OpenAI and Anthropic servers are given the key they expect and answer 401 to any other
``Authorization`` / ``x-api-key`` header, so a test that gets a reply proves the header carried
the stored secret. The rest checks where the value must never be: the agent's result, the
journal and state files, log records, an exported archive, error messages.
"""

from __future__ import annotations

import logging
import tarfile
from pathlib import Path
from typing import Any

import pytest

import avm
from avm import assembler
from avm.keys.manager import KeyManager
from avm.keys.master import MasterKey
from avm.llm.linker import model_tool
from avm.portable import export_agent
from avm.testing import FakeAnthropicServer, FakeOpenAIServer

SECRET = "sk-test-3c9d0e7f41b2a6"
ENV_DECOY = "sk-env-should-not-be-used"

TEMPLATE = """\
name: asker
models:
  brain:
    spec: {spec}
    base_url: {base_url}
    secret: MODEL_KEY
secrets: [MODEL_KEY]
program:
  - run_model: {{model: brain, input: "say something about ${{agent_id}}"}}
    as: reply
result: ${{reply.text}}
"""


def image_for(spec: str, base_url: str) -> assembler.Image:
    text = TEMPLATE.format(spec=spec, base_url=base_url)
    return assembler.build_text(text, file="asker.yaml")


def open_keys(state: Path, value: str = SECRET) -> KeyManager:
    keys = KeyManager.open(state, MasterKey.generate())
    keys.set("MODEL_KEY", value)
    return keys


def nowhere_on_disk(root: Path, secret: str) -> None:
    for path in root.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path


async def test_openai_key_comes_from_the_key_manager_and_leaks_nowhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The old behaviour read an environment variable of the secret's name: make sure it is not.
    monkeypatch.setenv("MODEL_KEY", ENV_DECOY)
    caplog.set_level(logging.DEBUG)
    state = tmp_path / "state"
    keys = open_keys(state)
    async with FakeOpenAIServer(api_key=SECRET) as server:
        # A model that tries to print the key: its output is redacted before anyone sees it.
        server.script(f"my key is {SECRET}")
        async with avm.VM(state, keys=keys) as vm:
            definition = assembler.register(vm, image_for("openai:fake-gpt", server.base_url))
            assert keys.allowed(
                "MODEL_KEY", tool=model_tool("asker/brain"), agent_id="a-1", definition="asker"
            )
            result = await vm.spawn(definition, agent_id="a-1").result()
        assert server.completion_count == 1  # the 401 a wrong header gets would have failed it
    assert result == "my key is [REDACTED:MODEL_KEY]"
    archive = export_agent(state, "a-1", tmp_path / "a-1.tar")
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            extracted = tar.extractfile(member)
            if extracted is not None:
                assert SECRET.encode() not in extracted.read(), member.name
    nowhere_on_disk(tmp_path, SECRET)
    assert SECRET not in caplog.text
    keys.close()


async def test_anthropic_key_goes_in_x_api_key(tmp_path: Path) -> None:
    state = tmp_path / "state"
    keys = open_keys(state)
    async with FakeAnthropicServer(api_key=SECRET) as server:
        server.script("fine")
        async with avm.VM(state, keys=keys) as vm:
            definition = assembler.register(vm, image_for("anthropic:claude-x", server.base_url))
            assert await vm.spawn(definition).result() == "fine"
    nowhere_on_disk(tmp_path, SECRET)
    keys.close()


async def test_a_rejected_key_is_not_quoted_back_to_the_agent(tmp_path: Path) -> None:
    # The provider answers 401 quoting the key it got, as real providers do.
    state = tmp_path / "state"
    keys = open_keys(state)
    async with (
        FakeOpenAIServer(api_key="sk-the-right-one-000") as server,
        avm.VM(state, keys=keys) as vm,
    ):
        definition = assembler.register(vm, image_for("openai:fake-gpt", server.base_url))
        with pytest.raises(avm.AgentFailed) as failed:
            await vm.spawn(definition, agent_id="a-1").result()
    assert "401" in str(failed.value.__cause__) or "API key" in str(failed.value.__cause__)
    assert SECRET not in str(failed.value)
    assert SECRET not in repr(failed.value.__cause__)
    nowhere_on_disk(tmp_path, SECRET)
    keys.close()


async def test_a_revoked_grant_stops_the_key_at_the_provider(tmp_path: Path) -> None:
    state = tmp_path / "state"
    keys = open_keys(state)
    async with FakeOpenAIServer(api_key=SECRET) as server:
        async with avm.VM(state, keys=keys) as vm:
            definition = assembler.register(vm, image_for("openai:fake-gpt", server.base_url))
            keys.revoke("MODEL_KEY", tool=model_tool("asker/brain"), definition="asker")
            with pytest.raises(avm.AgentFailed) as failed:
                await vm.spawn(definition).result()
        assert server.request_count == 0  # nothing was sent without the grant
    assert isinstance(failed.value.__cause__, avm.CapabilityDenied)
    assert "MODEL_KEY" in str(failed.value.__cause__)
    keys.close()


async def test_another_agent_cannot_spend_a_templates_model_key(tmp_path: Path) -> None:
    state = tmp_path / "state"
    keys = open_keys(state)
    async with FakeOpenAIServer(api_key=SECRET) as server:
        async with avm.VM(state, keys=keys) as vm:
            assembler.register(vm, image_for("openai:fake-gpt", server.base_url))

            @vm.agent  # granted every model the VM has, the template's included
            async def borrower(ctx: avm.Context) -> str:
                reply = await ctx.run_model("asker/brain", "hello")
                return reply.text

            with pytest.raises(avm.AgentFailed) as failed:
                await vm.spawn(borrower).result()
        assert server.request_count == 0
    assert isinstance(failed.value.__cause__, avm.CapabilityDenied)
    assert "asker" in str(failed.value.__cause__)
    keys.close()


async def test_what_registration_refuses(tmp_path: Path) -> None:
    image = image_for("openai:fake-gpt", "http://127.0.0.1:9/v1")
    async with avm.VM(tmp_path / "bare") as vm:
        with pytest.raises(avm.ConfigError, match="has no key manager"):
            assembler.register(vm, image)
    keys = KeyManager.open(tmp_path / "state", MasterKey.generate())
    async with avm.VM(tmp_path / "state", keys=keys) as vm:
        with pytest.raises(avm.ConfigError, match="secrets that are not stored: MODEL_KEY"):
            assembler.register(vm, image)
    keys.set("MODEL_KEY", SECRET)
    local = assembler.build_text(
        TEMPLATE.format(spec="local:smol", base_url="http://127.0.0.1:9/v1"), file="asker.yaml"
    )
    async with avm.VM(tmp_path / "state", keys=keys) as vm:
        with pytest.raises(avm.ConfigError, match="provider 'local' takes no API key"):
            assembler.register(vm, local)
    keys.close()


def test_the_linker_refuses_a_key_for_a_given_provider() -> None:
    from avm.llm.linker import ModelKey, ModelLinker

    class Keys:  # never consulted: the refusal comes first
        pass

    linker = ModelLinker()
    key: Any = ModelKey(Keys(), "MODEL_KEY", "asker")  # type: ignore[arg-type]
    with pytest.raises(avm.ConfigError, match="can have its key from a secret"):
        linker.add("m", "local:smol", key=key)


@pytest.mark.parametrize("spec", ["openai:fake-gpt", "anthropic:claude-x"])
async def test_a_rotated_key_is_sent_from_the_next_call_and_a_revoked_one_no_more(
    tmp_path: Path, spec: str
) -> None:
    rotated = "sk-rotated-9a8b7c6d5e4f"
    state = tmp_path / "state"
    keys = open_keys(state)
    server_type = FakeOpenAIServer if spec.startswith("openai") else FakeAnthropicServer
    async with server_type(api_key=SECRET) as server, avm.VM(state, keys=keys) as vm:
        server.script("first", "second", "third")
        definition = assembler.register(vm, image_for(spec, server.base_url))
        assert await vm.spawn(definition).result() == "first"  # the provider is built now
        # The upstream account's key changes: the server takes only the new one, and the
        # operator stores it; the provider built with the old value sends the new one.
        server.api_key = rotated
        keys.set("MODEL_KEY", rotated)
        assert await vm.spawn(definition).result() == "second"
        # Revoked: the provider no longer sends the key at all.
        server.api_key = None
        assert keys.revoke("MODEL_KEY", tool=model_tool("asker/brain"), definition="asker")
        assert await vm.spawn(definition).result() == "third"
        sent = list(server.credentials)
    prefix = "Bearer " if spec.startswith("openai") else ""
    assert sent == [prefix + SECRET, prefix + rotated, None]
    assert not keys._watchers  # the closed VM's linker no longer listens
    keys.close()
