"""Health checking and outlier detection, Envoy against legatus: the same bootstrap and the
same upstream behaviour, then the health-check request each upstream saw, the /clusters
health flags, and the ``health_check.*``, ``outlier_detection.*`` and membership stats."""

from __future__ import annotations

from tests.integration.test_health_checking import bootstrap, cluster, flags, http_check
from tests.support.health_upstream import HealthUpstream
from tests.support.process import envoy_command, legatus_command, start_proxy, wait_for

OUTLIER = {"consecutive_5xx": 3, "interval": "1s", "base_ejection_time": "2s"}
CHECK = http_check(
    http_health_check={
        "path": "/healthz",
        "request_headers_to_add": [{"header": {"key": "x-check", "value": "1"}}],
    }
)


def _run(tmp_path, command) -> dict:
    a, b, c = HealthUpstream("a"), HealthUpstream("b"), HealthUpstream("c")
    b.hc_status = 503  # fails at once
    c.hc_headers = ["x-envoy-degraded: true"]
    config = bootstrap(
        cluster(
            "backend",
            [a.port, b.port, c.port],
            health_checks=[CHECK],
            outlier_detection=OUTLIER,
        )
    )
    proxy = start_proxy(config, tmp_path, command=command, args=["--concurrency", "1"])
    try:
        names = {f"127.0.0.1:{u.port}": u.name for u in (a, b, c)}

        def settled():
            f = flags(proxy, "backend")
            return f if len(f) == 3 and a.hc_count() >= 3 and b.hc_count() >= 3 else None

        got = wait_for(settled, timeout=5, what="three checks of every host")
        stats = proxy.stats()
        return {
            "flags": {names[k]: v for k, v in got.items()},
            "head": next(h for h in a.heads if b"/healthz" in h),
            "stats": {
                k: v
                for k, v in stats.items()
                if ".health_check." in k or ".outlier_detection." in k or ".membership_" in k
            },
        }
    finally:
        proxy.stop()
        for u in (a, b, c):
            u.close()


def test_health_checking_matches_envoy(tmp_path):
    envoy = _run(tmp_path / "envoy", envoy_command())
    legatus = _run(tmp_path / "legatus", legatus_command())
    assert envoy["head"] == (
        b"GET /healthz HTTP/1.1\r\nhost: backend\r\nuser-agent: Envoy/HC\r\nx-check: 1"
    )
    assert legatus["head"] == envoy["head"]
    assert envoy["flags"] == {"a": "healthy", "b": "/failed_active_hc", "c": "/degraded_active_hc"}
    assert legatus["flags"] == envoy["flags"]
    # The counters move with time; their names, and the gauges, must match.
    assert sorted(legatus["stats"]) == sorted(envoy["stats"])
    moving = ("attempt", "success", "failure")
    for name, value in envoy["stats"].items():
        if name.rsplit(".", 1)[1] not in moving:
            assert legatus["stats"][name] == value, name


def _run_health_check_config(tmp_path, command) -> dict:
    """Endpoint.health_check_config: host a is checked on another upstream's port (hc) with its
    own Host header; host b has checks disabled (its checks would fail); host c is checked at
    its own address with the cluster's Host."""
    a, b, c, hc = (HealthUpstream(n) for n in ("a", "b", "c", "hc"))
    b.hc_status = 503
    a.hc_status = 503  # a's own port would fail: only the checks at hc's port decide
    endpoint = lambda u, **config: {  # noqa: E731
        "endpoint": {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": u.port}},
            **({"health_check_config": config} if config else {}),
        }
    }
    backend = cluster("backend", [])
    backend["load_assignment"]["endpoints"][0]["lb_endpoints"] = [
        endpoint(a, port_value=hc.port, hostname="a.health"),
        endpoint(b, disable_active_health_check=True),
        endpoint(c),
    ]
    backend["health_checks"] = [http_check()]
    proxy = start_proxy(bootstrap(backend), tmp_path, command=command,
                        args=["--concurrency", "1"])  # fmt: skip
    try:
        names = {f"127.0.0.1:{u.port}": u.name for u in (a, b, c)}

        def settled():
            f = flags(proxy, "backend")
            return f if len(f) == 3 and hc.hc_count() >= 3 and c.hc_count() >= 3 else None

        got = wait_for(settled, timeout=5, what="three checks of the checked hosts")
        return {
            "flags": {names[k]: v for k, v in got.items()},
            "hc_head": next(h for h in hc.heads if b"/healthz" in h),
            "checked": (a.hc_count(), b.hc_count()),
            "membership": {k: v for k, v in proxy.stats().items() if ".membership_" in k},
        }
    finally:
        proxy.stop()
        for u in (a, b, c, hc):
            u.close()


def test_endpoint_health_check_config_matches_envoy(tmp_path):
    envoy = _run_health_check_config(tmp_path / "envoy", envoy_command())
    legatus = _run_health_check_config(tmp_path / "legatus", legatus_command())
    assert envoy["hc_head"] == b"GET /healthz HTTP/1.1\r\nhost: a.health\r\nuser-agent: Envoy/HC"
    assert legatus["hc_head"] == envoy["hc_head"]
    assert envoy["checked"] == (0, 0)
    assert legatus["checked"] == envoy["checked"]
    assert envoy["flags"] == {"a": "healthy", "b": "healthy", "c": "healthy"}
    assert legatus["flags"] == envoy["flags"]
    assert legatus["membership"] == envoy["membership"]
