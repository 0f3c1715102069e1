"""The model linker: names agents use, resolved lazily to a provider and its prices.

Agents say ``"default"`` or ``"analyst"``; the linker maps the name to a :class:`ModelConfig`
(which provider, which of its models, prices per token, limits) and, on first use, to a provider
instance. Models on the same endpoint share one provider, and so one connection pool. What
``RUN_MODEL`` calls is that provider wrapped by the I/O manager (:mod:`avm.llm.io`): pacing,
caching, coalescing, failover and the deferrable batch lane, as the model's config asks.

A model's API key comes from one of two places. ``ModelConfig.api_key_env`` names an environment
variable (for a host's own models). A :class:`ModelKey` names a secret of the key manager (what
a template's ``models: NAME: {secret: ...}`` declares): the secret is revealed only here, when
the provider for the model is built, and only if its grant covers the model
(:func:`model_tool`), so the value goes from the encrypted store straight into the provider's
request headers and nowhere an agent, the journal or a log can see it. When that secret
changes in the key manager (a new value, a removal, a grant given or revoked), the linker
reveals it again into the providers that carry it, so a rotated key is sent from the next
request on and a revoked one no longer is.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from avm.config import ModelConfig
from avm.errors import CapabilityDenied, ConfigError, NotFound
from avm.keys.handles import SecretHandle
from avm.keys.manager import KeyManager
from avm.llm.io import IOManager
from avm.llm.provider import ModelProvider
from avm.llm.providers.anthropic import DEFAULT_BASE_URL, AnthropicProvider, anthropic_factory

__all__ = [
    "KEYED_PROVIDERS",
    "KeyedProvider",
    "LinkedModel",
    "ModelKey",
    "ModelLinker",
    "model_tool",
]

log = logging.getLogger(__name__)

ProviderFactory = Callable[[ModelConfig], ModelProvider]


class KeyedProvider(ModelProvider, Protocol):
    """A provider whose API key can be replaced while it runs (a rotated secret)."""

    def set_api_key(self, api_key: str | None) -> None: ...


KeyedFactory = Callable[[ModelConfig, str], KeyedProvider]


def model_tool(name: str) -> str:
    """The tool name a secret is granted for so that model ``name`` may send it as its key."""
    return "model:" + name


@dataclass(frozen=True, slots=True)
class ModelKey:
    """A model's API key held by the key manager: ``secret``, granted to ``definition``."""

    keys: KeyManager
    secret: str
    definition: str

    def reveal(self, model: str) -> str:
        return self.keys.reveal_to_definition(
            SecretHandle(self.secret), definition=self.definition, tool=model_tool(model)
        )


def _local_factory(config: ModelConfig) -> ModelProvider:
    # Imported on first use: loading llama.cpp's shared library is not free.
    from avm.llm.providers.llamacpp import local_factory

    return local_factory(config)


def _openai_factory(config: ModelConfig) -> ModelProvider:
    api_key = None
    if config.api_key_env is not None:
        api_key = os.environ.get(config.api_key_env)
        if api_key is None:
            raise ConfigError(
                f"model {config.model!r}: environment variable {config.api_key_env} is not set"
            )
    return _openai_keyed(config, api_key)


def _openai_keyed(config: ModelConfig, api_key: str | None) -> KeyedProvider:
    from avm.llm.providers.openai_compat import OpenAICompatProvider

    if config.base_url is None:
        raise ConfigError(f"model {config.model!r}: an 'openai' provider needs a base_url")
    return OpenAICompatProvider(
        base_url=config.base_url,
        api_key=api_key,
        timeout_s=config.timeout_s,
        max_connections=config.max_connections,
    )


def _anthropic_keyed(config: ModelConfig, api_key: str) -> KeyedProvider:
    return AnthropicProvider(
        config.base_url or DEFAULT_BASE_URL,
        api_key=api_key,
        timeout_s=config.timeout_s,
        max_connections=config.max_connections,
    )


_KEYED: dict[str, KeyedFactory] = {"openai": _openai_keyed, "anthropic": _anthropic_keyed}
#: The providers whose API key can come from the key manager (a :class:`ModelKey`).
KEYED_PROVIDERS = tuple(sorted(_KEYED))


@dataclass(slots=True)
class LinkedModel:
    name: str
    config: ModelConfig
    provider: ModelProvider


