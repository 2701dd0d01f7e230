"""The router's tries (Envoy's ``Router::Filter`` retry, hedging and per-try parts).

``Tries`` is a part of ``Router`` (router.py), kept apart because it is one concern: what
happens between one try and the next. A try that fails in a way the retry policy covers
(retry_state.py judges it) is abandoned and the next one starts after a jittered back-off on
a host the retry predicates accept (``_schedule_retry`` / ``_do_retry``); with
``hedge_on_per_try_timeout`` a slow try keeps running beside the next one and the first good
answer wins (``_hedge``, ``take_hedged``); ``per_try_idle_timeout`` ends a try that makes no
progress (one re-arming timer per try). The state these methods use is the router's.
"""

from __future__ import annotations

from legatus.conn_pool import StreamResetReason
from legatus.http.headers import HeaderMap
from legatus.http.local_reply import ENVOY_LOCAL_REPLIES
from legatus.router.retry_priority import PreviousPriorities
from legatus.router.retry_state import RetryState, RetryStatus
from legatus.router.upstream_request import UpstreamRequest
from legatus.stream_info import ResponseFlag as F
from legatus.upstream.outlier_reporter import Result as OutlierResult

_NO_HEALTHY = ENVOY_LOCAL_REPLIES["no_healthy_upstream"]


