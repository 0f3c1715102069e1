"""What the VM's hand-written coroutines share (``WaitingInstruction``, ``AgentRun``).

Both implement the coroutine protocol themselves (``send``, ``throw``, ``close``) so that an
agent parked in them keeps no Python frame alive; ``throw`` receives its exception in any of
the forms the protocol allows.
"""

from __future__ import annotations

from typing import Any

__all__ = ["thrown"]


def thrown(typ: Any, val: Any = None, tb: Any = None) -> BaseException:
    """The exception a ``throw(typ, val, tb)`` call means: an instance, or one made from its
    type and value, with ``tb`` as its traceback if given."""
    exc: BaseException = typ if val is None and isinstance(typ, BaseException) else (val or typ())
    if tb is not None:
        exc = exc.with_traceback(tb)
    return exc
