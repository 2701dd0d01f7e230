"""Active health checking, sans I/O: config compilation, the per-host state machine, intervals,
the HTTP request and the TCP matcher; then the probes against real sockets."""

from __future__ import annotations

import asyncio
import random

import pytest
from envoy.config.core.v3 import health_check_pb2
from google.protobuf import json_format

from legatus.config.errors import ConfigError
from legatus.stats.store import Store
from legatus.upstream.health_checker.config import compile_health_check, compile_health_checks
from legatus.upstream.health_checker.http import HttpProbe, build_request
from legatus.upstream.health_checker.session import (
    HealthCheckerStats,
    HostSession,
    Outcome,
    Transition,
    next_interval,
)
from legatus.upstream.health_checker.tcp import TcpProbe, fuzzy_match
from legatus.upstream.host import HealthFlag

F = HealthFlag


def hc(**fields) -> health_check_pb2.HealthCheck:
    base = {
        "timeout": "1s",
        "interval": "2s",
        "unhealthy_threshold": 3,
        "healthy_threshold": 2,
        "http_health_check": {"path": "/hc"},
    }
    base.update(fields)
    return json_format.ParseDict(base, health_check_pb2.HealthCheck())


def compiled(**fields):
    return compile_health_check(hc(**fields), "hc")


def stats() -> HealthCheckerStats:
    return HealthCheckerStats(Store().scope("cluster.c.health_check."))


# Config ---------------------------------------------------------------------------------


def test_defaults_are_envoys():
    c = compiled()
    assert c.reuse_connection is True
    assert c.no_traffic_interval == 60.0 and c.no_traffic_healthy_interval == 60.0
    assert c.unhealthy_interval == 2.0 and c.unhealthy_edge_interval == 2.0
    assert c.healthy_edge_interval == 2.0
    assert c.http.expected == ((200, 201),)  # 200 only, not 2xx
    assert c.http.method == "GET" and c.http.host == ""


def test_unhealthy_edge_interval_defaults_to_unhealthy_interval():
    c = compiled(unhealthy_interval="5s")
    assert c.unhealthy_edge_interval == 5.0 and c.interval == 2.0


def test_grpc_health_check_compiles_and_refuses_what_it_cannot_do():
    proto = hc(http_health_check=None, grpc_health_check={})
    proto.ClearField("http_health_check")
    proto.grpc_health_check.service_name = "svc"
    proto.grpc_health_check.initial_metadata.add(header={"key": "X-Md", "value": "v"})
    config = compile_health_check(proto, "hc")
    assert config.grpc.service_name == "svc"
    assert config.grpc.initial_metadata == (("x-md", "v"),)
    proto.grpc_health_check.initial_metadata[0].header.value = "%HOSTNAME%"
    with pytest.raises(ConfigError) as e:
        compile_health_check(proto, "hc")
    assert e.value.path == "hc.grpc_health_check.initial_metadata[0].header.value"


@pytest.mark.parametrize(
    ("fields", "path"),
    [
        ({"event_log_path": "/tmp/x"}, "hc.event_log_path"),
        ({"tls_options": {"alpn_protocols": ["h2"]}}, "hc.tls_options"),
        ({"http_health_check": {"path": "/", "service_name_matcher": {"exact": "a"}}},
         "hc.http_health_check.service_name_matcher"),
        ({"http_health_check": {"path": "/", "codec_client_type": "HTTP2"}},
         "hc.http_health_check.codec_client_type"),
    ],
)  # fmt: skip
def test_unimplemented_fields_are_refused(fields, path):
    with pytest.raises(ConfigError) as e:
        compiled(**fields)
    assert e.value.path == path


def test_more_than_one_health_check_is_refused():
    with pytest.raises(ConfigError, match="Multiple health checks not supported"):
        compile_health_checks([hc(), hc()], "c.health_checks")


def test_tcp_payloads_are_hex():
    c = compiled(
        http_health_check=None,
        tcp_health_check={"send": {"text": "50494e47"}, "receive": [{"text": "4f4b"}]},
    )
    assert c.tcp.send == b"PING" and c.tcp.receive == (b"OK",)
    with pytest.raises(ConfigError) as e:
        compiled(http_health_check=None, tcp_health_check={"send": {"text": "zz"}})
    assert e.value.path == "hc.tcp_health_check.send.text"


