"""The HTTP side of a model provider: pooled requests, retries, and failures as avm.errors.

This module owns :class:`ModelTransport`, which every HTTP provider (OpenAI-compatible,
Anthropic) sends through. It keeps one :class:`~avm.llm.io.http.HttpPool` per event loop,
retries what a server says is temporary (429, 5xx, dropped connections) with exponential backoff
and jitter, honours ``Retry-After`` / ``retry-after-ms``, and is the boundary where HTTP failures
become :mod:`avm.errors`:

==============================================  ==============================================
what happened                                   what the caller gets
==============================================  ==============================================
429 until retries ran out                       :class:`~avm.errors.RateLimited`
no answer within ``timeout_s``                  :class:`~avm.errors.ModelTimeout`
5xx, connection refused or dropped              :class:`~avm.errors.ProviderUnavailable`
any other 4xx, malformed HTTP                   :class:`~avm.errors.ModelError`
==============================================  ==============================================

Error messages quote the server's own words (trimmed) and never the API key: any echo of the
secret is masked before it reaches an exception.

It also reads what every batch API hands back, a JSON line per answered request: requests go in
with custom ids from :func:`batch_custom_id`, and :meth:`ModelTransport.read_batch_results` maps
the result lines back to them, so a provider only says what one line means.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Final, NoReturn, Protocol, TypeVar
from urllib.parse import urlsplit

import msgspec

from avm.errors import ModelError, ModelTimeout, ProviderUnavailable, RateLimited
from avm.llm.io.http import (
    BodyWriter,
    HttpConnectError,
    HttpDisconnected,
    HttpError,
    HttpPool,
    HttpProtocolError,
    HttpResponse,
    HttpStream,
    HttpTimeout,
    Origin,
    request_head,
)
from avm.llm.types import ModelReply, ModelRequest

__all__ = ["DEFAULT_RETRY_STATUSES", "ModelTransport", "batch_custom_id", "parse_retry_after"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


class _BatchLine(Protocol):
    """A decoded line of a batch's results: whatever else it holds, it names its request."""

    @property
    def custom_id(self) -> str: ...


L = TypeVar("L", bound=_BatchLine)

DEFAULT_RETRY_STATUSES: Final = frozenset({429, 500, 502, 503, 504})
"""Statuses that say "try again later" rather than "your request is wrong"."""

# How much of a server's error text goes into an exception message.
_MAX_QUOTE_CHARS: Final = 300


class _ErrorDetail(msgspec.Struct):
    message: str | None = None


class _ErrorBody(msgspec.Struct):
    # {"error": {"message": ...}} (OpenAI, Anthropic) or {"error": "..."} (some servers)
    error: _ErrorDetail | str


_ERROR_DECODER: Final = msgspec.json.Decoder(_ErrorBody)
# What encoding a request body can raise (msgspec.EncodeError is a ValueError too).
_ENCODE_ERRORS: Final = (msgspec.EncodeError, TypeError, ValueError, OverflowError)


def batch_custom_id(index: int) -> str:
    """The custom id that the request at ``index`` of a batch is sent under."""
    return f"r{index}"


