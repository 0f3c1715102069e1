"""The hold table: each ref once per agent, in the order taken, small rows and long ones alike."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from avm.memory.holds import SMALL, HoldTable
from avm.memory.refs import ContentRef

_REFS = st.integers(min_value=0, max_value=3 * SMALL).map(
    lambda i: ContentRef(i.to_bytes(32, "little"))
)


@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), _REFS), max_size=200))
def test_rows_keep_each_ref_once_in_the_order_taken(ops: list[tuple[str, ContentRef]]) -> None:
    table = HoldTable()
    model: dict[str, list[ContentRef]] = {}
    for agent, ref in ops:
        new = ref not in model.setdefault(agent, [])
        assert table.has(agent, ref) is not new
        assert table.add(agent, ref) is new
        if new:
            model[agent].append(ref)
        assert table.has(agent, ref)
    for agent, refs in model.items():
        assert table.refs(agent) == tuple(refs)
    assert len(table) == len(model)
    for agent, refs in model.items():
        assert table.pop(agent) == tuple(refs)
        assert agent not in table
        assert table.refs(agent) == ()


def test_a_row_past_the_small_size_still_refuses_duplicates() -> None:
    table = HoldTable()
    refs = [ContentRef(i.to_bytes(32, "little")) for i in range(SMALL + 5)]
    assert all(table.add("a", ref) for ref in refs)
    assert not any(table.add("a", ref) for ref in refs)
    assert table.refs("a") == tuple(refs)


def test_restore_returns_only_the_refs_not_already_in_the_row() -> None:
    table = HoldTable()
    one, two, three = (ContentRef(bytes([i]) * 32) for i in range(3))
    table.add("a", one)
    assert table.restore("a", [one, two, three, two]) == [two, three]
    assert table.refs("a") == (one, two, three)
