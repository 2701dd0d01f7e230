"""What a matched route does: forward (``route``), answer directly, or redirect.

``RouteAction`` (forward to a cluster) is compiled here with Envoy 1.40's rules:

- the cluster comes from ``cluster``, ``cluster_header`` (first value of the header, ""
  when absent: the router then answers ``cluster_not_found_response_code``) or
  ``weighted_clusters``; with ``validate_clusters`` a static name that is not a known
  cluster is an error (``route: unknown cluster 'x'``);
- at most one of ``prefix_rewrite`` and ``regex_rewrite``; ``rewrite_path`` computes the
  new ``:path`` (the router filter sets it and ``x-envoy-original-path``);
- ``host_rewrite_literal`` / ``host_rewrite_header`` / ``host_rewrite_path_regex`` /
  ``auto_host_rewrite`` (the last needs the upstream host, so it is a flag for the router),
  ``append_x_forwarded_host``. ``host_rewrite_path_regex`` substitutes every match in the
  request path without its query and fragment (RE2's GlobalReplace): a path it does not
  match becomes the host as it is, as in Envoy; an empty result rewrites nothing;
- ``timeout`` (default 15 s; 0 disables it), ``idle_timeout``; the deprecated gRPC deadline
  fields ``max_grpc_timeout`` and ``grpc_timeout_offset`` (timeouts.py); ``max_stream_duration``
  (``max_stream_duration``, ``grpc_timeout_header_max``, ``grpc_timeout_header_offset``), which
  the connection manager applies to the stream (timeouts.stream_duration);
- ``internal_redirect_policy`` (or the deprecated ``internal_redirect_action`` and
  ``max_internal_redirects``), without predicates;
- ``upgrade_configs`` (upgrade.py): upgrades enabled or disabled on the route, CONNECT
  terminated here with ``connect_config``.

``DirectResponseAction`` is a status and a body read once from its DataSource (at most
``max_direct_response_body_size_bytes``, 4096 by default). Its ``body_format`` (a
``SubstitutionFormatString``, compiled as the local reply ``body_format`` is) makes each
request's body, with ``%LOCAL_REPLY_BODY%`` for the configured one; as in Envoy it is
formatted before the reply exists (``%RESPONSE_CODE%`` is 0). The format's explicit
``content_type`` (JSON's ``application/json`` by default) is set after the route's response
headers, so before the reply's ``content-length``; a text format without one gets the
reply's ``text/plain`` after it. The connection manager's ``local_reply_config`` still
applies on top. Redirects live in redirect.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from legatus.common.matchers import ascii_lower, header_values
from legatus.common.regex import RegexRewrite, compile_rewrite
from legatus.config.datasource import read_data_source
from legatus.config.errors import ConfigError, join_path
from legatus.config.supported import check_supported
from legatus.http.local_reply import BodyFormatter  # the body_format compiler
from legatus.router.hash_policy import HashContext, HashPolicy, compile_hash_policy
from legatus.router.header_mutations import is_modifiable_header
from legatus.router.matchers import PathMatcher, path_for_matching
from legatus.router.rate_limit_policy import (
    EMPTY_POLICY,
    RateLimitPolicy,
    compile_rate_limit_policy,
)
from legatus.router.retry_policy import (
    RetryPolicy,
    compile_hedge_policy,
    compile_retry_policy,
)
from legatus.router.route_stats import RouteRequestStats
from legatus.router.shadow_writer import MirrorPolicy, compile_mirror_policies
from legatus.router.timeouts import MaxStreamDuration
from legatus.router.upgrade import NO_UPGRADES, ConnectConfig, compile_upgrade_configs
from legatus.router.weighted_clusters import WeightedClusters, compile_weighted_clusters

__all__ = [
    "DirectResponseAction",
    "InternalRedirectPolicy",
    "RouteAction",
    "compile_direct_response",
    "compile_max_stream_duration",
    "compile_route_action",
    "rewrite_path_with",
]

DEFAULT_TIMEOUT = 15.0  # seconds, Envoy's DEFAULT_ROUTE_TIMEOUT_MS
DEFAULT_MAX_DIRECT_RESPONSE_BODY_SIZE = 4096

_ROUTE_ACTION_FIELDS = (
    "cluster",
    "cluster_header",
    "weighted_clusters",
    "cluster_not_found_response_code",
    "prefix_rewrite",
    "regex_rewrite",
    "host_rewrite_literal",
    "auto_host_rewrite",
    "host_rewrite_header",
    "host_rewrite_path_regex",
    "append_x_forwarded_host",
    "timeout",
    "idle_timeout",
    "max_grpc_timeout",
    "grpc_timeout_offset",
    "max_stream_duration",
    "internal_redirect_policy",
    "internal_redirect_action",
    "max_internal_redirects",
    "retry_policy",
    "request_mirror_policies",
    "hedge_policy",
    "hash_policy",
    "rate_limits",
    "include_vh_rate_limits",
    "upgrade_configs",
)
# ClusterNotFoundResponseCode: SERVICE_UNAVAILABLE, NOT_FOUND, INTERNAL_SERVER_ERROR.
_CLUSTER_NOT_FOUND_CODES = (503, 404, 500)
_VALID_REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
_HANDLE_INTERNAL_REDIRECT = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class InternalRedirectPolicy:
    max_internal_redirects: int = 1
    redirect_response_codes: frozenset[int] = frozenset({302})
    allow_cross_scheme_redirect: bool = False
    response_headers_to_copy: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteAction:
    cluster: str = ""  # static cluster name ("" with cluster_header / weighted_clusters)
    cluster_header: str = ""  # lower-case header naming the cluster
    weighted_clusters: WeightedClusters | None = None
    cluster_not_found_response_code: int = 503
    prefix_rewrite: str = ""
    regex_rewrite: RegexRewrite | None = None
    host_rewrite_literal: str = ""
    host_rewrite_header: str = ""  # lower-case
    host_rewrite_path_regex: RegexRewrite | None = None
    auto_host_rewrite: bool = False
    append_x_forwarded_host: bool = False
    timeout: float = DEFAULT_TIMEOUT  # seconds; 0 disables the route timeout
    idle_timeout: float | None = None  # seconds; None: the connection manager's
    max_grpc_timeout: int | None = None  # ms (deprecated field); None: unset
    grpc_timeout_offset: int | None = None  # ms (deprecated field)
    max_stream_duration: MaxStreamDuration | None = None  # Envoy's "new timeouts" when set
    internal_redirect_policy: InternalRedirectPolicy | None = None
    retry_policy: RetryPolicy | None = None  # the route's, else its virtual host's
    request_mirror_policies: tuple[MirrorPolicy, ...] = ()  # likewise
    hedge_on_per_try_timeout: bool | None = None  # hedge_policy; None: the virtual host's
    path_matcher: PathMatcher | None = None  # the route's, for prefix_rewrite
    hash_policy: HashPolicy | None = None  # for RING_HASH / MAGLEV clusters (hash_policy.py)
    rate_limit_policy: RateLimitPolicy = EMPTY_POLICY  # rate_limits (rate_limit_policy.py)
    include_vh_rate_limits: bool = False
    # upgrade_configs (upgrade.py): lower-case upgrade type -> enabled on this route, and the
    # CONNECT termination config, if any.
    upgrade_map: Mapping[str, bool] = field(default_factory=lambda: NO_UPGRADES)
    connect_config: ConnectConfig | None = None
    # The route's stat_prefix stats and its virtual host's virtual clusters
    # (route_stats.py); None: its requests count on the cluster only.
    request_stats: RouteRequestStats | None = None
    # Derived from the fields above when built (``__post_init__``), for the router's common
    # path: one test per request instead of one per field.
    # ``plain``: no idle timeout, retry or hedge policy, max_stream_duration or
    # max_grpc_timeout, so without router headers in the request (x-envoy-upstream-rq-*...)
    # the route's ``timeout`` is the request's as it stands; and no request stats to pick.
    plain: bool = field(init=False, repr=False, compare=False)
    # ``plain_retries``: ``plain`` but for a retry policy that retries on some condition, with
    # no per-try timeout or per-try idle timeout and no ``retriable_request_headers``: without
    # router headers in the request, the route's ``timeout`` is the request's as it stands and
    # the policy's retry state is made as it stands (RetryState.create's answer).
    plain_retries: bool = field(init=False, repr=False, compare=False)
    # ``rewrites``: a host rewrite (literal, from a header, auto) or a path rewrite.
    rewrites: bool = field(init=False, repr=False, compare=False)
    # ``timeout`` in whole milliseconds, as x-envoy-expected-rq-timeout-ms tells it.
    timeout_ms: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        policy = self.retry_policy
        no_policies = (
            self.idle_timeout is None
            and not self.hedge_on_per_try_timeout
            and self.max_stream_duration is None
            and self.max_grpc_timeout is None
            and self.request_stats is None
        )
        plain = no_policies and policy is None
        plain_retries = (
            no_policies
            and policy is not None
            and bool(policy.retry_on)
            and not policy.per_try_timeout
            and not policy.per_try_idle_timeout
            and not policy.retriable_request_headers
        )
        rewrites = bool(
            self.host_rewrite_literal
            or self.host_rewrite_header
            or self.host_rewrite_path_regex is not None
            or self.auto_host_rewrite
            or self.prefix_rewrite
            or self.regex_rewrite is not None
        )
        object.__setattr__(self, "plain", plain)
        object.__setattr__(self, "plain_retries", plain_retries)
        object.__setattr__(self, "rewrites", rewrites)
        object.__setattr__(self, "timeout_ms", str(round(self.timeout * 1000)))

    def rewrite_path(self, path: str) -> str | None:
        """The new ``:path`` for this route, or None when it rewrites nothing."""
        return rewrite_path_with(path, self.prefix_rewrite, self.regex_rewrite, self.path_matcher)

    def hash_context(self, headers, stream_info) -> HashContext:
        """What a hashing balancer hashes for this request (``ThreadLocalCluster.choose_host``);
        its ``set_cookies`` are the set-cookie values to add to the response."""
        return HashContext.for_stream(self.hash_policy, headers, stream_info)

    def host_rewrite(self, headers) -> str | None:
        """The new ``:authority`` from the literal, the named header or the path, else None.

        ``auto_host_rewrite`` is the router's (it needs the upstream host). Envoy's order:
        a weighted cluster's ``host_rewrite_literal`` is set first (plainly), then this
        rewrite, if any, replaces it (appending the previous host to ``x-forwarded-host``
        with ``append_x_forwarded_host``).
        """
        if self.host_rewrite_literal:
            return self.host_rewrite_literal
        if self.host_rewrite_header:
            values = header_values(headers, self.host_rewrite_header)
            if values and values[0]:
                return values[0]
        elif self.host_rewrite_path_regex is not None:
            host = self.host_rewrite_path_regex.apply(path_for_matching(headers.get(":path") or ""))
            if host:
                return host
        return None


@dataclass(frozen=True, slots=True, kw_only=True)
class DirectResponseAction:
    status: int
    body: bytes = b""
    body_format: BodyFormatter | None = None
    content_type: str | None = None  # body_format's explicit (or JSON's) content type

    def rewrite_path(self, path: str) -> None:
        """A direct response rewrites no path."""
        return None

    def response_body(self, request_headers, info) -> bytes:
        """This request's body: ``body``, through ``body_format`` when there is one."""
        if self.body_format is None:
            return self.body
        body = self.body.decode("utf-8", "surrogateescape")
        text = self.body_format.format(info, request_headers, None, body)
        return text.encode("utf-8", "surrogateescape")


