"""``avm secrets`` as a user runs it: values from stdin, never shown, never stored in clear."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def avm_cli(
    *args: str, stdin: str = "", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "avm.cli.main", "secrets", *args],
        input=stdin, capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip


def test_secrets_lifecycle(tmp_path: Path) -> None:
    key = tmp_path / "master.key"
    assert avm_cli("keygen", str(key)).returncode == 0
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    env = {**os.environ, "AVM_MASTER_KEY_FILE": str(key)}
    state = ["--state-dir", str(tmp_path / "st")]
    stored = avm_cli("set", "exchange_key", *state, stdin="sk-test-1234567890\n", env=env)
    assert (
        stored.stdout.strip() == "stored exchange_key; agents refer to it as [secret:exchange_key]"
    )
    granted = avm_cli(
        "grant", "exchange_key", "--tool", "exchange", "--agent", "t-1", *state, env=env
    )
    assert granted.returncode == 0, granted.stderr
    listed = avm_cli("list", *state, env=env)
    assert "agent t-1 via exchange" in listed.stdout
    assert "sk-test" not in listed.stdout
    assert b"sk-test-1234567890" not in (tmp_path / "st" / "keys.db").read_bytes()
    missing = avm_cli("rm", "nope", *state, env=env)
    assert missing.returncode == 2
    assert missing.stderr.strip() == "avm: error: no secret named 'nope' (stored: exchange_key)"
    no_key = avm_cli("list", *state, env={k: v for k, v in env.items() if "AVM_MASTER" not in k})
    assert no_key.returncode == 2
    assert "no master key" in no_key.stderr
