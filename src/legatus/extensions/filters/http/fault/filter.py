"""The HTTP fault injection filter (Envoy's ``envoy.filters.http.fault``).

Per request, in ``decode_headers``, with the route's ``HTTPFault`` (the most specific
``typed_per_filter_config`` entry under this filter's name) or else the filter's own:

1. the request must go to ``upstream_cluster`` (when set), come from one of
   ``downstream_nodes`` (``x-envoy-downstream-service-node``, when set) and match every
   ``headers`` matcher; otherwise nothing is injected;
2. a delay, if enabled for this request (its percentage through the runtime) and with a
   duration above 0 ms (fixed, or ``x-envoy-fault-delay-request``), holds the request on a loop
   timer: flag DI, ``delays_injected``. When the timer fires, the abort is decided as below
   (without the active-fault check) or the request goes on;
3. otherwise an abort, if enabled and with a status (fixed, or
   ``x-envoy-fault-abort-request`` in [200, 600), or a gRPC status: then HTTP 200), answers
   ``fault filter abort`` with details ``fault_filter_abort``: flag FI, ``aborts_injected``.

A request with a fault counts once in the ``active_faults`` gauge until its stream ends (a
delay alone stops counting when it ends); past ``max_active_faults`` (or the runtime's
``fault.http.max_active_faults``) a fault is not injected and ``faults_overflow`` counts it.
``x-envoy-downstream-service-cluster`` switches the runtime keys to the cluster's own and
counts ``fault.<cluster>.delays_injected`` / ``aborts_injected`` as well.

Like every legatus stat, ``active_faults`` belongs to one worker process: with several
workers the limit applies per worker (see docs/http-filters.md).
"""

from __future__ import annotations

from typing import Any

from legatus.extensions.filters.http.fault.config import (
    FaultFilterConfig,
    FaultSettings,
    Percentage,
)
from legatus.http.filter import (
    FilterDataStatus,
    FilterHeadersStatus,
    FilterTrailersStatus,
    StreamDecoderFilter,
)
from legatus.http.local_reply import is_grpc_request
from legatus.stream_info import ResponseFlag

_BODY = b"fault filter abort"
_DETAILS = "fault_filter_abort"
_UINT32_MAX = 2**32 - 1
_UINT64_MAX = 2**64 - 1
_WHITESPACE = " \t\n\v\f\r"


def parse_uint(value: str | None, limit: int = _UINT64_MAX) -> int | None:
    """absl::SimpleAtoi into an unsigned integer: surrounding whitespace and a '+' allowed."""
    if value is None:
        return None
    text = value.strip(_WHITESPACE)
    if text[:1] == "+":
        text = text[1:]
    if not text or not text.isascii() or not text.isdigit():
        return None
    number = int(text)
    return number if number <= limit else None


