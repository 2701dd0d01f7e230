"""Circuit breakers hold for the whole instance, across worker processes (--concurrency 2).

A holding upstream on 127.0.0.1 keeps every request until released and records how many it
holds at once; clients on their own connections (so the kernel spreads them over both
workers) send one request each. What overflows gets Envoy's 503 with x-envoy-overloaded, and
the circuit_breakers.* gauges read as one Envoy process's (docs/circuit-breakers.md).
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.support.http_upstream import http_proxy_config
from tests.support.process import start_proxy, wait_for, workers

CB = "cluster.backend.circuit_breakers.default."


class HoldingUpstream:
    """HTTP/1.1 on 127.0.0.1:0: holds each request until ``release()``, then answers 200."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0), backlog=128)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.held = 0
        self.max_held = 0
        self._lock = threading.Lock()
        self._release = threading.Event()
        self._conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def release(self) -> None:
        self._release.set()

    def close(self) -> None:
        self._release.set()
        self.sock.close()
        for c in self._conns:
            c.close()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
                self._conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        reader = conn.makefile("rb")
        try:
            while True:
                line = reader.readline()
                if not line:
                    return
                while reader.readline() not in (b"\r\n", b""):
                    pass
                with self._lock:
                    self.held += 1
                    self.max_held = max(self.max_held, self.held)
                self._release.wait(15)
                with self._lock:
                    self.held -= 1
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        except OSError:
            return


@pytest.fixture
def upstream():
    server = HoldingUpstream()
    yield server
    server.close()


def _config(upstream_port: int, **threshold) -> dict:
    config = http_proxy_config(upstream_port)
    cluster = config["static_resources"]["clusters"][0]
    cluster["circuit_breakers"] = {"thresholds": [{"track_remaining": True, **threshold}]}
    return config


