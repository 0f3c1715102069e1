"""Keys: the master key, encrypted secrets, grants, handles and redaction.

Agents never hold a secret; they hold a :class:`SecretHandle`. The VM turns a handle into its
value only at the edge of the process (an HTTP header, a sandboxed process's environment) and
only for the tools the secret was granted to; everything that comes back (tool results, model
outputs, log records, error messages) passes through the :class:`Redactor`. Public API::

    km = KeyManager.open(state_dir)              # master key from AVM_MASTER_KEY / a 0600 key file
    handle = km.set("exchange-key", "s3cr3t...")  # encrypted in STATE_DIR/keys.db
    km.grant("exchange-key", tool="exchange", definition="trader")
    km.reveal(handle, agent_id="trader-1", tool="exchange")   # the tool boundary only
    km.redactor.redact_text("... s3cr3t ...")                 # "... [REDACTED:exchange-key] ..."
    km.rotate_key_file(path)                                  # re-encrypt under a new key
"""

from avm.keys.handles import SecretHandle, as_handle
from avm.keys.manager import DB_NAME, Grant, KeyManager, PrincipalKind, SecretInfo
from avm.keys.master import (
    KEY_ENV,
    KEY_FILE_ENV,
    MasterKey,
    MasterKeyError,
    load_master_key,
    read_key_file,
    write_key_file,
)
from avm.keys.redact import RedactingFilter, Redactor

__all__ = [
    "DB_NAME",
    "KEY_ENV",
    "KEY_FILE_ENV",
    "Grant",
    "KeyManager",
    "MasterKey",
    "MasterKeyError",
    "PrincipalKind",
    "RedactingFilter",
    "Redactor",
    "SecretHandle",
    "SecretInfo",
    "as_handle",
    "load_master_key",
    "read_key_file",
    "write_key_file",
]