class ModelLinker:
    def __init__(self) -> None:
        self._configs: dict[str, ModelConfig] = {}
        self._linked: dict[str, LinkedModel] = {}
        self._providers: dict[tuple[str, str | None, str | None], ModelProvider] = {}
        self._keys: dict[str, ModelKey] = {}  # models whose API key is a key-manager secret
        # Providers built with a key-manager secret: the key and model it was revealed for.
        self._keyed: dict[tuple[str, str | None, str], tuple[KeyedProvider, ModelKey, str]] = {}
        self._watched: list[KeyManager] = []  # key managers that tell us of their changes
        self._factories: dict[str, ProviderFactory] = {
            "openai": _openai_factory,
            "anthropic": anthropic_factory,
            "local": _local_factory,
        }
        self._raw: dict[str, ModelProvider] = {}  # given instances, by model name
        self._io = IOManager(config_of=self.config, provider_of=self._raw_provider)

    def add(
        self,
        name: str,
        config: ModelConfig | str,
        *,
        provider: ModelProvider | None = None,
        key: ModelKey | None = None,
    ) -> None:
        """Name a model. ``config`` may be a ``provider:model`` string; ``provider`` an instance
        to use instead of building one from the config; ``key`` the key-manager secret its
        provider authenticates with (instead of ``config.api_key_env``)."""
        if isinstance(config, str):
            config = ModelConfig.parse(config)
        if key is not None and (provider is not None or config.provider not in _KEYED):
            raise ConfigError(
                f"model {name!r}: only a model the linker builds on a provider that takes an API "
                f"key ({', '.join(KEYED_PROVIDERS)}) can have its key from a secret"
            )
        self._configs[name] = config
        self._linked.pop(name, None)
        self._raw.pop(name, None)
        self._keys.pop(name, None)
        self._io.forget(name)
        if provider is not None:
            self._raw[name] = provider
        if key is not None:
            self._keys[name] = key

    def key(self, name: str) -> ModelKey | None:
        """The key-manager secret model ``name`` authenticates with, if it has one."""
        return self._keys.get(name)

    def add_factory(self, provider_name: str, factory: ProviderFactory) -> None:
        self._factories[provider_name] = factory

    def __contains__(self, name: object) -> bool:
        return name in self._configs

    def names(self) -> list[str]:
        return sorted(self._configs)

    def config(self, name: str) -> ModelConfig:
        config = self._configs.get(name)
        if config is None:
            known = ", ".join(sorted(self._configs)) or "none"
            raise NotFound(f"unknown model {name!r} (configured: {known})")
        return config

    def resolve(self, name: str) -> LinkedModel:
        linked = self._linked.get(name)
        if linked is None:
            linked = self._linked[name] = LinkedModel(
                name, self.config(name), self._io.provider(name)
            )
        return linked

    def raw(self, name: str) -> ModelProvider:
        """A model's provider without the I/O manager's wrappers (to load weights, say)."""
        return self._raw_provider(name)

    def _raw_provider(self, name: str) -> ModelProvider:
        """The unwrapped provider of a model: given, or built once per endpoint."""
        given = self._raw.get(name)
        if given is not None:
            return given
        config = self.config(name)
        secret = self._keys.get(name)
        if secret is not None:
            # One provider per endpoint and secret, built on the model's first call: the
            # value leaves the key manager only into that provider's request headers.
            api_key = secret.reveal(name)  # checks this model's grant even for a shared one
            slot = (config.provider, config.base_url, secret.secret)
            built = self._keyed.get(slot)
            if built is None:
                if secret.keys not in self._watched:
                    secret.keys.watch(self._secret_changed)
                    self._watched.append(secret.keys)
                keyed = _KEYED[config.provider](config, api_key)
                built = self._keyed[slot] = (keyed, secret, name)
            return built[0]
        key = (config.provider, config.base_url, config.api_key_env)
        provider = self._providers.get(key)
        if provider is None:
            factory = self._factories.get(config.provider)
            if factory is None:
                raise ConfigError(
                    f"model {name!r}: no provider {config.provider!r} "
                    f"(known: {', '.join(sorted(self._factories))})"
                )
            provider = self._providers[key] = factory(config)
        return provider

    def _secret_changed(self, name: str) -> None:
        """Reveal secret ``name`` again into every provider built with it (see the module
        docstring); one whose grant is gone sends no key from now on."""
        for provider, key, model in self._keyed.values():
            if key.secret != name:
                continue
            try:
                api_key: str | None = key.reveal(model)
            except (CapabilityDenied, NotFound) as exc:
                log.warning("model %s: its API key is no longer available: %s", model, exc)
                api_key = None
            provider.set_api_key(api_key)

    async def aclose(self) -> None:
        for keys in self._watched:
            keys.unwatch(self._secret_changed)
        self._watched.clear()
        await self._io.aclose()
        seen: set[int] = set()
        keyed = [provider for provider, _, _ in self._keyed.values()]
        for provider in [*self._providers.values(), *keyed, *self._raw.values()]:
            if id(provider) not in seen:
                seen.add(id(provider))
                await provider.aclose()
        self._providers.clear()
        self._keyed.clear()
        self._raw.clear()
        self._linked.clear()
