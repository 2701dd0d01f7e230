"""An RBAC engine from the unified matcher API (Envoy's RoleBasedAccessControlMatcherEngineImpl):
the RBAC filters' ``matcher`` and ``shadow_matcher`` fields.

The matcher's actions are ``envoy.config.rbac.v3.Action`` (a name and ALLOW / DENY / LOG):

- the action of the match decides: ALLOW and LOG allow, DENY denies; its ``name`` is the
  effective policy (in the metadata and in a denial's response code details);
- no match (and no ``on_no_match``) denies;
- when some action of the matcher is LOG, the enforced engine sets ``envoy.common``'s
  ``access_log_hint`` to whether the matched action is LOG (nothing when nothing matched).

Inputs, read from an ``RbacRequest``, are those Envoy 1.40's RBAC filters accept:
``request_headers`` (HTTP only: every value of the header, joined with ``,``), and the
connection's ``destination_ip``, ``destination_port``, ``direct_source_ip`` (the peer) and
``server_name`` (the requested server name; none without one), the stream's ``source_ip``
and ``source_port`` (for HTTP, the remote address x-forwarded-for gives, as in Envoy), and
the TLS peer's ``uri_san`` / ``dns_san`` (joined with ``,``) and ``subject`` (none without a
peer certificate). A predicate's ``custom_match`` takes the IP range matcher
(``envoy.extensions.matching.input_matchers.ip.v3.Ip``, legatus.matcher.ip). Envoy refuses
``source_type``, and so does legatus; ``filter_state`` and ``dynamic_metadata`` inputs are
refused by legatus (not implemented yet).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from legatus.common.matchers import header_values
from legatus.config.errors import ConfigError, join_path
from legatus.config.supported import check_supported
from legatus.matcher import MatchTree, compile_matcher
from legatus.matcher.ip import CONFIG_TYPE as IP_MATCHER
from legatus.matcher.ip import compile_ip_matcher
from legatus.rbac.engine import ALLOW, DENY, LOG, compile_engine

_NETWORK = "envoy.extensions.matching.common_inputs.network.v3."
log = logging.getLogger("legatus.config")
_SSL = "envoy.extensions.matching.common_inputs.ssl.v3."
_ACTION = "envoy.config.rbac.v3.Action"


@dataclass(frozen=True, slots=True)
class RbacAction:
    name: str
    action: int


def _ip(attribute: str):
    def compile_input(proto, path: str):
        def read(request) -> str | None:
            ip = getattr(request, attribute)[0]
            return None if ip is None else str(ip)

        return read

    return compile_input


def _port(attribute: str):
    def compile_input(proto, path: str):
        def read(request) -> str | None:
            ip, port = getattr(request, attribute)
            return None if ip is None else str(port)

        return read

    return compile_input


def _server_name(proto, path: str):
    return lambda request: request.sni or None


def _peer(field: str):
    """An ssl input: the peer certificate's URI or DNS SANs (joined with ``,``) or subject;
    none without TLS, without a certificate, or when the field is empty."""

    def compile_input(proto, path: str):
        def read(request) -> str | None:
            ssl = request.ssl
            cert = None if ssl is None else ssl.peer_certificate
            if cert is None:
                return None
            value = getattr(cert, field)
            if not isinstance(value, str):
                value = ",".join(value)
            return value or None

        return read

    return compile_input


def _request_header(proto, path: str):
    check_supported(proto, ("header_name",), path, "HttpRequestHeaderMatchInput")
    name = proto.header_name.lower()
    if not name:
        raise ConfigError(join_path(path, "header_name"), "a header name is required")

    def read(request) -> str | None:
        values = header_values(request.headers, name)
        return ",".join(values) if values else None

    return read


NETWORK_INPUTS = {
    f"{_NETWORK}DestinationIPInput": _ip("local"),
    f"{_NETWORK}DestinationPortInput": _port("local"),
    # The stream's remote address (from x-forwarded-for, when trusted), as Envoy's.
    f"{_NETWORK}SourceIPInput": _ip("remote"),
    f"{_NETWORK}SourcePortInput": _port("remote"),
    f"{_NETWORK}DirectSourceIPInput": _ip("direct_remote"),
    f"{_NETWORK}ServerNameInput": _server_name,
    f"{_SSL}UriSanInput": _peer("uri_sans"),
    f"{_SSL}DnsSanInput": _peer("dns_sans"),
    f"{_SSL}SubjectInput": _peer("subject"),
}
HTTP_INPUTS = {
    **NETWORK_INPUTS,
    "envoy.type.matcher.v3.HttpRequestHeaderMatchInput": _request_header,
}


def _compile_action(proto, path: str) -> RbacAction:
    check_supported(proto, ("name", "action"), path, "Action")
    return RbacAction(proto.name, proto.action)


class MatcherEngine:
    """``decide(request)`` -> (allowed, effective policy or "", access-log hint or None)."""

    __slots__ = ("has_log", "tree")

    def __init__(self, tree: MatchTree, has_log: bool) -> None:
        self.tree = tree
        self.has_log = has_log

    def decide(self, request) -> tuple[bool, str, bool | None]:
        action = self.tree.match(request)
        if action is None:
            return False, "", None
        hint = (action.action == LOG) if self.has_log else None
        return action.action != DENY, action.name, hint


def compile_matcher_engine(proto, path: str, *, http: bool, store=None) -> MatcherEngine:
    """The ``xds.type.matcher.v3.Matcher`` at ``path``; ``http``: request headers may be
    matched (not by the network filter, which has none). ``store``: where the IP input
    matcher counts the values it could not parse (without one, it is refused)."""
    actions: list[RbacAction] = []

    def action(message, where: str) -> RbacAction:
        compiled = _compile_action(message, where)
        actions.append(compiled)
        return compiled

    tree = compile_matcher(
        proto,
        path,
        inputs=HTTP_INPUTS if http else NETWORK_INPUTS,
        actions={_ACTION: action},
        what="RBAC HTTP filter" if http else "RBAC network filter",
        input_matchers={}
        if store is None
        else {IP_MATCHER: lambda message, where: compile_ip_matcher(message, where, store)},
    )
    return MatcherEngine(tree, any(a.action == LOG for a in actions))


def compile_engine_of(proto, rules: str, matcher: str, path: str, *, http: bool, store):
    """An RBAC filter's engine from its ``matcher`` field (which wins over ``rules`` when
    both are set, with Envoy's warning), or from its ``rules`` field, or None."""
    if proto.HasField(matcher):
        if proto.HasField(rules):
            log.warning("RBAC %s are ignored when %s is configured (%s)", rules, matcher, path)
        where = join_path(path, matcher)
        return compile_matcher_engine(getattr(proto, matcher), where, http=http, store=store)
    if proto.HasField(rules):
        return compile_engine(getattr(proto, rules), join_path(path, rules))
    return None


__all__ = ["ALLOW", "DENY", "LOG", "MatcherEngine", "compile_engine_of", "compile_matcher_engine"]
