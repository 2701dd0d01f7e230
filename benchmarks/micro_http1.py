#!/usr/bin/env python3
"""Micro-benchmark of the per-request HTTP/1 work, piece by piece, without sockets.

Run by hand (never from the test suite)::

    python benchmarks/micro_http1.py                 # every case, µs per operation
    python benchmarks/micro_http1.py -k pool -n 20000

The wrk benchmark (http1.py) says how fast the proxy is; this one says where the time of one
request goes, so a change to a codec, the header map, the header mutation or the pool can be
measured in seconds instead of a full proxy run. Each case is one request's worth of that
piece, as the proxy does it for a keep-alive GET with a 64 B answer:

- server codec: feed a curl request head, encode the response head and its 64 B body, resume;
- client codec: encode the upstream request head, feed the upstream's response (with
  content-length) and its body;
- header map: the map operations of one request (build, lookups, sets, removes, iteration);
- mutate request / response: ``mutate_request_headers`` and ``mutate_response_headers`` with
  the default policy (on a fresh copy of the decoded headers, the copy timed separately);
- pool cycle: ``new_stream`` on a connected HTTP/1 pool, the request head written, the
  response fed back and the connection readied for the next stream (fake loop and transport).

Each number is the best of ``--repeat`` runs of ``--number`` operations. The machine's other
work shows in the numbers: to compare two versions, run both alternately (another checkout's
sources with ``PYTHONPATH=<checkout>/src``) and compare the best of each.

On the 2-core VM where this was written (Python 3.11.7), before and after the hot-path work
of the first HTTP/1 proxy (µs per operation; the pool cycle includes the client codec):

| case                                   | before | after |
|----------------------------------------|-------:|------:|
| server codec: feed GET + encode 200    |   8.1  |  5.5  |
| client codec: encode GET + feed 200    |   7.9  |  4.4  |
| header map: one request's operations   |   1.5  |  1.4  |
| mutate_request_headers (+ copy)        |   4.1  |  2.1  |
| mutate_response_headers (+ copy)       |   0.76 |  0.52 |
| pool cycle                             |  16.8  |  9.0  |
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import random
import time
from collections.abc import Callable

from legatus.conn_pool import ConnPoolStats, PoolContext, PoolSettings, ResponseDecoder
from legatus.conn_pool.http1 import Http1ConnPool
from legatus.http.conn_manager_utility import (
    HeaderPolicy,
    date_header,
    mutate_request_headers,
    mutate_response_headers,
)
from legatus.http.headers import HeaderMap
from legatus.http.http1.client_codec import ClientCodec
from legatus.http.http1.server_codec import ServerCodec
from legatus.network.address import SocketAddress
from legatus.stats.store import Store
from legatus.upstream.cluster import HostConfig
from legatus.upstream.host import Host
from legatus.upstream.resource_manager import ResourceManager
from legatus.upstream.stats import ClusterTrafficStats

CURL_REQUEST = (
    b"GET /64 HTTP/1.1\r\nHost: 127.0.0.1:10000\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\n\r\n"
)
BODY = b"x" * 64
UPSTREAM_RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: 64\r\n\r\n"
    + BODY
)
POLICY = HeaderPolicy()


def request_headers() -> HeaderMap:
    """What the server codec makes of CURL_REQUEST."""
    return HeaderMap(
        [
            (":method", "GET"),
            (":path", "/64"),
            (":authority", "127.0.0.1:10000"),
            ("user-agent", "curl/7.88.1"),
            ("accept", "*/*"),
        ]
    )


def upstream_request_headers() -> HeaderMap:
    """The request as the router sends it upstream (after the HCM's and the router's work)."""
    headers = request_headers()
    headers.set("x-forwarded-proto", "http")
    headers.set(":scheme", "http")
    headers.set("x-request-id", "6f1e2d3c-4b5a-4978-8a6b-5c4d3e2f1a0b")
    headers.set("x-envoy-expected-rq-timeout-ms", "15000")
    return headers


def response_headers() -> HeaderMap:
    """The response as the HCM encodes it downstream."""
    return HeaderMap(
        [
            (":status", "200"),
            ("content-type", "application/octet-stream"),
            ("content-length", "64"),
            ("date", date_header()),
            ("server", "envoy"),
            ("x-envoy-upstream-service-time", "0"),
        ]
    )


# Cases --------------------------------------------------------------------------------------


def case_server_codec() -> Callable[[], object]:
    codec = ServerCodec()
    headers = response_headers()

    def op() -> object:
        events = codec.feed(CURL_REQUEST)
        assert events[0].end_stream
        codec.encode_headers(headers, False)
        codec.encode_data(BODY, True)
        return codec.resume()

    return op


def case_client_codec() -> Callable[[], object]:
    codec = ClientCodec()
    headers = upstream_request_headers()

    def op() -> object:
        codec.encode_request_headers(headers, True)
        events = codec.feed(UPSTREAM_RESPONSE)
        assert events[-1].end_stream
        return events

    return op


def case_header_map() -> Callable[[], object]:
    """The map operations of one request, roughly as the codecs, the HCM and the router do
    them (the HCM's header mutation is the next case)."""

    def op() -> object:
        h = HeaderMap()
        add = h.add
        add(":method", "")
        add(":path", "")
        add(":authority", "")
        add("host", "127.0.0.1:10000")
        add("user-agent", "curl/7.88.1")
        add("accept", "*/*")
        h.get("connection")
        h.get("content-length")
        h.get("transfer-encoding")
        h.get_all("host")
        h.remove("host")
        h.set(":authority", "127.0.0.1:10000")
        h.set(":path", "/64")
        h.set(":method", "GET")
        h.get(":authority")
        h.get("expect")
        h.get("proxy-connection")
        "upgrade" in h  # noqa: B015
        h.get(":method")
        h.get(":path")
        h.get("x-envoy-upstream-rq-timeout-ms")
        h.get("x-envoy-expected-rq-timeout-ms")
        h.set("x-envoy-expected-rq-timeout-ms", "15000")
        for _ in h.items():
            pass
        return h

    return op


def case_copy_headers() -> Callable[[], object]:
    headers = request_headers()
    return headers.copy


def case_mutate_request() -> Callable[[], object]:
    headers = request_headers()
    rng = random.Random(1)

    def op() -> object:
        return mutate_request_headers(
            POLICY,
            headers.copy(),
            remote_address="127.0.0.1:54321",
            direct_remote_address="127.0.0.1:54321",
            local_address="127.0.0.1:10000",
            random=rng,
        )

    return op


def case_mutate_response() -> Callable[[], object]:
    request = upstream_request_headers()
    upstream = HeaderMap(
        [(":status", "200"), ("content-type", "application/octet-stream"), ("content-length", "64")]
    )
    date = date_header()

    def op() -> object:
        return mutate_response_headers(POLICY, upstream.copy(), request, date=date)

    return op


class _Handle:
    __slots__ = ("args", "callback", "cancelled")

    def __init__(self, callback, args) -> None:
        self.callback = callback
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class _Task:
    def __init__(self, result) -> None:
        self._result = result
        self.callbacks: list = []

    def add_done_callback(self, callback) -> None:
        self.callbacks.append(callback)

    def cancel(self) -> None:
        pass

    def cancelled(self) -> bool:
        return False

    def exception(self) -> None:
        return None

    def result(self):
        return self._result


class _Transport:
    """Swallows writes; enough of asyncio.Transport for a Connection."""

    def write(self, data: bytes) -> None:
        pass

    def set_write_buffer_limits(self, high: int, low: int) -> None:
        pass

    def get_extra_info(self, name: str):
        return ("127.0.0.1", 80) if name in ("sockname", "peername") else None

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def abort(self) -> None:
        pass

    def close(self) -> None:
        pass


class _Loop:
    """What the pool and its clients use of a loop: the clock, timers, call_soon, connects
    that complete when ``connect_all`` says so."""

    def __init__(self) -> None:
        self.soon: list[_Handle] = []
        self.tasks: list[_Task] = []

    def time(self) -> float:
        return time.monotonic()

    def call_later(self, delay, callback, *args) -> _Handle:
        return _Handle(callback, args)

    def call_soon(self, callback, *args) -> _Handle:
        handle = _Handle(callback, args)
        self.soon.append(handle)
        return handle

    def run_soon(self) -> None:
        soon, self.soon = self.soon, []
        for handle in soon:
            if not handle.cancelled:
                handle.callback(*handle.args)

    def create_connection(self, factory, host, port, *, family):
        protocol = factory()
        # A Connection may look up its loop when it connects: this one, for that moment.
        asyncio.events._set_running_loop(self)  # type: ignore[arg-type]
        try:
            protocol.connection_made(_Transport())
        finally:
            asyncio.events._set_running_loop(None)
        return (None, protocol)

    def create_task(self, result) -> _Task:
        task = _Task(result)
        self.tasks.append(task)
        return task

    def connect_all(self) -> None:
        tasks, self.tasks = self.tasks, []
        for task in tasks:
            for callback in task.callbacks:
                callback(task)


class _Router(ResponseDecoder):
    """The router's side: sends the request head when the pool is ready."""

    def __init__(self, headers: HeaderMap) -> None:
        self.headers = headers
        self.encoder = None
        self.done = False

    def on_pool_ready(self, encoder, host) -> None:
        self.encoder = encoder
        encoder.encode_headers(self.headers, True)

    def on_pool_failure(self, reason, transport_failure_reason, host) -> None:
        raise AssertionError(reason)

    def on_headers(self, headers: HeaderMap, end_stream: bool) -> None:
        self.done = end_stream

    def on_data(self, data: bytes, end_stream: bool) -> None:
        self.done = end_stream


def case_pool_cycle() -> Callable[[], object]:
    loop = _Loop()
    store = Store()
    scope = store.scope("cluster.upstream.")
    context = PoolContext(
        loop=loop,  # type: ignore[arg-type]
        stats=ClusterTrafficStats(scope),
        pool_stats=ConnPoolStats(scope),
        resource_manager=ResourceManager(scope),
        settings=PoolSettings(),
    )
    host = Host(
        HostConfig(address=SocketAddress(host="127.0.0.1", port=80), hostname="", weight=1,
                   priority=0),
        store.scope("cluster.upstream.host.127.0.0.1:80."),
    )  # fmt: skip
    pool = Http1ConnPool(host, context)
    router = _Router(upstream_request_headers())
    assert pool.new_stream(router, router) is not None  # the first stream opens the connection
    loop.connect_all()
    connection = router.encoder._client.connection  # type: ignore[union-attr]
    connection.data_received(UPSTREAM_RESPONSE)
    loop.run_soon()

    def op() -> object:
        # The connection is idle (READY): the stream gets it at once, as under keep-alive load.
        router.done = False
        assert pool.new_stream(router, router) is None
        connection.data_received(UPSTREAM_RESPONSE)
        assert router.done
        loop.run_soon()  # the next loop iteration: the request bytes are flushed
        return router

    return op


CASES: dict[str, Callable[[], Callable[[], object]]] = {
    "server codec: feed GET + encode 200/64 B": case_server_codec,
    "client codec: encode GET + feed 200/64 B": case_client_codec,
    "header map: one request's operations": case_header_map,
    "header map: copy of a request": case_copy_headers,
    "mutate_request_headers (+ copy)": case_mutate_request,
    "mutate_response_headers (+ copy)": case_mutate_response,
    "pool cycle: new_stream .. response (+ client codec)": case_pool_cycle,
}


def measure(op: Callable[[], object], number: int, repeat: int) -> float:
    """Best µs per call over ``repeat`` runs of ``number`` calls (the GC off while timing,
    as timeit does)."""
    best = float("inf")
    for _ in range(repeat):
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            start = time.perf_counter()
            for _ in range(number):
                op()
            elapsed = time.perf_counter() - start
        finally:
            if gc_was_enabled:
                gc.enable()
        best = min(best, elapsed)
    return best / number * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--number", type=int, default=20000, help="operations per run")
    parser.add_argument("-r", "--repeat", type=int, default=5, help="runs; the best is kept")
    parser.add_argument("-k", "--filter", default="", help="only cases whose name has this")
    args = parser.parse_args()
    width = max(len(name) for name in CASES)
    print(f"| {'case':<{width}} | µs/op |")
    print(f"|{'-' * (width + 2)}|------:|")
    for name, make in CASES.items():
        if args.filter and args.filter not in name:
            continue
        op = make()
        op()  # warm caches
        print(f"| {name:<{width}} | {measure(op, args.number, args.repeat):5.2f} |", flush=True)


if __name__ == "__main__":
    main()
