"""The redactor: raw values and their encodings, many secrets, and the logging filter."""

from __future__ import annotations

import base64
import logging
import time
import urllib.parse

from hypothesis import given
from hypothesis import strategies as st

from avm.keys import RedactingFilter, Redactor

SECRET = "sk-live-9f8e7d6c5b4a3210-ZYXWVUT"


def test_raw_and_encoded_forms_are_redacted() -> None:
    r = Redactor({"api": SECRET.encode()})
    raw = SECRET.encode()
    forms = {
        "raw": SECRET,
        "hex": raw.hex(),
        "HEX": raw.hex().upper(),
        "base64": base64.b64encode(raw).decode(),
        "urlsafe": base64.urlsafe_b64encode(raw).decode(),
        "url": urllib.parse.quote(SECRET + "/+ &", safe=""),
    }
    for name, form in forms.items():
        out = r.redact_text(f"before {form} after")
        assert "[REDACTED:api]" in out, name
        assert SECRET not in out, name
        assert form not in out, name


def test_secret_with_url_special_characters() -> None:
    value = "p@ss w/rd+key&more=1"
    r = Redactor({"pw": value.encode()})
    for form in (value, urllib.parse.quote(value, safe=""), urllib.parse.quote_plus(value)):
        assert r.redact_text(f"x={form};") == "x=[REDACTED:pw];"


@given(
    prefix=st.binary(max_size=7),
    suffix=st.binary(max_size=7),
    secret=st.binary(min_size=7, max_size=64),
)
def test_base64_of_embedded_secret_is_found_at_any_alignment(
    prefix: bytes, suffix: bytes, secret: bytes
) -> None:
    r = Redactor({"s": secret})
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        encoded = encode(prefix + secret + suffix).decode()
        assert r.contains_secret(encoded)
        assert "[REDACTED:s]" in r.redact_text(encoded)


def test_bytes_and_nested_values() -> None:
    r = Redactor({"k": SECRET.encode()})
    value = {"a": [SECRET, (b"x" + SECRET.encode(),)], SECRET: {"n": 1}}
    assert r.redact(value) == {
        "a": ["[REDACTED:k]", (b"x[REDACTED:k]",)],
        "[REDACTED:k]": {"n": 1},
    }


def test_longest_secret_wins_and_changes_apply() -> None:
    r = Redactor({"short": b"abcd1234", "long": b"abcd1234efgh5678"})
    assert r.redact_text("abcd1234efgh5678 abcd1234") == "[REDACTED:long] [REDACTED:short]"
    r.discard("long")
    assert r.redact_text("abcd1234efgh5678") == "[REDACTED:short]efgh5678"
    r.set("new", b"zzzz9999")
    assert r.redact_text("zzzz9999") == "[REDACTED:new]"


def test_many_secrets_stay_fast() -> None:
    secrets = {f"s{i}": f"key-{i:05d}-{i * 7919 % 100003:06d}-tail".encode() for i in range(2000)}
    r = Redactor(secrets)
    text = ("lorem ipsum dolor sit amet " * 4000) + secrets["s1234"].decode()
    r.redact_text("warm up")  # compile once
    started = time.perf_counter()
    out = r.redact_text(text)
    elapsed = time.perf_counter() - started
    assert out.endswith("[REDACTED:s1234]")
    # 108 KB against 2,000 secrets (about 20,000 patterns) in well under a second: the trie
    # keeps the per-position work independent of the number of secrets.
    assert elapsed < 0.5, elapsed


def test_logging_filter_redacts_message_args_and_exceptions() -> None:
    r = Redactor({"api": SECRET.encode()})
    records: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(self.format(record))

    handler = Collect()
    handler.addFilter(RedactingFilter(r))
    logger = logging.getLogger("avm.test.redact")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("calling with %s", SECRET)
        try:
            raise ValueError(f"bad token {base64.b64encode(SECRET.encode()).decode()}")
        except ValueError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    joined = "\n".join(records)
    assert "calling with [REDACTED:api]" in joined
    assert "bad token [REDACTED:api]" in joined
    assert SECRET not in joined
