"""The prompt library: prompts registered by id, loaded by agents with ``LOAD_PROMPT``."""

from __future__ import annotations

from pathlib import Path

import msgspec

from avm.errors import ConfigError, NotFound
from avm.llm.tokens import estimate_tokens

__all__ = ["Prompt", "PromptLibrary"]


class Prompt(msgspec.Struct, frozen=True):
    """A loaded prompt. In a model input it becomes a system message; ``str()`` is its text."""

    id: str
    text: str
    tokens: int

    def __str__(self) -> str:
        return self.text


class PromptLibrary:
    def __init__(self) -> None:
        self._prompts: dict[str, Prompt] = {}

    def add(self, prompt_id: str, text: str) -> Prompt:
        if not prompt_id:
            raise ConfigError("a prompt id must not be empty")
        prompt = Prompt(prompt_id, text, estimate_tokens(text))
        self._prompts[prompt_id] = prompt
        return prompt

    def load_dir(self, directory: str | Path, suffixes: tuple[str, ...] = (".md", ".txt")) -> int:
        """Register every ``*.md``/``*.txt`` file in ``directory`` under its stem."""
        count = 0
        for path in sorted(Path(directory).iterdir()):
            if path.suffix in suffixes and path.is_file():
                self.add(path.stem, path.read_text(encoding="utf-8"))
                count += 1
        return count

    def get(self, prompt_id: str) -> Prompt:
        prompt = self._prompts.get(prompt_id)
        if prompt is None:
            raise NotFound(f"unknown prompt {prompt_id!r}")
        return prompt

    def __contains__(self, prompt_id: object) -> bool:
        return prompt_id in self._prompts