def rewrite_path_with(
    path: str, prefix_rewrite: str, regex_rewrite: RegexRewrite | None, matcher: PathMatcher | None
) -> str | None:
    """Envoy's currentUrlPathAfterRewriteWithMatchedPath for one rewrite configuration.

    A prefix rewrite replaces the matched part (the configured prefix or path; the whole
    path for a regex route); a regex rewrite applies to the path without its query string.
    Either way the query string is kept.
    """
    if prefix_rewrite:
        matched = matcher.matched_length(path) if matcher is not None else 0
        return prefix_rewrite + path[matched:]
    if regex_rewrite is not None:
        just_path = path_for_matching(path)
        return regex_rewrite.apply(just_path) + path[len(just_path) :]
    return None


def compile_route_action(
    proto,
    path: str,
    *,
    route_name: str,
    path_matcher: PathMatcher,
    cluster_names: frozenset[str] | None,
    runtime=None,
) -> RouteAction:
    """Compile ``Route.route`` at ``path``; ``cluster_names`` None skips cluster validation."""
    check_supported(proto, _ROUTE_ACTION_FIELDS, path, "RouteAction")
    which = proto.WhichOneof("cluster_specifier")
    weighted = None
    if which == "weighted_clusters":
        weighted = compile_weighted_clusters(
            proto.weighted_clusters, join_path(path, "weighted_clusters"), route_name, runtime
        )
    if cluster_names is not None:
        _validate_clusters(proto, weighted, path, cluster_names)
    if proto.prefix_rewrite and proto.HasField("regex_rewrite"):
        raise ConfigError(
            path, "Specify only one of prefix_rewrite, regex_rewrite or path_rewrite_policy"
        )
    upgrade_map, connect_config = compile_upgrade_configs(
        proto.upgrade_configs, join_path(path, "upgrade_configs")
    )
    regex_rewrite = None
    if proto.HasField("regex_rewrite"):
        regex_rewrite = compile_rewrite(proto.regex_rewrite, join_path(path, "regex_rewrite"))
    host_regex = None
    if proto.HasField("host_rewrite_path_regex"):
        host_regex = compile_rewrite(
            proto.host_rewrite_path_regex, join_path(path, "host_rewrite_path_regex")
        )
    return RouteAction(
        cluster=proto.cluster,
        cluster_header=ascii_lower(proto.cluster_header),
        weighted_clusters=weighted,
        cluster_not_found_response_code=_CLUSTER_NOT_FOUND_CODES[
            proto.cluster_not_found_response_code
        ],
        prefix_rewrite=proto.prefix_rewrite,
        regex_rewrite=regex_rewrite,
        host_rewrite_literal=proto.host_rewrite_literal,
        host_rewrite_header=ascii_lower(proto.host_rewrite_header),
        host_rewrite_path_regex=host_regex,
        auto_host_rewrite=proto.auto_host_rewrite.value,
        append_x_forwarded_host=proto.append_x_forwarded_host,
        timeout=_seconds(proto.timeout) if proto.HasField("timeout") else DEFAULT_TIMEOUT,
        idle_timeout=_seconds(proto.idle_timeout) if proto.HasField("idle_timeout") else None,
        max_grpc_timeout=(
            _ms(proto.max_grpc_timeout) if proto.HasField("max_grpc_timeout") else None
        ),
        grpc_timeout_offset=(
            _ms(proto.grpc_timeout_offset) if proto.HasField("grpc_timeout_offset") else None
        ),
        max_stream_duration=compile_max_stream_duration(
            proto.max_stream_duration, join_path(path, "max_stream_duration")
        )
        if proto.HasField("max_stream_duration")
        else None,
        internal_redirect_policy=_internal_redirect_policy(proto, path),
        retry_policy=compile_retry_policy(proto.retry_policy, join_path(path, "retry_policy"))
        if proto.HasField("retry_policy")
        else None,
        hedge_on_per_try_timeout=compile_hedge_policy(
            proto.hedge_policy, join_path(path, "hedge_policy")
        )
        if proto.HasField("hedge_policy")
        else None,
        request_mirror_policies=compile_mirror_policies(
            proto.request_mirror_policies, join_path(path, "request_mirror_policies")
        ),
        path_matcher=path_matcher,
        hash_policy=compile_hash_policy(proto.hash_policy, join_path(path, "hash_policy")),
        rate_limit_policy=compile_rate_limit_policy(
            proto.rate_limits, join_path(path, "rate_limits")
        ),
        include_vh_rate_limits=proto.include_vh_rate_limits.value,
        upgrade_map=upgrade_map,
        connect_config=connect_config,
    )


