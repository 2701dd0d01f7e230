"""Drains over real sockets: a listener removed or replaced by LDS (a file here), admin
/drain_listeners, /healthcheck/fail; --drain-strategy gradual and immediate.

Envoy 1.40's gradual drain (measured against the real binary; see
legatus/network/drain_decision.py): a response says ``connection: close`` with probability
floor(elapsed) / ceil(drain_time / 2), so no response does in the first second and every one
does from half the drain time on. The tests assert those two certain phases exactly and the
uncertain one in between only coarsely (some responses close, some do not: with 60 draws at
p = 1/3 either extreme has a probability below 1e-10).
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import httpx
import yaml

from tests.support.process import start_proxy, wait_for

HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
ADMIN = {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}}


def http_listener(name: str, port: int = 0, *, body: str = "ok", **extra) -> dict:
    """A listener whose HTTP connection manager answers 200 ``body`` to everything."""
    route = {"match": {"prefix": "/"}, "direct_response": {"status": 200,
             "body": {"inline_string": body}}}  # fmt: skip
    hcm = {
        "@type": HCM + "HttpConnectionManager",
        "stat_prefix": name,
        "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [route]}]},
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}],
    }
    return {
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [
            {
                "filters": [
                    {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}
                ]
            }
        ],
        **extra,
    }


def write_lds(path: Path, *listeners: dict) -> None:
    """Replace the LDS file at once (a rename, which every file watcher sees)."""
    resources = [{"@type": LISTENER, **listener} for listener in listeners]
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump({"resources": resources}))
    os.replace(tmp, path)


def lds_bootstrap(lds_path: Path, *static: dict) -> dict:
    config = {
        "admin": ADMIN,
        "node": {"id": "node1", "cluster": "web"},
        "dynamic_resources": {
            "lds_config": {
                "path_config_source": {"path": str(lds_path)},
                "resource_api_version": "V3",
            }
        },
    }
    if static:
        config["static_resources"] = {"listeners": list(static)}
    return config


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Client:
    """One keep-alive HTTP/1.1 connection (httpx, one connection per client)."""

    def __init__(self, port: int) -> None:
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5, limits=limits)
        self.closed = False

    def get(self) -> bool:
        """One request; whether its response said ``connection: close``."""
        response = self.http.get("/")
        assert response.status_code == 200, response.text
        self.closed = response.headers.get("connection") == "close"
        return self.closed

    def close(self) -> None:
        self.http.close()


def closed_by_peer(sock: socket.socket, wait: float = 0.05) -> bool:
    sock.settimeout(wait)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except OSError:
        return True


def settle() -> None:
    """The workers act on an admin call a moment after it is answered (in Envoy too)."""
    time.sleep(0.2)


def accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def test_gradual_lds_drain_ramps_connection_close_over_half_the_drain_time(tmp_path):
    lds = tmp_path / "lds.yaml"
    port = free_port()
    write_lds(lds, http_listener("web", port))
    proxy = start_proxy(lds_bootstrap(lds), tmp_path / "proxy",
                        args=["--concurrency", "1", "--drain-time-s", "6"])  # fmt: skip
    clients = [Client(port) for _ in range(60)]
    idle = socket.create_connection(("127.0.0.1", port))
    try:
        assert not any(c.get() for c in clients)
        write_lds(lds)  # removed: it drains for 6 s, the ramp runs over 3 s
        wait_for(lambda: proxy.stats()["listener_manager.listener_removed"] == 1, what="removal")
        t0 = time.monotonic()

        # The first second: no response closes.
        rounds = 0
        while time.monotonic() - t0 < 0.8:
            assert not any(c.get() for c in clients)
            rounds += 1
        assert rounds >= 1

        # The second second: about one in three.
        time.sleep(max(0.0, t0 + 1.2 - time.monotonic()))
        closing = sum(c.get() for c in clients)
        assert time.monotonic() - t0 < 1.9, "too slow to sample the second second"
        assert 0 < closing < len(clients)

        # From half the drain time on: every one.
        time.sleep(max(0.0, t0 + 3.3 - time.monotonic()))
        rest = [c for c in clients if not c.closed]
        assert rest and all(c.get() for c in rest)
        stats = proxy.stats()
        assert stats["http.web.downstream_cx_drain_close"] == len(clients)
        assert not accepts(port)  # it stopped accepting when the drain began

        # The idle connection is left alone until the drain time is over, then closed.
        time.sleep(max(0.0, t0 + 5.0 - time.monotonic()))
        assert not closed_by_peer(idle)
        wait_for(lambda: closed_by_peer(idle), timeout=3, what="the idle connection closed")
        assert time.monotonic() - t0 > 5.5
        proxy.assert_nothing_raised()
    finally:
        idle.close()
        for c in clients:
            c.close()
        proxy.stop()


def test_immediate_drain_closes_at_the_next_response_and_idle_ones_at_the_end(tmp_path):
    lds = tmp_path / "lds.yaml"
    port = free_port()
    write_lds(lds, http_listener("web", port, body="one"))
    proxy = start_proxy(lds_bootstrap(lds), tmp_path / "proxy", args=[
        "--concurrency", "1", "--drain-time-s", "2", "--drain-strategy", "immediate"])  # fmt: skip
    busy = Client(port)
    idle = socket.create_connection(("127.0.0.1", port))
    try:
        assert not busy.get()
        # A full update (not only filter chains): the old listener drains.
        write_lds(lds, http_listener("web", port, body="two",
                                     per_connection_buffer_limit_bytes=65536))  # fmt: skip
        wait_for(lambda: proxy.stats()["listener_manager.listener_modified"] == 1, what="update")
        t0 = time.monotonic()
        assert busy.get()  # the old listener's connection: told to close at once
        assert httpx.get(f"http://127.0.0.1:{port}/", timeout=5).text == "two"
        time.sleep(1.0)
        assert not closed_by_peer(idle)  # not at the HCM's drain_timeout: at the drain's end
        wait_for(lambda: closed_by_peer(idle), timeout=3, what="the idle connection closed")
        assert 1.5 < time.monotonic() - t0 < 3.5
    finally:
        idle.close()
        busy.close()
        proxy.stop()


def _admin_drain_config() -> dict:
    return {
        "admin": ADMIN,
        "static_resources": {
            "listeners": [
                http_listener("plain"),
                http_listener("inbound", traffic_direction="INBOUND"),
                http_listener("modify_only", drain_type="MODIFY_ONLY"),
            ]
        },
    }


def _ports(proxy) -> dict[str, int]:
    return {name: proxy.listener_port(name) for name in ("plain", "inbound", "modify_only")}


def test_drain_listeners_stops_at_once_and_drains_what_stays_open(tmp_path):
    proxy = start_proxy(_admin_drain_config(), tmp_path, args=[
        "--concurrency", "2", "--drain-time-s", "30", "--drain-strategy", "immediate"])  # fmt: skip
    ports = _ports(proxy)
    clients = {name: Client(port) for name, port in ports.items()}
    try:
        assert not any(c.get() for c in clients.values())
        assert proxy.admin("/drain_listeners", method="GET") == (
            405, "Method GET not allowed, POST required.")  # fmt: skip
        assert proxy.admin("/drain_listeners", method="POST") == (200, "OK\n")
        wait_for(lambda: not any(accepts(p) for p in ports.values()), timeout=2,
                 what="the listeners stopped at once")  # fmt: skip
        assert all(c.get() for c in clients.values())  # and their connections drain
        stats = proxy.stats()
        assert stats["listener_manager.listener_stopped"] == 3
        assert stats["listener_manager.total_listeners_active"] == 3
        assert proxy.admin("/ready") == (200, "LIVE\n")
        assert proxy.admin("/drain_listeners", method="POST") == (200, "OK\n")
        assert proxy.stats()["listener_manager.listener_stopped"] == 3  # counted once
        assert "plain::127.0.0.1:" in proxy.admin("/listeners")[1]  # still listed, as Envoy
    finally:
        for c in clients.values():
            c.close()
        proxy.stop()


def test_graceful_inbound_only_drain_accepts_until_the_drain_time_is_over(tmp_path):
    proxy = start_proxy(_admin_drain_config(), tmp_path, args=[
        "--concurrency", "1", "--drain-time-s", "2", "--drain-strategy", "immediate"])  # fmt: skip
    ports = _ports(proxy)
    clients = {name: Client(port) for name, port in ports.items()}
    idle = socket.create_connection(("127.0.0.1", ports["inbound"]))
    try:
        assert not any(c.get() for c in clients.values())
        status = proxy.admin("/drain_listeners?graceful&inboundonly", method="POST")
        assert status == (200, "OK\n")
        t0 = time.monotonic()
        settle()
        assert {name: c.get() for name, c in clients.items()} == {
            "plain": False, "inbound": True, "modify_only": False}  # fmt: skip
        assert all(accepts(p) for p in ports.values())  # graceful: still accepting
        assert Client(ports["inbound"]).get()  # a new connection drains too
        wait_for(lambda: not accepts(ports["inbound"]), timeout=5, what="inbound stopped")
        assert time.monotonic() - t0 > 1.5
        assert accepts(ports["plain"]) and accepts(ports["modify_only"])
        assert proxy.stats()["listener_manager.listener_stopped"] == 1
        time.sleep(0.5)
        assert not closed_by_peer(idle)  # a server drain closes no connection
    finally:
        idle.close()
        for c in clients.values():
            c.close()
        proxy.stop()


def test_gradual_drain_listeners_skip_exit_keeps_the_listeners(tmp_path):
    proxy = start_proxy(_admin_drain_config(), tmp_path,
                        args=["--concurrency", "1", "--drain-time-s", "2"])  # fmt: skip
    port = _ports(proxy)["plain"]
    clients = [Client(port) for _ in range(10)]
    try:
        assert proxy.admin("/drain_listeners?skip_exit", method="POST") == (200, "OK\n")
        t0 = time.monotonic()
        while time.monotonic() - t0 < 0.8:  # gradual: the first second closes none
            assert not any(c.get() for c in clients)
        time.sleep(max(0.0, t0 + 1.2 - time.monotonic()))
        assert all(c.get() for c in clients)  # ramp over ceil(2 / 2) = 1 s: all of them
        time.sleep(max(0.0, t0 + 2.5 - time.monotonic()))
        assert accepts(port)  # never stopped
        assert proxy.stats()["listener_manager.listener_stopped"] == 0
    finally:
        for c in clients:
            c.close()
        proxy.stop()


def test_failed_health_checks_drain_close_default_listeners_only(tmp_path):
    proxy = start_proxy(_admin_drain_config(), tmp_path, args=["--concurrency", "1"])
    clients = {name: Client(port) for name, port in _ports(proxy).items()}
    try:
        assert proxy.admin("/healthcheck/fail", method="POST") == (200, "OK\n")
        settle()
        assert {name: c.get() for name, c in clients.items()} == {
            "plain": True, "inbound": True, "modify_only": False}  # fmt: skip
        assert proxy.admin("/healthcheck/ok", method="POST") == (200, "OK\n")
        settle()
        assert not Client(_ports(proxy)["plain"]).get()
    finally:
        for c in clients.values():
            c.close()
        proxy.stop()


def test_lds_adds_no_listener_where_listeners_are_stopped(tmp_path):
    lds = tmp_path / "lds.yaml"
    write_lds(lds, http_listener("outbound", free_port(), traffic_direction="OUTBOUND"))
    proxy = start_proxy(lds_bootstrap(lds), tmp_path / "proxy", args=["--concurrency", "1"])
    try:
        assert proxy.admin("/drain_listeners?inboundonly", method="POST") == (200, "OK\n")
        inbound, other = free_port(), free_port()
        write_lds(
            lds,
            http_listener("outbound", free_port(), traffic_direction="OUTBOUND"),
            http_listener("inbound", inbound, traffic_direction="INBOUND"),
            http_listener("other", other),
        )
        wait_for(lambda: proxy.stats()["listener_manager.lds.update_success"] == 2, what="LDS")
        wait_for(lambda: accepts(other), what="the listener outside the stopped direction")
        assert not accepts(inbound)
        stats = proxy.stats()
        assert stats["listener_manager.listener_added"] == 2  # outbound, other
        assert stats["listener_manager.listener_modified"] == 1  # outbound's new port
    finally:
        proxy.stop()
