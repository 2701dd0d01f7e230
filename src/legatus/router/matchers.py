"""Route matching: ``envoy.config.route.v3.RouteMatch`` compiled into one predicate.

A route matches when its path specifier matches and every other condition holds. Semantics
are Envoy 1.40's (``config_impl.cc``), checked against the real Envoy with requests:

- paths are matched without their query string and fragment (up to the first ``?`` or
  ``#``); with ``ignore_path_parameters_in_path_matching`` also without ``;`` parameters;
- ``prefix`` and ``path`` honour ``case_sensitive`` (default true; false folds ASCII);
  ``safe_regex`` ignores ``case_sensitive`` and must match the whole path (RE2);
- ``path_separated_prefix`` matches the prefix itself or the prefix followed by ``/``
  (``/api`` matches ``/api``, ``/api/``, ``/api/x``, ``/api?x``, not ``/apix``);
- ``headers``: every HeaderMatcher must match (see ``legatus.common.matchers``);
- ``query_parameters``: every matcher must match the first value of its (case-sensitive,
  not percent-decoded) parameter; ``a`` alone is the value ``""``; ``present_match: true``
  or no specifier needs the parameter present, ``present_match: false`` needs it absent;
- ``grpc``: ``content-type`` is ``application/grpc`` or starts with ``application/grpc+``
  (the method does not matter);
- ``connect_matcher``: the request is a CONNECT (which has no path; the other conditions
  still apply); a CONNECT is matched by such routes only;
- ``runtime_fraction``: the runtime's ``feature_enabled(runtime_key, default_value,
  random_value)``: the value of ``runtime_key`` (a fraction, or an integer percentage; above
  100 always matches) replaces ``default_value``; then ``random_value % denominator <
  numerator``. The runtime is read per request, so ``/runtime_modify`` takes effect at once.
  Compiled without a runtime (or with an empty key), ``default_value`` alone decides.

Everything is compiled into closures at config time; matching a request allocates nothing
except for query-string parsing on routes that match on query parameters.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

from legatus.common.matchers import HeaderMatcher, StringMatcher, ascii_lower
from legatus.common.regex import Regex, compile_regex_matcher
from legatus.config.errors import ConfigError, join_path
from legatus.config.supported import check_supported

__all__ = ["PathKind", "PathMatcher", "RouteMatcher", "compile_route_match", "path_for_matching"]

# Predicate over (headers, path without query) -> bool.
Condition = Callable[[object, str], bool]

_ROUTE_MATCH_FIELDS = (
    "prefix",
    "path",
    "safe_regex",
    "path_separated_prefix",
    "connect_matcher",
    "case_sensitive",
    "runtime_fraction",
    "headers",
    "query_parameters",
    "grpc",
)
_DENOMINATORS = {0: 100, 1: 10_000, 2: 1_000_000}
_GRPC = "application/grpc"


def path_for_matching(path: str, ignore_path_parameters: bool = False) -> str:
    """The part of ``:path`` that path specifiers see (Envoy's removeQueryAndFragment)."""
    if ignore_path_parameters:
        i = path.find(";")
        if i >= 0:
            path = path[:i]
    i = path.find("?")
    if i >= 0:
        path = path[:i]
    i = path.find("#")
    if i >= 0:
        path = path[:i]
    return path


class PathKind(enum.Enum):
    PREFIX = "prefix"
    PATH = "path"
    SAFE_REGEX = "safe_regex"
    PATH_SEPARATED_PREFIX = "path_separated_prefix"
    CONNECT = "connect_matcher"  # CONNECT requests only (they have no path)


@dataclass(frozen=True, slots=True, kw_only=True)
class PathMatcher:
    """A route's path specifier; ``text`` is the prefix/path, or the regex pattern."""

    kind: PathKind
    text: str
    case_sensitive: bool = True
    regex: Regex | None = None

    def matches(self, path: str) -> bool:
        """``path`` is already stripped by ``path_for_matching``."""
        kind = self.kind
        if kind is PathKind.SAFE_REGEX:
            return self.regex.full_match(path)  # type: ignore[union-attr]
        if kind is PathKind.CONNECT:
            return False  # a connect_matcher matches a method, not a path
        text = self.text
        if not self.case_sensitive:
            path = ascii_lower(path)
            text = ascii_lower(text)
        if kind is PathKind.PREFIX:
            return path.startswith(text)
        if kind is PathKind.PATH:
            return path == text
        return path.startswith(text) and (len(path) == len(text) or path[len(text)] == "/")

    def matched_length(self, path: str) -> int:
        """How much of the full ``:path`` a prefix rewrite replaces (Envoy's matcher())."""
        if self.kind is PathKind.SAFE_REGEX:
            return len(path_for_matching(path))
        return len(self.text)


class QueryParameterMatcher:
    """``envoy.config.route.v3.QueryParameterMatcher`` (first value of the parameter)."""

    __slots__ = ("matcher", "name", "present")

    def __init__(self, proto, path: str) -> None:
        check_supported(proto, ("name", "string_match", "present_match"), path)
        self.name = proto.name
        which = proto.WhichOneof("query_parameter_match_specifier")
        self.present = proto.present_match if which == "present_match" else True
        self.matcher = (
            StringMatcher(proto.string_match, join_path(path, "string_match"))
            if which == "string_match"
            else None
        )

    def matches(self, params: dict[str, str]) -> bool:
        value = params.get(self.name)
        if self.matcher is None:
            return (value is not None) == self.present
        return value is not None and self.matcher.matches(value)


def parse_query(path: str) -> dict[str, str]:
    """First value of each parameter of ``:path`` (Envoy's parseQueryString, no decoding)."""
    start = path.find("?")
    params: dict[str, str] = {}
    if start < 0:
        return params
    for param in path[start + 1 :].split("&"):
        if not param:
            continue
        name, _, value = param.partition("=")
        params.setdefault(name, value)
    return params


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteMatcher:
    """A compiled RouteMatch: ``matches(headers, path, stripped, random_value)``."""

    path: PathMatcher
    headers: tuple[HeaderMatcher, ...] = ()
    query_parameters: tuple[QueryParameterMatcher, ...] = ()
    grpc: bool = False
    runtime_fraction: tuple[int, int] | None = None  # the default (numerator, denominator)
    runtime_key: str = ""
    matches: Callable[[object, str, str, int], bool] = None  # type: ignore[assignment]
    connect: bool = False  # connect_matcher: matches CONNECT requests, which have no path


def compile_route_match(proto, path: str, runtime=None) -> RouteMatcher:
    """Compile a ``RouteMatch`` at ``path`` (``...routes[i].match``).

    ``runtime`` (legatus.runtime.Runtime, or None) answers ``runtime_fraction`` per request.
    """
    check_supported(proto, _ROUTE_MATCH_FIELDS, path, "RouteMatch")
    which = proto.WhichOneof("path_specifier")
    if which is None:
        raise ConfigError(join_path(path, "path_specifier"), "one of prefix, path, ... is required")
    case_sensitive = proto.case_sensitive.value if proto.HasField("case_sensitive") else True
    kind = PathKind(which)
    if kind is PathKind.SAFE_REGEX:
        regex = compile_regex_matcher(proto.safe_regex, join_path(path, "safe_regex"))
        path_matcher = PathMatcher(kind=kind, text=regex.pattern, regex=regex)
    elif kind is PathKind.CONNECT:
        path_matcher = PathMatcher(kind=kind, text="")
    else:
        path_matcher = PathMatcher(
            kind=kind, text=getattr(proto, which), case_sensitive=case_sensitive
        )
    headers = tuple(
        HeaderMatcher(h, f"{join_path(path, 'headers')}[{i}]") for i, h in enumerate(proto.headers)
    )
    query = tuple(
        QueryParameterMatcher(q, f"{join_path(path, 'query_parameters')}[{i}]")
        for i, q in enumerate(proto.query_parameters)
    )
    fraction = None
    runtime_key = ""
    if proto.HasField("runtime_fraction"):
        default = proto.runtime_fraction.default_value
        fraction = (default.numerator, _DENOMINATORS[default.denominator])
        runtime_key = proto.runtime_fraction.runtime_key
    grpc = proto.HasField("grpc")
    matches = _predicate(
        path_matcher, headers, query, grpc, _fraction_test(fraction, runtime_key, runtime)
    )
    connect = kind is PathKind.CONNECT
    if connect:
        conditions = matches

        def matches(request_headers, path: str, stripped: str, random_value: int) -> bool:
            return request_headers.get(":method") == "CONNECT" and conditions(
                request_headers, path, stripped, random_value
            )

    return RouteMatcher(
        path=path_matcher,
        headers=headers,
        query_parameters=query,
        grpc=grpc,
        runtime_fraction=fraction,
        runtime_key=runtime_key,
        matches=matches,
        connect=connect,
    )


def _fraction_test(fraction, key: str, runtime) -> Callable[[int], bool] | None:
    """``random_value -> matches`` for a runtime_fraction; None without one."""
    if fraction is None:
        return None
    numerator, denominator = fraction
    if runtime is None or not key:  # an empty key is never found in a runtime
        return lambda random_value: random_value % denominator < numerator
    feature_enabled = runtime.feature_enabled
    return lambda random_value: feature_enabled(key, numerator, denominator, random_value)


def _predicate(path_matcher: PathMatcher, headers, query, grpc: bool, fraction_test):
    """One function for the whole RouteMatch, specialised for the common shapes."""
    path_test = _path_test(path_matcher)
    if not headers and not query and not grpc and fraction_test is None:
        if path_test is None:
            return lambda _headers, _path, _stripped, _random: True
        return lambda _headers, _path, stripped, _random: path_test(stripped)

    def matches(request_headers, path: str, stripped: str, random_value: int) -> bool:
        if path_test is not None and not path_test(stripped):
            return False
        if fraction_test is not None and not fraction_test(random_value):
            return False
        if grpc and not _is_grpc(request_headers):
            return False
        for header in headers:
            if not header.matches(request_headers):
                return False
        if query:
            params = parse_query(path)
            for parameter in query:
                if not parameter.matches(params):
                    return False
        return True

    return matches


def _path_test(matcher: PathMatcher) -> Callable[[str], bool] | None:
    """A one-argument test for the stripped path; None when every path matches."""
    kind, text = matcher.kind, matcher.text
    if kind is PathKind.SAFE_REGEX:
        return matcher.regex.full_match  # type: ignore[union-attr]
    if kind is PathKind.CONNECT:
        return None  # the request's method decides (compile_route_match)
    if not matcher.case_sensitive:
        return matcher.matches
    if kind is PathKind.PREFIX:
        return None if not text else (lambda p: p.startswith(text))
    if kind is PathKind.PATH:
        return text.__eq__
    length = len(text)
    return lambda p: p.startswith(text) and (len(p) == length or p[length] == "/")


def _is_grpc(headers) -> bool:
    content_type = headers.get("content-type")
    return content_type is not None and (
        content_type == _GRPC or content_type.startswith("application/grpc+")
    )
