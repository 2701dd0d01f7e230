"""``Permission`` and ``Principal`` compiled into trees of matchers (Envoy's RBAC matchers).

Each matcher has ``matches(request) -> bool`` over an ``RbacRequest``. Semantics, as in
Envoy 1.40:

- ``and_rules``/``and_ids``: all must match; ``or_rules``/``or_ids``: one must; ``any``;
  ``not_rule``/``not_id`` negate;
- ``header``: a HeaderMatcher on the request headers (a connection has none);
- ``url_path``: a StringMatcher on ``:path`` without its query and fragment (no ``:path``,
  as on a connection: no match);
- ``destination_ip`` / ``destination_port`` / ``destination_port_range``: the local
  address of the connection (``start <= port < end``);
- ``source_ip``: the connection's peer; ``direct_remote_ip``: the downstream direct remote
  address; ``remote_ip``: the downstream remote address (after ``x-forwarded-for`` for HTTP);
  an address of the other IP version never matches;
- ``requested_server_name``: a StringMatcher on the requested server name (the SNI the TLS
  handshake or the TLS inspector saw), empty without one;
- ``authenticated``: a TLS connection; with ``principal_name``, one of the peer
  certificate's URI SANs, else one of its DNS SANs, else its subject (RFC 2253, empty
  without a certificate) must match. A plain-text connection never matches.

``metadata``, ``filter_state``, ``sourced_metadata``, ``matcher``, ``uri_template`` and
``custom`` are refused by field path.
"""

from __future__ import annotations

from legatus.common.cidr import compile_cidr_range
from legatus.common.matchers import HeaderMatcher, StringMatcher
from legatus.config.errors import ConfigError, join_path
from legatus.config.supported import check_supported
from legatus.router.matchers import path_for_matching

_PERMISSION_FIELDS = (
    "and_rules", "or_rules", "any", "header", "url_path", "destination_ip",
    "destination_port", "destination_port_range", "not_rule", "requested_server_name",
)  # fmt: skip
_PRINCIPAL_FIELDS = (
    "and_ids", "or_ids", "any", "authenticated", "source_ip", "direct_remote_ip",
    "remote_ip", "header", "url_path", "not_id",
)  # fmt: skip


class Matcher:
    __slots__ = ()

    def matches(self, request) -> bool:  # pragma: no cover - every subclass overrides
        raise NotImplementedError


class Always(Matcher):
    __slots__ = ()

    def matches(self, request) -> bool:
        return True


class Never(Matcher):
    __slots__ = ()

    def matches(self, request) -> bool:
        return False


class And(Matcher):
    __slots__ = ("matchers",)

    def __init__(self, matchers: tuple[Matcher, ...]) -> None:
        self.matchers = matchers

    def matches(self, request) -> bool:
        return all(m.matches(request) for m in self.matchers)


class Or(Matcher):
    __slots__ = ("matchers",)

    def __init__(self, matchers: tuple[Matcher, ...]) -> None:
        self.matchers = matchers

    def matches(self, request) -> bool:
        return any(m.matches(request) for m in self.matchers)


class Not(Matcher):
    __slots__ = ("matcher",)

    def __init__(self, matcher: Matcher) -> None:
        self.matcher = matcher

    def matches(self, request) -> bool:
        return not self.matcher.matches(request)


class Header(Matcher):
    __slots__ = ("matcher",)

    def __init__(self, matcher: HeaderMatcher) -> None:
        self.matcher = matcher

    def matches(self, request) -> bool:
        return self.matcher.matches(request.headers)


class UrlPath(Matcher):
    __slots__ = ("matcher",)

    def __init__(self, matcher: StringMatcher) -> None:
        self.matcher = matcher

    def matches(self, request) -> bool:
        path = request.path
        return path is not None and self.matcher.matches(path_for_matching(path))


class Ip(Matcher):
    """A CIDR range on one of the request's addresses (``attribute``)."""

    __slots__ = ("attribute", "network")

    def __init__(self, attribute: str, network) -> None:
        self.attribute = attribute
        self.network = network

    def matches(self, request) -> bool:
        ip = getattr(request, self.attribute)[0]
        return ip is not None and ip.version == self.network.version and ip in self.network