def _validate_clusters(proto, weighted, path: str, cluster_names: frozenset[str]) -> None:
    if proto.cluster and proto.cluster not in cluster_names:
        raise ConfigError(join_path(path, "cluster"), f"route: unknown cluster '{proto.cluster}'")
    if weighted is not None:
        for i, cluster in enumerate(weighted.clusters):
            if cluster.name and cluster.name not in cluster_names:
                raise ConfigError(
                    f"{join_path(path, 'weighted_clusters.clusters')}[{i}].name",
                    f"route: unknown weighted cluster '{cluster.name}'",
                )


def _internal_redirect_policy(proto, path: str) -> InternalRedirectPolicy | None:
    if proto.HasField("internal_redirect_policy"):
        policy = proto.internal_redirect_policy
        policy_path = join_path(path, "internal_redirect_policy")
        check_supported(
            policy,
            (
                "max_internal_redirects",
                "redirect_response_codes",
                "allow_cross_scheme_redirect",
                "response_headers_to_copy",
            ),
            policy_path,
            "InternalRedirectPolicy",
        )
        copied = []
        for i, name in enumerate(policy.response_headers_to_copy):
            if not is_modifiable_header(name):
                raise ConfigError(
                    f"{join_path(policy_path, 'response_headers_to_copy')}[{i}]",
                    ":-prefixed headers or Hosts may not be specified here.",
                )
            copied.append(ascii_lower(name))
        codes = frozenset(policy.redirect_response_codes)
        return InternalRedirectPolicy(
            max_internal_redirects=(
                policy.max_internal_redirects.value
                if policy.HasField("max_internal_redirects")
                else 1
            ),
            # Envoy drops codes that are not redirects; none configured means 302 only.
            redirect_response_codes=codes & _VALID_REDIRECT_CODES if codes else frozenset({302}),
            allow_cross_scheme_redirect=policy.allow_cross_scheme_redirect,
            response_headers_to_copy=tuple(copied),
        )
    if proto.internal_redirect_action != _HANDLE_INTERNAL_REDIRECT:
        return None
    maximum = proto.max_internal_redirects.value if proto.HasField("max_internal_redirects") else 1
    return InternalRedirectPolicy(max_internal_redirects=maximum)


