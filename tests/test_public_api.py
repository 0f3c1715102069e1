"""The public surface: every name exported once, every error reachable from ``avm``."""

from __future__ import annotations

import avm
from avm import errors


def test_all_is_sorted_and_unique() -> None:
    assert len(avm.__all__) == len(set(avm.__all__))
    assert list(avm.__all__) == sorted(avm.__all__, key=lambda n: (not n.isupper(), n))


def test_every_exported_name_exists() -> None:
    for name in avm.__all__:
        assert getattr(avm, name) is not None, name


def test_every_error_is_exported() -> None:
    assert set(errors.__all__) <= set(avm.__all__)
    for name in errors.__all__:
        if name != "Problem":  # the record a TemplateError carries, not an error itself
            assert issubclass(getattr(errors, name), errors.AvmError)
