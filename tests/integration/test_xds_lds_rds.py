"""LDS and RDS over ADS, end to end: listeners and routes pushed by a control plane, applied
without a restart; a replaced or removed listener drains."""

from __future__ import annotations

import json
import socket

import httpx
import pytest
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2  # noqa: F401 (Any types)
from envoy.extensions.filters.network.http_connection_manager.v3 import (  # noqa: F401
    http_connection_manager_pb2,
)
from google.protobuf import json_format

from legatus.config_subscription.decode import CLUSTER, ENDPOINT, LISTENER, ROUTE
from tests.integration.test_xds_cds_eds import assignment, eds_cluster
from tests.support.http_upstream import HttpUpstream
from tests.support.process import start_proxy, wait_for
from tests.support.upstreams import free_port
from tests.support.xds_thread import XdsThread, ads_bootstrap

HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"


def listener(port: int, *, stat_prefix: str = "ingress", filters: list | None = None):
    hcm = {
        "@type": HCM + "HttpConnectionManager",
        "stat_prefix": stat_prefix,
        "rds": {
            "route_config_name": "routes",
            "config_source": {"ads": {}, "resource_api_version": "V3"},
        },
        "http_filters": filters
        or [{"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}],
    }
    return json_format.ParseDict(
        {
            "name": "http",
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "filter_chains": [
                {
                    "filters": [
                        {
                            "name": "envoy.filters.network.http_connection_manager",
                            "typed_config": hcm,
                        }
                    ]
                }
            ],
        },
        listener_pb2.Listener(),
    )


def routes(action: dict):
    return json_format.ParseDict(
        {
            "name": "routes",
            "virtual_hosts": [
                {"name": "all", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, **action}]}
            ],
        },
        route_pb2.RouteConfiguration(),
    )


TO_BACKEND = {"route": {"cluster": "backend"}}
TEAPOT = {"direct_response": {"status": 418, "body": {"inline_string": "short and stout"}}}


def bootstrap(xds_port: int, delta: bool) -> dict:
    lds = {"lds_config": {"ads": {}, "resource_api_version": "V3"}}
    return ads_bootstrap(xds_port, delta=delta, dynamic_resources=lds)


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
def test_listeners_and_routes_from_ads(tmp_path, delta):
    up = HttpUpstream()
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    with XdsThread() as xds:
        xds.set_resources(CLUSTER, [eds_cluster("backend")])
        xds.set_resources(ENDPOINT, [assignment("backend", up.port)])
        xds.set_resources(ROUTE, [routes(TO_BACKEND)])
        xds.set_resources(LISTENER, [listener(port)])
        proxy = start_proxy(bootstrap(xds.port, delta), tmp_path, args=["--concurrency", "2",
                            "--drain-time-s", "2", "--drain-strategy", "immediate"])  # fmt: skip
        try:
            # The listener warmed until its routes arrived: served at once.
            assert httpx.get(url, timeout=5).status_code == 200
            stats = proxy.stats()
            assert stats["listener_manager.lds.update_success"] >= 1
            assert stats["listener_manager.listener_added"] == 1
            assert stats["listener_manager.total_listeners_active"] == 1
            assert stats["http.ingress.rds.routes.update_success"] >= 1

            # New routes apply to new streams, on the same connections.
            with httpx.Client(timeout=5) as client:
                assert client.get(url).status_code == 200
                xds.set_resources(ROUTE, [routes(TEAPOT)])
                wait_for(lambda: client.get(url).status_code == 418, what="new routes")
                assert client.get(url).text == "short and stout"

            # A bad listener is NACKed by name; the one in place keeps serving.
            bad = listener(port, filters=[{"name": "nope", "typed_config": {
                "@type": "type.googleapis.com/google.protobuf.Struct", "value": {}}}])  # fmt: skip
            xds.set_resources(LISTENER, [bad])
            nack = xds.wait_for(lambda r: r.type_url == LISTENER and r.is_nack, timeout=10)
            assert "http" in nack.error_detail.message
            assert httpx.get(url, timeout=5).status_code == 418

            # A changed listener replaces the old one; a kept-alive connection to the old one
            # is told to close after its next response (drain).
            with httpx.Client(timeout=5) as client:
                assert client.get(url).status_code == 418
                xds.set_resources(LISTENER, [listener(port, stat_prefix="other")])
                wait_for(lambda: proxy.stats()["listener_manager.listener_modified"] == 1,
                         what="modified")  # fmt: skip
                response = client.get(url)
                assert response.status_code == 418
                assert response.headers.get("connection") == "close"
            assert httpx.get(url, timeout=5).status_code == 418

            # Removed: the port no longer accepts.
            xds.set_resources(LISTENER, [])
            wait_for(lambda: proxy.stats()["listener_manager.listener_removed"] == 1,
                     what="removed")  # fmt: skip

            def refused() -> bool:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    return False
                except OSError:
                    return True

            wait_for(refused, what="port closed")
            proxy.assert_nothing_raised()
        finally:
            proxy.stop()
            up.close()


