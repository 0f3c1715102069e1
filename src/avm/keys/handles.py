"""Secret handles: what an agent holds instead of a secret.

A :class:`SecretHandle` names a secret and, optionally, how its value is framed where it is
used (``"Bearer {}"``). It carries no part of the value, so whatever happens to the handle
(printed, logged, put in a prompt, journaled, sent over the HTTP API) reveals nothing. Only
the tool boundary turns a handle into a value, and only for tools the secret's grants allow
(:meth:`avm.keys.KeyManager.reveal`).

Its msgpack/JSON form is ``{"$secret": NAME}`` (plus ``"template"`` when it is not the plain
``"{}"``), the same form the HTTP API and template programs use to write a handle, so a handle
that went through the journal or over the wire is recognised again by :func:`as_handle`.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from avm.errors import InvalidArgument

__all__ = ["SECRET_NAME", "SecretHandle", "as_handle", "check_secret_name"]

SECRET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}")
_PLACEHOLDER = "{}"


def check_secret_name(name: object) -> str:
    if not isinstance(name, str) or SECRET_NAME.fullmatch(name) is None:
        raise InvalidArgument(
            f"secret name {name!r} is not valid: use 1-128 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )
    return name


class SecretHandle(msgspec.Struct, frozen=True, omit_defaults=True):
    """An opaque reference to a named secret, safe to hold, print and journal."""

    name: str = msgspec.field(name="$secret")
    template: str = _PLACEHOLDER

    def __post_init__(self) -> None:
        check_secret_name(self.name)
        if self.template.count(_PLACEHOLDER) != 1:
            raise InvalidArgument(
                f"secret template {self.template!r} must contain '{{}}' exactly once, "
                "where the value goes (e.g. 'Bearer {}')"
            )

    def __repr__(self) -> str:
        if self.template == _PLACEHOLDER:
            return f"SecretHandle({self.name!r})"
        return f"SecretHandle({self.name!r}, template={self.template!r})"

    def __str__(self) -> str:
        return f"[secret:{self.name}]"

    def framed(self, template: str) -> SecretHandle:
        """The same secret framed differently, e.g. ``handle.framed("Bearer {}")``."""
        return SecretHandle(self.name, template)

    def render(self, value: str) -> str:
        # str.replace, not str.format: a template must not be able to reach attributes.
        return self.template.replace(_PLACEHOLDER, value, 1)


def as_handle(value: Any) -> SecretHandle | None:
    """The handle ``value`` is, or stands for in wire form (``{"$secret": name}``), else None."""
    if isinstance(value, SecretHandle):
        return value
    if isinstance(value, dict) and "$secret" in value and set(value) <= {"$secret", "template"}:
        return SecretHandle(
            check_secret_name(value["$secret"]), str(value.get("template", _PLACEHOLDER))
        )
    return None
