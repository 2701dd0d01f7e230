"""Outlier detection end to end: an upstream answering 5xx is ejected, then comes back."""

from __future__ import annotations

import inspect
import time

import pytest

import legatus.router.router
from tests.integration.test_health_checking import bootstrap, cluster, flags, get
from tests.support.health_upstream import HealthUpstream
from tests.support.process import start_proxy, wait_for

# The router reports each upstream response to the host's outlier recorder
# (host.outlier.put_http_response_code); until it does, there is nothing to detect.
pytestmark = pytest.mark.skipif(
    ".outlier." not in inspect.getsource(legatus.router.router),
    reason="the router does not report upstream responses to outlier detection yet",
)


@pytest.mark.parametrize("concurrency", [1, 2])
def test_consecutive_5xx_ejects_then_the_host_returns(tmp_path, concurrency):
    a, b = HealthUpstream("a"), HealthUpstream("b")
    b.rq_status = 500
    od = {
        "consecutive_5xx": 3,
        "interval": "0.2s",
        "base_ejection_time": "0.6s",
        "max_ejection_percent": 100,
    }
    config = bootstrap(cluster("backend", [a.port, b.port], outlier_detection=od))
    proxy = start_proxy(config, tmp_path, args=["--concurrency", str(concurrency)])
    try:
        port = proxy.listener_port("l")
        b_address = f"127.0.0.1:{b.port}"
        deadline = time.monotonic() + 5
        while flags(proxy, "backend")[b_address] == "healthy":
            assert time.monotonic() < deadline, "b was never ejected"
            get(port)
        # The ejection follows the third 500 within a round trip or two (Envoy posts it to
        # its main thread too).
        if concurrency == 1:
            assert 3 <= b.traffic <= 4
        assert flags(proxy, "backend")[b_address] == "/failed_outlier_check"
        time.sleep(0.1)  # the health push reaches the workers
        before = b.traffic
        assert {get(port)[1] for _ in range(10)} == {"a"}
        assert b.traffic == before
        stats = proxy.stats()
        assert stats["cluster.backend.outlier_detection.ejections_active"] == 1
        assert stats["cluster.backend.outlier_detection.ejections_enforced_consecutive_5xx"] == 1
        assert stats["cluster.backend.outlier_detection.ejections_detected_consecutive_5xx"] == 1
        assert stats["cluster.backend.membership_healthy"] == 1
        b.rq_status = 200
        wait_for(lambda: flags(proxy, "backend")[b_address] == "healthy", timeout=3, what="b back")
        time.sleep(0.1)
        assert {get(port)[1] for _ in range(10)} == {"a", "b"}
        assert proxy.stats()["cluster.backend.outlier_detection.ejections_active"] == 0
    finally:
        proxy.stop()
        a.close()
        b.close()
