"""Configuration of a VM: gas prices, model definitions and runtime limits.

Prices and rates are configuration, not code: every gas formula of the instruction set reads its
unit prices from :class:`GasPrices`, and every model's per-token prices from its
:class:`ModelConfig`. All of it is plain msgspec structs, so a configuration loads from TOML, JSON
or YAML without glue.
"""

from __future__ import annotations

import re
from typing import Any, Literal

import msgspec

from avm.errors import ConfigError

__all__ = [
    "Durability",
    "GasPrices",
    "IOPolicy",
    "ModelConfig",
    "VMConfig",
    "parse_bytes",
]

Durability = Literal["durable", "relaxed"]


class GasPrices(msgspec.Struct, frozen=True, kw_only=True):
    """Unit prices of the instruction set, in gas.

    Defaults follow the instruction set's gas table; a field is the price of one unit of the
    quantity its name ends in (``_per_byte``, ``_per_token``, ``_per_row``...), or a flat price.
    """

    load_prompt_per_token: float = 0.02
    load_model_per_mb: float = 0.1
    swarm_connect: float = 20.0
    swarm_fetch_per_peer: float = 5.0
    load_state: float = 10.0
    save_state: float = 15.0
    reset_state: float = 5.0
    get_tools_list: float = 20.0
    read_tool_per_byte: float = 0.01
    write_tool_per_byte: float = 0.02
    sql_execute_per_op: float = 0.01
    sql_fetch_per_row: float = 0.1
    kv_store_per_byte: float = 0.01
    kv_fetch_per_byte: float = 0.005
    map_model_per_item: float = 1.0
    reduce_model_per_item: float = 1.0
    gpu_per_second: float = 1.0
    release_gpu: float = 10.0
    list_gpus: float = 15.0
    check_gpu_load: float = 10.0

    def __post_init__(self) -> None:
        for field in self.__struct_fields__:
            value = getattr(self, field)
            if not value >= 0:  # also rejects NaN
                raise ConfigError(f"gas price {field} must be a non-negative number, got {value!r}")


class IOPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """How calls to one model are paced, cached, shared, failed over and batched.

    Limits (None: no limit):
        rpm: requests per minute admitted upstream.
        tpm: tokens per minute (prompt estimate plus ``max_tokens``, trued up with usage).
        concurrency: requests in flight at once.
        burst_s: depth of the rpm/tpm buckets, in seconds of rate.
        tpm_refund: true the tpm bucket up to reported usage after each call (for providers
            whose limiter does, like Anthropic; OpenAI counts the admission estimate).

    Cache and coalescing (both apply to temperature-0 requests unless a request says
    otherwise):
        cache: keep replies and answer repeats from memory.
        cache_ttl_s: how long a cached reply is valid (None: until evicted).
        cache_size: how many replies are kept.
        coalesce: identical concurrent requests share one upstream call.

    Failover:
        fallback: name of another configured model that answers when this one fails.
        breaker_failures: consecutive service failures that open the circuit.
        breaker_cooldown_s: how long it stays open before a probe.

    Batch lane (for ``deferrable`` requests, on providers with a batch API):
        batch: send deferrable requests through the batch API.
        batch_max_size: requests per batch.
        batch_max_wait_s: how long a batch collects requests.
        batch_poll_s: how often a submitted batch is polled.
    """

    rpm: float | None = None
    tpm: float | None = None
    concurrency: int | None = None
    burst_s: float = 1.0
    tpm_refund: bool = False
    cache: bool = True
    cache_ttl_s: float | None = 3600.0
    cache_size: int = 10_000
    coalesce: bool = True
    fallback: str | None = None
    breaker_failures: int = 5
    breaker_cooldown_s: float = 30.0
    batch: bool = True
    batch_max_size: int = 1000
    batch_max_wait_s: float = 60.0
    batch_poll_s: float = 30.0

    def __post_init__(self) -> None:
        for name in ("rpm", "tpm"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ConfigError(f"{name} must be positive, got {value!r}")
        if self.concurrency is not None and self.concurrency < 1:
            raise ConfigError(f"concurrency must be at least 1, got {self.concurrency}")
        if not self.burst_s > 0:
            raise ConfigError(f"burst_s must be positive, got {self.burst_s!r}")
        if self.cache_ttl_s is not None and not self.cache_ttl_s > 0:
            raise ConfigError(f"cache_ttl_s must be positive or None, got {self.cache_ttl_s!r}")
        if self.cache_size < 1 or self.batch_max_size < 1 or self.breaker_failures < 1:
            raise ConfigError("cache_size, batch_max_size and breaker_failures must be >= 1")
        if self.breaker_cooldown_s < 0 or self.batch_max_wait_s < 0:
            raise ConfigError("breaker_cooldown_s and batch_max_wait_s must not be negative")
        if not self.batch_poll_s > 0:
            raise ConfigError(f"batch_poll_s must be positive, got {self.batch_poll_s!r}")

    @classmethod
    def from_config(cls, config: object, **overrides: Any) -> IOPolicy:
        """The policy named by ``config``'s fields of the same names, then ``overrides``."""
        values: dict[str, Any] = {}
        for name in cls.__struct_fields__:
            if hasattr(config, name):
                values[name] = getattr(config, name)
        values.update(overrides)
        try:
            return msgspec.convert(values, cls)
        except msgspec.ValidationError as exc:
            raise ConfigError(f"model I/O policy: {exc}") from None


class ModelConfig(IOPolicy, frozen=True, kw_only=True):
    """A model as agents name it, and how to reach it.

    ``provider`` picks the backend (``openai`` for any OpenAI-compatible endpoint); ``model`` is
    the provider's own name for it. Prices are gas per token. The I/O fields (pacing, cache,
    coalescing, failover, the batch lane) are :class:`IOPolicy`'s.
    """

    provider: str
    model: str
    base_url: str | None = None
    api_key_env: str | None = None
    price_in: float = 0.001
    price_out: float = 0.002
    max_tokens: int = 256
    timeout_s: float = 60.0
    max_connections: int = 256

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.price_in < 0 or self.price_out < 0:
            raise ConfigError(f"model {self.model!r}: prices must be non-negative")
        if self.max_tokens <= 0:
            raise ConfigError(f"model {self.model!r}: max_tokens must be positive")

    @classmethod
    def parse(cls, spec: str, **overrides: object) -> ModelConfig:
        """Build a config from a ``provider:model`` string, e.g. ``openai:gpt-4o-mini``."""
        provider, sep, model = spec.partition(":")
        if not sep or not provider or not model:
            raise ConfigError(f"model spec {spec!r} must look like 'provider:model'")
        return msgspec.convert({"provider": provider, "model": model, **overrides}, cls)


class VMConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Runtime limits and policies of one VM."""

    state_dir: str = ".avm"
    # Journal, KV, execution state, inbox and agent records: SQLite in state_dir by default, or
    # a "postgresql://..." URL. Agents' own SQL databases stay in state_dir either way.
    store: str | None = None
    durability: Durability = "durable"
    max_running: int = 256
    mailbox_capacity: int = 64
    default_budget: float | None = None
    prices: GasPrices = GasPrices()
    # The content store's RAM budget ("2GB", "512MiB" or bytes); beyond it content moves to
    # compressed RAM, then to disk. None: no budget.
    memory: str | int | None = None
    # Seconds an agent may wait on a message, timer or reply before it is passivated (its
    # task dropped, a small record kept; woken through the journal). None: never.
    passivate_after: float | None = None
    recover: bool = True  # on start, resume the agents the last host left unfinished
    sql_max_steps: int = 5_000_000
    sql_max_open: int = 1024

    def __post_init__(self) -> None:
        if self.max_running < 1:
            raise ConfigError("max_running must be at least 1")
        if self.mailbox_capacity < 1:
            raise ConfigError("mailbox_capacity must be at least 1")
        if self.passivate_after is not None and not self.passivate_after > 0:
            raise ConfigError(
                f"passivate_after must be a positive number of seconds or None, "
                f"got {self.passivate_after!r}"
            )
        if self.durability not in ("durable", "relaxed"):
            raise ConfigError(f"durability must be 'durable' or 'relaxed', got {self.durability!r}")


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}


def parse_bytes(text: str | int) -> int:
    """Parse a size such as ``2GB``, ``512MiB`` or ``1048576`` into bytes."""
    if isinstance(text, int):
        return text
    match = _SIZE.match(text)
    if match is None:
        raise ConfigError(f"cannot read {text!r} as a size; write e.g. '2GB' or '512MiB'")
    number, unit = float(match.group(1)), (match.group(2) or "").lower()
    scale = _UNITS[unit[:1]]
    if "i" in unit:
        scale = 1 << (10 * "kmgt".index(unit[0]) + 10)
    return int(number * scale)
