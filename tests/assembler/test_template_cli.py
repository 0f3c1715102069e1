"""The template commands, run as a real ``avm`` subprocess: build, schema, run."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from avm.assembler import build, template_schema

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "templates"
BROKEN = Path(__file__).with_name("broken")


def avm_cli(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "TTY_COMPATIBLE")}
    return subprocess.run(
        [sys.executable, "-m", "avm.cli.main", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture
def examples(tmp_path: Path) -> Path:
    """A copy of the example templates whose watcher ticks every 50 ms instead of 2 s."""
    copy = tmp_path / "templates"
    shutil.copytree(EXAMPLES, copy, ignore=shutil.ignore_patterns("__pycache__"))
    watcher = copy / "portfolio_watcher.yaml"
    watcher.write_text(
        watcher.read_text(encoding="utf-8").replace("interval_s: 2.0", "interval_s: 0.05"),
        encoding="utf-8",
    )
    return copy


def test_build_writes_the_image_under_its_digest(tmp_path: Path) -> None:
    template = EXAMPLES / "portfolio_watcher.yaml"
    proc = avm_cli("build", str(template), "-o", "out", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    image = build(template)
    path = tmp_path / "out" / f"{image.digest}.avmi"
    assert path.read_bytes() == image.data
    assert proc.stdout.splitlines() == [
        f"out/{image.digest}.avmi",
        f"built 'portfolio-watcher' from {template}: {len(image.data):,} bytes, "
        f"blake3 {image.digest}",
    ]
    checked = avm_cli("build", str(template), "--check", cwd=tmp_path)
    assert checked.returncode == 0
    assert checked.stdout.strip() == f"{template}: ok (portfolio-watcher, image {image.digest})"


def test_build_reports_every_problem_and_exits_2(tmp_path: Path) -> None:
    case = BROKEN / "40_many_at_once.yaml"
    shutil.copy(case, tmp_path / case.name)
    proc = avm_cli("build", case.name, cwd=tmp_path)
    assert proc.returncode == 2
    expected = (BROKEN / "40_many_at_once.expected").read_text(encoding="utf-8").splitlines()
    assert proc.stderr.splitlines() == [
        f"avm: error: {case.name}: {len(expected)} problems",
        *(f"  {line}" for line in expected),
    ]
    assert not (tmp_path / "images").exists()


def test_schema_prints_the_published_schema(tmp_path: Path) -> None:
    proc = avm_cli("schema", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == template_schema()


def test_run_a_template_fleet_on_a_host_vm(tmp_path: Path, examples: Path) -> None:
    proc = avm_cli(
        "run",
        str(examples / "portfolio_watcher.yaml"),
        "--vm",
        str(examples / "host.py"),
        "--agents",
        "6",
        "--no-dashboard",
        "--state-dir",
        "state",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    with sqlite3.connect(tmp_path / "state" / "state.db") as db:
        rows = db.execute("SELECT agent_id, status FROM agents ORDER BY agent_id").fetchall()
        verdicts = db.execute("SELECT count(*) FROM kv WHERE key = 'verdict/BTC'").fetchone()[0]
    assert rows == [(f"portfolio-watcher-{n}", "done") for n in range(1, 7)]
    assert verdicts == 6


def test_run_an_image(tmp_path: Path, examples: Path) -> None:
    built = avm_cli("build", str(examples / "portfolio_watcher.yaml"), "-o", "images", cwd=tmp_path)
    assert built.returncode == 0, built.stderr
    (image,) = (tmp_path / "images").iterdir()
    proc = avm_cli(
        "run",
        str(image),
        "--vm",
        str(examples / "host.py"),
        "--agents",
        "2",
        "--no-dashboard",
        "--state-dir",
        "state",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr


def test_run_refuses_what_it_cannot_run(tmp_path: Path, examples: Path) -> None:
    without_host = avm_cli("run", str(examples / "portfolio_watcher.yaml"), cwd=tmp_path)
    assert without_host.returncode == 2
    assert without_host.stderr.startswith(
        "avm: error: template 'portfolio-watcher' cannot run in this VM: tool 'news' is not "
        "registered in this VM;"
    )
    assert "(pass --vm FILE.py" in without_host.stderr

    needs_input = tmp_path / "needs.yaml"
    needs_input.write_text(
        "name: needs\ninputs: {token: string}\nprogram: [{kv_store: {key: a, value: 1}}]\n",
        encoding="utf-8",
    )
    proc = avm_cli("run", str(needs_input), cwd=tmp_path)
    assert proc.returncode == 2
    assert "template 'needs' needs inputs (token)" in proc.stderr

    python = tmp_path / "agents.py"
    python.write_text("import avm\nvm = avm.VM()\n", encoding="utf-8")
    proc = avm_cli("run", str(python), "--vm", str(examples / "host.py"), cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "avm: error: --vm is for templates; an agents file defines its own vm"
    )
