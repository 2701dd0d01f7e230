"""A gigabyte through tcp_proxy in bounded memory, and backpressure from a stalled upstream."""

from __future__ import annotations

import socket
import threading
import time

from tests.support.process import rss_bytes, start_proxy, wait_for, workers
from tests.support.upstreams import SinkServer, tcp_proxy_config

GIB = 1 << 30
CHUNK = memoryview(bytes(1 << 20))


class _RssSampler:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = rss_bytes(pid)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(0.02):
            self.peak = max(self.peak, rss_bytes(self.pid))


def test_one_gib_passes_with_bounded_memory(tmp_path):
    sink = SinkServer()
    proxy = start_proxy(
        tcp_proxy_config(upstream_port=sink.port), tmp_path, args=["--concurrency", "1"]
    )
    try:
        (worker,) = workers(proxy.pid)
        baseline = rss_bytes(worker)
        sampler = _RssSampler(worker)
        port = proxy.listener_port("tcp")
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            for _ in range(GIB // len(CHUNK)):
                s.sendall(CHUNK)
            s.shutdown(socket.SHUT_WR)
            assert sink.done.wait(60), f"sink got {sink.received} bytes"
        sampler.stop.set()
        assert sink.received == GIB
        growth = sampler.peak - baseline
        assert growth < 48 << 20, f"worker RSS grew by {growth >> 20} MiB"
        stats = wait_for(
            lambda: (s := proxy.stats())["tcp.tcp.downstream_cx_rx_bytes_total"] == GIB and s,
            what="rx bytes",
        )
        assert stats["cluster.backend.upstream_cx_tx_bytes_total"] == GIB
    finally:
        proxy.stop()
        sink.close()


def test_stalled_upstream_pauses_the_client(tmp_path):
    sink = SinkServer()
    sink.paused.set()
    cfg = tcp_proxy_config(
        upstream_port=sink.port,
        listener_extra={"per_connection_buffer_limit_bytes": 65536},
        extra_cluster={"per_connection_buffer_limit_bytes": 65536},
    )
    proxy = start_proxy(cfg, tmp_path, args=["--concurrency", "1"])
    try:
        (worker,) = workers(proxy.pid)
        baseline = rss_bytes(worker)
        port = proxy.listener_port("tcp")
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            s.setblocking(False)
            sent, stalled_since = 0, None
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                try:
                    sent += s.send(CHUNK)
                    stalled_since = None
                except BlockingIOError:
                    stalled_since = stalled_since or time.monotonic()
                    if time.monotonic() - stalled_since > 1.0:
                        break
                    time.sleep(0.01)
            assert stalled_since is not None, "the client was never pushed back"
            # Kernel socket buffers on both sides plus legatus's bounded buffers: far below 1 GiB.
            assert sent < 64 << 20, f"{sent >> 20} MiB accepted from a client whose peer is stalled"
            assert rss_bytes(worker) - baseline < 32 << 20
            stats = proxy.stats()
            assert stats["tcp.tcp.downstream_flow_control_paused_reading_total"] >= 1
            sink.resumed.set()
            sink.paused.clear()
            s.setblocking(True)
            s.shutdown(socket.SHUT_WR)
            assert sink.done.wait(30)
            assert sink.received == sent
        stats = proxy.stats()
        assert stats["tcp.tcp.downstream_flow_control_resumed_reading_total"] >= 1
    finally:
        sink.resumed.set()
        proxy.stop()
        sink.close()


def test_upstream_flush_after_the_client_is_gone(tmp_path):
    """A client that resets leaves its last bytes draining to the upstream (Envoy's flush).

    The upstream's buffer limit is large so the client is never paused: a reset is only
    noticed while reading, and uvloop stops polling a paused socket (Envoy's early-close
    detection while read-disabled is a known gap, docs/compatibility.md).
    """
    import struct

    sink = SinkServer()
    sink.paused.set()
    cfg = tcp_proxy_config(
        upstream_port=sink.port, extra_cluster={"per_connection_buffer_limit_bytes": 64 << 20}
    )
    proxy = start_proxy(cfg, tmp_path, args=["--concurrency", "1"])
    try:
        port = proxy.listener_port("tcp")
        s = socket.create_connection(("127.0.0.1", port), timeout=30)
        for _ in range(16):
            s.sendall(CHUNK)
        wait_for(
            lambda: proxy.stats()["tcp.tcp.downstream_cx_rx_bytes_total"] == 16 << 20,
            what="the proxy to have read everything",
        )
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()  # a reset: the client is gone while the upstream still has bytes to take
        wait_for(
            lambda: proxy.stats().get("tcp.tcp.upstream_flush_active") == 1,
            what="an active upstream flush",
        )
        sink.resumed.set()
        sink.paused.clear()
        assert sink.done.wait(30)
        assert sink.received == 16 << 20  # nothing the proxy had taken was lost
        stats = wait_for(
            lambda: (st := proxy.stats())["tcp.tcp.upstream_flush_active"] == 0 and st,
            what="the flush to end",
        )
        assert stats["tcp.tcp.upstream_flush_total"] == 1
    finally:
        sink.resumed.set()
        proxy.stop()
        sink.close()