# The state machine ---------------------------------------------------------------------


def test_first_success_makes_a_new_host_healthy_at_once():
    s, st, c = HostSession(), stats(), compiled()
    assert s.flags == F.FAILED_ACTIVE_HC
    assert s.on_outcome(Outcome.SUCCESS, c, st) is Transition.CHANGED
    assert s.flags == 0 and st.success.value == 1


def test_first_failure_keeps_the_host_failed():
    s, st, c = HostSession(), stats(), compiled()
    assert s.on_outcome(Outcome.NETWORK, c, st) is Transition.UNCHANGED
    assert s.flags == F.FAILED_ACTIVE_HC
    assert (st.failure.value, st.network_failure.value) == (1, 1)
    # later: healthy_threshold successes in a row
    assert s.on_outcome(Outcome.SUCCESS, c, st) is Transition.CHANGE_PENDING
    assert s.on_outcome(Outcome.SUCCESS, c, st) is Transition.CHANGED
    assert s.flags == 0


def test_network_failures_count_to_the_threshold():
    s, st, c = HostSession(), stats(), compiled()
    s.on_outcome(Outcome.SUCCESS, c, st)
    assert s.on_outcome(Outcome.NETWORK, c, st) is Transition.CHANGE_PENDING
    assert s.on_outcome(Outcome.NETWORK, c, st) is Transition.CHANGE_PENDING
    assert s.on_outcome(Outcome.SUCCESS, c, st) is Transition.UNCHANGED  # resets the count
    for _ in range(2):
        s.on_outcome(Outcome.NETWORK, c, st)
    assert s.flags == 0
    assert s.on_outcome(Outcome.NETWORK, c, st) is Transition.CHANGED
    assert s.flags == F.FAILED_ACTIVE_HC


def test_an_unexpected_status_fails_at_once_a_retriable_one_counts():
    c, st = compiled(), stats()
    s = HostSession()
    s.on_outcome(Outcome.SUCCESS, c, st)
    assert s.on_outcome(Outcome.FAILED, c, st) is Transition.CHANGED  # e.g. 503
    assert s.flags == F.FAILED_ACTIVE_HC and st.network_failure.value == 0
    s = HostSession()
    s.on_outcome(Outcome.SUCCESS, c, st)
    assert s.on_outcome(Outcome.RETRIABLE, c, st) is Transition.CHANGE_PENDING


def test_timeout_sets_active_hc_timeout_while_failed():
    c, st, s = compiled(unhealthy_threshold=1), stats(), HostSession()
    s.on_outcome(Outcome.SUCCESS, c, st)
    s.on_outcome(Outcome.TIMEOUT, c, st)
    assert s.flags == F.FAILED_ACTIVE_HC | F.ACTIVE_HC_TIMEOUT
    s.on_outcome(Outcome.NETWORK, c, st)
    assert s.flags == F.FAILED_ACTIVE_HC
    s.on_outcome(Outcome.TIMEOUT, c, st)
    s.on_outcome(Outcome.SUCCESS, c, st)
    s.on_outcome(Outcome.SUCCESS, c, st)
    assert s.flags == 0
    assert st.network_failure.value == 3


def test_degraded_and_passive():
    c, st, s = compiled(), stats(), HostSession()
    assert s.on_outcome(Outcome.DEGRADED, c, st) is Transition.CHANGED
    assert s.flags == F.DEGRADED_ACTIVE_HC
    assert s.on_outcome(Outcome.SUCCESS, c, st) is Transition.CHANGED
    assert s.flags == 0
    s.flags |= F.EXCLUDED_VIA_IMMEDIATE_HC_FAIL
    assert s.on_outcome(Outcome.PASSIVE, c, st) is Transition.CHANGED
    assert st.passive_failure.value == 1
    s.on_outcome(Outcome.SUCCESS, c, st)
    s.on_outcome(Outcome.SUCCESS, c, st)
    assert s.flags == 0  # the exclusion ends with health


