"""RTDS over ADS, end to end: a runtime layer pushed by the control plane reaches /runtime
and the workers' routes (runtime_fraction), without a restart."""

from __future__ import annotations

import httpx
from envoy.service.runtime.v3 import rtds_pb2
from google.protobuf import json_format

from legatus.config_subscription.decode import CLUSTER, RUNTIME
from tests.support.http_upstream import http_proxy_config
from tests.support.process import start_proxy, wait_for
from tests.support.xds_thread import XdsThread, ads_bootstrap


def runtime(percent: int) -> rtds_pb2.Runtime:
    return json_format.ParseDict(
        {"name": "rtds-res", "layer": {"feature": {"percent": percent}}}, rtds_pb2.Runtime()
    )


def test_an_rtds_layer_drives_a_route_runtime_fraction(tmp_path):
    gated = {
        "match": {
            "prefix": "/",
            "runtime_fraction": {
                "default_value": {"numerator": 0, "denominator": "HUNDRED"},
                "runtime_key": "feature.percent",
            },
        },
        "direct_response": {"status": 418},
    }
    fallback = {"match": {"prefix": "/"}, "direct_response": {"status": 200}}
    listener = http_proxy_config(1, routes=[gated, fallback])["static_resources"]["listeners"]
    layers = [
        {"name": "static", "static_layer": {}},
        {"name": "rtds", "rtds_layer": {"name": "rtds-res", "rtds_config": {"ads": {}}}},
    ]
    with XdsThread() as xds:
        config = ads_bootstrap(
            xds.port, static_resources={"listeners": listener}, layered_runtime={"layers": layers}
        )
        xds.set_resources(CLUSTER, [])
        xds.set_resources(RUNTIME, [runtime(0)])
        proxy = start_proxy(config, tmp_path, args=["--concurrency", "2"])
        try:
            port = proxy.listener_port("http")
            url = f"http://127.0.0.1:{port}/"
            assert httpx.get(url, timeout=5).status_code == 200
            status, body = proxy.admin("/runtime")
            assert status == 200 and '"feature.percent"' in body

            xds.set_resources(RUNTIME, [runtime(100)])
            wait_for(lambda: httpx.get(url, timeout=5).status_code == 418, what="RTDS")
            assert all(httpx.get(url, timeout=5).status_code == 418 for _ in range(6))
            assert proxy.stats()["runtime.update_success"] >= 2
            proxy.assert_nothing_raised()
        finally:
            proxy.stop()