class FaultFilter(StreamDecoderFilter):
    """One request's fault decisions (see module doc)."""

    def __init__(self, config: FaultFilterConfig) -> None:
        self.config = config
        self.settings: FaultSettings = config.settings
        self.timer: Any = None
        self.fault_active = False
        self.downstream_cluster: str | None = None  # the header's value, when present
        self.headers: Any = None

    # Request ----------------------------------------------------------------------------

    def decode_headers(self, headers, end_stream: bool) -> FilterHeadersStatus:
        config = self.config
        callbacks = self.decoder_callbacks
        route = callbacks.route
        settings = config.settings
        if route is not None:
            settings = route.most_specific_per_filter_config(config.name) or settings
        self.settings = settings
        if settings.upstream_cluster and (
            route is None or route.cluster_name != settings.upstream_cluster
        ):
            return FilterHeadersStatus.CONTINUE
        if settings.downstream_nodes:
            node = headers.get("x-envoy-downstream-service-node")
            if node is None or node not in settings.downstream_nodes:
                return FilterHeadersStatus.CONTINUE
        for matcher in settings.headers:
            if not matcher.matches(headers):
                return FilterHeadersStatus.CONTINUE
        self.downstream_cluster = headers.get("x-envoy-downstream-service-cluster")
        if settings.delay is not None:
            duration = self._delay_ms(headers)
            if duration is not None and self._try_inc_active_faults():
                self.headers = headers
                self.timer = config.loop.call_later(duration / 1000.0, self._on_delay_timer)
                self._count("delays_injected")
                callbacks.stream_info.set_flag(ResponseFlag.DELAY_INJECTED)
                return FilterHeadersStatus.STOP_ITERATION
        if settings.abort is not None:
            status = self._abort_status(headers)
            if status is not None and self._try_inc_active_faults():
                self._abort(headers, *status)
                return FilterHeadersStatus.STOP_ITERATION
        return FilterHeadersStatus.CONTINUE

    def decode_data(self, data: bytes, end_stream: bool) -> FilterDataStatus:
        if self.timer is None:
            return FilterDataStatus.CONTINUE
        return FilterDataStatus.STOP_ITERATION_AND_WATERMARK

    def decode_trailers(self, trailers) -> FilterTrailersStatus:
        if self.timer is None:
            return FilterTrailersStatus.CONTINUE
        return FilterTrailersStatus.STOP_ITERATION

    def on_destroy(self) -> None:
        timer = self.timer
        if timer is not None:
            self.timer = None
            timer.cancel()
        self.headers = None
        if self.fault_active:
            self.fault_active = False
            self.config.stats.active_faults.dec()

    # Decisions --------------------------------------------------------------------------

    def _runtime_key(self, default_key: str, cluster_suffix: str) -> str:
        cluster = self.downstream_cluster
        if cluster is None:
            return default_key
        return f"fault.http.{cluster}.{cluster_suffix}"

    def _enabled(self, percentage: Percentage, key: str, headers) -> bool:
        numerator = percentage.numerator
        if percentage.header is not None:
            lowered = parse_uint(headers.get(percentage.header), _UINT32_MAX)
            if lowered is not None and lowered < numerator:
                numerator = lowered
        config = self.config
        return config.runtime.feature_enabled(
            key, numerator, percentage.denominator, config.random.getrandbits(64)
        )

    def _delay_ms(self, headers) -> int | None:
        settings = self.settings
        delay = settings.delay
        key = self._runtime_key(settings.delay_percent_key, "delay.fixed_delay_percent")
        if not self._enabled(delay.percentage, key, headers):
            return None
        duration = delay.fixed_ms
        if duration is None:
            duration = parse_uint(headers.get("x-envoy-fault-delay-request"))
            if duration is None:
                return None
        runtime = self.config.runtime
        duration = runtime.get_integer(settings.delay_duration_key, duration)
        if self.downstream_cluster is not None:
            key = self._runtime_key("", "delay.fixed_duration_ms")
            duration = runtime.get_integer(key, duration)
        return duration if duration > 0 else None

    def _abort_status(self, headers) -> tuple[int, int | None] | None:
        """(HTTP status, gRPC status or None) when this request is to be aborted."""
        settings = self.settings
        abort = settings.abort
        key = self._runtime_key(settings.abort_percent_key, "abort.abort_percent")
        if not self._enabled(abort.percentage, key, headers):
            return None
        runtime = self.config.runtime
        http_status = abort.http_status
        if abort.from_headers:
            http_status = parse_uint(headers.get("x-envoy-fault-abort-request"))
            if http_status is not None and not 200 <= http_status < 600:
                http_status = None
        if http_status is not None:
            status = runtime.get_integer(settings.abort_http_status_key, http_status)
            if self.downstream_cluster is not None:
                # The cluster's key falls back to the configured status, not the runtime's.
                key = self._runtime_key("", "abort.http_status")
                status = runtime.get_integer(key, http_status)
            return status, None
        grpc_status = abort.grpc_status
        if abort.from_headers:
            grpc_status = parse_uint(headers.get("x-envoy-fault-abort-grpc-request"))
        if grpc_status is None:
            return None
        status = runtime.get_integer(settings.abort_grpc_status_key, grpc_status)
        if self.downstream_cluster is not None:
            key = self._runtime_key("", "abort.grpc_status")
            status = runtime.get_integer(key, grpc_status)
        return 200, status

    def _try_inc_active_faults(self) -> bool:
        """Count this request as an active fault (once), unless that overflows the limit."""
        if self.fault_active:
            return True
        settings = self.settings
        stats = self.config.stats
        limit = settings.max_active_faults
        limit = self.config.runtime.get_integer(
            settings.max_active_faults_key, _UINT64_MAX if limit is None else limit
        )
        if stats.active_faults.value >= limit:
            stats.faults_overflow.inc()
            return False
        stats.active_faults.inc()
        self.fault_active = True
        return True

    # Faults -----------------------------------------------------------------------------

    def _count(self, name: str) -> None:
        config = self.config
        getattr(config.stats, name).inc()
        cluster = self.downstream_cluster
        if cluster and not self.settings.disable_downstream_cluster_stats:
            config.scope.counter(f"{cluster}.{name}").inc()

    def _abort(self, headers, http_status: int, grpc_status: int | None) -> None:
        self._count("aborts_injected")
        callbacks = self.decoder_callbacks
        callbacks.stream_info.set_flag(ResponseFlag.FAULT_INJECTED)
        extra = None
        if grpc_status is not None and is_grpc_request(headers):
            extra = {"grpc-status": str(grpc_status)}
        callbacks.send_local_reply(http_status, _BODY, details=_DETAILS, headers=extra)

    def _on_delay_timer(self) -> None:
        self.timer = None
        headers = self.headers
        self.headers = None
        status = self._abort_status(headers) if self.settings.abort is not None else None
        if status is not None:
            self._abort(headers, *status)
            return
        # The delay is over: it no longer counts as an active fault.
        if self.fault_active:
            self.fault_active = False
            self.config.stats.active_faults.dec()
        self.decoder_callbacks.continue_decoding()