def test_intervals():
    c = compiled(
        no_traffic_interval="7s",
        unhealthy_interval="3s",
        unhealthy_edge_interval="4s",
        healthy_edge_interval="5s",
    )
    rng = random.Random(1)

    def iv(healthy, change, traffic=True):
        return next_interval(c, healthy=healthy, change=change, has_traffic=traffic, rng=rng)

    assert iv(True, Transition.UNCHANGED) == 2.0
    assert iv(True, Transition.CHANGE_PENDING) == 5.0
    assert iv(False, Transition.UNCHANGED) == 3.0
    assert iv(False, Transition.CHANGE_PENDING) == 4.0
    assert iv(True, Transition.UNCHANGED, traffic=False) == 7.0
    jittered = compiled(interval_jitter_percent=50, interval_jitter="0.1s")
    for _ in range(20):
        v = next_interval(
            jittered, healthy=True, change=Transition.UNCHANGED, has_traffic=True, rng=rng
        )
        assert 2.0 <= v < 3.1


# The HTTP request and the TCP matcher ------------------------------------------------------


def test_request_is_envoys():
    c = compiled(
        http_health_check={
            "path": "/healthz",
            "request_headers_to_add": [
                {"header": {"key": "X-A", "value": "1"}},
                {"header": {"key": "user-agent", "value": "mine"},
                 "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"},
            ],
            "request_headers_to_remove": ["x-b"],
        }
    )  # fmt: skip
    assert build_request(c.http, "backend") == (
        b"GET /healthz HTTP/1.1\r\nhost: backend\r\nx-a: 1\r\nuser-agent: mine\r\n\r\n"
    )
    plain = compiled(http_health_check={"path": "/", "host": "svc"})
    assert build_request(plain.http, "backend") == (
        b"GET / HTTP/1.1\r\nhost: svc\r\nuser-agent: Envoy/HC\r\n\r\n"
    )


def test_fuzzy_match():
    assert fuzzy_match((b"AB", b"CD"), b"xxABxxCDxx")
    assert not fuzzy_match((b"CD", b"AB"), b"xxABxxCDxx")
    assert fuzzy_match((), b"")
    assert not fuzzy_match((b"AB",), b"A")


# The probes, against real sockets ---------------------------------------------------------


async def _server(handler):
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def test_http_probe_reuses_its_connection_and_reads_the_status():
    connections = []
    statuses = iter([b"200 OK", b"503 Unavailable", b"200 OK\r\nx-envoy-degraded: 1"])

    async def handle(reader, writer):
        connections.append(writer)
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"GET /hc HTTP/1.1\r\nhost: c\r\n")
            writer.write(b"HTTP/1.1 " + next(statuses) + b"\r\ncontent-length: 2\r\n\r\nok")

    server, port = await _server(handle)
    probe = HttpProbe(compiled().http, address=("127.0.0.1", port), cluster="c", reuse=True)
    try:
        assert await probe.check() is Outcome.SUCCESS
        assert await probe.check() is Outcome.FAILED
        assert await probe.check() is Outcome.DEGRADED
        assert len(connections) == 1
    finally:
        probe.close()
        server.close()


async def test_http_probe_connection_refused_is_a_network_failure():
    server, port = await _server(lambda r, w: None)
    server.close()
    await server.wait_closed()
    probe = HttpProbe(compiled().http, address=("127.0.0.1", port), cluster="c", reuse=True)
    assert await probe.check() is Outcome.NETWORK


async def test_tcp_probe_sends_and_matches():
    async def handle(reader, writer):
        data = await reader.readexactly(4)
        writer.write(b"xx" + data + b"yyOK")

    server, port = await _server(handle)
    config = compiled(
        http_health_check=None,
        tcp_health_check={"send": {"text": "50494e47"}, "receive": [{"text": "50494e47"},
                                                                       {"text": "4f4b"}]},
    )  # fmt: skip
    probe = TcpProbe(config.tcp, address=("127.0.0.1", port), reuse=False)
    try:
        assert await probe.check() is Outcome.SUCCESS
        connect_only = compiled(http_health_check=None, tcp_health_check={})
        probe2 = TcpProbe(connect_only.tcp, address=("127.0.0.1", port), reuse=True)
        assert await probe2.check() is Outcome.SUCCESS
    finally:
        server.close()
