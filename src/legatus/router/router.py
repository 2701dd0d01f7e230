"""The router filter (``envoy.filters.http.router``): Envoy's ``Router::Filter``.

The last decoder filter of every HTTP filter chain. For each request it:

1. answers locally when the route says so: no route (404 NR), a direct response or a
   redirect, an unknown cluster (503 NC, or the route's cluster_not_found_response_code),
   no healthy host (503 UH);
2. finalizes the request headers in Envoy's order: the route's header mutations (weighted
   cluster, route, virtual host, route configuration levels), the host rewrite (literal,
   from a header; auto_host_rewrite with the upstream host's hostname), the path rewrite
   (with ``x-envoy-original-path``), ``x-envoy-expected-rq-timeout-ms``;
3. asks the host's HTTP/1.1 connection pool for a stream (``UpstreamRequest``) and sends
   the request as it arrives; body that arrives before the pool is ready is held here
   (past the buffer limit the downstream read pauses);
4. once the downstream request is complete, starts the route timeout (504 UT);
5. feeds the upstream response into the encoder chain: the response code stats
   (``cluster.<name>.upstream_rq_<code>``...), ``x-envoy-upstream-service-time``, the route's
   response header mutations.

An upstream failure before the response started is a local reply with Envoy's body, details
and flag (UF, UO with ``x-envoy-overloaded``, UC, UPE 502, UT 504); after it started, the
downstream stream is reset. A redirect response the route's internal redirect policy covers
is followed here (``_follow_redirect``): the stream is recreated with the new target.
Retries, shadowing and hedging are not here yet (the route compiler refuses their config;
the request headers that ask for them are consumed, as Envoy's router consumes them).

Flow control: the upstream write buffer's watermarks pause and resume the downstream read
(``on_decoder_filter_above_write_buffer_high_watermark``); the downstream's pause and
resume the upstream read (``read_disable`` on the upstream stream).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from dataclasses import dataclass
from typing import Any

from legatus.conn_pool import PoolFailureReason, ResponseDecoder, StreamResetReason
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
from legatus.router.action import DirectResponseAction
from legatus.router.redirect import RedirectAction, redirect_location
from legatus.stream_info import ResponseFlag as F

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
_RESET_FLAGS = {
    StreamResetReason.LOCAL_CONNECTION_FAILURE: F.UPSTREAM_CONNECTION_FAILURE,
    StreamResetReason.REMOTE_CONNECTION_FAILURE: F.UPSTREAM_CONNECTION_FAILURE,
    StreamResetReason.CONNECTION_TIMEOUT: F.UPSTREAM_CONNECTION_FAILURE,
    StreamResetReason.CONNECTION_TERMINATION: F.UPSTREAM_CONNECTION_TERMINATION,
    StreamResetReason.LOCAL_RESET: F.LOCAL_RESET,
    StreamResetReason.OVERFLOW: F.UPSTREAM_OVERFLOW,
    StreamResetReason.REMOTE_RESET: F.UPSTREAM_REMOTE_RESET,
    StreamResetReason.PROTOCOL_ERROR: F.UPSTREAM_PROTOCOL_ERROR,
}
_POOL_FAILURES = {
    PoolFailureReason.OVERFLOW: StreamResetReason.OVERFLOW,
    PoolFailureReason.LOCAL_CONNECTION_FAILURE: StreamResetReason.LOCAL_CONNECTION_FAILURE,
    PoolFailureReason.REMOTE_CONNECTION_FAILURE: StreamResetReason.REMOTE_CONNECTION_FAILURE,
    PoolFailureReason.TIMEOUT: StreamResetReason.CONNECTION_TIMEOUT,
}
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


class Router(StreamDecoderFilter):
    __slots__ = (
        "alt_response",
        "buffered",
        "buffered_bytes",
        "cluster",
        "config",
        "downstream_paused",
        "end_stream",
        "host",
        "per_try",
        "request_body",
        "request_body_overflow",
        "request_complete_time",
        "request_done",
        "request_headers",
        "route",
        "start_time",
        "timeout",
        "timer",
        "trailers",
        "upstream",
    )  # fmt: skip

    def __init__(self, config: RouterConfig) -> None:
        self.config = config
        self.upstream: UpstreamRequest | None = None
        self.route = None
        self.cluster = None
        self.host = None
        self.request_headers: HeaderMap | None = None
        self.buffered: list[bytes] = []
        self.buffered_bytes = 0
        self.trailers: HeaderMap | None = None
        self.request_done = False
        self.downstream_paused = False
        self.timeout = 0.0
        self.per_try = 0.0
        self.alt_response = False
        self.request_body: bytearray | None = None  # kept for an internal redirect
        self.request_body_overflow = False
        self.timer = None
        self.request_complete_time = 0.0
        self.start_time = 0.0

    # Decoding ------------------------------------------------------------------------

    def decode_headers(self, headers: HeaderMap, end_stream: bool) -> FilterHeadersStatus:
        cb = self.decoder_callbacks
        config = self.config
        stats = config.stats
        stats.rq_total.inc()
        info = cb.stream_info
        route = cb.route
        if route is None:
            stats.no_route.inc()
            cb.send_local_reply(404, details="route_not_found", flags=F.NO_ROUTE_FOUND)
            return FilterHeadersStatus.STOP_ITERATION
        action = route.action
        if type(action) is DirectResponseAction:
            stats.rq_direct_response.inc()
            self._direct_reply(route, headers, action.status, action.body, None)
            return FilterHeadersStatus.STOP_ITERATION
        if type(action) is RedirectAction:
            stats.rq_direct_response.inc()  # Envoy: a redirect is a direct response entry
            self._direct_reply(route, headers, action.response_code, b"", action)
            return FilterHeadersStatus.STOP_ITERATION
        name = route.cluster_name
        cluster = config.cluster_manager.get(name) if name else None
        if cluster is None:
            stats.no_cluster.inc()
            cb.send_local_reply(
                action.cluster_not_found_response_code,
                details="cluster_not_found",
                flags=F.NO_CLUSTER_FOUND,
            )
            return FilterHeadersStatus.STOP_ITERATION
        self.route = route
        self.cluster = cluster
        info.upstream_cluster = name
        if action.idle_timeout is not None:  # the route's own stream idle timeout
            cb.stream.set_idle_timeout(action.idle_timeout)
        self.timeout = self._final_timeout(headers, action)
        host = cluster.choose_host()
        if host is None:
            cluster.stats.upstream_cx_none_healthy.inc()
            if config.dynamic_stats:
                cluster.code_stats.charge(503, internal=self.decoder_callbacks.stream.internal)
            self._local_reply(_NO_HEALTHY)
            return FilterHeadersStatus.STOP_ITERATION
        self.host = host
        self._finalize_request_headers(headers, route, action, host, info)
        self.request_headers = headers
        self.request_done = end_stream
        self.start_time = config.loop.time()
        if end_stream:
            self._on_request_complete()
        self.upstream = UpstreamRequest(self, cluster, host)
        self.upstream.start()
        return FilterHeadersStatus.STOP_ITERATION

    def decode_data(self, data: bytes, end_stream: bool) -> FilterDataStatus:
        if end_stream:
            self.request_done = True
        if data and self.route is not None and self.route.action.internal_redirect_policy:
            self._keep_for_redirect(data)
        upstream = self.upstream
        if upstream is not None and upstream.encoder is not None:
            upstream.encoder.encode_data(data, end_stream)
            if end_stream:
                self._request_sent()
        elif upstream is not None and data:
            self.buffered.append(data)
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

    def _keep_for_redirect(self, data: bytes) -> None:
        """A request that may be redirected internally is replayed from a copy of its body,
        up to the buffer limit (past it, Envoy does not follow the redirect either)."""
        if self.request_body_overflow:
            return
        body = self.request_body
        if body is None:
            body = self.request_body = bytearray()
        if len(body) + len(data) > self.decoder_callbacks.stream.connection.buffer_limit:
            self.request_body_overflow = True
            self.request_body = None
            return
        body += data

    def decode_trailers(self, trailers: HeaderMap) -> FilterTrailersStatus:
        self.request_done = True
        upstream = self.upstream
        if upstream is not None and upstream.encoder is not None:
            upstream.encoder.encode_trailers(trailers)
            self._request_sent()
        else:
            self.trailers = trailers
        self._on_request_complete()
        return FilterTrailersStatus.STOP_ITERATION

    def on_destroy(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        upstream = self.upstream
        if upstream is not None:
            self.upstream = None
            upstream.reset()
        self.buffered = []
        if self.downstream_paused:  # the connection may carry the next request
            self.downstream_paused = False
            self.decoder_callbacks.on_decoder_filter_below_write_buffer_low_watermark()

    # Request ----------------------------------------------------------------------------

    def _final_timeout(self, headers: HeaderMap, action) -> float:
        """Envoy's FilterUtility::finalTimeout. The route's timeout, unless the request (an
        internal one: an external client's x-envoy-* headers were stripped) asks for another
        with x-envoy-upstream-rq-timeout-ms; x-envoy-upstream-rq-per-try-timeout-ms bounds
        the one try legatus makes (no retries yet). The router consumes these headers and the
        retry ones, and tells the upstream the time it has in x-envoy-expected-rq-timeout-ms
        (in place of the client's, if any)."""
        timeout = action.timeout
        config = self.config
        if config.respect_expected_rq_timeout:
            expected = headers.get("x-envoy-expected-rq-timeout-ms")
            if expected is not None and expected.isdigit():
                timeout = int(expected) / 1000
        else:
            value = headers.get("x-envoy-upstream-rq-timeout-ms")
            if value is not None and value.isdigit():
                timeout = int(value) / 1000
        per_try = headers.get("x-envoy-upstream-rq-per-try-timeout-ms")
        self.per_try = int(per_try) / 1000 if per_try is not None and per_try.isdigit() else 0.0
        self.alt_response = "x-envoy-upstream-rq-timeout-alt-response" in headers
        headers.remove_all(_CONSUMED_HEADERS)
        expected_timeout = timeout
        if self.per_try and (not timeout or self.per_try < timeout):
            expected_timeout = self.per_try
        if expected_timeout and not config.suppress_envoy_headers:
            headers.set("x-envoy-expected-rq-timeout-ms", str(round(expected_timeout * 1000)))
        return timeout

    def _finalize_request_headers(self, headers, route, action, host, info) -> None:
        route.finalize_request_headers(headers, info)
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
        loop = self.config.loop
        self.request_complete_time = loop.time()
        if self.timer is not None or self.cluster is None:
            return
        timeout, per_try = self.timeout, self.per_try
        if per_try and (not timeout or per_try < timeout):
            timer = self.timer = self.decoder_callbacks.stream.route_timer
            timer.set(per_try, self._on_timeout, True)
        elif timeout:
            timer = self.timer = self.decoder_callbacks.stream.route_timer
            timer.set(timeout, self._on_timeout, False)

    def on_pool_ready(self, upstream: UpstreamRequest) -> None:
        """The upstream stream exists: send what the downstream sent so far."""
        encoder = upstream.encoder
        body = self.buffered
        trailers = self.trailers
        headers_end = self.request_done and not body and trailers is None
        error = encoder.encode_headers(self.request_headers, headers_end)
        if error is not None:
            log.debug("upstream request headers could not be encoded: %s", error)
            self.upstream = None
            upstream.reset()
            self._local_reply(
                LocalReply(status=503, body="", details="upstream_reset_before_response_started")
            )
            return
        if body:
            self.buffered = []
            self.buffered_bytes = 0
            last = len(body) - 1
            for i, chunk in enumerate(body):
                encoder.encode_data(chunk, self.request_done and trailers is None and i == last)
            if self.downstream_paused:
                self.downstream_paused = False
                self.decoder_callbacks.on_decoder_filter_below_write_buffer_low_watermark()
        if trailers is not None:
            encoder.encode_trailers(trailers)
        if self.request_done:
            self._request_sent()

    def _request_sent(self) -> None:
        self.decoder_callbacks.stream_info.last_upstream_tx_byte_sent = self.config.loop.time()

    # Response ---------------------------------------------------------------------------

    def on_upstream_headers(self, headers: HeaderMap, end_stream: bool) -> None:
        cb = self.decoder_callbacks
        route = self.route
        cb.stream_info.response_code_details = "via_upstream"
        status = headers.get(":status", "0")
        code = int(status) if status.isdigit() else 0
        cb.stream_info.response_code = code  # %RESPONSE_CODE% in response header values
        if self.config.dynamic_stats:
            self.cluster.code_stats.charge(code, internal=cb.stream.internal)
        self._charge_host(code)
        policy = route.action.internal_redirect_policy
        if (
            policy is not None
            and code in policy.redirect_response_codes
            and self._follow_redirect(policy, headers)
        ):
            return
        if not self.config.suppress_envoy_headers:
            service_ms = round((self.config.loop.time() - self.request_complete_time) * 1000)
            headers.set("x-envoy-upstream-service-time", str(service_ms))
        route.finalize_response_headers(self.request_headers, headers, cb.stream_info)
        if end_stream:
            self._on_upstream_complete()
        cb.encode_headers(headers, end_stream)

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
            self._on_upstream_complete()
        self.decoder_callbacks.encode_data(data, end_stream)

    def on_upstream_trailers(self, trailers: HeaderMap) -> None:
        self._on_upstream_complete()
        self.decoder_callbacks.encode_trailers(trailers)

    def _charge_host(self, code: int) -> None:
        """The host's rq_success / rq_error (Envoy's chargeUpstreamCode; /clusters shows them)."""
        host = self.host
        if host is not None:
            (host.stats.rq_error if code >= 500 else host.stats.rq_success).inc()

    def _on_upstream_complete(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.config.dynamic_stats and self.request_done:
            ms = (self.config.loop.time() - self.start_time) * 1000
            self.cluster.code_stats.record_time(ms, internal=self.decoder_callbacks.stream.internal)
        self.upstream = None

    def on_upstream_reset(
        self, reason: StreamResetReason, transport_failure_reason: str, response_started: bool
    ) -> None:
        self.upstream = None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        cb = self.decoder_callbacks
        info = cb.stream_info
        if transport_failure_reason:
            info.upstream_transport_failure_reason = transport_failure_reason
        flag = _RESET_FLAGS.get(reason, 0)
        if response_started:
            self.config.stats.rq_reset_after_downstream_response_started.inc()
            if flag:
                info.set_flag(flag)
            cb.reset_stream()
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
                502 if protocol_error else 503, internal=cb.stream.internal
            )
        self._charge_host(503)
        self._local_reply(
            upstream_reset(
                reason.value,
                flags=flag,
                status=502 if protocol_error else 503,
                transport_failure_reason=transport_failure_reason,
                headers=extra,
            )
        )

    def _on_timeout(self, per_try: bool) -> None:
        self.timer = None
        cluster = self.cluster
        if per_try:
            cluster.stats.upstream_rq_per_try_timeout.inc()
        else:
            cluster.stats.upstream_rq_timeout.inc()
        if self.host is not None:
            self.host.stats.rq_timeout.inc()
        upstream = self.upstream
        self.upstream = None
        response_started = upstream is not None and upstream.response_started
        if upstream is not None:
            upstream.reset()
        cb = self.decoder_callbacks
        if response_started:
            cb.stream_info.set_flag(F.UPSTREAM_REQUEST_TIMEOUT)
            self.config.stats.rq_reset_after_downstream_response_started.inc()
            cb.reset_stream()
            return
        reply = _TIMEOUT_ALT_REPLY if self.alt_response else _TIMEOUT_REPLY
        if per_try:
            reply = dataclasses.replace(reply, details="upstream_per_try_timeout")
        if self.config.dynamic_stats:
            cluster.code_stats.charge(reply.status, internal=cb.stream.internal)
        self._charge_host(reply.status)
        self._local_reply(reply)

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

    def _local_reply(self, reply: LocalReply) -> None:
        self.decoder_callbacks.send_local_reply(
            reply.status,
            reply.body.encode(),
            details=reply.details,
            headers=dict(reply.headers) if reply.headers else None,
            flags=reply.flags,
        )

    def _direct_reply(self, route, headers, status: int, body: bytes, redirect) -> None:
        cb = self.decoder_callbacks
        location = None
        if redirect is not None or status == 201 or 300 <= status < 400:
            location = redirect_location(headers, redirect)
        info = cb.stream_info

        def modify(response_headers: HeaderMap) -> None:
            if location is not None:
                response_headers.set("location", location)
            route.finalize_response_headers(headers, response_headers, info)

        cb.send_local_reply(status, body, details="direct_response", modify_headers=modify)


class UpstreamRequest(ResponseDecoder):
    """One try of the request on one upstream host: the pool's callbacks and the response
    decoder (Envoy's ``UpstreamRequest``)."""

    __slots__ = ("cluster", "encoder", "host", "paused_downstream", "pending",
                 "response_started", "router")  # fmt: skip

    def __init__(self, router: Router, cluster, host) -> None:
        self.router = router
        self.cluster = cluster
        self.host = host
        self.encoder = None
        self.pending = None
        self.response_started = False
        self.paused_downstream = False

    def start(self) -> None:
        self.router.decoder_callbacks.stream_info.upstream_request_attempt_count = 1
        pool = self.cluster.http_conn_pool(self.host)
        self.pending = pending = pool.new_stream(self, self)
        if pending is not None:  # queued for a connection: Envoy has the host from here on
            self.router.decoder_callbacks.stream_info.upstream_host = self.host.address_text

    def reset(self) -> None:
        """The router gives up on this try (timeout, downstream gone)."""
        if self.pending is not None:
            pending, self.pending = self.pending, None
            pending.cancel()
        encoder = self.encoder
        if encoder is not None:
            self._unsubscribe(encoder)
            encoder.reset()

    # Pool callbacks ---------------------------------------------------------------------

    def on_pool_ready(self, encoder, host) -> None:
        self.pending = None
        router = self.router
        if router.upstream is not self:
            encoder.reset()
            return
        self.encoder = encoder
        info = router.decoder_callbacks.stream_info
        info.upstream_host = host.address_text
        info.upstream_local_address = _fmt(encoder.local_address)
        info.upstream_connection_id = encoder.connection_id
        info.upstream_protocol = encoder.protocol
        info.first_upstream_tx_byte_sent = router.config.loop.time()
        encoder.add_callbacks(self)  # the upstream's write buffer: see the watermark hooks
        router.decoder_callbacks.add_downstream_watermark_callbacks(router)
        router.on_pool_ready(self)

    def on_pool_failure(self, reason: PoolFailureReason, transport_failure_reason: str, host):
        self.pending = None
        router = self.router
        if router.upstream is not self:
            return
        if host is not None:
            router.decoder_callbacks.stream_info.upstream_host = host.address_text
        router.on_upstream_reset(_POOL_FAILURES[reason], transport_failure_reason, False)

    # Response ---------------------------------------------------------------------------

    def on_informational_headers(self, headers: HeaderMap) -> None:
        """A 1xx from the upstream: a 100 goes to the client if it asked for one (the
        connection manager strips Expect unless proxy_100_continue); others are dropped."""
        router = self.router
        if router.config.dynamic_stats:
            status = headers.get(":status", "")
            if status.isdigit():
                router.cluster.code_stats.charge(
                    int(status), internal=router.decoder_callbacks.stream.internal
                )
        expect = router.request_headers.get("expect") if router.request_headers else None
        if headers.get(":status") == "100" and expect and expect.lower() == "100-continue":
            # Only a 100 the client asked for (and so proxy_100_continue let through).
            router.decoder_callbacks.stream.send_continue(headers)

    def on_headers(self, headers: HeaderMap, end_stream: bool) -> None:
        self.response_started = True
        router = self.router
        cb = router.decoder_callbacks
        cb.stream_info.first_upstream_rx_byte_received = router.config.loop.time()
        if end_stream:
            self._complete()
        router.on_upstream_headers(headers, end_stream)

    def on_data(self, data: bytes, end_stream: bool) -> None:
        router = self.router
        router.decoder_callbacks.touch()
        if end_stream:
            self._complete()
        router.on_upstream_data(data, end_stream)

    def on_trailers(self, trailers: HeaderMap) -> None:
        self._complete()
        self.router.on_upstream_trailers(trailers)

    def on_reset(self, reason: StreamResetReason, details: str) -> None:
        router = self.router
        if router.upstream is not self:
            return
        self._detach()
        router.on_upstream_reset(reason, details, self.response_started)

    def _complete(self) -> None:
        router = self.router
        router.decoder_callbacks.stream_info.last_upstream_rx_byte_received = (
            router.config.loop.time()
        )
        self._detach()

    def _detach(self) -> None:
        encoder = self.encoder
        if encoder is not None:
            self._unsubscribe(encoder)

    def _unsubscribe(self, encoder) -> None:
        self.encoder = None
        encoder.remove_callbacks(self)
        callbacks = self.router.decoder_callbacks
        callbacks.remove_downstream_watermark_callbacks(self.router)
        if self.paused_downstream:  # the request is over: let the client read again
            self.on_below_write_buffer_low_watermark()

    # Watermarks of the upstream connection's write buffer ---------------------------------

    def on_above_write_buffer_high_watermark(self) -> None:
        """The upstream reads slowly: stop reading the client's request body."""
        if not self.paused_downstream:
            self.paused_downstream = True
            self.cluster.stats.upstream_flow_control_backed_up_total.inc()
            self.router.decoder_callbacks.on_decoder_filter_above_write_buffer_high_watermark()

    def on_below_write_buffer_low_watermark(self) -> None:
        if self.paused_downstream:
            self.paused_downstream = False
            self.cluster.stats.upstream_flow_control_drained_total.inc()
            self.router.decoder_callbacks.on_decoder_filter_below_write_buffer_low_watermark()


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


@functools.lru_cache(maxsize=4096)
def _fmt(address) -> str | None:
    if not address:
        return None
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
