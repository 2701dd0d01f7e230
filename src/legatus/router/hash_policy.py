"""A route's ``hash_policy``: the 64-bit request hash that RING_HASH and MAGLEV balance on.

Compiled once from ``RouteAction.hash_policy`` (or a consistent-hashing load-balancing
policy's own ``hash_policy``) into a ``HashPolicy``; per request the router wraps the request
in a ``HashContext`` and hands it to ``ThreadLocalCluster.choose_host``. Only the hashing
balancers ask the context for its hash, so a route's hash policy costs nothing on a round
robin cluster, and a cookie is only generated when a hash is really needed (as in Envoy).

Envoy's rules, kept exactly so that a request lands on the same host under both:

- every method yields an xxHash64 (seed 0) of one value, or nothing:
  ``header`` (all values of the header, each optionally regex-rewritten, sorted, hashed in
  a chain: each value's hash is the seed of the next), ``cookie`` (the value of the first
  cookie with that name, quotes stripped), ``connection_properties.source_ip`` (the
  downstream IP without port), ``query_parameter`` (the first value, not percent-decoded),
  ``filter_state`` (an object in the stream's filter state that has a ``hash()`` method);
- hashes combine as ``hash = rotl(hash, 1) ^ new``; a ``terminal`` method that leaves a hash
  stops the evaluation;
- a ``cookie`` with a ``ttl`` and no such cookie in the request generates one: its value is
  the 16 hex digits of xxHash64("<remote ip:port><local ip:port>") and the response gets
  ``set-cookie: <name>="<value>"; Max-Age=<ttl>; Path=<path>; <attributes>; HttpOnly``
  (no Max-Age for a zero ttl, no Path when none is set). ``HashContext.set_cookies`` holds
  those header values for the router to add to the response.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import xxhash

from legatus.common.matchers import ascii_lower, header_values
from legatus.common.regex import RegexRewrite, compile_rewrite
from legatus.config.errors import ConfigError, join_path
from legatus.config.supported import check_supported

__all__ = ["HashContext", "HashPolicy", "compile_hash_policy", "xxhash64"]

_MASK = (1 << 64) - 1


def xxhash64(value: str | bytes, seed: int = 0) -> int:
    """Envoy's HashUtil::xxHash64 (XXH64 of the UTF-8 bytes)."""
    if isinstance(value, str):
        value = value.encode()
    return xxhash.xxh64_intdigest(value, seed)


# Methods: each is a callable (context) -> int | None, plus a terminal flag.


class _Header:
    __slots__ = ("name", "rewrite")

    def __init__(self, name: str, rewrite: RegexRewrite | None) -> None:
        self.name = name
        self.rewrite = rewrite

    def __call__(self, context: HashContext) -> int | None:
        values = header_values(context.headers, self.name)
        if not values:
            return None
        if self.rewrite is not None:
            values = [self.rewrite.apply(v) for v in values]
        # The same hash whatever the order of the values (Envoy sorts them bytewise).
        values = sorted(v.encode() for v in values)
        h = 0
        for v in values:
            h = xxhash.xxh64_intdigest(v, h)
        return h


class _Cookie:
    __slots__ = ("attributes", "name", "path", "ttl")

    def __init__(
        self, name: str, path: str, ttl: int | None, attributes: tuple[tuple[str, str], ...]
    ) -> None:
        self.name = name
        self.path = path
        self.ttl = ttl
        self.attributes = attributes

    def __call__(self, context: HashContext) -> int | None:
        value = cookie_value(context.headers, self.name)
        if not value and self.ttl is not None:
            value = context.add_cookie(self.name, self.path, self.ttl, self.attributes)
            return xxhash64(value)
        if value:
            return xxhash64(value)
        return None


def _source_ip(context: HashContext) -> int | None:
    ip = _ip_of(context.remote_address)
    return xxhash64(ip) if ip else None


class _QueryParameter:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, context: HashContext) -> int | None:
        path = context.headers.get(":path")
        if not path:
            return None
        start = path.find("?")
        if start < 0:
            return None
        name = self.name
        for param in path[start + 1 :].split("&"):
            key, eq, value = param.partition("=")
            if key == name:
                return xxhash64(value if eq else "")
        return None


class _FilterState:
    __slots__ = ("key",)

    def __init__(self, key: str) -> None:
        self.key = key

    def __call__(self, context: HashContext) -> int | None:
        state = context.filter_state
        obj = state.get(self.key) if state else None
        method = getattr(obj, "hash", None)
        if method is None:
            return None
        value = method()
        return None if value is None else value & _MASK


@dataclass(frozen=True, slots=True)
class HashPolicy:
    """The compiled hash policies of one route, in order: (method, terminal) pairs."""

    methods: tuple[tuple[Callable[[HashContext], int | None], bool], ...]

    def generate_hash(self, context: HashContext) -> int | None:
        h = None
        for method, terminal in self.methods:
            new = method(context)
            if new is not None:
                # Rotating the previous value keeps two identical policies from cancelling.
                h = new if h is None else (((h << 1) | (h >> 63)) & _MASK) ^ new
            if terminal and h is not None:
                break
        return h


