"""What every benchmark's JSON report opens with: which benchmark, when, how and where it ran.

Benchmarks run as scripts (``python bench/NAME.py``), so this module is imported as a sibling.
"""

from __future__ import annotations

import datetime
import os
import platform
import sys
from typing import Any

import psutil

__all__ = ["machine", "run_info"]


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
