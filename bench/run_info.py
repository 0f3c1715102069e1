"""What benchmarks share: the head of every JSON report (which benchmark, when, how and where
it ran) and running one measurement in a fresh interpreter.

Benchmarks run as scripts (``python bench/NAME.py``), so this module is imported as a sibling.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
from typing import Any

import psutil

__all__ = ["child_result", "machine", "run_info"]


def machine(**extra: Any) -> dict[str, Any]:
    """The machine: cores, memory, Python, platform and the load when the run started."""
    return {
        "cpus": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_1m_at_start": round(os.getloadavg()[0], 2),
        **extra,
    }


def run_info(benchmark: str, **machine_extra: Any) -> dict[str, Any]:
    """The head of a report: the benchmark's name, the date (UTC), the command and the machine."""
    return {
        "benchmark": benchmark,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "machine": machine(**machine_extra),
    }


def child_result(command: list[str], timeout_s: float, **labels: Any) -> dict[str, Any]:
    """Run ``command`` and return the JSON object on the last line it prints.

    On a timeout, a failure or no output: ``labels`` plus an ``error`` naming what happened and
    the last lines of its stderr, so one broken configuration does not end the whole run.
    """
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {**labels, "error": f"timed out after {timeout_s} s"}
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = proc.stderr.strip().splitlines()[-5:]
        return {**labels, "error": f"exit status {proc.returncode}: {' | '.join(tail)}"}
    result: dict[str, Any] = json.loads(lines[-1])
    return result
