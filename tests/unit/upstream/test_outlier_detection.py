"""Outlier detection: the worker-side recorder and the main-side detector, with a fake clock."""

from __future__ import annotations

import random

import pytest
from envoy.config.cluster.v3 import outlier_detection_pb2
from google.protobuf import json_format

from legatus.config.errors import ConfigError
from legatus.stats.store import Store
from legatus.upstream.outlier_detection import Detector, compile_outlier_detection
from legatus.upstream.outlier_reporter import (
    ERROR_5XX,
    GATEWAY,
    LOCAL_FAILURE,
    LOCAL_OK,
    OK,
    HostOutlier,
    Result,
)

HOSTS = [f"10.0.0.{i}:80" for i in range(1, 11)]


def config(**fields):
    proto = json_format.ParseDict(fields, outlier_detection_pb2.OutlierDetection())
    return compile_outlier_detection(proto, "od")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def detector(hosts=HOSTS, **fields):
    clock = Clock()
    changes = []
    d = Detector(
        config(**fields),
        scope=Store().scope("cluster.c."),
        clock=clock,
        rng=random.Random(1),
        on_change=lambda: changes.append(1),
    )
    d.set_hosts(hosts)
    return d, clock, changes


def stat(d: Detector, name: str) -> int:
    return getattr(d.stats, name).value


# Config -----------------------------------------------------------------------------------


def test_defaults_are_envoys():
    c = config()
    assert (c.interval, c.base_ejection_time, c.max_ejection_time) == (10.0, 30.0, 300.0)
    assert (c.consecutive_5xx, c.consecutive_gateway_failure, c.max_ejection_percent) == (5, 5, 10)
    assert (c.enforcing_consecutive_5xx, c.enforcing_consecutive_gateway_failure) == (100, 0)
    assert (c.success_rate_minimum_hosts, c.success_rate_request_volume) == (5, 100)
    assert c.success_rate_stdev_factor == 1900 and c.failure_percentage_threshold == 85


def test_max_ejection_time_defaults_to_base_when_larger():
    assert config(base_ejection_time="400s").max_ejection_time == 400.0
    with pytest.raises(ConfigError, match="cannot be smaller than base_ejection_time"):
        config(base_ejection_time="10s", max_ejection_time="5s")


def test_monitors_are_refused():
    proto = outlier_detection_pb2.OutlierDetection()
    proto.monitors.add(name="x")
    with pytest.raises(ConfigError) as e:
        compile_outlier_detection(proto, "c.outlier_detection")
    assert e.value.path == "c.outlier_detection.monitors"


# The worker-side recorder -------------------------------------------------------------------


class Sink:
    def __init__(self) -> None:
        self.dirty_hosts = []
        self.urgent = False

    def dirty(self, host):
        self.dirty_hosts.append(host)

    def flush_soon(self):
        self.urgent = True


def test_outcomes_are_run_length_encoded():
    sink = Sink()
    h = HostOutlier(sink, "c", "a", split=False)
    for code in (200, 204, 500, 503, 502, 404):
        h.put_http_response_code(code)
    h.put_result(Result.LOCAL_ORIGIN_CONNECT_FAILED)  # 503 without the split
    h.put_result(Result.LOCAL_ORIGIN_CONNECT_SUCCESS)  # nothing without the split
    h.put_result(Result.LOCAL_ORIGIN_TIMEOUT, 504)
    assert h.runs == [OK, 2, ERROR_5XX, 1, GATEWAY, 2, OK, 1, GATEWAY, 2]
    assert sink.dirty_hosts == [h] and sink.urgent  # a failure asks for a prompt flush


def test_split_mode_keeps_local_origin_apart():
    h = HostOutlier(Sink(), "c", "a", split=True)
    h.put_result(Result.LOCAL_ORIGIN_CONNECT_FAILED)
    h.put_result(Result.LOCAL_ORIGIN_TIMEOUT)
    h.put_result(Result.LOCAL_ORIGIN_CONNECT_SUCCESS)
    h.put_http_response_code(503)
    assert h.runs == [LOCAL_FAILURE, 2, LOCAL_OK, 1, GATEWAY, 1]


# Consecutive errors ---------------------------------------------------------------------------


def test_consecutive_5xx_ejects_and_the_host_returns_after_base_ejection_time():
    d, clock, changes = detector(max_ejection_percent=100, base_ejection_time="30s")
    a = HOSTS[0]
    d.on_outcomes(a, [ERROR_5XX, 4, OK, 1, ERROR_5XX, 4])
    assert not d.ejected(a)
    d.on_outcomes(a, [GATEWAY, 1])
    assert d.ejected(a) and changes
    assert stat(d, "ejections_active") == 1
    for name in (
        "ejections_enforced_total",
        "ejections_total",
        "ejections_consecutive_5xx",
        "ejections_detected_consecutive_5xx",
        "ejections_enforced_consecutive_5xx",
    ):
        assert stat(d, name) == 1, name  # fmt: skip
    # gateway failures are detected but not enforced by default
    assert stat(d, "ejections_detected_consecutive_gateway_failure") == 0
    clock.now += 29
    d.on_interval()
    assert d.ejected(a)
    clock.now += 1
    d.on_interval()
    assert not d.ejected(a) and stat(d, "ejections_active") == 0
    # the second ejection lasts twice as long
    d.on_outcomes(a, [ERROR_5XX, 5])
    assert d.ejected(a)
    clock.now += 30
    d.on_interval()
    assert d.ejected(a)
    clock.now += 30
    d.on_interval()
    assert not d.ejected(a)


