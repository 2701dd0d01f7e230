"""Request mirroring (``request_mirror_policies``): Envoy's ShadowWriter.

A route (or, when the route has none, its virtual host, else its route configuration: the
most specific non-empty list, see config.py) may mirror each request to other clusters. For
each policy whose ``runtime_fraction`` lets this request through (100% when unset), the
router sends a copy once the request is complete: the same finalized headers
and body, ``:authority`` with ``-shadow`` appended to the host (before any port) unless
``disable_shadow_host_suffix_append`` or ``host_rewrite_literal`` says otherwise.

Envoy sends a shadow through its async client, as an internal request of its own: the copy
also carries ``x-envoy-internal: true`` and the proxy's own address appended to
``x-forwarded-for``, and its stats are the cluster's ``internal.`` ones.

A shadow is fire and forget: its response is read and dropped, it never delays or fails
the main request, and it carries on if the client goes away. It has the route's timeout.
Its outcome is counted on its own cluster (``upstream_rq_<code>``, ``upstream_rq_time``...,
and the host stats) as Envoy's async client counts it. A mirror cluster that does not exist
or has no healthy host is skipped (Envoy counts nothing either).

Not supported yet, refused by name: ``trace_sampled`` (no tracing) and
``request_headers_mutations``.
"""

from __future__ import annotations

from dataclasses import dataclass

from legatus.common.matchers import ascii_lower
from legatus.config.errors import ConfigError
from legatus.config.supported import check_supported
from legatus.conn_pool import ResponseDecoder
from legatus.http.conn_manager_utility import node_local_address
from legatus.http.headers import HeaderMap

_FIELDS = (
    "cluster",
    "cluster_header",
    "runtime_fraction",
    "disable_shadow_host_suffix_append",
    "host_rewrite_literal",
)
_DENOMINATORS = (100, 10_000, 1_000_000)


@dataclass(frozen=True, slots=True, kw_only=True)
class MirrorPolicy:
    cluster: str = ""
    cluster_header: str = ""  # lower-case
    numerator: int = 100
    denominator: int = 100
    runtime_key: str = ""
    disable_shadow_host_suffix_append: bool = False
    host_rewrite_literal: str = ""

    def enabled(self, runtime, random_value: int) -> bool:
        if self.runtime_key and runtime is not None:
            return runtime.feature_enabled(
                self.runtime_key, self.numerator, self.denominator, random_value
            )
        return random_value % self.denominator < self.numerator

    def cluster_name(self, headers) -> str:
        if self.cluster:
            return self.cluster
        return headers.get(self.cluster_header) or ""


def compile_mirror_policies(protos, path: str) -> tuple[MirrorPolicy, ...]:
    policies = []
    for i, proto in enumerate(protos):
        ppath = f"{path}[{i}]"
        check_supported(proto, _FIELDS, ppath, "RequestMirrorPolicy")
        if bool(proto.cluster) == bool(proto.cluster_header):
            raise ConfigError(
                ppath, "Only one of cluster '' or cluster_header '' can be specified"
                if proto.cluster else "Exactly one of cluster or cluster_header is required"
            )  # fmt: skip
        numerator, denominator, key = 100, 100, ""
        if proto.HasField("runtime_fraction"):
            default = proto.runtime_fraction.default_value
            numerator = default.numerator
            denominator = _DENOMINATORS[default.denominator]
            key = proto.runtime_fraction.runtime_key
        policies.append(
            MirrorPolicy(
                cluster=proto.cluster,
                cluster_header=ascii_lower(proto.cluster_header),
                numerator=numerator,
                denominator=denominator,
                runtime_key=key,
                disable_shadow_host_suffix_append=proto.disable_shadow_host_suffix_append,
                host_rewrite_literal=proto.host_rewrite_literal,
            )
        )
    return tuple(policies)


def shadow_authority(authority: str) -> str:
    """``host-shadow``, the port kept after it (Envoy's shadowAppendedHost)."""
    colon = authority.rfind(":")
    if colon > 0 and authority.rfind("]") < colon:
        return authority[:colon] + "-shadow" + authority[colon:]
    return authority + "-shadow"


