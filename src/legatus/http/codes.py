"""Response code stats and reason phrases: Envoy's ``CodeStatsImpl`` and ``CodeUtility``.

Upstream side (``ResponseCodeStats``, one per cluster scope, and per zone scope without
categories), as ``chargeResponseStat`` / ``chargeResponseTiming`` do:

    <scope>.upstream_rq_completed, upstream_rq_<N>xx, upstream_rq_<code>
    <scope>.canary.*      also, when the upstream host or response is a canary
    <scope>.internal.*    also, for a request marked x-envoy-internal
    <scope>.external.*    also, for any other request
    <scope>.upstream_rq_time (+ canary./internal./external.), a histogram in ms

A code outside 100-599 counts as ``upstream_rq_unknown`` and has no class counter.

A request's virtual cluster and route stats (router/route_stats.py) are scopes the response
is also counted ``under``, in the same call and without categories, as Envoy's
ResponseStatInfo carries them: ``<scope>.upstream_rq_completed``, ``_<N>xx``, ``_<code>`` and
``upstream_rq_time``.

Envoy creates these counters the first time a code is seen, so /stats shows
``upstream_rq_503`` only after a 503. The hot path here is one dict lookup (code, categories
and scopes) and a few ``inc()``; names are built once per distinct key and cached.

Downstream side (``DownstreamCodeStats``): the HCM's ``downstream_rq_completed`` and
``downstream_rq_<N>xx`` (no per-code counters), charged on ``http.<prefix>.`` and on the
listener's ``listener.<address>.http.<prefix>.`` alike, skipped for health checks.
"""

from __future__ import annotations

from legatus.stats.store import Counter, Histogram, Scope

# CodeUtility::toString, checked against the status lines of Envoy 1.40 for 200-599.
REASON_PHRASES: dict[int, str] = {
    100: "Continue", 101: "Switching Protocols",
    200: "OK", 201: "Created", 202: "Accepted", 203: "Non-Authoritative Information",
    204: "No Content", 205: "Reset Content", 206: "Partial Content", 207: "Multi-Status",
    208: "Already Reported", 226: "IM Used",
    300: "Multiple Choices", 301: "Moved Permanently", 302: "Found", 303: "See Other",
    304: "Not Modified", 305: "Use Proxy", 307: "Temporary Redirect", 308: "Permanent Redirect",
    400: "Bad Request", 401: "Unauthorized", 402: "Payment Required", 403: "Forbidden",
    404: "Not Found", 405: "Method Not Allowed", 406: "Not Acceptable",
    407: "Proxy Authentication Required", 408: "Request Timeout", 409: "Conflict", 410: "Gone",
    411: "Length Required", 412: "Precondition Failed", 413: "Payload Too Large",
    414: "URI Too Long", 415: "Unsupported Media Type", 416: "Range Not Satisfiable",
    417: "Expectation Failed", 421: "Misdirected Request", 422: "Unprocessable Entity",
    423: "Locked", 424: "Failed Dependency", 425: "Too Early", 426: "Upgrade Required",
    428: "Precondition Required", 429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error", 501: "Not Implemented", 502: "Bad Gateway",
    503: "Service Unavailable", 504: "Gateway Timeout", 505: "HTTP Version Not Supported",
    506: "Variant Also Negotiates", 507: "Insufficient Storage", 508: "Loop Detected",
    510: "Not Extended", 511: "Network Authentication Required",
    599: "Last Unassigned Server Error Code",
}  # fmt: skip


def reason_phrase(code: int) -> str:
    """The status line's reason, and the body of Envoy's codec-error local replies."""
    return REASON_PHRASES.get(code, "Unknown")


def code_class(code: int) -> int:
    """1..5 for 1xx..5xx, 0 for anything else."""
    group = code // 100
    return group if 1 <= group <= 5 else 0


def _code_stat(code: int) -> str:
    return f"upstream_rq_{code}" if 100 <= code <= 599 else "upstream_rq_unknown"