class Tries:
    """Retries, hedging and the per-try idle timeout of a ``Router``."""

    # per_try_idle_timeout ---------------------------------------------------------------

    def _start_try_idle_timer(self) -> None:
        policy = self.route.action.retry_policy if self.route is not None else None
        if policy is None or not policy.per_try_idle_timeout or self.try_idle_timer is not None:
            return
        loop = self.config.loop
        self.try_idle_deadline = loop.time() + policy.per_try_idle_timeout
        self.try_idle_timer = loop.call_at(self.try_idle_deadline, self._on_try_idle)

    def touch_try(self) -> None:
        """Progress from the upstream on the current try: its idle deadline moves."""
        if self.try_idle_timer is not None:
            policy = self.route.action.retry_policy
            self.try_idle_deadline = self.config.loop.time() + policy.per_try_idle_timeout

    def _stop_try_idle_timer(self) -> None:
        if self.try_idle_timer is not None:
            self.try_idle_timer.cancel()
            self.try_idle_timer = None

    def _on_try_idle(self) -> None:
        loop = self.config.loop
        if loop.time() < self.try_idle_deadline:  # progress since: wait for the rest
            self.try_idle_timer = loop.call_at(self.try_idle_deadline, self._on_try_idle)
            return
        self.try_idle_timer = None
        self._on_timeout(True, idle=True)

    # Hedging ----------------------------------------------------------------------------

    def _hedge(self) -> None:
        """A per-try timeout with hedging: the try keeps running and, if the retry policy
        allows one more, the next try starts beside it (Envoy's soft per-try timeout)."""
        upstream = self.upstream
        host = self.host
        if host is not None:
            host.stats.rq_timeout.inc()
            host.outlier.put_result(OutlierResult.LOCAL_ORIGIN_TIMEOUT, 504)
        retry = self.retry_state
        if upstream is None or upstream.response_started or retry is None:
            return
        status = retry.should_retry(True)
        if status is RetryStatus.YES:
            self._stop_try_idle_timer()
            self.hedged = [*self.hedged, upstream]
            self.upstream = None
            retry.previous_hosts += (host,)
            self.retry_timer = self.config.loop.call_later(retry.next_back_off(), self._do_retry)
        else:
            self._flag_retry_status(status)

    def take_hedged(self, upstream: UpstreamRequest, headers: HeaderMap) -> bool:
        """Response headers from an earlier, hedged try: True when they win (the try becomes
        the current one and every other is reset), False when they are dropped."""
        if upstream not in self.hedged:
            return False
        status = headers.get(":status", "0")
        code = int(status) if status.isdigit() else 0
        self.hedged.remove(upstream)
        if self._drop_while_hedged(self.retry_state, headers, code, upstream):
            upstream.host.outlier.put_http_response_code(code)
            return False
        current = self.upstream
        if current is not None:
            self.upstream = None
            current.reset()
        self._reset_hedged()
        self._cancel_retry_timers()
        self.upstream = upstream
        self.host = upstream.host
        return True

    def _drop_while_hedged(self, retry, headers, code: int, upstream=None) -> bool:
        """A retriable response while another try is still running is dropped (that try may
        still answer well); True when dropped."""
        others = bool(self.hedged) or (upstream is not None and self.upstream is not None)
        if not others or retry is None or not retry.would_retry_headers(headers, code):
            return False
        if self.config.dynamic_stats:
            internal = self.decoder_callbacks.stream.internal
            self.cluster.retry_code_stats.charge(code, internal=internal)
        if upstream is None:  # the current try: an earlier one takes over waiting
            upstream, self.upstream = self.upstream, None
            self._stop_try_idle_timer()
            if self.per_try_timer is not None:
                self.per_try_timer.cancel()
                self.per_try_timer = None
        if upstream is not None:
            upstream.reset()
        return True

    def hedged_reset(self, upstream: UpstreamRequest, reason, details: str) -> None:
        """An earlier, hedged try failed. If nothing else is running or coming it was the
        last hope: it ends the request as a reset of the current try would."""
        if upstream not in self.hedged:
            return
        self.hedged.remove(upstream)
        if reason is not StreamResetReason.OVERFLOW:
            upstream.host.outlier.put_result(OutlierResult.LOCAL_ORIGIN_CONNECT_FAILED)
        if self.upstream is None and self.retry_timer is None and not self.hedged:
            self.host = upstream.host
            self.upstream = upstream  # on_upstream_reset clears it
            self.on_upstream_reset(reason, details, upstream.response_started)

    def _reset_hedged(self) -> None:
        hedged, self.hedged = self.hedged, []
        for upstream in hedged:
            upstream.reset()

    # Retries ----------------------------------------------------------------------------

    def _retry_on_headers(self, retry: RetryState, headers, code: int, end_stream: bool) -> bool:
        """A response the policy retries is dropped (counted under ``retry.``) and the request
        tried again; True when that happens."""
        would = self.request_done and retry.would_retry_headers(headers, code)
        status = retry.should_retry(would)
        if status is RetryStatus.YES:
            if self.config.dynamic_stats:
                internal = self.decoder_callbacks.stream.internal
                self.cluster.retry_code_stats.charge(code, internal=internal)
            self._charge_host(code)
            self._schedule_retry()
            return True
        self._flag_retry_status(status)
        return False

    def _retry_decision(self, retry: RetryState, would_retry: bool) -> bool:
        """After a reset or a per-try timeout: retry (True), or flag why not."""
        status = retry.should_retry(would_retry)
        if status is RetryStatus.YES:
            self._schedule_retry()
            return True
        self._flag_retry_status(status)
        return False

    def _flag_retry_status(self, status: RetryStatus) -> None:
        if status is RetryStatus.LIMIT_EXCEEDED:
            self.decoder_callbacks.stream_info.set_flag(F.UPSTREAM_RETRY_LIMIT_EXCEEDED)
        elif status is RetryStatus.OVERFLOW:
            self.decoder_callbacks.stream_info.set_flag(F.UPSTREAM_OVERFLOW)

    def _schedule_retry(self) -> None:
        self._stop_try_idle_timer()
        upstream = self.upstream
        self.upstream = None
        if upstream is not None:
            upstream.reset()
        if self.per_try_timer is not None:
            self.per_try_timer.cancel()
            self.per_try_timer = None
        retry = self.retry_state
        retry.previous_hosts += (self.host,)
        self.retry_timer = self.config.loop.call_later(retry.next_back_off(), self._do_retry)

    def _do_retry(self) -> None:
        """The back-off is over: the next try, on a host the retry predicates accept."""
        self.retry_timer = None
        retry = self.retry_state
        cluster = self.cluster
        hash_ctx = self.hash_ctx
        priority_load = None
        frequency = retry.policy.previous_priorities
        if frequency:  # the retry priority: off the priorities tried so far
            if retry.priority is None:
                retry.priority = PreviousPriorities(frequency)
            priority_load = retry.priority.for_attempts(retry.previous_hosts)
        host = cluster.choose_host(hash_ctx, priority_load=priority_load)
        attempts = retry.policy.host_selection_max_attempts
        attempt = 0
        while host is not None and attempt < attempts and retry.host_rejected(host):
            attempt += 1  # a hashing balancer moves off the hashed host with each attempt
            host = cluster.choose_host(hash_ctx, attempt=attempt, priority_load=priority_load)
        cb = self.decoder_callbacks
        if host is None:
            cluster.stats.upstream_cx_none_healthy.inc()
            if self.timer is not None:
                self.timer.cancel()
                self.timer = None
            if self.config.dynamic_stats:
                cluster.code_stats.charge(503, internal=cb.stream.internal, under=self.scopes)
            self._local_reply(_NO_HEALTHY)
            return
        self.host = host
        self.attempts += 1
        info = cb.stream_info
        info.upstream_request_attempt_count = self.attempts
        # Each try has its own upstream info in Envoy: an earlier try's transport failure is
        # not this one's (%UPSTREAM_TRANSPORT_FAILURE_REASON% shows the last try's).
        info.upstream_transport_failure_reason = None
        headers = self.request_headers
        if self.route.virtual_host.include_request_attempt_count:
            headers.set("x-envoy-attempt-count", str(self.attempts))
        if self.timeout or self.per_try:
            # Envoy tells each retry the time left of the route timeout.
            elapsed = 0
            if self.request_complete_time:
                elapsed = int((self.config.loop.time() - self.request_complete_time) * 1000)
            self._set_timeout_headers(headers, self.timeout, elapsed)
        body = self.request_body
        self.buffered = [bytes(body)] if body else []
        self.buffered_bytes = 0
        self._start_per_try_timer()
        self.upstream = self.upstream_request_type(self, cluster, host)
        self.upstream.start()

    def _start_per_try_timer(self) -> None:
        per_try = self.per_try
        if per_try and (not self.timeout or per_try < self.timeout) and self.request_done:
            self.per_try_timer = self.config.loop.call_later(per_try, self._on_timeout, True)

    def _cancel_retry_timers(self) -> None:
        for name in ("retry_timer", "per_try_timer"):
            timer = getattr(self, name)
            if timer is not None:
                timer.cancel()
                setattr(self, name, None)