def compile_direct_response(proto, path: str, *, max_body_size: int) -> DirectResponseAction:
    check_supported(proto, ("status", "body", "body_format"), path, "DirectResponseAction")
    body = b""
    if proto.HasField("body"):
        body_path = join_path(path, "body")
        check_supported(
            proto.body,
            ("filename", "inline_bytes", "inline_string", "environment_variable"),
            body_path,
            "DataSource",
        )
        body = read_data_source(proto.body, body_path)
        if len(body) > max_body_size:
            what = (
                f"file {proto.body.filename}"
                if proto.body.WhichOneof("specifier") == "filename"
                else "response body"
            )
            raise ConfigError(
                body_path, f"{what} size is {len(body)} bytes; maximum is {max_body_size}"
            )
    if not proto.HasField("body_format"):
        return DirectResponseAction(status=proto.status, body=body)
    body_format = BodyFormatter(proto.body_format, join_path(path, "body_format"))
    return DirectResponseAction(
        status=proto.status,
        body=body,
        body_format=body_format,
        content_type=proto.body_format.content_type
        or ("application/json" if body_format.json else None),
    )


def compile_max_stream_duration(proto, path: str) -> MaxStreamDuration:
    """A ``RouteAction.MaxStreamDuration``: the connection manager applies it to the stream."""
    check_supported(
        proto,
        ("max_stream_duration", "grpc_timeout_header_max", "grpc_timeout_header_offset"),
        path,
        "MaxStreamDuration",
    )
    names = ("max_stream_duration", "grpc_timeout_header_max", "grpc_timeout_header_offset")
    return MaxStreamDuration(
        **{name: _ms(getattr(proto, name)) for name in names if proto.HasField(name)}
    )


def _seconds(duration) -> float:
    return duration.seconds + duration.nanos / 1e9


def _ms(duration) -> int:
    """DurationUtil::durationToMilliseconds (whole milliseconds, truncated)."""
    return duration.seconds * 1000 + duration.nanos // 1_000_000
