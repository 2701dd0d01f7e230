"""An LDS listener without enable_reuse_port: the main process binds the one listening socket
and passes it to every running worker (SCM_RIGHTS), and to a worker started later."""

from __future__ import annotations

import os
import signal

import httpx

from tests.integration.test_drain import (
    accepts,
    free_port,
    http_listener,
    lds_bootstrap,
    write_lds,
)
from tests.support.process import start_proxy, wait_for, workers


def _served_by_every_worker(proxy, port: int, stat_prefix: str, body: str) -> None:
    """New connections until both workers have accepted some (the kernel picks, per accept,
    among the workers waiting on the shared socket)."""

    def both() -> bool:
        for _ in range(20):
            with httpx.Client(timeout=5) as client:
                assert client.get(f"http://127.0.0.1:{port}/").text == body
        stats = proxy.stats()
        counts = [stats.get(f"listener.{stat_prefix}.worker_{i}.downstream_cx_total", 0)
                  for i in (0, 1)]  # fmt: skip
        return all(counts)

    wait_for(both, timeout=20, what="connections accepted by both workers")


def test_lds_listener_without_reuse_port_serves_on_every_worker_and_drains(tmp_path):
    lds = tmp_path / "lds.yaml"
    port, other_port = free_port(), free_port()

    def shared(listen_port: int, body: str, **extra) -> dict:
        return http_listener("web", listen_port, body=body, enable_reuse_port=False,
                             stat_prefix="web", **extra)  # fmt: skip

    write_lds(lds)
    proxy = start_proxy(lds_bootstrap(lds), tmp_path / "proxy", args=[
        "--concurrency", "2", "--drain-time-s", "1", "--drain-strategy", "immediate"])  # fmt: skip
    try:
        # Added while the workers run.
        write_lds(lds, shared(port, "one"))
        wait_for(lambda: accepts(port), what="the listener added")
        _served_by_every_worker(proxy, port, "web", "one")

        # A full update on the same address: the workers take over the socket.
        write_lds(lds, shared(port, "two", per_connection_buffer_limit_bytes=65536))
        wait_for(lambda: httpx.get(f"http://127.0.0.1:{port}/", timeout=5).text == "two",
                 what="the update")  # fmt: skip
        _served_by_every_worker(proxy, port, "web", "two")

        # A worker started later gets the socket too.
        os.kill(workers(proxy.pid)[0], signal.SIGKILL)
        wait_for(lambda: proxy.stats().get("server.worker_restarts") == 1, what="a restart")
        wait_for(lambda: len(workers(proxy.pid)) == 2, what="the new worker")
        _served_by_every_worker(proxy, port, "web", "two")

        # Whether the port is reused cannot change in an update (Envoy's refusal).
        write_lds(lds, http_listener("web", port, body="three", stat_prefix="web"))
        wait_for(lambda: proxy.stats()["listener_manager.lds.update_rejected"] == 1,
                 what="the refusal")  # fmt: skip
        assert "Listener web: reuse port cannot be changed during an update" in proxy.log()

        # A new address: a new socket, passed again; the old port closes.
        write_lds(lds, shared(other_port, "four"))
        wait_for(lambda: accepts(other_port), what="the new address")
        wait_for(lambda: not accepts(port), timeout=3, what="the old port closed")
        _served_by_every_worker(proxy, other_port, "web", "four")

        # Removed: the port no longer accepts (no copy of the socket is left open anywhere).
        write_lds(lds)
        wait_for(lambda: proxy.stats()["listener_manager.listener_removed"] == 1, what="removal")
        wait_for(lambda: not accepts(other_port), timeout=3, what="the port closed")
        wait_for(lambda: proxy.stats()["listener_manager.total_listeners_draining"] == 0,
                 what="the drain to end")  # fmt: skip
        proxy.assert_nothing_raised()
    finally:
        proxy.stop()
