"""One request's retries (Envoy's ``RetryStateImpl``): what to retry, how often, when.

Made by the router only when the route's policy or the request's ``x-envoy-retry-on`` asks
for retries, so a request without them pays nothing. Each finished try is judged by
``should_retry`` with what ``would_retry_headers`` / ``would_retry_reset`` say of it:

- not retriable: no retry (and if the previous try was a retry, it succeeded:
  ``upstream_rq_retry_success``);
- retriable, but no retries left: ``upstream_rq_retry_limit_exceeded`` and the URX flag;
- retriable, but the cluster's ``max_retries`` circuit breaker is full:
  ``upstream_rq_retry_overflow`` (and the UO flag);
- otherwise a retry after a fully jittered exponential back-off: a random time below
  ``base * (2^n - 1)``, n counting the retries, capped at ``max_interval``
  (``upstream_rq_retry``, ``upstream_rq_retry_backoff_exponential``).

A scheduled retry holds one unit of the cluster's retry budget until the next try is judged.
"""

from __future__ import annotations

import enum

from legatus.router.retry_policy import (
    GRPC_ANY,
    GRPC_STATUS_FLAGS,
    RetryOn,
    RetryPolicy,
    parse_retry_grpc_on,
    parse_retry_on,
)


class RetryStatus(enum.Enum):
    NO = 0
    YES = 1
    LIMIT_EXCEEDED = 2
    OVERFLOW = 3


# Plain ints on the per-response path (IntFlag's & runs Python code).
_FIVE_XX = int(RetryOn.FIVE_XX)
_GATEWAY_ERROR = int(RetryOn.GATEWAY_ERROR)
_CONNECT_FAILURE = int(RetryOn.CONNECT_FAILURE)
_REFUSED_STREAM = int(RetryOn.REFUSED_STREAM)
_RETRIABLE_4XX = int(RetryOn.RETRIABLE_4XX)
_RETRIABLE_STATUS_CODES = int(RetryOn.RETRIABLE_STATUS_CODES)
_RETRIABLE_HEADERS = int(RetryOn.RETRIABLE_HEADERS)
_ENVOY_RATE_LIMITED = int(RetryOn.ENVOY_RATE_LIMITED)
_5XX_LIKE = int(RetryOn.FIVE_XX | RetryOn.GATEWAY_ERROR | RetryOn.RESET)
_BELOW_500 = (
    _RETRIABLE_4XX | _RETRIABLE_STATUS_CODES | _RETRIABLE_HEADERS | _ENVOY_RATE_LIMITED | GRPC_ANY
)
_GATEWAY_ERRORS = (502, 503, 504)