class HashContext:
    """What the balancer may hash for one request; built by the router per request.

    ``compute_hash_key`` evaluates the route's policy at most once per request (retries
    reuse the hash); a consistent-hashing policy's own ``hash_policy``, passed as
    ``override``, wins over the route's, as in Envoy. ``set_cookies`` collects the
    ``set-cookie`` values of generated cookies for the response.
    """

    __slots__ = ("_computed", "_hash", "filter_state", "headers", "local_address", "policy",
                 "remote_address", "set_cookies")  # fmt: skip

    def __init__(
        self,
        policy: HashPolicy | None,
        headers,
        *,
        remote_address: str | None = None,
        local_address: str | None = None,
        filter_state: dict | None = None,
    ) -> None:
        self.policy = policy
        self.headers = headers
        self.remote_address = remote_address  # "ip:port" / "[v6]:port", as Envoy prints them
        self.local_address = local_address
        self.filter_state = filter_state
        self.set_cookies: list[str] = []
        self._computed = False
        self._hash: int | None = None

    @classmethod
    def for_stream(cls, policy: HashPolicy | None, headers, stream_info) -> HashContext:
        """The context of an HTTP stream: addresses and filter state from its StreamInfo."""
        return cls(
            policy,
            headers,
            remote_address=stream_info.downstream_remote_address,
            local_address=stream_info.downstream_local_address,
            filter_state=stream_info.filter_state,
        )

    def compute_hash_key(self, override: HashPolicy | None = None) -> int | None:
        if not self._computed:
            policy = override if override is not None else self.policy
            self._hash = policy.generate_hash(self) if policy is not None else None
            self._computed = True
        return self._hash

    def add_cookie(
        self, name: str, path: str, ttl: int, attributes: tuple[tuple[str, str], ...] = ()
    ) -> str:
        """Generate the cookie value for this connection and remember its set-cookie."""
        if self.remote_address is None or self.local_address is None:
            return ""
        value = f"{xxhash64(self.remote_address + self.local_address):016x}"
        self.set_cookies.append(set_cookie_value(name, value, path, ttl, attributes))
        return value


def set_cookie_value(
    name: str, value: str, path: str, max_age: int, attributes: tuple[tuple[str, str], ...] = ()
) -> str:
    """Envoy's makeSetCookieValue with httponly."""
    out = [f'{name}="{value}"']
    if max_age:
        out.append(f"Max-Age={max_age}")
    if path:
        out.append(f"Path={path}")
    for attr_name, attr_value in attributes:
        out.append(f"{attr_name}={attr_value}" if attr_value else attr_name)
    out.append("HttpOnly")
    return "; ".join(out)


def cookie_value(headers, name: str) -> str:
    """The first ``name`` cookie of the request (Envoy's parseCookieValue), "" if none."""
    for header in header_values(headers, "cookie"):
        for part in header.split(";"):
            eq = part.find("=")
            if eq < 0:
                continue
            if part[:eq].lstrip(" ") == name:
                v = part[eq + 1 :]
                if len(v) >= 2 and v[0] == '"' and v[-1] == '"':
                    v = v[1:-1]
                return v
    return ""


def _ip_of(address: str | None) -> str:
    if not address:
        return ""
    if address.startswith("["):
        return address[1 : address.find("]")]
    host, colon, _ = address.rpartition(":")
    return host if colon else address


# Compilation ---------------------------------------------------------------------------

_COOKIE_FIELDS = ("name", "ttl", "path", "attributes")


def compile_hash_policy(protos, path: str) -> HashPolicy | None:
    """Compile a repeated ``RouteAction.HashPolicy``; None when the list is empty."""
    methods = []
    for i, proto in enumerate(protos):
        ppath = f"{path}[{i}]"
        which = proto.WhichOneof("policy_specifier")
        if which is None:
            raise ConfigError(ppath, "hash policy not set")
        spath = join_path(ppath, which)
        spec = getattr(proto, which)
        if which == "header":
            check_supported(spec, ("header_name", "regex_rewrite"), spath, "Header")
            if not spec.header_name:
                raise ConfigError(join_path(spath, "header_name"), "header_name must be set")
            rewrite = (
                compile_rewrite(spec.regex_rewrite, join_path(spath, "regex_rewrite"))
                if spec.HasField("regex_rewrite")
                else None
            )
            method = _Header(ascii_lower(spec.header_name), rewrite)
        elif which == "cookie":
            check_supported(spec, _COOKIE_FIELDS, spath, "Cookie")
            if not spec.name:
                raise ConfigError(join_path(spath, "name"), "name must be set")
            ttl = spec.ttl.seconds if spec.HasField("ttl") else None
            attributes = tuple((a.name, a.value) for a in spec.attributes)
            method = _Cookie(spec.name, spec.path, ttl, attributes)
        elif which == "connection_properties":
            check_supported(spec, ("source_ip",), spath, "ConnectionProperties")
            if not spec.source_ip:
                continue  # Envoy adds no method (and so ignores ``terminal``)
            method = _source_ip
        elif which == "query_parameter":
            check_supported(spec, ("name",), spath, "QueryParameter")
            if not spec.name:
                raise ConfigError(join_path(spath, "name"), "name must be set")
            method = _QueryParameter(spec.name)
        else:  # filter_state
            check_supported(spec, ("key",), spath, "FilterState")
            if not spec.key:
                raise ConfigError(join_path(spath, "key"), "key must be set")
            method = _FilterState(spec.key)
        methods.append((method, proto.terminal))
    if not methods and not len(protos):
        return None
    return HashPolicy(tuple(methods))
