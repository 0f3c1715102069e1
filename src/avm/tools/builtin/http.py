"""The ``http`` tool and HTTP service connectors: outbound calls to allow-listed hosts only.

An agent reads (``GET``/``HEAD``) with ``READ_FROM_TOOL`` and writes (``POST``, ``PUT``,
``PATCH``, ``DELETE``) with ``WRITE_TO_TOOL``; a write carries the call's idempotency key
(stable across replays) in an ``Idempotency-Key`` header, so a service that honours it applies a
retried order or post once.

Policy, enforced on every request before anything is sent:

* the URL's host must be in the tool's allow-list (``host``, ``host:port`` or ``*.domain``);
  redirects are not followed (a 3xx comes back as it is), so a listed host cannot bounce the
  request, and its credentials, somewhere else;
* ``https`` only, except to loopback hosts (local services and test doubles);
* secrets go in headers or query parameters as :class:`~avm.keys.SecretHandle` (or
  ``{"$secret": name}``) and are revealed here, checked against the grants for this tool;
* a timeout for the whole exchange, and at most ``max_response_bytes`` of body read;
* the whole result, headers included, passes through the redactor before the agent sees it
  (a service that echoes the request back would otherwise hand the key to the agent).

A *connector* (:class:`ServiceConnector`) is the same machinery with the URL, the routes and
the credentials fixed by whoever deploys the agent: the agent sends ``{"symbol": "BTC"}`` to the
``exchange`` tool and never sees a URL or a key. :func:`news_feed`, :func:`exchange` and
:func:`social` build the connectors of the example trading and social agent.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

import aiohttp
import msgspec
from yarl import URL

from avm.errors import CapabilityDenied, ConfigError, InvalidArgument, ToolError
from avm.keys.handles import SecretHandle, as_handle
from avm.keys.manager import KeyManager
from avm.tools.registry import Tool, ToolInvocation

__all__ = [
    "HttpClient",
    "HttpPolicy",
    "Route",
    "ServiceConnector",
    "connector_hosts",
    "connector_tool",
    "exchange",
    "http_tool",
    "news_feed",
    "social",
]

_READ_METHODS = frozenset({"GET", "HEAD"})
_WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_LOOPBACK_NAMES = frozenset({"localhost"})
_HEADER_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]{1,128}")
_SEGMENT = re.compile(r"[A-Za-z0-9._~:@\-]{1,128}")
_RESPONSE_HEADERS = ("content-type", "content-length", "location", "retry-after", "etag")


class HttpPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """Where an HTTP tool may go and how much it may take."""

    allowed_hosts: frozenset[str]
    timeout_s: float = 15.0
    max_response_bytes: int = 1 << 20
    max_request_bytes: int = 1 << 20

    def allows(self, url: URL) -> bool:
        host = (url.host or "").lower().rstrip(".")
        port = url.port
        for entry in self.allowed_hosts:
            pattern, want_port = _split_entry(entry.lower())
            if want_port and str(port) != want_port:
                continue
            if pattern.startswith("*."):
                if host.endswith(pattern[1:]) and host != pattern[2:]:
                    return True
            elif host == pattern:
                return True
        return False


def _split_entry(entry: str) -> tuple[str, str]:
    """``host``, ``host:port``, ``[v6]`` or ``[v6]:port`` → (host, port or "")."""
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        return host, rest.removeprefix(":")
    host, _, port = entry.partition(":")
    return host, port


def _is_loopback(host: str) -> bool:
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class HttpClient:
    """One pooled aiohttp session for all HTTP tools of a VM; close it with :meth:`aclose`."""

    def __init__(self, *, max_connections: int = 256) -> None:
        self._max = max_connections
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._max),
                trust_env=False,  # proxies from the environment would see every header
                auto_decompress=True,
            )
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class _Request(msgspec.Struct, frozen=True, kw_only=True):
    method: str
    url: URL
    headers: dict[str, str]
    params: dict[str, str]
    body: bytes | None
    content_type: str | None


class _Boundary:
    """What an HTTP tool needs at the edge: policy, the session, and the keys.

    ``declared`` narrows the policy for a copy of the tool confined to what one template
    declares (:meth:`confined`): a URL must then pass both.
    """

    def __init__(
        self,
        name: str,
        policy: HttpPolicy,
        client: HttpClient,
        keys: KeyManager | None,
        declared: tuple[str, HttpPolicy] | None = None,
    ) -> None:
        self.name = name
        self.policy = policy
        self.client = client
        self.keys = keys
        self.declared = declared

    def confined(self, name: str, hosts: frozenset[str], owner: str) -> _Boundary:
        """This boundary under ``name``, reaching only ``hosts`` (as template ``owner`` declared
        them) of those it may reach now; secrets are revealed for ``name``'s grants."""
        return _Boundary(
            name,
            self.policy,
            self.client,
            self.keys,
            (owner, msgspec.structs.replace(self.policy, allowed_hosts=hosts)),
        )

    def reveal(self, value: Any, invocation: ToolInvocation, where: str) -> str:
        handle = as_handle(value)
        if handle is None:
            if isinstance(value, (str, int, float)) and not isinstance(value, bool):
                return str(value)
            raise InvalidArgument(f"{where} must be a string, a number or a secret handle")
        if self.keys is None:
            raise ToolError(f"tool {self.name!r} has no key manager to resolve {handle}")
        return self.keys.reveal(handle, agent_id=invocation.agent_id, tool=self.name)

    def redact(self, value: Any) -> Any:
        return value if self.keys is None else self.keys.redact(value)

    def check_url(self, url: URL) -> None:
        if url.scheme not in ("http", "https") or not url.host:
            raise InvalidArgument(f"URL {url} must be an absolute http(s) URL")
        if not self.policy.allows(url):
            allowed = ", ".join(sorted(self.policy.allowed_hosts)) or "none"
            raise CapabilityDenied(
                f"tool {self.name!r} may not reach host {url.host!r} (allowed: {allowed})"
            )
        if self.declared is not None and not self.declared[1].allows(url):
            owner, declared = self.declared
            hosts = ", ".join(sorted(declared.allowed_hosts)) or "none"
            raise CapabilityDenied(
                f"tool {self.name!r} may not reach host {url.host!r}: template {owner!r} "
                f"declares only these hosts for it: {hosts}"
            )
        if url.scheme == "http" and not _is_loopback(url.host):
            raise CapabilityDenied(f"tool {self.name!r} sends to {url.host!r} over https only")
        if url.user or url.password:
            raise InvalidArgument("credentials in the URL are not allowed; use a secret header")

    async def send(self, request: _Request) -> dict[str, Any]:
        self.check_url(request.url)
        headers = dict(request.headers)
        if request.content_type is not None:
            headers["Content-Type"] = request.content_type
        if request.body is not None and len(request.body) > self.policy.max_request_bytes:
            raise InvalidArgument(
                f"request body is {len(request.body)} bytes; the limit is "
                f"{self.policy.max_request_bytes}"
            )
        url = request.url.update_query(request.params) if request.params else request.url
        limit = self.policy.max_response_bytes
        try:
            async with self.client.session().request(
                request.method,
                url,
                headers=headers,
                data=request.body,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=self.policy.timeout_s),
            ) as response:
                received = bytearray()
                while len(received) <= limit:  # read() may return less than asked: loop
                    chunk = await response.content.read(limit + 1 - len(received))
                    if not chunk:
                        break
                    received += chunk
                truncated = len(received) > limit
                body = bytes(received[:limit])
                status = response.status
                kept = {
                    k.lower(): v
                    for k, v in response.headers.items()
                    if k.lower() in _RESPONSE_HEADERS
                }
                content_type = response.headers.get("Content-Type", "")
                charset = response.charset or "utf-8"
        except TimeoutError:
            raise ToolError(
                f"tool {self.name!r}: {request.method} {request.url.host} timed out after "
                f"{self.policy.timeout_s} s"
            ) from None
        except aiohttp.ClientError as exc:
            # The message may quote the URL, query parameters included: redact it.
            raise ToolError(
                self.redact(
                    f"tool {self.name!r}: {request.method} {request.url.host} failed: {exc}"
                )
            ) from None
        result: dict[str, Any] = {"status": status, "headers": kept, "truncated": truncated}
        text = body.decode(charset, errors="replace")
        result["body"] = text
        if "json" in content_type and not truncated and text:
            with contextlib.suppress(ValueError):
                result["json"] = json.loads(text)
        return self.redact(result)  # type: ignore[no-any-return]