class RetryState:
    # Per-request state starts from these class-level defaults: a request writes only what it
    # changes (one per request of a route with retries, so its construction is on the hot path).
    previous_hosts: tuple = ()  # the hosts of the tries so far (the previous_hosts predicate)
    priority = None  # the retry priority's state (retry_priority.py), made by the first retry
    retriable_status_codes: frozenset[int] | None = None  # None: the policy's
    retriable_headers: tuple | None = None  # None: the policy's
    # The lowest status code whose response needs judging (``concerns``): 0 while a retry is
    # in flight (its success is counted) or when a condition looks at responses below 500.
    judged_from = 500
    armed = False  # a retry is scheduled: it holds one unit of the retry budget
    # The request's virtual cluster and route stats (route_stats.py), counted as the cluster's.
    request_stats: tuple = ()
    _attempt = 1  # the back-off exponent: base * (2^attempt - 1)

    def __init__(self, policy: RetryPolicy, retry_on: int, cluster, rng) -> None:
        self.policy = policy
        self.retry_on = retry_on
        self.retries_remaining = policy.num_retries
        self._cluster = cluster
        self._rng = rng
        if retry_on & _BELOW_500:
            self.judged_from = 0

    @classmethod
    def create(cls, policy: RetryPolicy, headers, cluster, rng) -> RetryState | None:
        """The state for a request, or None when nothing asks for retries. Reads the retry
        request headers (the router removes them afterwards)."""
        header = headers.get("x-envoy-retry-on")
        grpc_header = headers.get("x-envoy-retry-grpc-on")
        if not policy.retry_on and header is None and grpc_header is None:
            return None
        retry_on = policy.retry_on
        if header is not None:
            retry_on |= int(parse_retry_on(header)[0])
        if grpc_header is not None:
            retry_on |= parse_retry_grpc_on(grpc_header)
        if policy.retriable_request_headers and not any(
            m.matches(headers) for m in policy.retriable_request_headers
        ):
            retry_on = 0
        state = cls(policy, retry_on, cluster, rng)
        max_retries = headers.get("x-envoy-max-retries")
        if retry_on and max_retries is not None:
            value = max_retries.strip()
            if value.isdigit():
                state.retries_remaining = int(value)
        codes = headers.get("x-envoy-retriable-status-codes")
        if codes is not None:
            extra = {int(c) for c in (p.strip() for p in codes.split(",")) if c.isdigit()}
            state.retriable_status_codes = policy.retriable_status_codes | extra
        names = headers.get("x-envoy-retriable-header-names")
        if names is not None:
            state.retriable_headers = policy.retriable_headers + tuple(
                _NameMatcher(n.strip().lower()) for n in names.split(",") if n.strip()
            )
        return state

    # Judging a try ------------------------------------------------------------------------

    def concerns(self, code: int) -> bool:
        """Whether a response with ``code`` needs judging at all: a 5xx, a condition that
        looks at other responses, or a retry in flight (whose success is counted). The
        common 2xx of a ``5xx`` policy is not."""
        return code >= self.judged_from

    def would_retry_headers(self, headers, code: int) -> bool:
        retry_on = self.retry_on
        if "x-envoy-ratelimited" in headers:
            return bool(retry_on & _ENVOY_RATE_LIMITED)
        if "x-envoy-overloaded" in headers:
            return False
        if retry_on & _FIVE_XX and 500 <= code < 600:
            return True
        if retry_on & _GATEWAY_ERROR and code in _GATEWAY_ERRORS:
            return True
        if retry_on & _RETRIABLE_4XX and code == 409:
            return True
        if retry_on & _RETRIABLE_STATUS_CODES:
            codes = self.retriable_status_codes
            if code in (self.policy.retriable_status_codes if codes is None else codes):
                return True
        if retry_on & _RETRIABLE_HEADERS:
            matchers = self.retriable_headers
            if matchers is None:
                matchers = self.policy.retriable_headers
            if any(m.matches(headers) for m in matchers):
                return True
        if retry_on & GRPC_ANY:
            status = headers.get("grpc-status")
            if status is not None and status.isdigit():
                return bool(retry_on & GRPC_STATUS_FLAGS.get(int(status), 0))
        return False

    def would_retry_reset(
        self, *, overflow: bool = False, connect_failure: bool = False, refused_stream: bool = False
    ) -> bool:
        if overflow:
            return False
        if self.retry_on & _5XX_LIKE:
            return True
        if refused_stream and self.retry_on & _REFUSED_STREAM:  # an HTTP/2 REFUSED_STREAM
            return True
        return bool(connect_failure and self.retry_on & _CONNECT_FAILURE)

    def should_retry(self, would_retry: bool) -> RetryStatus:
        stats = self._cluster.stats
        if self.armed and not would_retry:
            stats.upstream_rq_retry_success.inc()
            for more in self.request_stats:
                more.upstream_rq_retry_success.inc()
        self.release()
        if not would_retry:
            return RetryStatus.NO
        if self.retries_remaining <= 0:
            stats.upstream_rq_retry_limit_exceeded.inc()
            for more in self.request_stats:
                more.upstream_rq_retry_limit_exceeded.inc()
            return RetryStatus.LIMIT_EXCEEDED
        self.retries_remaining -= 1
        resource = self._cluster.resource_managers[0].retries
        if not resource.can_create():
            stats.upstream_rq_retry_overflow.inc()
            for more in self.request_stats:
                more.upstream_rq_retry_overflow.inc()
            return RetryStatus.OVERFLOW
        self.armed = True
        self.judged_from = 0
        resource.inc()
        stats.upstream_rq_retry.inc()
        stats.upstream_rq_retry_backoff_exponential.inc()
        for more in self.request_stats:
            more.upstream_rq_retry.inc()
        return RetryStatus.YES

    def release(self) -> None:
        """Give back the retry budget a scheduled retry holds (its try was judged, or the
        request is over)."""
        if self.armed:
            self.armed = False
            if not self.retry_on & _BELOW_500:
                self.judged_from = 500
            self._cluster.resource_managers[0].retries.dec()

    def next_back_off(self) -> float:
        """Seconds to wait before the retry (Envoy's JitteredExponentialBackOffStrategy)."""
        base_ms = max(1, round(self.policy.base_interval * 1000))
        max_ms = round(self.policy.max_interval * 1000)
        ceiling = ((1 << self._attempt) - 1) * base_ms
        if ceiling <= max_ms:
            self._attempt += 1
        return min(self._rng.getrandbits(64) % ceiling, max_ms) / 1000

    def host_rejected(self, host) -> bool:
        """The previous_hosts predicate: a host a previous try went to is to be avoided."""
        return self.policy.previous_hosts and host in self.previous_hosts


class _NameMatcher:
    """A name-only header matcher from ``x-envoy-retriable-header-names``."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def matches(self, headers) -> bool:
        return self.name in headers
