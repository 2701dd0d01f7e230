"""The router filter (``envoy.filters.http.router``): Envoy's ``Router::Filter``.

The last decoder filter of every HTTP filter chain. For each request it:

1. answers locally when the route says so: no route (404 NR), a direct response or a
   redirect, an unknown cluster (503 NC, or the route's cluster_not_found_response_code),
   no healthy host (503 UH);
2. finalizes the request headers in Envoy's order: the route's header mutations (weighted
   cluster, route, virtual host, route configuration levels), the host rewrite (literal,
   from a header; auto_host_rewrite with the upstream host's hostname), the path rewrite
   (with ``x-envoy-original-path``), ``x-envoy-expected-rq-timeout-ms``;
3. asks the host's connection pool (HTTP/1.1 or HTTP/2) for a stream (``UpstreamRequest``) and sends
   the request as it arrives; body that arrives before the pool is ready is held here
   (past the buffer limit the downstream read pauses);
4. once the downstream request is complete, starts the route timeout (504 UT);
5. feeds the upstream response into the encoder chain: the response code stats
   (``cluster.<name>.upstream_rq_<code>``..., and under the request's virtual cluster and
   route stat_prefix, route_stats.py), ``x-envoy-upstream-service-time``, the route's
   response header mutations.

An upstream failure before the response started is a local reply with Envoy's body, details
and flag (UF, UO with ``x-envoy-overloaded``, UC, UPE 502, UT 504); after it started, the
downstream stream is reset. A redirect response the route's internal redirect policy covers
is followed here (``_follow_redirect``): the stream is recreated with the new target.
Retries (retry_state.py judges them, tries.py runs them): a retriable response or reset,
before anything went to the client and once the request is complete, becomes a new try after
a jittered back-off, on another host with the ``previous_hosts`` predicate, with the request
body the router kept (up to the buffer limit: past it retries are abandoned, as in Envoy).
Each try has its own per-try timeout; the route timeout covers them all. With the virtual
host's ``include_is_timeout_retry_header`` a retry says in ``x-envoy-is-timeout-retry``
whether a timeout caused it (``_tell_retry``). With
``hedge_on_per_try_timeout`` (or an internal client's ``x-envoy-hedge-on-per-try-timeout:
true``) a try that passes its per-try timeout is not abandoned: the next try starts beside it
(``hedged``), and the first good response wins while the others are reset. Mirrored requests
(shadow_writer.py) leave once the request is complete, with the same kept body.

A gRPC request (``content-type: application/grpc[+...]``) is judged by its ``grpc-status``, as
Envoy's router does: outlier detection sees a trailers-only response's status mapped to HTTP
(grpc_to_http_status), and the host's rq_success / rq_error wait for the trailers (a response
that ends without them, or is reset, is an error). Timeouts: timeouts.py (the deprecated
``max_grpc_timeout`` takes the route timeout from ``grpc-timeout`` and rewrites it upstream).

Flow control: the upstream write buffer's watermarks pause and resume the downstream read
(``on_decoder_filter_above_write_buffer_high_watermark``); the downstream's pause and
resume the upstream read (``read_disable`` on the upstream stream).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

from legatus.conn_pool import StreamResetReason
from legatus.grpc.common import grpc_status, grpc_to_http_status, has_grpc_content_type
from legatus.http.conn_manager_stats import RouterFilterStats
from legatus.http.conn_manager_utility import update_authority
from legatus.http.filter import (
    FilterDataStatus,
    FilterHeadersStatus,
    FilterTrailersStatus,
    StreamDecoderFilter,
)
from legatus.http.headers import HeaderMap
from legatus.http.local_reply import ENVOY_LOCAL_REPLIES, LocalReply, upstream_reset
from legatus.router.action import DirectResponseAction, RouteAction
from legatus.router.redirect import RedirectAction, redirect_location
from legatus.router.retry_policy import EMPTY_POLICY
from legatus.router.retry_state import RetryState
from legatus.router.route_stats import NO_REQUEST_STATS, CountedUpstreamRequest
from legatus.router.shadow_writer import send_shadow
from legatus.router.timeouts import expected_timeout_ms, grpc_route_timeout_ms, set_timeout_headers
from legatus.router.tries import Tries
from legatus.router.upgrade import is_websocket_upgrade
from legatus.router.upstream_request import UpstreamRequest
from legatus.stream_info import ResponseFlag as F
from legatus.upstream.outlier_reporter import Result as OutlierResult

log = logging.getLogger("legatus.router")

# Request headers the router consumes (Envoy's timeout and retry headers).
_CONSUMED_HEADERS = frozenset(
    (
        "x-envoy-upstream-rq-timeout-ms",
        "x-envoy-upstream-rq-per-try-timeout-ms",
        "x-envoy-upstream-rq-timeout-alt-response",
        "x-envoy-retry-on",
        "x-envoy-retry-grpc-on",
        "x-envoy-max-retries",
        "x-envoy-retriable-status-codes",
        "x-envoy-retriable-header-names",
        "x-envoy-hedge-on-per-try-timeout",
    )
)
# Request headers that make a request's timeouts or tries more than its route's (see
# ``RouteAction.plain`` and ``plain_retries``): those the router consumes, and the expected
# timeout it may respect.
_POLICY_HEADERS = _CONSUMED_HEADERS | {"x-envoy-expected-rq-timeout-ms"}
_RESET_FLAGS = {
    StreamResetReason.LOCAL_CONNECTION_FAILURE: F.UPSTREAM_CONNECTION_FAILURE,
    StreamResetReason.REMOTE_CONNECTION_FAILURE: F.UPSTREAM_CONNECTION_FAILURE,
    StreamResetReason.CONNECTION_TIMEOUT: F.UPSTREAM_CONNECTION_FAILURE,
    StreamResetReason.CONNECTION_TERMINATION: F.UPSTREAM_CONNECTION_TERMINATION,
    StreamResetReason.LOCAL_RESET: F.LOCAL_RESET,
    StreamResetReason.OVERFLOW: F.UPSTREAM_OVERFLOW,
    StreamResetReason.REMOTE_RESET: F.UPSTREAM_REMOTE_RESET,
    StreamResetReason.REMOTE_REFUSED_STREAM_RESET: F.UPSTREAM_REMOTE_RESET,
    StreamResetReason.PROTOCOL_ERROR: F.UPSTREAM_PROTOCOL_ERROR,
}
_CONNECT_FAILURES = frozenset(
    (
        StreamResetReason.LOCAL_CONNECTION_FAILURE,
        StreamResetReason.REMOTE_CONNECTION_FAILURE,
        StreamResetReason.CONNECTION_TIMEOUT,
    )
)
_TIMEOUT_REPLY = ENVOY_LOCAL_REPLIES["upstream_request_timeout"]
_TIMEOUT_ALT_REPLY = ENVOY_LOCAL_REPLIES["upstream_request_timeout_alt"]
_NO_HEALTHY = ENVOY_LOCAL_REPLIES["no_healthy_upstream"]


@dataclass(frozen=True, slots=True, kw_only=True)
class RouterConfig:
    """The router's config (``envoy.extensions.filters.http.router.v3.Router``) and what it
    shares across streams."""

    stats: RouterFilterStats
    cluster_manager: Any  # the worker's ThreadLocalClusterManager
    loop: Any
    suppress_envoy_headers: bool = False
    respect_expected_rq_timeout: bool = False
    dynamic_stats: bool = True
    random: Any = None  # random.Random: retry back-off jitter, mirror fractions
    runtime: Any = None  # legatus.runtime.Runtime: mirror runtime_fraction keys


class Router(Tries, StreamDecoderFilter):
    # Per-stream state starts from these class-level defaults: a new stream writes only what
    # it uses (one Router per request, so its construction is on the hot path).
    upstream: UpstreamRequest | None = None
    route = None
    cluster = None
    host = None
    request_headers: HeaderMap | None = None
    buffered: list[bytes] | tuple = ()  # request body held while the upstream connects
    buffered_bytes = 0
    trailers: HeaderMap | None = None
    request_done = False
    downstream_paused = False
    timeout = 0.0
    per_try = 0.0
    alt_response = False
    request_body: bytearray | None = None  # kept for a retry, a shadow or a redirect
    request_body_overflow = False
    timer = None
    request_complete_time = 0.0
    start_time = 0.0
    retry_state: RetryState | None = None
    retry_timer = None
    per_try_timer = None
    attempts = 1  # tries so far (read once the first one started)
    shadows: list | None = None
    hedging = False  # hedge_on_per_try_timeout for this request
    hedged: list[UpstreamRequest] | tuple = ()  # earlier tries still running beside upstream
    try_idle_timer = None  # per_try_idle_timeout: one re-arming timer per try
    try_idle_deadline = 0.0
    hash_ctx = None  # HashContext of a hashing cluster (generated cookies: set-cookie)
    grpc = False  # a gRPC request (its host stats and outlier results follow grpc-status)
    grpc_timeout = False  # grpc-timeout is rewritten with the time given (max_grpc_timeout)
    grpc_deferred = False  # the host's rq_success / rq_error wait for the response's trailers
    # Its virtual cluster's and route's stats (route_stats.py: ``_count_under``): the scopes
    # its response codes are also charged under, and its tries, counted there once connected.
    request_stats = NO_REQUEST_STATS
    scopes: tuple[str, ...] = ()
    upstream_request_type = UpstreamRequest

    def __init__(self, config: RouterConfig) -> None:
        self.config = config

    # Decoding ------------------------------------------------------------------------

    def decode_headers(self, headers: HeaderMap, end_stream: bool) -> FilterHeadersStatus:
        cb = self.decoder_callbacks
        config = self.config
        config.stats.rq_total.value += 1  # (Counter.inc without the call)
        route = cb.route
        if route is None:
            config.stats.no_route.inc()
            cb.send_local_reply(404, details="route_not_found", flags=F.NO_ROUTE_FOUND)
            return FilterHeadersStatus.STOP_ITERATION
        # No cluster name (a direct response, a redirect) or no such cluster: None. (A name is
        # never "": a cluster_header route without its header has no cluster.)
        cluster = config.cluster_manager.get(route.cluster_name)
        if cluster is None:
            self._reply_without_cluster(route, headers)
            return FilterHeadersStatus.STOP_ITERATION
        action = route.action
        self.route = route
        self.cluster = cluster
        info = cb.stream_info
        info.upstream_cluster = route.cluster_name
        info.upstream_cluster_config = cluster.config
        if cluster.lb_config.drop_overload and self._drop_overload(cluster, headers):
            return FilterHeadersStatus.STOP_ITERATION
        if "content-type" in headers and has_grpc_content_type(headers):
            self.grpc = True
        if action.plain and _POLICY_HEADERS.isdisjoint(headers):
            if action.timeout:  # the route's timeout as it stands (_final_timeout's answer)
                self.timeout = action.timeout
                if not config.suppress_envoy_headers:
                    headers.set("x-envoy-expected-rq-timeout-ms", action.timeout_ms)
        elif action.plain_retries and _POLICY_HEADERS.isdisjoint(headers):
            # _apply_policies' answer for such a route: the policy's retry state as it stands
            # (RetryState.create's, without retry headers) and the route's timeout.
            policy = action.retry_policy
            self.retry_state = RetryState(policy, policy.retry_on, cluster, config.random)
            if action.timeout:
                self.timeout = action.timeout
                if not config.suppress_envoy_headers:
                    headers.set("x-envoy-expected-rq-timeout-ms", action.timeout_ms)
        else:
            self._apply_policies(headers, action, cluster)
        host = self._hash_host(cluster, action, headers) if cluster.hashing else cluster.pick_host()
        if host is None:
            cluster.stats.upstream_cx_none_healthy.inc()
            if config.dynamic_stats:
                cluster.code_stats.charge(
                    503, internal=self.decoder_callbacks.stream.internal, under=self.scopes
                )
            self._local_reply(_NO_HEALTHY)
            return FilterHeadersStatus.STOP_ITERATION
        self.host = host
        self.request_headers = headers
        if not route.request_as_is:
            self._route_request(headers, route, action, host, end_stream)
        self.start_time = now = config.loop.time()
        if end_stream:  # _on_request_complete, before the upstream request exists
            self.request_done = True
            self.request_complete_time = now
            if self.timeout or self.per_try:
                self._start_route_timer()
        elif "upgrade" in headers and is_websocket_upgrade(headers):
            self._start_route_timer()  # Envoy: a WebSocket upgrade's lasts until its 101
        cb.stream_info.upstream_request_attempt_count = 1
        upstream = self.upstream = self.upstream_request_type(self, cluster, host)
        upstream.start()
        return FilterHeadersStatus.STOP_ITERATION

    def decode_data(self, data: bytes, end_stream: bool) -> FilterDataStatus:
        if end_stream:
            self.request_done = True
        if (
            data
            and self.route is not None
            and (
                self.retry_state is not None
                or self.shadows
                or self.route.action.internal_redirect_policy
            )
        ):
            self._keep_body(data)
        upstream = self.upstream
        if upstream is not None and upstream.encoder is not None:
            upstream.encoder.encode_data(data, end_stream)
            if end_stream:
                self._request_sent()
        elif upstream is not None and data:
            if self.buffered:
                self.buffered.append(data)
            else:
                self.buffered = [data]
            self.buffered_bytes += len(data)
            if (
                not self.downstream_paused
                and self.buffered_bytes > self.decoder_callbacks.stream.connection.buffer_limit
            ):
                self.downstream_paused = True
                self.decoder_callbacks.on_decoder_filter_above_write_buffer_high_watermark()
        if end_stream:
            self._on_request_complete()
        return FilterDataStatus.STOP_ITERATION_NO_BUFFER

    def _keep_body(self, data: bytes) -> None:
        """A request that may be retried or redirected internally is replayed from a copy of
        its body, up to the buffer limit (past it, Envoy gives up retrying and does not
        follow the redirect either)."""
        if self.request_body_overflow:
            return
        body = self.request_body
        if body is None:
            body = self.request_body = bytearray()
        if len(body) + len(data) > self.decoder_callbacks.stream.connection.buffer_limit:
            self.request_body_overflow = True
            self.request_body = None
            if self.retry_state is not None or self.shadows:
                if self.retry_state is not None:
                    self.retry_state.release()
                    self.retry_state = None
                self.shadows = None
                self.cluster.stats.retry_or_shadow_abandoned.inc()
            return
        body += data

    def decode_trailers(self, trailers: HeaderMap) -> FilterTrailersStatus:
        self.request_done = True
        upstream = self.upstream
        if upstream is not None and upstream.encoder is not None:
            upstream.encoder.encode_trailers(trailers)
            self._request_sent()
            if self.retry_state is not None or self.shadows:
                self.trailers = trailers  # for a retry or a shadow
        else:
            self.trailers = trailers
        self._on_request_complete()
        return FilterTrailersStatus.STOP_ITERATION

    def on_destroy(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.try_idle_timer is not None:
            self._stop_try_idle_timer()
        if self.retry_state is not None:
            if self.retry_timer is not None or self.per_try_timer is not None:
                self._cancel_retry_timers()
            if self.retry_state.armed:  # (release's test, inline)
                self.retry_state.release()
        if self.upstream is not None:
            upstream = self.upstream
            self.upstream = None
            upstream.reset()
        if self.hedged:
            self._reset_hedged()
        if self.buffered:  # (a body held for a connection that never came)
            self.buffered = []
        if self.downstream_paused:  # the connection may carry the next request
            self.downstream_paused = False
            self.decoder_callbacks.on_decoder_filter_below_write_buffer_low_watermark()

    # Request ----------------------------------------------------------------------------

    def _reply_without_cluster(self, route, headers: HeaderMap) -> None:
        """The answer of a route with no cluster to forward to: its direct response or its
        redirect, else (the cluster does not exist) the cluster_not_found local reply."""
        stats = self.config.stats
        action = route.action
        if type(action) is DirectResponseAction:
            stats.rq_direct_response.inc()
            body = action.response_body(headers, self.decoder_callbacks.stream_info)
            self._direct_reply(route, headers, action.status, body, None, action.content_type)
        elif type(action) is RedirectAction:
            stats.rq_direct_response.inc()  # Envoy: a redirect is a direct response entry
            self._direct_reply(route, headers, action.response_code, b"", action)
        else:
            stats.no_cluster.inc()
            self.decoder_callbacks.send_local_reply(
                action.cluster_not_found_response_code,
                details="cluster_not_found",
                flags=F.NO_CLUSTER_FOUND,
            )

    def _route_request(self, headers: HeaderMap, route, action, host, end_stream: bool) -> None:
        """What a route that does not send the request ``as is`` does: picks the mirrors it
        goes to, changes its headers and, if it is complete (headers only), sends it to the
        mirrors (``_on_request_complete``'s part)."""
        if action.request_mirror_policies:
            self._pick_shadows(action.request_mirror_policies, headers)
        info = self.decoder_callbacks.stream_info
        self._finalize_request_headers(headers, route, action, host, info)
        if end_stream and self.shadows:
            self._send_shadows()

    def _hash_host(self, cluster, action: RouteAction, headers: HeaderMap):
        """The host of a ring hash / Maglev cluster: by the route's hash policy, evaluated
        once per request (retries hash the same context)."""
        hash_ctx = self.hash_ctx = action.hash_context(headers, self.decoder_callbacks.stream_info)
        return cluster.choose_host(hash_ctx)

    def _apply_policies(self, headers: HeaderMap, action: RouteAction, cluster) -> None:
        """What a route that is not ``plain``, or a request with router headers, asks for:
        the route's stream idle timeout, hedging, the retry state, and the request's timeouts
        (``_final_timeout``, which consumes the router headers); first, the request's virtual
        cluster and route stats, matched on the headers as they came."""
        if action.request_stats is not None:
            self._count_under(action.request_stats, headers)
        if action.idle_timeout is not None:  # the route's own stream idle timeout
            self.decoder_callbacks.stream.set_idle_timeout(action.idle_timeout)
        self.hedging = bool(action.hedge_on_per_try_timeout) or (
            headers.get("x-envoy-hedge-on-per-try-timeout") == "true"
        )
        policy = action.retry_policy
        if (
            policy is not None
            or "x-envoy-retry-on" in headers
            or ("x-envoy-retry-grpc-on" in headers)
        ):
            retry = self.retry_state = RetryState.create(
                policy or EMPTY_POLICY, headers, cluster, self.config.random
            )
            if retry is not None and self.request_stats.stats:
                retry.request_stats = self.request_stats.stats
        self.timeout = self._final_timeout(headers, action)

    def _count_under(self, request_stats, headers: HeaderMap) -> None:
        """Envoy's "set up stat prefixes": the request's virtual cluster (the first that
        matches its headers, else ``other``) and its route's stat_prefix stats, which it is
        counted under beside its cluster; a named virtual cluster is %VIRTUAL_CLUSTER_NAME%."""
        chosen = self.request_stats = request_stats.select(headers)
        self.scopes = chosen.scopes
        self.upstream_request_type = CountedUpstreamRequest
        if chosen.virtual_cluster_name is not None:
            self.decoder_callbacks.stream_info.virtual_cluster_name = chosen.virtual_cluster_name

    def _final_timeout(self, headers: HeaderMap, action) -> float:
        """Envoy's FilterUtility::finalTimeout (timeouts.py). The route's timeout (none with
        ``max_stream_duration``; from ``grpc-timeout`` for a gRPC request on a route with
        ``max_grpc_timeout``), unless the request (an internal one: an external client's
        x-envoy-* headers were stripped) asks for another with x-envoy-upstream-rq-timeout-ms
        (or, with respect_expected_rq_timeout, x-envoy-expected-rq-timeout-ms);
        x-envoy-upstream-rq-per-try-timeout-ms replaces the retry policy's per-try timeout.
        The router consumes these headers and the retry ones, and tells the upstream the time
        it has in x-envoy-expected-rq-timeout-ms (in place of the client's, if any) and, with
        ``max_grpc_timeout``, in grpc-timeout."""
        timeout = action.timeout
        config = self.config
        if action.max_stream_duration is not None:
            timeout = 0.0  # the connection manager's stream duration bounds the request
        elif action.max_grpc_timeout is not None and self.grpc:
            ms = grpc_route_timeout_ms(action.max_grpc_timeout, action.grpc_timeout_offset, headers)
            timeout = ms / 1000
            self.grpc_timeout = True
        expected = (
            headers.get("x-envoy-expected-rq-timeout-ms")
            if config.respect_expected_rq_timeout
            else None
        )
        if expected is not None:
            if expected.isdigit():
                timeout = int(expected) / 1000
        else:
            value = headers.get("x-envoy-upstream-rq-timeout-ms")
            if value is not None and value.isdigit():
                timeout = int(value) / 1000
        per_try = headers.get("x-envoy-upstream-rq-per-try-timeout-ms")
        if per_try is not None and per_try.isdigit():
            self.per_try = int(per_try) / 1000
        elif action.retry_policy is not None:
            self.per_try = action.retry_policy.per_try_timeout
        self.alt_response = "x-envoy-upstream-rq-timeout-alt-response" in headers
        headers.remove_all(_CONSUMED_HEADERS)
        if not self.per_try and not self.grpc_timeout:  # the common case, inline
            if timeout and not config.suppress_envoy_headers:
                headers.set("x-envoy-expected-rq-timeout-ms", str(round(timeout * 1000)))
        else:
            self._set_timeout_headers(headers, timeout, 0)
        return timeout

    def _set_timeout_headers(self, headers: HeaderMap, timeout: float, elapsed_ms: int) -> None:
        """What the upstream is told of the time it has (Envoy's setTimeoutHeaders)."""
        expected = expected_timeout_ms(
            global_ms=round(timeout * 1000),
            per_try_ms=round(self.per_try * 1000),
            hedging=self.hedging,  # (a hedged try may run past its per-try timeout)
            elapsed_ms=elapsed_ms,
        )
        set_timeout_headers(
            headers,
            expected,
            suppress=self.config.suppress_envoy_headers,
            grpc_timeout=self.grpc_timeout,
        )

    def _finalize_request_headers(self, headers, route, action, host, info) -> None:
        """The route's changes to the request: header mutations, attempt count, host and path
        rewrites (none for a route that sends the request ``as is``)."""
        route.finalize_request_headers(headers, info)
        if route.virtual_host.include_request_attempt_count:
            headers.set("x-envoy-attempt-count", "1")
        keep_original = not self.config.suppress_envoy_headers
        weighted = route.weighted_cluster
        if weighted is not None and weighted.host_rewrite_literal:
            headers.set(":authority", weighted.host_rewrite_literal)
        new_host = action.host_rewrite(headers)
        if new_host is None and action.auto_host_rewrite and host.config.hostname:
            new_host = host.config.hostname
        if new_host is not None:
            update_authority(
                headers,
                new_host,
                append_x_forwarded_host=action.append_x_forwarded_host,
                keep_original=keep_original,
            )
        path = headers.get(":path")
        if path is not None:
            new_path = route.rewrite_path(path)
            if new_path is not None:
                if keep_original:
                    headers.set("x-envoy-original-path", path)
                headers.set(":path", new_path)

    def _on_request_complete(self) -> None:
        self.request_complete_time = self.config.loop.time()
        upstream = self.upstream
        if upstream is not None and upstream.encoder is not None:
            self._start_try_idle_timer()
        if self.shadows:
            self._send_shadows()
        if self.timeout or self.per_try:  # (no timer to start without either)
            self._start_route_timer()

    def _start_route_timer(self) -> None:
        """The route timeout (or the per-try one), once the request is complete; for a
        WebSocket upgrade, from its head until the 101 (upstream_request.py stops it)."""
        if self.timer is not None or self.cluster is None:
            return
        timeout, per_try = self.timeout, self.per_try
        if self.retry_state is not None:  # the route timeout here, each try's on its own
            if timeout:
                timer = self.timer = self.decoder_callbacks.stream.route_timer
                timer.set(timeout, self._on_timeout, False)
            self._start_per_try_timer()
        elif per_try and (not timeout or per_try < timeout):
            timer = self.timer = self.decoder_callbacks.stream.route_timer
            timer.set(per_try, self._on_timeout, True)
        elif timeout:
            timer = self.timer = self.decoder_callbacks.stream.route_timer
            timer.set(timeout, self._on_timeout, False)

    def on_pool_ready(self, upstream: UpstreamRequest) -> None:
        """The upstream stream exists: send what the downstream sent so far."""
        if upstream.host.outlier.split:  # (a connect success counts only then)
            upstream.host.outlier.put_result(OutlierResult.LOCAL_ORIGIN_CONNECT_SUCCESS)
        encoder = upstream.encoder
        end = self.request_done and not self.buffered and self.trailers is None
        error = encoder.encode_headers(self.request_headers, end)
        if error is not None:
            log.debug("upstream request headers could not be encoded: %s", error)
            self.upstream = None
            upstream.reset()
            self._local_reply(
                LocalReply(status=503, body="", details="upstream_reset_before_response_started")
            )
            return
        if self.buffered:
            body = self.buffered
            self.buffered = []
            self.buffered_bytes = 0
            # What arrived while the connection was made goes out as one piece, as Envoy
            # sends its buffer (a chunked request has one chunk for it, not one per read).
            data = body[0] if len(body) == 1 else b"".join(body)
            encoder.encode_data(data, self.request_done and self.trailers is None)
            if self.downstream_paused:
                self.downstream_paused = False
                self.decoder_callbacks.on_decoder_filter_below_write_buffer_low_watermark()
        if self.trailers is not None:
            encoder.encode_trailers(self.trailers)
        if self.request_done:
            # _request_sent, inlined; a per-try idle timeout needs a retry policy with one
            self.decoder_callbacks.stream_info.last_upstream_tx_byte_sent = self.config.loop.time()
            if not self.route.action.plain and not self.route.action.plain_retries:
                self._start_try_idle_timer()

    def _request_sent(self) -> None:
        self.decoder_callbacks.stream_info.last_upstream_tx_byte_sent = self.config.loop.time()

    # Response ---------------------------------------------------------------------------

    def on_upstream_headers(self, headers: HeaderMap, end_stream: bool) -> None:
        cb = self.decoder_callbacks
        info = cb.stream_info
        info.response_code_details = "via_upstream"
        status = headers.get(":status", "0")
        code = int(status) if status.isdigit() else 0
        info.response_code = code  # %RESPONSE_CODE% in response header values
        # A retry state judges a response from its ``judged_from`` on (a 2xx of a 5xx policy:
        # not at all), so that response takes the plain path.
        if self.grpc or self.hedged or ((retry := self.retry_state) and code >= retry.judged_from):
            if self._judge_response(headers, code, end_stream):
                return
        else:  # _judge_response's steps, for a response no retry condition concerns
            host = self.host
            host.outlier.put_http_response_code(code)  # (before any retry decision, as Envoy)
            if "x-envoy-immediate-health-check-fail" in headers:
                host.health_checker.set_unhealthy()
            if self.config.dynamic_stats and not info.health_check:
                # Envoy charges no upstream code stats for a health check (its filter's)
                self.cluster.code_stats.charge(code, internal=cb.stream.internal, under=self.scopes)
            # _charge_host, inlined (Counter.inc without the call)
            (host.stats.rq_error if code >= 500 else host.stats.rq_success).value += 1
        if not self.route.response_as_is or self.hash_ctx is not None:
            if self._rewrite_response(headers, code):
                return
        elif not self.config.suppress_envoy_headers and self.request_done:
            # (the service time, as _rewrite_response sets it)
            service_ms = round((self.config.loop.time() - self.request_complete_time) * 1000)
            headers.set("x-envoy-upstream-service-time", str(service_ms))
        if end_stream:
            self._on_upstream_complete()
        cb.encode_headers(headers, end_stream)

    def _judge_response(self, headers: HeaderMap, code: int, end_stream: bool) -> bool:
        """The outlier result, the retry decision and the stats of a response to a gRPC
        request (judged by its grpc-status) or to one with tries in play (hedging, or a retry
        state that ``concerns`` itself with the response's code).
        True when the response is dropped: another try is still running and may do better,
        or the policy retries it."""
        cb = self.decoder_callbacks
        host = self.host
        status_grpc = grpc_status(headers) if self.grpc else None
        # Before any retry decision, as Envoy; a trailers-only gRPC answer by its grpc-status.
        host.outlier.put_http_response_code(
            code if status_grpc is None else grpc_to_http_status(status_grpc)
        )
        if "x-envoy-immediate-health-check-fail" in headers:
            host.health_checker.set_unhealthy()
        retry = self.retry_state
        if self.hedged:
            if self._drop_while_hedged(retry, headers, code):
                return True
            self._reset_hedged()  # this response wins
        if (
            retry is not None
            and retry.concerns(code)
            and self._retry_on_headers(retry, headers, code, end_stream)
        ):
            self._tell_retry(False)
            return True
        if self.config.dynamic_stats and not cb.stream_info.health_check:
            # Envoy charges no upstream code stats for a health check (the health_check filter)
            self.cluster.code_stats.charge(code, internal=cb.stream.internal, under=self.scopes)
        if self.grpc and code < 500:
            if not end_stream:  # the trailers tell
                self.grpc_deferred = True
            else:
                self._charge_host_grpc(status_grpc)
        else:
            self._charge_host(code)
        return False

    def _rewrite_response(self, headers: HeaderMap, code: int) -> bool:
        """The response headers of a route that does not pass the response on ``as is`` (or
        of a hashing cluster's request, which may add cookies): an internal redirect to
        follow (True: the response goes no further), the service time, the attempt count,
        the generated cookies, the route's header mutations, in Envoy's order."""
        route = self.route
        policy = route.action.internal_redirect_policy
        if (
            policy is not None
            and code in policy.redirect_response_codes
            and self._follow_redirect(policy, headers)
        ):
            return True
        config = self.config
        if not config.suppress_envoy_headers and self.request_done:
            # (Envoy: only once the request is complete, so never on a tunnel's answer)
            service_ms = round((config.loop.time() - self.request_complete_time) * 1000)
            headers.set("x-envoy-upstream-service-time", str(service_ms))
        if route.virtual_host.include_attempt_count_in_response:
            headers.set("x-envoy-attempt-count", str(self.attempts))
        hash_ctx = self.hash_ctx
        if hash_ctx is not None and hash_ctx.set_cookies:
            for cookie in hash_ctx.set_cookies:  # generated by a cookie hash policy
                headers.add("set-cookie", cookie)
        route.finalize_response_headers(
            self.request_headers, headers, self.decoder_callbacks.stream_info
        )
        return False

    def _follow_redirect(self, policy, response_headers: HeaderMap) -> bool:
        """Envoy's internal redirect: a redirect response the route says to follow becomes
        a new request to its location, through a new route lookup and filter chain; the
        client never sees the redirect. False (the response passes through, counted under
        ``passthrough_internal_redirect_*``) when it cannot be followed."""
        stats = self.config.stats
        cb = self.decoder_callbacks
        stream = cb.stream
        if not self.request_done or self.request_body_overflow:
            return False
        parsed = _parse_location(response_headers.get("location") or "")
        if parsed is None:
            stats.passthrough_internal_redirect_bad_location.inc()
            self.cluster.stats.upstream_internal_redirect_failed_total.inc()
            return False
        scheme, authority, path = parsed
        request = self.request_headers
        current_scheme = request.get(":scheme") or request.get("x-forwarded-proto") or "http"
        if scheme != current_scheme and not policy.allow_cross_scheme_redirect:
            stats.passthrough_internal_redirect_unsafe_scheme.inc()
            self.cluster.stats.upstream_internal_redirect_failed_total.inc()
            return False
        if stream.internal_redirects >= policy.max_internal_redirects:
            stats.passthrough_internal_redirect_too_many_redirects.inc()
            self.cluster.stats.upstream_internal_redirect_failed_total.inc()
            return False
        original_url = f"{current_scheme}://{request.get(':authority', '')}"
        original_url += request.get("x-envoy-original-path") or request.get(":path") or ""
        for name in policy.response_headers_to_copy:
            values = response_headers.get_all(name)
            request.remove(name)
            for value in values:
                request.add(name, value)
        status = response_headers.get(":status")
        request.set("x-envoy-original-url", original_url)
        request.remove("x-envoy-original-path")
        request.set(":authority", authority)
        request.set(":path", path)
        if request.get(":scheme") is not None:
            request.set(":scheme", scheme)
        body = self.request_body
        if status == "303" and request.get(":method") not in ("GET", "HEAD"):
            request.set(":method", "GET")
            request.remove("content-length")
            body = None
        self.cluster.stats.upstream_internal_redirect_succeeded_total.inc()
        upstream = self.upstream
        self.upstream = None
        if upstream is not None:
            upstream.reset()
        stream.recreate(request, body)
        return True

    def on_upstream_data(self, data: bytes, end_stream: bool) -> None:
        if end_stream:
            if self.grpc_deferred:  # a gRPC response without trailers is an error
                self._charge_host_grpc(None)
            self._on_upstream_complete()
        self.decoder_callbacks.encode_data(data, end_stream)

    def on_upstream_trailers(self, trailers: HeaderMap) -> None:
        if self.grpc_deferred:
            self._charge_host_grpc(grpc_status(trailers))
        self._on_upstream_complete()
        self.decoder_callbacks.encode_trailers(trailers)

    def _charge_host(self, code: int) -> None:
        """The host's rq_success / rq_error (Envoy's chargeUpstreamCode; /clusters shows them)."""
        host = self.host
        if host is not None:
            (host.stats.rq_error if code >= 500 else host.stats.rq_success).inc()

    def _charge_host_grpc(self, status: int | None) -> None:
        """A gRPC answer: a success when it has a grpc-status that is not a 5xx's."""
        self.grpc_deferred = False
        host = self.host
        if host is not None:
            ok = status is not None and grpc_to_http_status(status) < 500
            (host.stats.rq_success if ok else host.stats.rq_error).inc()

    def _on_upstream_complete(self) -> None:
        if self.try_idle_timer is not None:
            self._stop_try_idle_timer()
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.per_try_timer is not None:
            self.per_try_timer.cancel()
            self.per_try_timer = None
        cb = self.decoder_callbacks
        if self.config.dynamic_stats and self.request_done and not cb.stream_info.health_check:
            ms = (self.config.loop.time() - self.start_time) * 1000
            self.cluster.code_stats.record_time(ms, internal=cb.stream.internal, under=self.scopes)
        self.upstream = None

    def on_upstream_reset(
        self, reason: StreamResetReason, transport_failure_reason: str, response_started: bool
    ) -> None:
        self.upstream = None
        self._stop_try_idle_timer()
        if not response_started and reason is not StreamResetReason.OVERFLOW and self.host:
            self.host.outlier.put_result(OutlierResult.LOCAL_ORIGIN_CONNECT_FAILED)
        if self.hedged and not response_started:
            if self.per_try_timer is not None:  # an earlier try is still running: it may
                self.per_try_timer.cancel()  # yet answer
                self.per_try_timer = None
            return
        cb = self.decoder_callbacks
        info = cb.stream_info
        if transport_failure_reason:
            info.upstream_transport_failure_reason = transport_failure_reason
        retry = self.retry_state
        if retry is not None and not response_started:
            would = self.request_done and retry.would_retry_reset(
                overflow=reason is StreamResetReason.OVERFLOW,
                connect_failure=reason in _CONNECT_FAILURES,
                refused_stream=reason is StreamResetReason.REMOTE_REFUSED_STREAM_RESET,
            )
            if self._retry_decision(retry, would):
                self._tell_retry(False)
                return
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        flag = _RESET_FLAGS.get(reason, 0)
        if response_started:
            if self.grpc_deferred:  # (Envoy counts the stat for a deferred gRPC answer only)
                self._charge_host_grpc(None)
                self.config.stats.rq_reset_after_downstream_response_started.inc()
            if flag:
                info.set_flag(flag)
            # Envoy's onUpstreamAbort: a local reply all the same, which the stream turns
            # into a reset once the client has the response's headers (a filter that holds
            # them, as grpc_http1_bridge does, lets the reply go out instead).
            self._local_reply(
                upstream_reset(
                    reason.value,
                    flags=0,
                    status=502 if reason is StreamResetReason.PROTOCOL_ERROR else 503,
                    retried=self.attempts > 1,
                    transport_failure_reason=transport_failure_reason,
                    response_started=True,
                )
            )
            return
        overflow = reason is StreamResetReason.OVERFLOW
        extra = (
            (("x-envoy-overloaded", "true"),)
            if overflow and not self.config.suppress_envoy_headers
            else ()
        )
        protocol_error = reason is StreamResetReason.PROTOCOL_ERROR
        if self.config.dynamic_stats and self.cluster is not None:
            self.cluster.code_stats.charge(
                502 if protocol_error else 503, internal=cb.stream.internal, under=self.scopes
            )
        self._charge_host(503)
        self._local_reply(
            upstream_reset(
                reason.value,
                flags=flag,
                status=502 if protocol_error else 503,
                retried=self.attempts > 1,
                transport_failure_reason=transport_failure_reason,
                headers=extra,
            )
        )

    def _on_timeout(self, per_try: bool, idle: bool = False) -> None:
        # Forget the timer that fired; an idle timeout leaves the route timer (``self.timer``)
        # running: it is cancelled below if this ends the request.
        if not idle:
            self._stop_try_idle_timer()
            if per_try and self.retry_state is not None:
                self.per_try_timer = None  # with retries, per-try timers are their own
            else:
                self.timer = None
                if self.retry_state is not None:
                    self._cancel_retry_timers()
        cluster = self.cluster
        if idle:
            cluster.stats.upstream_rq_per_try_idle_timeout.inc()
            if self.per_try_timer is not None:
                self.per_try_timer.cancel()
                self.per_try_timer = None
        elif per_try:
            if self.hedging:  # a soft timeout: not counted as a per-try timeout
                self._hedge()
                if self.retry_timer is not None:  # the next try starts beside this one
                    self._tell_retry(True)
                return
            cluster.stats.upstream_rq_per_try_timeout.inc()
        else:
            cluster.stats.upstream_rq_timeout.inc()
            for stats in self.request_stats.stats:  # its virtual cluster's, its route's
                stats.upstream_rq_timeout.inc()
            if self.hedged:
                self._reset_hedged()
        if self.host is not None:
            self.host.stats.rq_timeout.inc()
            self.host.outlier.put_result(OutlierResult.LOCAL_ORIGIN_TIMEOUT, 504)
        upstream = self.upstream
        self.upstream = None
        response_started = upstream is not None and upstream.response_started
        if upstream is not None:
            upstream.reset()
        cb = self.decoder_callbacks
        retry = self.retry_state
        # Envoy retries a try that timed out as it retries a reset one.
        if (
            per_try
            and retry is not None
            and not response_started
            and self._retry_decision(retry, self.request_done and retry.would_retry_reset())
        ):
            self._tell_retry(True)
            return
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if response_started:
            if self.grpc_deferred:
                self._charge_host_grpc(None)
            cb.stream_info.set_flag(F.UPSTREAM_REQUEST_TIMEOUT)
            self.config.stats.rq_reset_after_downstream_response_started.inc()
            cb.reset_stream()
            return
        reply = _TIMEOUT_ALT_REPLY if self.alt_response else _TIMEOUT_REPLY
        if idle:
            reply = dataclasses.replace(reply, details="upstream_per_try_idle_timeout")
        elif per_try:
            reply = dataclasses.replace(reply, details="upstream_per_try_timeout")
        if self.config.dynamic_stats:
            cluster.code_stats.charge(reply.status, internal=cb.stream.internal, under=self.scopes)
        self._charge_host(reply.status)
        self._local_reply(reply)

    def _tell_retry(self, timeout: bool) -> None:
        """A retry is coming: with the virtual host's ``include_is_timeout_retry_header`` the
        next try tells the upstream whether it replaces a try that timed out (a per-try or
        per-try idle timeout, or a hedge), in ``x-envoy-is-timeout-retry``, as Envoy does."""
        if self.route.virtual_host.include_is_timeout_retry_header:
            self.request_headers.set("x-envoy-is-timeout-retry", "true" if timeout else "false")

    # Shadows ----------------------------------------------------------------------------

    def _pick_shadows(self, policies, headers) -> None:
        """The mirror clusters this request goes to (each policy's runtime fraction)."""
        config = self.config
        runtime = config.runtime
        shadows = []
        for policy in policies:
            if not policy.enabled(runtime, config.random.getrandbits(63)):
                continue
            name = policy.cluster_name(headers)
            cluster = config.cluster_manager.get(name) if name else None
            if cluster is not None:
                shadows.append((policy, cluster))
        self.shadows = shadows or None

    def _send_shadows(self) -> None:
        shadows, self.shadows = self.shadows, None
        body = bytes(self.request_body) if self.request_body else None
        timeout = self.route.action.timeout
        for policy, cluster in shadows:
            send_shadow(
                policy,
                cluster,
                self.request_headers,
                body,
                self.trailers,
                timeout,
                self.config.loop,
            )

    # Watermarks of the downstream connection's write buffer -------------------------------

    def on_above_write_buffer_high_watermark(self) -> None:
        """The client reads slowly: stop reading the upstream response until it catches up."""
        upstream = self.upstream
        if upstream is not None and upstream.encoder is not None:
            self.cluster.stats.upstream_flow_control_paused_reading_total.inc()
            upstream.encoder.read_disable(True)

    def on_below_write_buffer_low_watermark(self) -> None:
        upstream = self.upstream
        if upstream is not None and upstream.encoder is not None:
            self.cluster.stats.upstream_flow_control_resumed_reading_total.inc()
            upstream.encoder.read_disable(False)

    # Local replies ---------------------------------------------------------------------

    def _drop_overload(self, cluster, headers: HeaderMap) -> bool:
        """Whether the assignment's drop_overloads drop this request (True: answered with
        Envoy's 503, charged to the cluster's upstream codes and the request's stats)."""
        drop = cluster.lb_config.drop_overload
        unconditional = drop >= 1.0
        if not unconditional and self.config.random.random() >= drop:
            return False
        request_stats = self.route.action.request_stats
        if request_stats is not None:  # (picked before the drop, as in Envoy)
            self._count_under(request_stats, headers)
        if self.config.dynamic_stats:
            internal = self.decoder_callbacks.stream.internal
            cluster.code_stats.charge(503, internal=internal, under=self.scopes)
        if unconditional:
            self.decoder_callbacks.send_local_reply(
                503,
                b"unconditional drop overload",
                details="unconditional_drop_overload",
                headers={"x-envoy-unconditional-drop-overload": "true"},
                flags=F.UNCONDITIONAL_DROP_OVERLOAD,
            )
            return True
        self.decoder_callbacks.send_local_reply(
            503, b"drop overload", details="drop_overload", flags=F.DROP_OVERLOAD
        )
        return True

    def _local_reply(self, reply: LocalReply) -> None:
        self.decoder_callbacks.send_local_reply(
            reply.status,
            reply.body.encode(),
            details=reply.details,
            headers=dict(reply.headers) if reply.headers else None,
            flags=reply.flags,
        )

    def _direct_reply(
        self, route, headers, status: int, body: bytes, redirect, content_type=None
    ) -> None:
        cb = self.decoder_callbacks
        location = None
        if redirect is not None or status == 201 or 300 <= status < 400:
            location = redirect_location(headers, redirect)
        info = cb.stream_info

        def modify(response_headers: HeaderMap) -> None:
            if location is not None:
                response_headers.set("location", location)
            route.finalize_response_headers(headers, response_headers, info)
            if content_type is not None:  # a direct response's body_format has its own
                response_headers.set("content-type", content_type)

        cb.send_local_reply(status, body, details="direct_response", modify_headers=modify)


def _parse_location(location: str) -> tuple[str, str, str] | None:
    """An absolute http(s) URL as (scheme, authority, path with query), or None."""
    scheme, sep, rest = location.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in ("http", "https"):
        return None
    slash = rest.find("/")
    authority, path = (rest, "/") if slash < 0 else (rest[:slash], rest[slash:])
    if not authority or any(c in location for c in "\r\n\0 "):
        return None
    return scheme, authority, path
