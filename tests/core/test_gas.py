"""Gas: exact accounting, budgets that halt an agent before it overspends, top-ups, the ledger."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

import avm
from avm import AgentState, Context, WaitReason
from avm._core.gas import GasAccount, to_gas, to_mgas
from avm.testing import wait_until

BACKENDS = ("sqlite", "postgres")  # run each VM test on both state stores


@given(st.floats(min_value=0, max_value=1e9, allow_nan=False))
def test_to_mgas_never_undercharges(gas: float) -> None:
    mgas = to_mgas(gas)
    assert mgas >= gas * 1000 - 1e-3
    assert mgas - gas * 1000 < 1 + 1e-3


@given(
    st.integers(min_value=0, max_value=10**9),
    st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 10**6), st.booleans()), max_size=50),
)
def test_account_never_spends_beyond_budget(
    budget: int, calls: list[tuple[int, int, bool]]
) -> None:
    account = GasAccount(budget)
    for reserve, actual, commit in calls:
        if account.reserve(reserve):
            if commit:
                account.settle(reserve, min(actual, reserve))
            else:
                account.release(reserve)
        assert account.reserved == 0
        assert 0 <= account.spent <= budget
        assert account.available is not None
        assert account.available >= 0


async def test_out_of_gas_halts_and_top_up_resumes(vm: avm.VM) -> None:
    # KV_STORE costs 0.01 gas per encoded byte; a 1,000-character string encodes to 1,003 bytes.
    @vm.agent(budget=25)
    async def writer(ctx: Context) -> int:
        for i in range(3):
            await ctx.kv_store(f"k{i}", "x" * 1000)
        return await ctx.kv_fetch("k2") and 3

    handle = vm.spawn(writer)
    await wait_until(lambda: handle.state is AgentState.OUT_OF_GAS)
    assert handle.wait_reason is WaitReason.GAS
    assert handle.gas_spent == pytest.approx(20.06)  # two stores done, the third refused
    assert vm.stats().agents["out_of_gas"] == 1
    vm.top_up(handle.id, 30)
    assert await handle.result() == 3
    assert handle.gas_spent == pytest.approx(30.09 + 0.005 * 1003)
    assert handle.gas_spent <= handle.gas_budget  # type: ignore[operator]


async def test_killing_an_agent_halted_out_of_gas_leaves_nothing_reserved(vm: avm.VM) -> None:
    @vm.agent(budget=25)
    async def writer(ctx: Context) -> None:
        for i in range(3):
            await ctx.kv_store(f"k{i}", "x" * 1000)

    handle = vm.spawn(writer)
    await wait_until(lambda: handle.state is AgentState.OUT_OF_GAS)
    account = vm._processes[handle.id].gas
    assert account.reserved == 0  # the third store was refused, so it holds nothing
    handle.kill()
    await wait_until(lambda: handle.state is AgentState.KILLED)
    assert account.reserved == 0
    assert account.available == to_mgas(25) - account.spent


async def test_reads_are_withheld_until_affordable(vm: avm.VM) -> None:
    # KV_FETCH's cost (0.005/byte) is only known after the read: an unaffordable result is
    # withheld, the agent halts, and the read runs again after a top-up.
    @vm.agent(budget=60)
    async def reader(ctx: Context) -> int:
        await ctx.kv_store("big", "y" * 5000)  # 50.03 gas
        return len(await ctx.kv_fetch("big"))  # 25.015 gas: more than the 9.97 left

    handle = vm.spawn(reader)
    await wait_until(lambda: handle.state is AgentState.OUT_OF_GAS)
    assert handle.gas_spent == pytest.approx(50.03)
    vm.top_up(handle.id, 20)
    assert await handle.result() == 5000
    assert handle.gas_spent == pytest.approx(50.03 + 25.015)


async def test_sql_metered_like_fuel(vm: avm.VM) -> None:
    # A statement that would run past what the budget pays for is aborted (and rolled back).
    @vm.agent(budget=2)
    async def heavy(ctx: Context) -> int:
        await ctx.sql_execute("CREATE TABLE n (i)")
        await ctx.sql_execute(
            "INSERT INTO n WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM c "
            "WHERE i < 20000) SELECT i FROM c"
        )
        rows = await ctx.sql_fetch("SELECT count(*) FROM n")
        return int(rows[0][0])

    handle = vm.spawn(heavy)
    await wait_until(lambda: handle.state is AgentState.OUT_OF_GAS)
    spent_before = handle.gas_spent
    vm.top_up(handle.id, 100)
    assert await handle.result() == 20000  # the aborted insert left nothing half-done
    assert handle.gas_spent > spent_before + 2


async def test_out_of_gas_agent_does_not_block_others(vm: avm.VM) -> None:
    @vm.agent(budget=0.01)
    async def poor(ctx: Context) -> None:
        await ctx.kv_store("k", "x" * 100)

    @vm.agent
    async def rich(ctx: Context) -> str:
        await ctx.kv_store("k", "x" * 100)
        return "ok"

    stuck = vm.spawn(poor)
    assert [await vm.spawn(rich).result() for _ in range(3)] == ["ok"] * 3
    assert stuck.state is AgentState.OUT_OF_GAS


async def test_ledger_by_agent_instruction_and_time(vm: avm.VM) -> None:
    @vm.agent
    async def agent(ctx: Context, n: int) -> None:
        for _ in range(n):
            await ctx.save_execution_state(n)  # 15 gas each
        await ctx.get_tools_list()  # 20 gas

    await vm.spawn(agent, agent_id="a", n=1).result()
    await vm.spawn(agent, agent_id="b", n=2).result()
    assert vm.ledger.by_agent() == {"a": 35.0, "b": 50.0}
    assert vm.ledger.by_instruction() == {"GET_TOOLS_LIST": 40.0, "SAVE_EXECUTION_STATE": 45.0}
    assert sum(g for _, g in vm.ledger.over_time(60)) == 85.0
    assert to_gas(vm.ledger.total) == vm.stats().gas_spent == 85.0


async def test_prices_are_configuration(make_vm: Callable[..., avm.VM]) -> None:
    async with make_vm(prices=avm.GasPrices(save_state=1.5)) as vm:

        @vm.agent
        async def agent(ctx: Context) -> None:
            await ctx.save_execution_state(1)

        await vm.spawn(agent).result()
        assert vm.ledger.by_instruction() == {"SAVE_EXECUTION_STATE": 1.5}


def test_negative_price_is_a_config_error() -> None:
    with pytest.raises(avm.ConfigError, match="save_state must be a non-negative number"):
        avm.GasPrices(save_state=-1)