class Port(Matcher):
    __slots__ = ("end", "start")

    def __init__(self, start: int, end: int) -> None:
        self.start = start
        self.end = end

    def matches(self, request) -> bool:
        ip, port = request.local
        return ip is not None and self.start <= port < self.end


class ServerName(Matcher):
    __slots__ = ("matcher",)

    def __init__(self, matcher: StringMatcher) -> None:
        self.matcher = matcher

    def matches(self, request) -> bool:
        return self.matcher.matches(request.sni)


class Authenticated(Matcher):
    """A TLS connection, whose peer certificate's URI SANs, then DNS SANs, then subject has
    one value ``principal_name`` matches (any TLS connection without ``principal_name``)."""

    __slots__ = ("matcher",)

    def __init__(self, matcher: StringMatcher | None) -> None:
        self.matcher = matcher

    def matches(self, request) -> bool:
        ssl = request.ssl
        if ssl is None:
            return False
        matcher = self.matcher
        if matcher is None:
            return True
        cert = ssl.peer_certificate
        if cert is None:
            return matcher.matches("")  # no certificate: an empty subject
        return (
            any(matcher.matches(uri) for uri in cert.uri_sans)
            or any(matcher.matches(dns) for dns in cert.dns_sans)
            or matcher.matches(cert.subject)
        )


def compile_permission(proto, path: str) -> Matcher:
    check_supported(proto, _PERMISSION_FIELDS, path, "Permission")
    which = proto.WhichOneof("rule")
    if which is None:
        raise ConfigError(join_path(path, "rule"), "a permission rule is required")
    where = join_path(path, which)
    if which in ("and_rules", "or_rules"):
        rules = proto.and_rules.rules if which == "and_rules" else proto.or_rules.rules
        compiled = tuple(compile_permission(r, f"{where}.rules[{i}]") for i, r in enumerate(rules))
        return And(compiled) if which == "and_rules" else Or(compiled)
    if which == "any":
        return Always()
    if which == "not_rule":
        return Not(compile_permission(proto.not_rule, where))
    if which == "header":
        return Header(HeaderMatcher(proto.header, where))
    if which == "url_path":
        return _url_path(proto.url_path, where)
    if which == "destination_ip":
        return Ip("local", compile_cidr_range(proto.destination_ip, where))
    if which == "destination_port":
        return Port(proto.destination_port, proto.destination_port + 1)
    if which == "destination_port_range":
        r = proto.destination_port_range
        return Port(r.start, r.end)
    return ServerName(StringMatcher(proto.requested_server_name, where))


def compile_principal(proto, path: str) -> Matcher:
    check_supported(proto, _PRINCIPAL_FIELDS, path, "Principal")
    which = proto.WhichOneof("identifier")
    if which is None:
        raise ConfigError(join_path(path, "identifier"), "a principal identifier is required")
    where = join_path(path, which)
    if which in ("and_ids", "or_ids"):
        ids = proto.and_ids.ids if which == "and_ids" else proto.or_ids.ids
        compiled = tuple(compile_principal(p, f"{where}.ids[{i}]") for i, p in enumerate(ids))
        return And(compiled) if which == "and_ids" else Or(compiled)
    if which == "any":
        return Always()
    if which == "not_id":
        return Not(compile_principal(proto.not_id, where))
    if which == "header":
        return Header(HeaderMatcher(proto.header, where))
    if which == "url_path":
        return _url_path(proto.url_path, where)
    if which == "authenticated":
        check_supported(proto.authenticated, ("principal_name",), where, "Authenticated")
        name = proto.authenticated
        return Authenticated(
            StringMatcher(name.principal_name, join_path(where, "principal_name"))
            if name.HasField("principal_name")
            else None
        )
    attribute = {"source_ip": "source", "direct_remote_ip": "direct_remote", "remote_ip": "remote"}
    return Ip(attribute[which], compile_cidr_range(getattr(proto, which), where))


def _url_path(proto, path: str) -> Matcher:
    check_supported(proto, ("path",), path, "PathMatcher")
    return UrlPath(StringMatcher(proto.path, join_path(path, "path")))
