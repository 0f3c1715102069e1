"""The machinery behind :class:`avm.llm.providers.llamacpp.LlamaCppProvider`: a local GGUF model
run in-process by llama.cpp, with continuous batching across agents.

- :mod:`~avm.llm.local.model_file`: where the bundled SmolLM2-135M-Instruct GGUF is installed.
- :mod:`~avm.llm.local.model`: one loaded model and context (tokenizer, chat template, logs).
- :mod:`~avm.llm.local.engine`: the decode thread, batching every active sequence per step.
- :mod:`~avm.llm.local.prefix_cache`: shared prompt prefixes kept evaluated in the KV cache.
- :mod:`~avm.llm.local.sampling`: greedy and temperature/top-p sampling, seeded per request.
- :mod:`~avm.llm.local.completion_text`: UTF-8 reassembly, stop strings, streaming hold-back.
- :mod:`~avm.llm.local.requantize`: an optional, cached Q8_0 (or BF16/F16) copy of the weights.

:mod:`~avm.llm.local.model_file`, :mod:`~avm.llm.local.prefix_cache` and
:mod:`~avm.llm.local.completion_text` are pure Python; :mod:`~avm.llm.local.sampling` needs
numpy; the rest need ``llama-cpp-python``. This package itself imports nothing.
"""