def _get(port: int) -> tuple[str, bool]:
    """One request on a new connection: (status line, x-envoy-overloaded present)."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        s.sendall(b"GET / HTTP/1.1\r\nhost: example.com\r\n\r\n")
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    head = data.decode("latin-1").split("\r\n\r\n")[0].lower()
    return head.split("\r\n")[0], "x-envoy-overloaded: true" in head


def _send_spaced(pool: ThreadPoolExecutor, port: int, n: int, gap: float = 0.02) -> list:
    """n clients, one every ``gap`` s: each decision sees the ones before it (no two workers
    decide in the same microseconds, where the documented race could admit one more)."""
    futures = []
    for _ in range(n):
        futures.append(pool.submit(_get, port))
        time.sleep(gap)
    return futures


def _finished(futures) -> list:
    return [f.result() for f in futures if f.done()]


def _proxy(tmp_path, upstream, **threshold):
    return start_proxy(_config(upstream.port, **threshold), tmp_path, args=["--concurrency", "2"])


def _both_workers_served(proxy) -> bool:
    stats = proxy.stats()
    return all(stats[f"listener.127.0.0.1_0.worker_{i}.downstream_cx_total"] > 0 for i in (0, 1))


def test_max_requests_holds_across_workers(tmp_path, upstream):
    proxy = _proxy(tmp_path, upstream, max_requests=4)
    try:
        port = proxy.listener_port("http")
        with ThreadPoolExecutor(20) as pool:
            futures = _send_spaced(pool, port, 20)
            overflowed = wait_for(
                lambda: len(done := _finished(futures)) == 16 and done, what="16 overflows"
            )
            assert all(r == ("http/1.1 503 service unavailable", True) for r in overflowed)
            assert upstream.held == 4
            stats = proxy.stats()
            assert _both_workers_served(proxy)
            assert stats["cluster.backend.upstream_rq_active"] == 4
            assert stats["cluster.backend.upstream_rq_active_overflow"] == 16
            # One Envoy process's view: open is 0/1 and remaining is instance-wide.
            assert stats[CB + "rq_open"] == 1
            assert stats[CB + "remaining_rq"] == 0
            assert stats[CB + "rq_pending_open"] == 0
            upstream.release()
            results = [f.result() for f in futures]
        assert results.count(("http/1.1 200 ok", False)) == 4
        assert upstream.max_held == 4
        stats = wait_for(
            lambda: (s := proxy.stats())["cluster.backend.upstream_rq_active"] == 0 and s,
            what="no active request",
        )
        assert stats[CB + "rq_open"] == 0 and stats[CB + "remaining_rq"] == 4
    finally:
        proxy.stop()


def test_max_pending_requests_and_max_connections_hold_across_workers(tmp_path, upstream):
    proxy = _proxy(tmp_path, upstream, max_connections=2, max_pending_requests=3)
    try:
        port = proxy.listener_port("http")
        with ThreadPoolExecutor(12) as pool:
            futures = _send_spaced(pool, port, 12)
            # A worker's pool with no connection opens one even at the limit, as each of
            # Envoy's worker threads does: 2 or 3 connections, one held request each.
            stats = wait_for(
                lambda: (
                    (s := proxy.stats())["cluster.backend.upstream_rq_pending_active"] == 3
                    and len(_finished(futures)) == 12 - 3 - upstream.held
                    and s
                ),
                what="3 pending requests, the rest refused",
            )
            connections = upstream.connections
            assert 2 <= connections <= 3 and upstream.held == connections
            overflowed = _finished(futures)
            assert all(r == ("http/1.1 503 service unavailable", True) for r in overflowed)
            assert stats["cluster.backend.upstream_rq_pending_overflow"] == len(overflowed)
            assert stats["cluster.backend.upstream_cx_overflow"] >= 3
            assert stats[CB + "rq_pending_open"] == 1 and stats[CB + "remaining_pending"] == 0
            assert stats[CB + "cx_open"] == 1 and stats[CB + "remaining_cx"] == 0
            assert stats[CB + "rq_open"] == 0
            upstream.release()
            results = [f.result() for f in futures]
        assert results.count(("http/1.1 200 ok", False)) == connections + 3
        assert upstream.connections == connections  # the pending ones reused them
        stats = wait_for(
            lambda: (s := proxy.stats())["cluster.backend.upstream_rq_pending_active"] == 0 and s,
            what="no pending request",
        )
        assert stats[CB + "rq_pending_open"] == 0 and stats[CB + "remaining_pending"] == 3
    finally:
        proxy.stop()


def test_a_burst_admits_at_most_one_more_per_other_worker(tmp_path, upstream):
    # All at once: two workers deciding in the same microseconds may both admit (as two of
    # Envoy's threads may): the documented bound is max_requests + (workers - 1).
    proxy = _proxy(tmp_path, upstream, max_requests=5)
    try:
        port = proxy.listener_port("http")
        with ThreadPoolExecutor(40) as pool:
            futures = [pool.submit(_get, port) for _ in range(40)]
            wait_for(lambda: len(_finished(futures)) >= 40 - 6, what="the overflows")
            time.sleep(0.2)
            assert 5 <= upstream.held <= 6
            upstream.release()
            results = [f.result() for f in futures]
        assert results.count(("http/1.1 200 ok", False)) == upstream.max_held <= 6
        assert results.count(("http/1.1 503 service unavailable", True)) == 40 - upstream.max_held
    finally:
        proxy.stop()


def test_an_exited_workers_requests_stop_counting(tmp_path, upstream):
    proxy = _proxy(tmp_path, upstream, max_requests=6)
    try:
        port = proxy.listener_port("http")
        with ThreadPoolExecutor(20) as pool:
            futures = _send_spaced(pool, port, 10)
            wait_for(lambda: len(_finished(futures)) == 4, what="4 overflows")
            assert upstream.held == 6
            # The worker holding the most requests (workers are forked in index order).
            names = [f"listener.127.0.0.1_0.worker_{i}.downstream_cx_active" for i in (0, 1)]
            stats = wait_for(
                lambda: sum((s := proxy.stats())[n] for n in names) == 6 and s,
                what="only the held clients connected",
            )
            held = [stats[n] for n in names]
            victim = held.index(max(held))
            os.kill(workers(proxy.pid)[victim], signal.SIGKILL)
            stats = wait_for(
                lambda: (s := proxy.stats())["server.worker_restarts"] == 1 and s,
                what="the worker replaced",
            )
            survivors = stats["cluster.backend.upstream_rq_active"]
            assert survivors == 6 - held[victim]
            assert stats[CB + "remaining_rq"] == held[victim]
            assert stats[CB + "rq_open"] == 0
            wait_for(lambda: len(_finished(futures)) == 10 - survivors, what="clients cut off")
            # The freed room is usable again, by either worker.
            more = _send_spaced(pool, port, held[victim] + 2)
            wait_for(lambda: len(_finished(more)) == 2, what="2 new overflows")
            stats = proxy.stats()
            assert stats["cluster.backend.upstream_rq_active"] == 6
            assert stats[CB + "rq_open"] == 1
            upstream.release()
            for f in (*futures, *more):
                f.result()
    finally:
        proxy.stop()