def send_shadow(policy: MirrorPolicy, cluster, headers: HeaderMap, body, trailers, timeout, loop):
    """Mirror one complete request to ``cluster`` (a ThreadLocalCluster); no-op without a
    host. ``headers`` are copied; ``body`` is bytes or None."""
    host = cluster.choose_host()
    if host is None:
        return
    copy = headers.copy()
    authority = copy.get(":authority")
    if policy.host_rewrite_literal:
        copy.set(":authority", policy.host_rewrite_literal)
    elif authority is not None and not policy.disable_shadow_host_suffix_append:
        copy.set(":authority", shadow_authority(authority))
    copy.set("x-envoy-internal", "true")
    copy.append_value("x-forwarded-for", node_local_address())
    ShadowRequest(cluster, host, copy, body, trailers, timeout, loop).start()


class ShadowRequest(ResponseDecoder):
    """One mirrored request: the pool's callbacks and a response decoder that drops the
    response and counts it."""

    __slots__ = ("body", "cluster", "encoder", "headers", "host", "loop", "pending",
                 "start_time", "timer", "trailers")  # fmt: skip

    def __init__(self, cluster, host, headers, body, trailers, timeout, loop) -> None:
        self.cluster = cluster
        self.host = host
        self.headers = headers
        self.body = body
        self.trailers = trailers
        self.loop = loop
        self.encoder = None
        self.pending = None
        self.start_time = loop.time()
        self.timer = loop.call_later(timeout, self._on_timeout) if timeout else None

    def start(self) -> None:
        self.pending = self.cluster.http_conn_pool(self.host).new_stream(self, self)

    def on_pool_ready(self, encoder, host) -> None:
        self.pending = None
        self.encoder = encoder
        body, trailers = self.body, self.trailers
        if encoder.encode_headers(self.headers, not body and trailers is None) is not None:
            self._finish(503)
            encoder.reset()
            return
        if body:
            encoder.encode_data(body, trailers is None)
        if trailers is not None:
            encoder.encode_trailers(trailers)

    def on_pool_failure(self, reason, transport_failure_reason: str, host) -> None:
        self.pending = None
        self._finish(503)

    def on_informational_headers(self, headers: HeaderMap) -> None:
        """A 1xx: nothing to do for a shadow."""

    def on_headers(self, headers: HeaderMap, end_stream: bool) -> None:
        status = headers.get(":status", "0")
        code = int(status) if status.isdigit() else 0
        self.cluster.code_stats.charge(code, internal=True)
        host_stats = self.host.stats
        (host_stats.rq_error if code >= 500 else host_stats.rq_success).inc()
        if end_stream:
            self._complete()

    def on_data(self, data: bytes, end_stream: bool) -> None:
        if end_stream:
            self._complete()

    def on_trailers(self, trailers: HeaderMap) -> None:
        self._complete()

    def on_reset(self, reason, details: str) -> None:
        if self.encoder is not None:
            self.encoder = None
            self._finish(503)

    def _complete(self) -> None:
        self.cluster.code_stats.record_time(
            (self.loop.time() - self.start_time) * 1000, internal=True
        )
        self._release()

    def _finish(self, code: int) -> None:
        """A shadow that got no response: counted as the router counts its local reply."""
        self.cluster.code_stats.charge(code, internal=True)
        self.host.stats.rq_error.inc()
        self._release()

    def _release(self) -> None:
        self.encoder = None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _on_timeout(self) -> None:
        self.timer = None
        self.cluster.stats.upstream_rq_timeout.inc()
        if self.pending is not None:
            pending, self.pending = self.pending, None
            pending.cancel()
        encoder, self.encoder = self.encoder, None
        if encoder is not None:
            encoder.reset()
        self.cluster.code_stats.charge(504, internal=True)
        self.host.stats.rq_timeout.inc()