class ResponseCodeStats:
    """The upstream_rq_* code counters and time histograms of one scope.

    ``categories`` adds the canary./internal./external. variants (cluster scopes); zone
    scopes have none, nor have the scopes a response is also counted ``under``
    (``vhost.<vh>.vcluster.<vc>.``, ``vhost.<vh>.route.<stat_prefix>.``).
    """

    __slots__ = ("_categories", "_counters", "_scope", "_timers")

    def __init__(self, scope: Scope, *, categories: bool = True) -> None:
        self._scope = scope
        self._categories = categories
        self._counters: dict[tuple[int, bool, bool, tuple[str, ...]], tuple[Counter, ...]] = {}
        self._timers: dict[tuple[bool, bool, tuple[str, ...]], tuple[Histogram, ...]] = {}

    def charge(
        self, code: int, *, internal: bool = False, canary: bool = False, under: tuple = ()
    ) -> None:
        """Count one response with status ``code`` (Envoy's chargeResponseStat), here and
        ``under`` more scopes (stat name prefixes: a virtual cluster's, a route's)."""
        counters = self._counters.get((code, internal, canary, under))
        if counters is None:
            counters = self._declare(code, internal, canary, under)
        for counter in counters:
            counter.value += 1  # (Counter.inc without the call)

    def record_time(
        self, ms: float, *, internal: bool = False, canary: bool = False, under: tuple = ()
    ) -> None:
        """Record the upstream response time (Envoy's chargeResponseTiming)."""
        timers = self._timers.get((internal, canary, under))
        if timers is None:
            timers = self._declare_timers(internal, canary, under)
        for timer in timers:
            timer.record(ms)

    def _prefixes(self, internal: bool, canary: bool) -> list[str]:
        prefixes = [""]
        if self._categories:
            if canary:
                prefixes.append("canary.")
            prefixes.append("internal." if internal else "external.")
        return prefixes

    def _declare(
        self, code: int, internal: bool, canary: bool, scopes: tuple[str, ...]
    ) -> tuple[Counter, ...]:
        group = code_class(code)
        names = ["upstream_rq_completed"]
        if group:
            names.append(f"upstream_rq_{group}xx")
        names.append(_code_stat(code))
        counters = tuple(
            self._scope.counter(prefix + name)
            for prefix in self._prefixes(internal, canary)
            for name in names
        )
        store = self._scope.store
        counters += tuple(store.counter(scope + name) for scope in scopes for name in names)
        self._counters[(code, internal, canary, scopes)] = counters
        return counters

    def _declare_timers(
        self, internal: bool, canary: bool, scopes: tuple[str, ...]
    ) -> tuple[Histogram, ...]:
        timers = tuple(
            self._scope.histogram(prefix + "upstream_rq_time")
            for prefix in self._prefixes(internal, canary)
        )
        store = self._scope.store
        timers += tuple(store.histogram(scope + "upstream_rq_time") for scope in scopes)
        self._timers[(internal, canary, scopes)] = timers
        return timers


class DownstreamCodeStats:
    """downstream_rq_completed and downstream_rq_<N>xx on the HCM's and the listener's stats.

    ``hcm`` and ``listener`` are StatSets declaring those counters (see conn_manager_stats);
    ``listener`` may be None (a connection manager outside a listener, e.g. tests).
    """

    __slots__ = ("_by_class", "_completed")

    def __init__(self, hcm, listener=None) -> None:
        sets = [s for s in (hcm, listener) if s is not None]
        self._completed = tuple(s.downstream_rq_completed for s in sets)
        by_class = [tuple(getattr(s, f"downstream_rq_{n}xx") for s in sets) for n in range(1, 6)]
        self._by_class: tuple[tuple[Counter, ...], ...] = ((), *by_class)

    def charge(self, code: int, *, health_check: bool = False) -> None:
        """Count one response sent downstream (Envoy's ActiveStream::chargeStats)."""
        if health_check:
            return
        for counter in self._completed:
            counter.value += 1  # (Counter.inc without the call)
        group = code // 100  # (code_class, inline)
        if 1 <= group <= 5:
            for counter in self._by_class[group]:
                counter.value += 1
