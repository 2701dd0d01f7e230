"""Worker side of outlier detection and passive health: what the router reports per response.

The main process decides ejections (upstream/outlier_detection.py); each worker only records,
per host, the outcomes of the requests it sent, in order, and flushes them to the main
process: on the next loop iteration once a failure is recorded (so an ejection follows
the failure that triggers it closely), else ``FLUSH_DELAY_S`` later. The hot path is one
method call that bumps a counter::

    host.outlier.put_http_response_code(503)
    host.outlier.put_result(Result.LOCAL_ORIGIN_CONNECT_FAILED)
    host.health_checker.set_unhealthy()  # x-envoy-immediate-health-check-fail

Outcomes are run-length encoded (``[symbol, count, symbol, count, ...]``) so the main
process can replay each host's sequence and keep Envoy's *consecutive* counters. Envoy's
counters are per host across all worker threads; here each worker's sequence is exact, and
the main process interleaves the workers' sequences in the order their flushes arrive. With
one worker that is Envoy's behaviour; with several, a run of failures on one worker and a
success on another within the same flush window may be counted in either order.

Hosts of a cluster without outlier detection (or without health checking) get the shared
``NULL_OUTLIER`` / ``NULL_HEALTH_CHECKER``, whose methods do nothing.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Callable

FLUSH_DELAY_S = 0.05

# The symbols of a host's outcome sequence (ints: they travel in the control channel).
OK = 0  # an HTTP response that is not 5xx (external origin success)
ERROR_5XX = 1  # a 5xx other than 502/503/504
GATEWAY = 2  # 502, 503, 504: a gateway failure, and a 5xx
LOCAL_OK = 3  # connection-level success (split_external_local_origin_errors only)
LOCAL_FAILURE = 4  # connect failure or timeout (split_external_local_origin_errors only)


class Result(enum.Enum):
    """Envoy's Upstream::Outlier::Result: what the router and the pools report."""

    EXT_ORIGIN_REQUEST_FAILED = "ext_origin_request_failed"
    EXT_ORIGIN_REQUEST_SUCCESS = "ext_origin_request_success"
    LOCAL_ORIGIN_CONNECT_FAILED = "local_origin_connect_failed"
    LOCAL_ORIGIN_CONNECT_SUCCESS = "local_origin_connect_success"
    LOCAL_ORIGIN_CONNECT_SUCCESS_FINAL = "local_origin_connect_success_final"
    LOCAL_ORIGIN_TIMEOUT = "local_origin_timeout"


def code_symbol(code: int) -> int:
    if 500 <= code < 600:
        return GATEWAY if 502 <= code <= 504 else ERROR_5XX
    return OK


# Without split_external_local_origin_errors every result is an HTTP code (Envoy's
# resultToHttpCode); a connect success alone says nothing.
_UNSPLIT: dict[Result, tuple[int, ...]] = {
    Result.EXT_ORIGIN_REQUEST_SUCCESS: (OK,),
    Result.LOCAL_ORIGIN_CONNECT_SUCCESS_FINAL: (OK,),
    Result.LOCAL_ORIGIN_TIMEOUT: (GATEWAY,),  # 504
    Result.LOCAL_ORIGIN_CONNECT_FAILED: (GATEWAY,),  # 503
    Result.EXT_ORIGIN_REQUEST_FAILED: (ERROR_5XX,),  # 500
    Result.LOCAL_ORIGIN_CONNECT_SUCCESS: (),
}
_SPLIT: dict[Result, tuple[int, ...]] = {
    Result.LOCAL_ORIGIN_CONNECT_SUCCESS: (LOCAL_OK,),
    Result.LOCAL_ORIGIN_CONNECT_SUCCESS_FINAL: (LOCAL_OK,),
    Result.LOCAL_ORIGIN_TIMEOUT: (LOCAL_FAILURE,),
    Result.LOCAL_ORIGIN_CONNECT_FAILED: (LOCAL_FAILURE,),
    Result.EXT_ORIGIN_REQUEST_FAILED: (GATEWAY,),  # 503
    Result.EXT_ORIGIN_REQUEST_SUCCESS: (OK, LOCAL_OK),
}