def _headers(
    boundary: _Boundary, raw: Any, invocation: ToolInvocation, where: str = "headers"
) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise InvalidArgument(f"{where} must be an object")
    out: dict[str, str] = {}
    for name, value in raw.items():
        if not isinstance(name, str) or _HEADER_NAME.fullmatch(name) is None:
            raise InvalidArgument(f"{name!r} is not a valid header name")
        text = boundary.reveal(value, invocation, f"header {name}")
        if "\r" in text or "\n" in text:
            raise InvalidArgument(f"header {name} contains a line break")
        out[name] = text
    return out


def _body(fields: Mapping[str, Any]) -> tuple[bytes | None, str | None]:
    if "json" in fields and "body" in fields:
        raise InvalidArgument("give either 'json' or 'body', not both")
    if "json" in fields:
        if _contains_handle(fields["json"]):
            raise InvalidArgument("secret handles go in headers or params, not in the body")
        return json.dumps(fields["json"]).encode(), "application/json"
    if "body" in fields:
        body = fields["body"]
        if not isinstance(body, str):
            raise InvalidArgument("body must be a string (or use 'json')")
        return body.encode(), None
    return None, None


def _contains_handle(value: Any) -> bool:
    if as_handle(value) is not None:
        return True
    if isinstance(value, dict):
        return any(_contains_handle(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_contains_handle(v) for v in value)
    return False


def http_tool(
    policy: HttpPolicy,
    *,
    client: HttpClient,
    keys: KeyManager | None = None,
    name: str = "http",
) -> Tool:
    """A general HTTP tool: GET/HEAD by reading, POST/PUT/PATCH/DELETE by writing."""
    return _http_tool(_Boundary(name, policy, client, keys))


_HTTP_FIELDS = frozenset({"method", "url", "headers", "params", "json", "body"})


def _http_request(
    boundary: _Boundary, payload: Any, methods: frozenset[str], inv: ToolInvocation
) -> _Request:
    name = boundary.name
    if isinstance(payload, str):
        payload = {"url": payload}
    if not isinstance(payload, dict):
        raise InvalidArgument(f"{name} takes an object with a 'url'")
    unknown = set(payload) - _HTTP_FIELDS
    if unknown:
        raise InvalidArgument(f"{name} does not take {', '.join(sorted(unknown))}")
    default = "GET" if methods is _READ_METHODS else "POST"
    method = str(payload.get("method", default)).upper()
    if method not in methods:
        raise InvalidArgument(
            f"method {method} is not allowed here; use one of {', '.join(sorted(methods))}"
        )
    raw_url = payload.get("url")
    if not isinstance(raw_url, str):
        raise InvalidArgument("url must be a string")
    try:
        url = URL(raw_url)
    except (ValueError, TypeError):
        raise InvalidArgument(f"{raw_url!r} is not a URL") from None
    boundary.check_url(url)  # before any secret is revealed for it
    params = _headers(boundary, payload.get("params"), inv, "params") if "params" in payload else {}
    headers = _headers(boundary, payload.get("headers"), inv)
    body, content_type = _body(payload)
    if body is not None and method in _READ_METHODS:
        raise InvalidArgument(f"{method} requests carry no body")
    if method in _WRITE_METHODS:
        headers.setdefault("Idempotency-Key", inv.idempotency_key)
    return _Request(
        method=method, url=url, headers=headers, params=params, body=body,
        content_type=content_type,
    )  # fmt: skip


def _http_tool(boundary: _Boundary) -> Tool:
    async def read(query: Any, *, invocation: ToolInvocation) -> dict[str, Any]:
        return await boundary.send(_http_request(boundary, query, _READ_METHODS, invocation))

    async def write(data: Any, *, invocation: ToolInvocation) -> dict[str, Any]:
        return await boundary.send(_http_request(boundary, data, _WRITE_METHODS, invocation))

    def confine(name: str, hosts: frozenset[str], owner: str) -> Tool:
        return _http_tool(boundary.confined(name, hosts, owner))

    policy = boundary.policy if boundary.declared is None else boundary.declared[1]
    hosts = ", ".join(sorted(policy.allowed_hosts)) or "no host"
    return Tool(
        name=boundary.name,
        description=f"HTTP requests to {hosts}. Read: GET/HEAD. Write: POST/PUT/PATCH/DELETE.",
        read=read,
        write=write,
        parameters={
            "type": "object",
            "properties": {
                "method": {"enum": sorted(_READ_METHODS | _WRITE_METHODS)},
                "url": {"type": "string", "format": "uri"},
                "headers": {
                    "type": "object",
                    "description": 'values: strings or {"$secret": NAME}',
                },
                "params": {"type": "object"},
                "json": {},
                "body": {"type": "string"},
            },
            "required": ["url"],
            "additionalProperties": False,
        },
        confine=confine,
    )


class Route(msgspec.Struct, frozen=True, kw_only=True):
    """One endpoint of a connector: ``path`` may hold ``{field}`` placeholders."""

    method: str
    path: str
    query: tuple[str, ...] = ()
    body: tuple[str, ...] = ()
    required: tuple[str, ...] = ()

    def fields(self) -> set[str]:
        return set(re.findall(r"{(\w+)}", self.path)) | set(self.query) | set(self.body)


class ServiceConnector(msgspec.Struct, frozen=True, kw_only=True):
    """A service agents reach by name, with its URL, routes and credentials fixed by the host.

    ``auth`` maps a header name to the secret (handle) that fills it; the secret must be
    granted for this connector's tool name.
    """

    name: str
    base_url: str
    description: str = ""
    read: Route | None = None
    write: Route | None = None
    auth: dict[str, SecretHandle] = {}
    extra_hosts: tuple[str, ...] = ()

    def hosts(self) -> frozenset[str]:
        url = URL(self.base_url)
        if url.host is None:
            raise InvalidArgument(
                f"connector {self.name!r}: base_url {self.base_url!r} has no host"
            )
        return frozenset({f"{url.host}:{url.port}", *self.extra_hosts})


def connector_tool(
    connector: ServiceConnector,
    *,
    client: HttpClient,
    keys: KeyManager | None,
    timeout_s: float = 15.0,
    max_response_bytes: int = 1 << 20,
) -> Tool:
    """The :class:`~avm.tools.registry.Tool` for a service connector."""
    policy = HttpPolicy(
        allowed_hosts=connector.hosts(), timeout_s=timeout_s, max_response_bytes=max_response_bytes
    )
    return _connector_tool(connector, _Boundary(connector.name, policy, client, keys))


def _route_request(
    connector: ServiceConnector, boundary: _Boundary, route: Route, payload: Any,
    inv: ToolInvocation,
) -> _Request:  # fmt: skip
    if payload is None:
        payload = {}
    if not isinstance(payload, dict):
        raise InvalidArgument(f"{connector.name} takes an object")
    unknown = set(payload) - route.fields()
    if unknown:
        raise InvalidArgument(
            f"{connector.name} does not take {', '.join(sorted(unknown))} "
            f"(it takes {', '.join(sorted(route.fields())) or 'nothing'})"
        )
    missing = [f for f in route.required if f not in payload]
    if missing:
        raise InvalidArgument(f"{connector.name} needs {', '.join(missing)}")

    def fill(match: re.Match[str]) -> str:
        value = payload.get(match.group(1))
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        # One plain path segment: nothing that could climb or add segments to the route.
        if not isinstance(value, str) or not _SEGMENT.fullmatch(value) or value in {".", ".."}:
            raise InvalidArgument(
                f"{connector.name}: {match.group(1)} must be a plain name "
                "(letters, digits, '.', '_', '-', ':', '@', '~')"
            )
        return value

    base = URL(connector.base_url)
    path = re.sub(r"{(\w+)}", fill, route.path)
    url = base.with_path(base.path.rstrip("/") + path, encoded=True)
    boundary.check_url(url)  # before any secret is revealed for it
    params = {k: str(payload[k]) for k in route.query if k in payload}
    body_fields = {k: payload[k] for k in route.body if k in payload}
    body = json.dumps(body_fields).encode() if route.body else None
    headers = _headers(boundary, dict(connector.auth), inv)
    if route.method.upper() in _WRITE_METHODS:
        headers["Idempotency-Key"] = inv.idempotency_key
    return _Request(
        method=route.method.upper(), url=url, headers=headers, params=params, body=body,
        content_type="application/json" if body is not None else None,
    )  # fmt: skip


def _connector_tool(connector: ServiceConnector, boundary: _Boundary) -> Tool:
    async def call(route: Route | None, payload: Any, invocation: ToolInvocation) -> Any:
        assert route is not None
        request = _route_request(connector, boundary, route, payload, invocation)
        result = await boundary.send(request)
        if result["status"] >= 400:
            raise ToolError(
                f"{connector.name}: {route.method} {route.path} answered {result['status']}: "
                f"{str(result['body'])[:200]}"
            )
        return result.get("json", result["body"])

    read_route, write_route = connector.read, connector.write

    async def read(query: Any, *, invocation: ToolInvocation) -> Any:
        return await call(read_route, query, invocation)

    async def write(data: Any, *, invocation: ToolInvocation) -> Any:
        return await call(write_route, data, invocation)

    def confine(name: str, hosts: frozenset[str], owner: str) -> Tool:
        # A connector's URL is fixed: a template that does not declare its host could make no
        # call at all, which is a mistake to report when the template is registered.
        base = URL(connector.base_url)
        if not HttpPolicy(allowed_hosts=hosts).allows(base):
            raise ConfigError(
                f"tool {connector.name!r} reaches {base.host}:{base.port}, which template "
                f"{owner!r} does not declare in its hosts ({', '.join(sorted(hosts)) or 'none'})"
            )
        return _connector_tool(connector, boundary.confined(name, hosts, owner))

    properties: dict[str, Any] = {
        f: {"type": "string"}
        for route in (read_route, write_route)
        if route is not None
        for f in sorted(route.fields())
    }
    return Tool(
        name=boundary.name,
        description=connector.description,
        read=read if read_route is not None else None,
        write=write if write_route is not None else None,
        parameters={"type": "object", "properties": properties, "additionalProperties": False},
        confine=confine,
    )


def _auth(secret: str | SecretHandle, header: str, template: str) -> dict[str, SecretHandle]:
    handle = secret if isinstance(secret, SecretHandle) else SecretHandle(secret)
    return {header: handle.framed(template)}


def news_feed(
    base_url: str, *, secret: str | SecretHandle = "news-api-key", name: str = "news"
) -> ServiceConnector:
    """Headlines by topic: read ``{"topic": "BTC", "limit": 10}`` → ``GET /v1/news``."""
    return ServiceConnector(
        name=name,
        base_url=base_url,
        description="Latest news headlines for a topic or token symbol.",
        read=Route(method="GET", path="/v1/news", query=("topic", "limit"), required=("topic",)),
        auth=_auth(secret, "X-Api-Key", "{}"),
    )


def exchange(
    base_url: str, *, secret: str | SecretHandle = "exchange-api-key", name: str = "exchange"
) -> ServiceConnector:
    """Prices and orders: read ``{"symbol": "BTC"}``; write an order (deduplicated on replay)."""
    return ServiceConnector(
        name=name,
        base_url=base_url,
        description="Exchange: read a symbol's price; write {symbol, side, quantity} to order.",
        read=Route(method="GET", path="/v1/prices/{symbol}", required=("symbol",)),
        write=Route(
            method="POST",
            path="/v1/orders",
            body=("symbol", "side", "quantity", "limit_price"),
            required=("symbol", "side", "quantity"),
        ),
        auth=_auth(secret, "Authorization", "Bearer {}"),
    )


def social(
    base_url: str, *, secret: str | SecretHandle = "social-token", name: str = "social"
) -> ServiceConnector:
    """Posting: write ``{"text": ...}`` → ``POST /v1/posts``; read recent posts."""
    return ServiceConnector(
        name=name,
        base_url=base_url,
        description="Social network: write {text} to post; read {limit} recent posts.",
        read=Route(method="GET", path="/v1/posts", query=("limit",)),
        write=Route(method="POST", path="/v1/posts", body=("text", "reply_to"), required=("text",)),
        auth=_auth(secret, "Authorization", "Bearer {}"),
    )


def connector_hosts(connectors: Iterable[ServiceConnector]) -> frozenset[str]:
    """Every host the given connectors reach (for an operator's firewall list)."""
    return frozenset(h for c in connectors for h in c.hosts())
