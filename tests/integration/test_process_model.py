"""The main process + worker processes model (DESIGN §2), with real signals and sockets."""

from __future__ import annotations

import os
import signal
import socket

import pytest

from tests.support.process import alive, children, start_proxy, wait_for, workers
from tests.support.upstreams import EchoServer, tcp_proxy_config


@pytest.fixture
def echo():
    server = EchoServer()
    yield server
    server.close()


def _roundtrip(port: int, payload: bytes = b"ping") -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(payload)
        got = b""
        while len(got) < len(payload):
            chunk = s.recv(100)
            assert chunk, "connection closed early"
            got += chunk
        assert got == payload


def test_workers_share_the_port_and_stats_add_up(tmp_path, echo):
    proxy = start_proxy(
        tcp_proxy_config(upstream_port=echo.port), tmp_path, args=["--concurrency", "2"]
    )
    try:
        assert len(workers(proxy.pid)) == 2
        port = proxy.listener_port("tcp")
        for _ in range(40):
            _roundtrip(port)
        key = "listener.127.0.0.1_0"  # named by the configured address, as in Envoy
        stats = wait_for(
            lambda: (s := proxy.stats())[f"{key}.downstream_cx_destroy"] == 40 and s,
            what="40 closed connections",
        )
        per_worker = [stats[f"{key}.worker_{i}.downstream_cx_total"] for i in (0, 1)]
        # SO_REUSEPORT spreads connections by hash: 40 on one worker has probability 2**-39.
        assert all(n > 0 for n in per_worker), per_worker
        assert sum(per_worker) == stats[f"{key}.downstream_cx_total"] == 40
        assert stats["tcp.tcp.downstream_cx_total"] == 40
        assert stats[f"{key}.downstream_cx_active"] == 0
        assert stats["server.concurrency"] == 2
    finally:
        proxy.stop()


def test_gauges_sum_across_workers_while_connections_are_open(tmp_path, echo):
    proxy = start_proxy(
        tcp_proxy_config(upstream_port=echo.port), tmp_path, args=["--concurrency", "2"]
    )
    conns = []
    try:
        port = proxy.listener_port("tcp")
        for _ in range(10):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(b"x")
            assert s.recv(1) == b"x"
            conns.append(s)
        stats = proxy.stats()
        assert stats["listener.127.0.0.1_0.downstream_cx_active"] == 10
        assert stats["cluster.backend.upstream_cx_active"] == 10
        assert stats["server.total_connections"] == 10
    finally:
        for s in conns:
            s.close()
        proxy.stop()


def test_killed_worker_is_replaced(tmp_path, echo):
    proxy = start_proxy(
        tcp_proxy_config(upstream_port=echo.port), tmp_path, args=["--concurrency", "2"]
    )
    try:
        port = proxy.listener_port("tcp")
        before = workers(proxy.pid)
        os.kill(before[0], signal.SIGKILL)

        def replaced():
            now = workers(proxy.pid)
            return now if len(now) == 2 and before[0] not in now else None

        after = wait_for(replaced, what="a replacement worker")
        assert before[1] in after
        wait_for(
            lambda: proxy.stats().get("server.worker_restarts") == 1,
            what="server.worker_restarts == 1",
        )
        for _ in range(20):
            _roundtrip(port)
        assert "worker 0" in proxy.log() or "worker 1" in proxy.log()
    finally:
        proxy.stop()


def test_no_worker_outlives_a_killed_main_process(tmp_path, echo):
    proxy = start_proxy(
        tcp_proxy_config(upstream_port=echo.port), tmp_path, args=["--concurrency", "2"]
    )
    procs = workers(proxy.pid)
    assert len(procs) == 2
    procs += children(proxy.pid)  # and the zygote that forked them
    proxy.proc.send_signal(signal.SIGKILL)
    proxy.proc.wait(5)
    wait_for(lambda: not any(alive(p) for p in procs), what="workers and zygote to exit")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_sigint_shut_down_cleanly(tmp_path, echo, sig):
    proxy = start_proxy(
        tcp_proxy_config(upstream_port=echo.port), tmp_path, args=["--concurrency", "2"]
    )
    procs = workers(proxy.pid) + children(proxy.pid)
    port = proxy.listener_port("tcp")
    _roundtrip(port)
    assert proxy.stop(sig) == 0
    assert not any(alive(p) for p in procs)
    log = proxy.log()
    assert f"caught {signal.Signals(sig).name}" in log
    assert "exiting" in log
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_quitquitquit_exits(tmp_path, echo):
    proxy = start_proxy(tcp_proxy_config(upstream_port=echo.port), tmp_path)
    status, body = proxy.admin("/quitquitquit", method="POST")
    assert (status, body) == (200, "OK\n")
    proxy.proc.wait(10)
    assert proxy.proc.returncode == 0


def test_workers_share_one_socket_without_reuse_port(tmp_path, echo):
    cfg = tcp_proxy_config(upstream_port=echo.port, listener_extra={"enable_reuse_port": False})
    proxy = start_proxy(cfg, tmp_path, args=["--concurrency", "2"])
    try:
        port = proxy.listener_port("tcp")
        for _ in range(20):
            _roundtrip(port)
        os.kill(workers(proxy.pid)[0], signal.SIGKILL)  # the replacement shares it too
        wait_for(lambda: proxy.stats().get("server.worker_restarts") == 1, what="a restart")
        for _ in range(20):
            _roundtrip(port)
        wait_for(
            lambda: proxy.stats().get("listener.127.0.0.1_0.downstream_cx_destroy", 0) >= 20,
            what="the connections to be counted",
        )
    finally:
        proxy.stop()


def test_a_killed_zygote_stops_the_server_when_a_worker_must_be_replaced(tmp_path, echo):
    """Workers are forked by the zygote (server/zygote.py); without it no worker can be made,
    so a worker that dies then stops the server with an error, for a supervisor to restart."""
    proxy = start_proxy(
        tcp_proxy_config(upstream_port=echo.port), tmp_path, args=["--concurrency", "1"]
    )
    (zygote,) = children(proxy.pid)
    (worker,) = workers(proxy.pid)
    os.kill(zygote, signal.SIGKILL)
    wait_for(lambda: not alive(worker), what="the worker to die with its zygote")
    assert proxy.proc.wait(10) == 1
    assert "the worker zygote is gone" in proxy.log()


def test_a_proxy_without_tls_or_grpc_does_not_load_them(tmp_path, echo):
    """gRPC and OpenSSL's certificate code (``cryptography``) are loaded when a configuration
    uses them (TLS, xDS, a rate limit service), not before: together they are about half of
    an idle main process's memory."""
    proxy = start_proxy(tcp_proxy_config(upstream_port=echo.port), tmp_path)
    try:
        _roundtrip(proxy.listener_port("tcp"))
        assert proxy.stats()["server.days_until_first_cert_expiring"] == 0xFFFFFFFF
        for pid in (proxy.pid, *workers(proxy.pid)):
            with open(f"/proc/{pid}/maps") as maps:
                mapped = maps.read()
            assert "cygrpc" not in mapped and "cryptography" not in mapped, pid
    finally:
        proxy.stop()