def test_route_and_listener_updates_under_load_fail_no_request(tmp_path):
    """The issue's bar: under a steady bounded load, 100 route updates and 20 listener
    updates cause zero failed requests."""
    import threading
    import time

    up = HttpUpstream()
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    failures: list[str] = []
    versions: set[str] = set()
    done = threading.Event()
    count = [0]

    def load() -> None:
        with httpx.Client(timeout=5) as client:
            while not done.is_set():
                try:
                    response = client.get(url)
                    if response.status_code != 200:
                        failures.append(f"status {response.status_code}")
                    versions.add(response.headers.get("x-route-version", ""))
                except httpx.HTTPError as e:
                    failures.append(repr(e))
                count[0] += 1
                time.sleep(0.002)

    def versioned(n: int):
        config = routes(TO_BACKEND)
        header = config.response_headers_to_add.add()
        header.header.key, header.header.value = "x-route-version", str(n)
        return config

    with XdsThread() as xds:
        xds.set_resources(CLUSTER, [eds_cluster("backend")])
        xds.set_resources(ENDPOINT, [assignment("backend", up.port)])
        xds.set_resources(ROUTE, [versioned(0)])
        xds.set_resources(LISTENER, [listener(port)])
        # Gradual: every connection is told to close within ceil(4 / 2) s, before the drain
        # time is over and what is left is closed.
        proxy = start_proxy(bootstrap(xds.port, False), tmp_path, args=["--concurrency", "2",
                            "--drain-time-s", "4"])  # fmt: skip
        threads = [threading.Thread(target=load) for _ in range(3)]
        try:
            for t in threads:
                t.start()
            for n in range(1, 101):
                xds.set_resources(ROUTE, [versioned(n)])
                time.sleep(0.02)
                if n % 5 == 0:
                    prefix = f"ingress{n // 5}"
                    xds.set_resources(LISTENER, [listener(port, stat_prefix=prefix)])
                    time.sleep(0.05)
            wait_for(lambda: "100" in versions, what="the last route version served")
            time.sleep(0.3)
        finally:
            done.set()
            for t in threads:
                t.join(10)
            stats = proxy.stats()
            proxy.stop()
            up.close()
    assert stats["listener_manager.listener_modified"] == 20
    assert stats["http.ingress.rds.routes.update_success"] >= 1
    assert count[0] > 300
    assert failures == []


def test_a_filter_chain_only_update_keeps_the_connections_of_unchanged_chains(tmp_path):
    """Envoy's in-place filter chain update: a connection on a chain the update leaves alone
    stays (no connection: close); one on a changed chain drains."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/"

    def two_chains(default_prefix: str, local_prefix: str = "local"):
        proto = listener(port, stat_prefix=local_prefix)
        chain = proto.filter_chains[0]
        cidr = chain.filter_chain_match.source_prefix_ranges.add(address_prefix="127.0.0.1")
        cidr.prefix_len.value = 32
        default = listener(port, stat_prefix=default_prefix).filter_chains[0]
        proto.default_filter_chain.CopyFrom(default)
        return proto

    with XdsThread() as xds:
        xds.set_resources(CLUSTER, [])
        xds.set_resources(ROUTE, [routes(TEAPOT)])
        xds.set_resources(LISTENER, [two_chains("d1")])
        args = ["--drain-time-s", "5", "--drain-strategy", "immediate"]
        proxy = start_proxy(bootstrap(xds.port, False), tmp_path, args=args)
        try:
            with httpx.Client(timeout=5) as client:
                assert client.get(url).status_code == 418  # on the 127.0.0.1 chain
                # Only the default chain changes: this connection's chain is left alone.
                xds.set_resources(LISTENER, [two_chains("d2")])
                wait_for(lambda: proxy.stats()["listener_manager.listener_in_place_updated"]
                         == 1, what="in-place update")  # fmt: skip
                response = client.get(url)
                assert response.status_code == 418
                assert response.headers.get("connection") != "close"
                # Now its chain changes: it drains.
                xds.set_resources(LISTENER, [two_chains("d2", local_prefix="local2")])
                wait_for(lambda: proxy.stats()["listener_manager.listener_in_place_updated"]
                         == 2, what="second update")  # fmt: skip
                response = client.get(url)
                assert response.headers.get("connection") == "close"
            assert httpx.get(url, timeout=5).status_code == 418
            proxy.assert_nothing_raised()
        finally:
            proxy.stop()


def test_a_listener_warming_for_its_routes_shows_in_init_dump(tmp_path):
    """The admin answers while the server initializes: /ready is 503 INITIALIZING and
    /init_dump names the listener waiting for its RDS route configuration, as Envoy does."""
    port = free_port()
    with XdsThread() as xds:
        xds.set_resources(CLUSTER, [])
        xds.set_resources(LISTENER, [listener(port)])  # its route configuration is held back
        proxy = start_proxy(bootstrap(xds.port, False), tmp_path, wait_live=False)
        try:
            wait_for(lambda: proxy.admin("/ready") == (503, "INITIALIZING\n"), what="init")
            # INITIALIZING comes before LDS brings the listener: wait for it to show.
            status, body = wait_for(
                lambda: (
                    (answer := proxy.admin("/init_dump"))[1].strip() not in ("{}", "") and answer
                ),
                what="an unready target in /init_dump",
            )
            dump = json.loads(body)["unready_targets_dumps"]
            assert status == 200 and len(dump) == 1
            assert dump[0]["name"].startswith("init manager Listener-local-init-manager http ")
            assert dump[0]["target_names"] == [
                "shared target RdsRouteConfigSubscription RDS init routes"
            ]
            assert proxy.admin("/init_dump?mask=cluster") == (200, "{}\n")
            xds.set_resources(ROUTE, [routes(TEAPOT)])
            wait_for(lambda: proxy.admin("/ready")[0] == 200, what="LIVE")
            assert proxy.admin("/init_dump") == (200, "{}\n")
            assert httpx.get(f"http://127.0.0.1:{port}/", timeout=5).status_code == 418
        finally:
            proxy.stop()