def _batch_index(custom_id: str) -> int:
    """The index that :func:`batch_custom_id` encoded, or -1 for an id it did not make."""
    digits = custom_id[1:]
    return int(digits) if custom_id[:1] == "r" and digits.isdigit() else -1


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date).

    Header names are looked up lower-cased, as :class:`~avm.llm.io.http.HttpPool` gives them.
    """
    millis = headers.get("retry-after-ms")
    if millis is not None:
        try:
            return max(0.0, float(millis) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class ModelTransport:
    """Requests to one model API, with retries and error translation.

    Args:
        base_url: the API root, e.g. ``https://api.openai.com/v1``; paths given to
            :meth:`head` are appended to it.
        timeout_s: limit for one attempt: the whole exchange for :meth:`call`; connecting and
            each gap between streamed bytes for :meth:`open_stream`.
        max_connections: size of the connection pool (requests beyond it queue).
        max_retries: extra attempts after a retryable status or a connection failure.
        backoff_base_s: first retry delay; it doubles per retry, with jitter, unless the server
            sent ``Retry-After``, which is honoured instead.
        backoff_max_s: longest single wait. A ``Retry-After`` longer than this is not waited
            out here: the call fails with :class:`RateLimited` carrying ``retry_after_s``, so a
            scheduler can park the agent instead of holding a connection slot.
        retry_on_timeout: also retry after a timeout. Off by default: the server may still be
            working on (and billing) the first attempt.
        retry_statuses: which HTTP statuses are retried.
        secret: the API key, masked wherever a server's words are quoted.
        name: how the owning provider presents itself (in "was closed" errors).
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeout_s: float = 60.0,
        max_connections: int = 256,
        max_retries: int = 2,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 30.0,
        retry_on_timeout: bool = False,
        retry_statuses: frozenset[int] = DEFAULT_RETRY_STATUSES,
        secret: str | None = None,
        name: str = "provider",
    ) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        if max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, got {max_connections}")
        if max_retries < 0:
            raise ValueError(f"max_retries must not be negative, got {max_retries}")
        self.base_url = base_url.rstrip("/")
        self.origin = Origin(self.base_url)
        self.base_path = urlsplit(self.base_url).path
        self.timeout_s = timeout_s
        self.max_connections = max_connections
        self.max_retries = max_retries
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.retry_on_timeout = retry_on_timeout
        self.retry_statuses = retry_statuses
        self.name = name
        # Every key this transport has sent: a rotated key may still be quoted back by a server
        # answering a request sent before the rotation.
        self._secrets: tuple[str, ...] = (secret,) if secret else ()
        self._pool: HttpPool | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    def head(
        self, method: str, path: str, headers: Mapping[str, str], *, absolute: bool = False
    ) -> bytes:
        """A pre-built request head for ``base_url + path`` (build once, send many).

        With ``absolute``, ``path`` is the whole target on the origin (a URL the server handed
        out, say), not relative to ``base_url``.
        """
        target = path if absolute else self.base_path + path
        return request_head(self.origin, method, target, headers)

    def target_of(self, url: str) -> str | None:
        """The path and query of ``url`` if it is on this transport's origin, else None."""
        parts = urlsplit(url)
        try:
            same = str(Origin(url)) == str(self.origin)
        except ValueError:
            return None
        if not same:
            return None
        return parts.path + (f"?{parts.query}" if parts.query else "")

    def url(self, path: str) -> str:
        return self.base_url + path

    @property
    def closed(self) -> bool:
        return self._closed

    # --- sending ---------------------------------------------------------------------------

    def _http(self) -> HttpPool:
        pool = self._pool
        # A pool whose loop still runs is this call's: checking that is an attribute read,
        # where asking asyncio for the running loop costs a system call (getpid) on 3.11.
        if pool is not None and self._loop is not None and self._loop.is_running():
            return pool
        loop = asyncio.get_running_loop()
        if pool is not None and self._loop is loop:
            return pool
        if self._closed:
            raise ModelError(f"{self.name} was closed; create a new provider")
        # Connections belong to the loop that opened them; a provider reused from another loop
        # (one per test, say) gets a fresh pool rather than dead connections.
        self._pool = pool = HttpPool(self.origin, max_connections=self.max_connections)
        self._loop = loop
        return pool

    async def call(
        self,
        head: bytes,
        body: bytes | BodyWriter,
        *,
        where: str,
        model: str,
        max_body: int = 64 * 1024 * 1024,
    ) -> HttpResponse:
        """Send with retries; return a 2xx response or raise a translated error.

        ``body`` may be a :data:`~avm.llm.io.http.BodyWriter`, run again for each attempt.
        """
        pool = self._http()
        attempt = 0
        while True:
            try:
                response = await pool.request(
                    head, body, timeout_s=self.timeout_s, max_body=max_body
                )
            except _ENCODE_ERRORS as exc:
                raise self._unencodable(exc, where, model) from exc
            except HttpError as exc:
                if await self._retry_failure(exc, attempt, where, model):
                    attempt += 1
                    continue
                raise  # _retry_failure raises; this keeps the type checker informed
            status = response.status
            if 200 <= status < 300:
                return response
            detail = self._error_text(response.body)
            retry_after = parse_retry_after(response.headers)
            if await self._retry_status(status, retry_after, attempt, model, where):
                attempt += 1
                continue
            self._raise_status(status, detail, where, model, attempt, retry_after)

    async def open_stream(
        self, head: bytes, body: bytes | BodyWriter, *, where: str, model: str
    ) -> HttpStream:
        """Send with retries until a 2xx head arrives; return the stream of its body."""
        pool = self._http()
        attempt = 0
        while True:
            try:
                stream = await pool.stream(
                    head,
                    body,
                    connect_timeout_s=self.timeout_s,
                    read_timeout_s=self.timeout_s,
                )
            except _ENCODE_ERRORS as exc:
                raise self._unencodable(exc, where, model) from exc
            except HttpError as exc:
                if await self._retry_failure(exc, attempt, where, model):
                    attempt += 1
                    continue
                raise
            status = stream.status
            if 200 <= status < 300:
                return stream
            try:
                raw = await stream.read()
            except HttpError:
                raw = b""
            finally:
                stream.close()
            detail = self._error_text(raw)
            retry_after = parse_retry_after(stream.headers)
            if await self._retry_status(status, retry_after, attempt, model, where):
                attempt += 1
                continue
            self._raise_status(status, detail, where, model, attempt, retry_after)

    @contextlib.contextmanager
    def reading(self, stream: HttpStream, *, where: str, model: str) -> Iterator[HttpStream]:
        """Read an open stream's body: HTTP failures on the way become avm.errors, and the
        stream is closed at the end (what every provider's streamed reply needs)."""
        try:
            yield stream
        except HttpTimeout as exc:
            raise ModelTimeout(
                self.describe(where, model, f"stream stalled for {self.timeout_s:g} s")
            ) from exc
        except HttpDisconnected as exc:
            raise ProviderUnavailable(
                self.describe(where, model, f"stream cut off: {exc}")
            ) from exc
        except HttpProtocolError as exc:
            raise ModelError(self.describe(where, model, f"unreadable stream: {exc}")) from exc
        except HttpError as exc:
            raise ProviderUnavailable(self.describe(where, model, f"stream failed: {exc}")) from exc
        finally:
            stream.close()

    def decode(
        self,
        decoder: msgspec.json.Decoder[T],
        data: bytes,
        *,
        where: str,
        model: str,
        what: str = "reply",
    ) -> T:
        """A reply's JSON (or one streamed event's); a malformed one is a ModelError quoting it."""
        try:
            return decoder.decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise ModelError(
                self.describe(where, model, f"malformed {what} ({exc}): {self.quote(data)}")
            ) from exc

    async def call_json(
        self,
        method: str,
        path: str,
        body: bytes,
        *,
        headers: Mapping[str, str],
        model: str,
        decoder: msgspec.json.Decoder[T],
    ) -> T:
        """Send one request (built afresh, for calls made now and then) and decode its reply."""
        where = f"{method} {self.url(path)}"
        response = await self.call(self.head(method, path, headers), body, where=where, model=model)
        return self.decode(decoder, response.body, where=where, model=model)

    # --- batch results ---------------------------------------------------------------------

    def read_batch_results(
        self,
        content: bytes,
        decoder: msgspec.json.Decoder[L],
        requests: Sequence[ModelRequest],
        answer: Callable[[L, str], ModelReply],
    ) -> dict[int, ModelReply | ModelError]:
        """What a batch's results file says for each request, by the request's index.

        Each line is decoded with ``decoder``; ``answer(line, model)`` turns one into the reply,
        or raises the ModelError the line reports. A line that cannot be read, or that names no
        request of this batch, is logged and skipped: its request is left without a result.
        """
        results: dict[int, ModelReply | ModelError] = {}
        for raw_line in content.splitlines():
            if not raw_line.strip():
                continue
            try:
                line = decoder.decode(raw_line)
            except (msgspec.DecodeError, msgspec.ValidationError):
                logger.warning("%s: unreadable batch result line skipped", self.base_url)
                continue
            index = _batch_index(line.custom_id)
            if not 0 <= index < len(requests):
                logger.warning("%s: batch result for unknown request skipped", self.base_url)
                continue
            try:
                results[index] = answer(line, requests[index].model)
            except ModelError as exc:
                results[index] = exc
        return results

    def batch_replies(
        self,
        requests: Sequence[ModelRequest],
        results: Mapping[int, ModelReply | ModelError],
        *,
        batch_id: str,
        missing: str,
    ) -> list[ModelReply | ModelError]:
        """One result per request, in order; a request without one gets a ModelError saying
        ``missing`` (why the batch left it unanswered)."""
        return [
            results.get(i) or ModelError(self.describe(f"batch {batch_id}", r.model, missing))
            for i, r in enumerate(requests)
        ]

    async def aclose(self) -> None:
        """Close the connection pool; the transport cannot be used afterwards."""
        self._closed = True
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.aclose()

    # --- retries ---------------------------------------------------------------------------

    async def _retry_failure(self, exc: HttpError, attempt: int, where: str, model: str) -> bool:
        """Back off and return True to retry, or raise the translated error."""
        if isinstance(exc, HttpTimeout):
            if self.retry_on_timeout and attempt < self.max_retries:
                await self._backoff(attempt, None, where, model, "timeout")
                return True
            raise ModelTimeout(
                self.describe(where, model, f"no answer within {self.timeout_s:g} s", attempt)
            ) from exc
        if isinstance(exc, (HttpConnectError, HttpDisconnected)):
            if attempt < self.max_retries:
                await self._backoff(attempt, None, where, model, type(exc).__name__)
                return True
            what = "cannot connect" if isinstance(exc, HttpConnectError) else "connection lost"
            raise ProviderUnavailable(
                self.describe(where, model, f"{what}: {self.mask(str(exc))}", attempt)
            ) from exc
        assert isinstance(exc, HttpProtocolError)
        raise ModelError(
            self.describe(where, model, f"bad HTTP reply: {self.mask(str(exc))}", attempt)
        ) from exc

    async def _retry_status(
        self, status: int, retry_after: float | None, attempt: int, model: str, where: str
    ) -> bool:
        if (
            status in self.retry_statuses
            and attempt < self.max_retries
            and (retry_after is None or retry_after <= self.backoff_max_s)
        ):
            await self._backoff(attempt, retry_after, where, model, f"HTTP {status}")
            return True
        return False

    async def _backoff(
        self, attempt: int, retry_after: float | None, where: str, model: str, reason: str
    ) -> None:
        if retry_after is not None:
            # Honour the server's word, plus a little jitter so a crowd of agents that were
            # throttled together does not come back in the same millisecond.
            delay = retry_after * (1.0 + 0.1 * random.random())
        else:
            ceiling = min(self.backoff_max_s, self.backoff_base_s * (2.0**attempt))
            delay = ceiling * (0.5 + 0.5 * random.random())
        logger.debug(
            "%s model %r: %s, retry %d/%d in %.3f s",
            where,
            model,
            reason,
            attempt + 1,
            self.max_retries,
            delay,
        )
        await asyncio.sleep(delay)

    # --- errors ----------------------------------------------------------------------------

    def _unencodable(self, exc: Exception, where: str, model: str) -> ModelError:
        # A body writer runs inside the pool; what it cannot encode (a tool schema holding a
        # set, say) is the request's fault, reported like any other bad request.
        what = f"cannot encode the request: {type(exc).__name__}: {self.mask(str(exc))}"
        return ModelError(self.describe(where, model, what))

    def _error_text(self, raw: bytes) -> str:
        """What the server said in an error reply: its error message, else its raw text."""
        try:
            parsed = _ERROR_DECODER.decode(raw)
        except (msgspec.DecodeError, msgspec.ValidationError):
            text = raw[: _MAX_QUOTE_CHARS * 4].decode(errors="replace").strip()
        else:
            error = parsed.error
            text = error if isinstance(error, str) else (error.message or "")
        return self.mask(text) or "(empty body)"

    def _raise_status(
        self,
        status: int,
        detail: str,
        where: str,
        model: str,
        attempt: int,
        retry_after: float | None,
    ) -> NoReturn:
        message = self.describe(where, model, f"HTTP {status}: {detail}", attempt)
        if status == 429:
            raise RateLimited(message, retry_after_s=retry_after)
        if status >= 500:
            raise ProviderUnavailable(message)
        raise ModelError(message)

    @staticmethod
    def describe(where: str, model: str, what: str, attempt: int = 0) -> str:
        """``where`` (method and URL), the model, what went wrong, and the attempts made."""
        tries = f" (after {attempt + 1} attempts)" if attempt else ""
        return f"{where} model {model!r}: {what}{tries}"

    def add_secret(self, secret: str) -> None:
        """Mask ``secret`` too (a rotated API key), in addition to those masked so far."""
        if secret and secret not in self._secrets:
            self._secrets = (*self._secrets, secret)

    def mask(self, text: str) -> str:
        """``text`` with any echo of the API key masked, trimmed to a quotable length."""
        # Some providers quote the key they rejected; it must not travel on in our messages.
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, "***")
        if len(text) > _MAX_QUOTE_CHARS:
            text = text[:_MAX_QUOTE_CHARS] + "..."
        return text

    def quote(self, payload: bytes) -> str:
        """The start of a reply body, masked, for an error message."""
        return self.mask(payload[: _MAX_QUOTE_CHARS * 4].decode(errors="replace"))
