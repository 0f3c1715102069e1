"""The errors of the memory subsystem, one branch of the tree in :mod:`avm.errors`.

::

    AvmError
    └── ContentError            something went wrong in the content store
        ├── InvalidRef          a value that is not a 32-byte BLAKE3 digest was used as a ref
        ├── ContentNotFound     no content with that hash is held in any tier
        ├── RefcountError       decref of content that is unknown or already at zero holds
        ├── ContentCorrupt      bytes read back from disk no longer match their hash
        └── StoreClosed         the store was used after ``close()``

Each message names the hash (hex) and says what to do, so a log line alone is enough to act on.
"""

from __future__ import annotations

from avm.errors import (
    ContentCorrupt,
    ContentError,
    ContentNotFound,
    InvalidRef,
    RefcountError,
    StoreClosed,
)

__all__ = [
    "ContentCorrupt",
    "ContentError",
    "ContentNotFound",
    "InvalidRef",
    "RefcountError",
    "StoreClosed",
]
