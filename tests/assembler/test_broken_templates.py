"""The corpus of broken templates: each one's exact problems are in its ``.expected`` sidecar.

Every file in ``broken/`` is a template with one kind of mistake (a few with many); the sidecar
holds the problems the assembler must report, one per line, exactly. Together they pin down
that problems are all reported at once, each with file:line:column, the field path, what was
expected and what was found. To add a case, write ``NN_name.yaml``, run the assembler on it,
check every line it reports by hand, and save them as ``NN_name.expected``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from avm.assembler import TemplateError, build_text

BROKEN = Path(__file__).with_name("broken")
CASES = sorted(BROKEN.glob("*.yaml"))


def test_the_corpus_covers_at_least_thirty_templates() -> None:
    assert len(CASES) >= 30
    assert all(case.with_suffix(".expected").is_file() for case in CASES)


@pytest.mark.parametrize("case", CASES, ids=lambda path: path.stem)
def test_a_broken_template_reports_exactly_its_problems(case: Path) -> None:
    expected = case.with_suffix(".expected").read_text(encoding="utf-8").splitlines()
    with pytest.raises(TemplateError) as refused:
        build_text(case.read_bytes(), file=case.name, base_dir=BROKEN)
    error = refused.value
    assert [str(problem) for problem in error.problems] == expected
    assert str(error).splitlines()[1:] == [f"  {line}" for line in expected]
    for problem in error.problems:
        assert problem.file == case.name
        assert problem.line >= 1
        assert problem.column >= 1
        assert problem.expected
        assert problem.found