def test_gateway_failures_when_enforced():
    d, _, _ = detector(
        max_ejection_percent=100, consecutive_gateway_failure=2,
        enforcing_consecutive_gateway_failure=100,
    )  # fmt: skip
    d.on_outcomes(HOSTS[0], [GATEWAY, 1, ERROR_5XX, 1, GATEWAY, 1])
    assert not d.ejected(HOSTS[0])  # the 500 broke the gateway run
    d.on_outcomes(HOSTS[0], [GATEWAY, 1])
    assert d.ejected(HOSTS[0])
    assert stat(d, "ejections_enforced_consecutive_gateway_failure") == 1


def test_max_ejection_percent_overflows():
    d, _, _ = detector(hosts=HOSTS[:4], consecutive_5xx=1, max_ejection_percent=50)
    for h in HOSTS[:3]:
        d.on_outcomes(h, [ERROR_5XX, 1])
    assert [d.ejected(h) for h in HOSTS[:3]] == [True, True, False]
    assert stat(d, "ejections_overflow") == 1
    assert stat(d, "ejections_detected_consecutive_5xx") == 3


def test_not_enforced_is_detected_only():
    d, _, _ = detector(consecutive_5xx=2, enforcing_consecutive_5xx=0, max_ejection_percent=100)
    d.on_outcomes(HOSTS[0], [ERROR_5XX, 5])
    assert not d.ejected(HOSTS[0])
    assert stat(d, "ejections_detected_consecutive_5xx") == 2
    assert stat(d, "ejections_enforced_total") == 0


def test_local_origin_failures_with_split():
    d, _, _ = detector(
        split_external_local_origin_errors=True, consecutive_local_origin_failure=3,
        max_ejection_percent=100,
    )  # fmt: skip
    d.on_outcomes(HOSTS[0], [LOCAL_FAILURE, 2, LOCAL_OK, 1, LOCAL_FAILURE, 2])
    assert not d.ejected(HOSTS[0])
    d.on_outcomes(HOSTS[0], [LOCAL_FAILURE, 1])
    assert d.ejected(HOSTS[0])
    assert stat(d, "ejections_enforced_consecutive_local_origin_failure") == 1


def test_health_check_pass_unejects():
    d, _, _ = detector(consecutive_5xx=1, max_ejection_percent=100)
    d.on_outcomes(HOSTS[0], [ERROR_5XX, 1])
    d.on_health_check_passed(HOSTS[0], hc_healthy=True)
    assert not d.ejected(HOSTS[0]) and stat(d, "ejections_active") == 0


def test_removed_host_releases_its_ejection():
    d, _, _ = detector(consecutive_5xx=1, max_ejection_percent=100)
    d.on_outcomes(HOSTS[0], [ERROR_5XX, 1])
    d.set_hosts(HOSTS[1:])
    assert stat(d, "ejections_active") == 0


# Success rate and failure percentage -----------------------------------------------------------


def test_success_rate_ejects_the_outlier():
    d, _, _ = detector(hosts=HOSTS[:5], max_ejection_percent=100, consecutive_5xx=1000)
    for h in HOSTS[:4]:
        d.on_outcomes(h, [OK, 100])
    d.on_outcomes(HOSTS[4], [OK, 50, ERROR_5XX, 50])
    d.on_interval()  # decides on the requests of the interval that just ended
    assert d.ejected(HOSTS[4])
    assert stat(d, "ejections_detected_success_rate") == 1
    assert stat(d, "ejections_enforced_success_rate") == 1
    assert d.success_rate_average == pytest.approx(90.0)
    assert d.success_rate_ejection_threshold == pytest.approx(90 - 1.9 * 20)


def test_failure_percentage():
    d, _, _ = detector(
        hosts=HOSTS[:5], max_ejection_percent=100, consecutive_5xx=1000,
        enforcing_failure_percentage=100, success_rate_request_volume=1000,
    )  # fmt: skip
    for h in HOSTS[:4]:
        d.on_outcomes(h, [OK, 60])
    d.on_outcomes(HOSTS[4], [OK, 5, ERROR_5XX, 55])
    d.on_interval()
    assert d.ejected(HOSTS[4])
    assert stat(d, "ejections_enforced_failure_percentage") == 1
    assert stat(d, "ejections_detected_success_rate") == 0


def test_too_few_hosts_skip_success_rate():
    d, _, _ = detector(hosts=HOSTS[:4], max_ejection_percent=100)
    for h in HOSTS[:3]:
        d.on_outcomes(h, [OK, 200])
    d.on_outcomes(HOSTS[3], [ERROR_5XX, 200])
    d.on_interval()
    d.on_interval()
    assert d.success_rate_average == -1