class NullOutlier:
    """The reporter of a host whose cluster has no outlier detection."""

    __slots__ = ()
    split = False  # (see HostOutlier.split)

    def put_http_response_code(self, code: int) -> None:
        pass

    def put_result(self, result: Result, code: int | None = None) -> None:
        pass


class NullHealthChecker:
    """The passive-health reporter of a host whose cluster has no health checking."""

    __slots__ = ()

    def set_unhealthy(self) -> None:
        pass


NULL_OUTLIER = NullOutlier()
NULL_HEALTH_CHECKER = NullHealthChecker()


class HostOutlier:
    """One host's outcomes since the last flush, run-length encoded."""

    __slots__ = ("_results", "_sink", "address", "cluster", "runs", "split")

    def __init__(self, sink: ReportSink, cluster: str, address: str, *, split: bool) -> None:
        self._sink = sink
        self.cluster = cluster
        self.address = address
        # split_external_local_origin_errors: only then does a connect success count (the
        # router skips reporting one otherwise).
        self.split = split
        self._results = _SPLIT if split else _UNSPLIT
        self.runs: list[int] = []

    def put_http_response_code(self, code: int) -> None:
        """The upstream answered with ``code`` (call once per response, not for 1xx)."""
        symbol = GATEWAY if 502 <= code <= 504 else ERROR_5XX if 500 <= code < 600 else OK
        runs = self.runs
        if runs and runs[-2] == symbol:
            runs[-1] += 1
        else:
            if not runs:
                self._sink.dirty(self)
            runs += (symbol, 1)
        if symbol and not self._sink.urgent:
            self._sink.flush_soon()

    def put_result(self, result: Result, code: int | None = None) -> None:
        """A connection-level result; with ``code`` (and no split) it counts as that code."""
        if code is not None and self._results is _UNSPLIT:
            self.put_http_response_code(code)
            return
        for symbol in self._results[result]:
            runs = self.runs
            if runs and runs[-2] == symbol:
                runs[-1] += 1
            else:
                if not runs:
                    self._sink.dirty(self)
                runs += (symbol, 1)
            if symbol not in (OK, LOCAL_OK) and not self._sink.urgent:
                self._sink.flush_soon()


class HostHealthChecker:
    __slots__ = ("_sink", "address", "cluster")

    def __init__(self, sink: ReportSink, cluster: str, address: str) -> None:
        self._sink = sink
        self.cluster = cluster
        self.address = address

    def set_unhealthy(self) -> None:
        """The host answered with ``x-envoy-immediate-health-check-fail``."""
        self._sink.immediate_fail(self.cluster, self.address)


class ReportSink:
    """Collects the hosts with something to report and flushes them ``FLUSH_DELAY_S`` later.

    ``send`` receives ``(outcomes, immediate_fails)``: ``{cluster: {address: runs}}`` and a
    list of ``(cluster, address)``.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        send: Callable[[dict[str, dict[str, list[int]]], list[tuple[str, str]]], None],
    ) -> None:
        self._loop = loop
        self._send = send
        self._dirty: list[HostOutlier] = []
        self._fails: list[tuple[str, str]] = []
        self._handle: asyncio.Handle | None = None
        self.urgent = False  # a flush is scheduled for the next loop iteration

    def dirty(self, host: HostOutlier) -> None:
        self._dirty.append(host)
        if self._handle is None:
            self._handle = self._loop.call_later(FLUSH_DELAY_S, self.flush)

    def flush_soon(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._handle = self._loop.call_soon(self.flush)
        self.urgent = True

    def immediate_fail(self, cluster: str, address: str) -> None:
        self._fails.append((cluster, address))
        if not self.urgent:
            self.flush_soon()

    def flush(self) -> None:
        self._handle = None
        self.urgent = False
        outcomes: dict[str, dict[str, list[int]]] = {}
        for host in self._dirty:
            if host.runs:
                outcomes.setdefault(host.cluster, {})[host.address] = host.runs
                host.runs = []
        self._dirty = []
        fails, self._fails = self._fails, []
        if outcomes or fails:
            self._send(outcomes, fails)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self.urgent = False
