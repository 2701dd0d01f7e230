"""``proxy_status_config`` (the RFC 9209 ``Proxy-Status`` response header), Envoy 1.40
against legatus: which response flags name which proxy error (no healthy upstream, refused
and reset connections, overflow, timeouts, no route, rate limits, fault aborts,
protocol errors, retries exhausted on an upstream 5xx), what the entry says under
each option (details, connection termination details, flags, the proxy name), where it goes
among the headers (after date/server/via, appended to the upstream's own), and the
recommended status replacing the response's (the access log shows it), over HTTP/1.1 and
HTTP/2."""

from __future__ import annotations

import json

import pytest

from tests.differential.http_scenario import (  # noqa: F401 (fixtures)
    HCM,
    ROUTER,
    Cluster,
    Listener,
    Reply,
    http_pair_fixture,
    http_pair_processes_fixture,
    route,
    scenario,
)
from tests.differential.test_http2_envoy import GET, H2Client
from tests.differential.test_validate_verdicts import envoy_validate, legatus_validate

FAULT = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"
LOCAL_RATELIMIT = (
    "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit"
)
SCRIPTS = {
    "/slow": Reply(delay=0.6),
    "/reset": Reply(abort="reset"),
    "/close": Reply(abort="close"),
    "/garbage": Reply(abort="garbage"),
    "/e500": Reply(status=500),
    "/e503": Reply(status=503, headers=(("content-type", "text/plain"), ("proxy-status", "up"))),
}


_PLAIN = ("/ok", "/reset", "/close", "/garbage")


def _routes(prefix: str) -> list:
    """Every outcome the test drives, each to a cluster of the listener ``prefix``."""
    fault = {"envoy.filters.http.fault": {"@type": FAULT, "abort": {
        "http_status": 418, "percentage": {"numerator": 100}}}}  # fmt: skip
    ratelimit = {"envoy.filters.http.local_ratelimit": {
        "@type": LOCAL_RATELIMIT, "stat_prefix": "limited",
        "token_bucket": {"max_tokens": 1, "fill_interval": "100s"},
        "filter_enabled": {"default_value": {"numerator": 100}},
        "filter_enforced": {"default_value": {"numerator": 100}}}}  # fmt: skip
    # (No route timeout on retried routes: x-envoy-expected-rq-timeout-ms would carry the
    # time left, which depends on timing.)
    retry = {
        "retry_on": "5xx,connect-failure",
        "num_retries": 1,
        "retry_back_off": {"base_interval": "0.001s", "max_interval": "0.002s"},
    }
    return [
        route("/none", {"route": {"cluster": f"{prefix}_none"}}),
        route("/refused", {"route": {"cluster": f"{prefix}_refused"}}),
        route("/retry", {"route": {"cluster": f"{prefix}_refused", "retry_policy": retry,
                                   "timeout": "0s"}}),
        route("/overflow", {"route": {"cluster": f"{prefix}_overflow"}}),
        route("/slow", {"route": {"cluster": f"{prefix}_up", "timeout": "0.2s"}}),
        route("/e5", {"route": {"cluster": f"{prefix}_up", "retry_policy": retry,
                                "timeout": "0s"}}),
        route("/fault", {"route": {"cluster": f"{prefix}_up"}}, typed_per_filter_config=fault),
        route("/limited", {"route": {"cluster": f"{prefix}_up"}},
              typed_per_filter_config=ratelimit),
        route("/direct", {"direct_response": {"status": 503}}),
        *(route(p, {"route": {"cluster": f"{prefix}_up"}}) for p in _PLAIN),
    ]  # (anything else: no route)  # fmt: skip


def _filters() -> list:
    return [
        {"name": "envoy.filters.http.fault", "typed_config": {"@type": FAULT}},
        {"name": "envoy.filters.http.local_ratelimit",
         "typed_config": {"@type": LOCAL_RATELIMIT, "stat_prefix": "off"}},
    ]  # fmt: skip


def _clusters(prefix: str) -> list[Cluster]:
    return [
        Cluster(name=f"{prefix}_up"),
        Cluster(name=f"{prefix}_none", endpoint="none"),
        Cluster(name=f"{prefix}_refused", endpoint="refused"),
        Cluster(name=f"{prefix}_overflow", extra={"circuit_breakers": {"thresholds": [
            {"max_pending_requests": 0}]}}),
    ]  # fmt: skip


PATHS = (
    "/ok", "/nowhere", "/none", "/refused", "/retry", "/overflow", "/slow", "/reset", "/close",
    "/garbage", "/e500", "/e503", "/fault", "/limited", "/limited", "/direct",
)  # fmt: skip


def _proxy_status_lines(out) -> list[list[str]]:
    return [[h for h in r["headers"] if h.startswith("proxy-status")] for r in out.envoy.result]


def _traffic(listener: str, paths=PATHS):
    def traffic(side):
        return [side.request(listener, "GET", p).view() for p in paths]

    return traffic


DEFAULT = Listener(
    name="ps", hcm={"proxy_status_config": {}, "via": "1.1 edge"}, filters=_filters(),
    routes=_routes("ps"),
)  # fmt: skip


@scenario(DEFAULT, *_clusters("ps"))
def test_the_error_each_flag_names(http_pair):
    out = http_pair.run(_traffic("ps"))
    assert _proxy_status_lines(out) == [
        [],
        ['proxy-status: envoy; error=destination_not_found; details="route_not_found; NR"'],
        ['proxy-status: envoy; error=destination_unavailable; '
         'details="no_healthy_upstream; UH"'],
        ['proxy-status: envoy; error=connection_refused; details="upstream_reset_before_'
         'response_started{remote_connection_failure|delayed_connect_error:_Connection_'
         'refused}; UF"'],
        ['proxy-status: envoy; error=connection_refused; details="upstream_reset_before_'
         'response_started{remote_connection_failure|delayed_connect_error:_Connection_'
         'refused}; URX,UF"'],
        ['proxy-status: envoy; error=connection_limit_reached; '
         'details="upstream_reset_before_response_started{overflow}; UO"'],
        ['proxy-status: envoy; error=http_response_timeout; details="response_timeout; UT"'],
        ['proxy-status: envoy; error=connection_terminated; '
         'details="upstream_reset_before_response_started{connection_termination}; UC"'],
        ['proxy-status: envoy; error=connection_terminated; '
         'details="upstream_reset_before_response_started{connection_termination}; UC"'],
        ['proxy-status: envoy; error=http_protocol_error; '
         'details="upstream_reset_before_response_started{protocol_error}; UPE"'],
        ['proxy-status: envoy; error=destination_unavailable; details="via_upstream; URX"'],
        ['proxy-status: up, envoy; error=destination_unavailable; details="via_upstream; URX"'],
        ['proxy-status: envoy; error=http_request_error; details="fault_filter_abort; FI"'],
        [],
        ['proxy-status: envoy; error=connection_limit_reached; '
         'details="local_rate_limited; RL"'],
        [],
    ]  # fmt: skip
    # After date, server and via.
    assert out.envoy.result[2]["headers"][-2:] == [
        "via: 1.1 edge", 'proxy-status: envoy; error=destination_unavailable; '
        'details="no_healthy_upstream; UH"']  # fmt: skip
    out.assert_same()


OPTIONS = Listener(
    name="ps_opts", filters=_filters(), routes=_routes("ps_opts"),
    hcm={"server_name": "edge-proxy", "proxy_status_config": {
        "remove_response_flags": True, "set_recommended_response_code": True}},
)  # fmt: skip


@scenario(OPTIONS, *_clusters("ps_opts"))
def test_the_recommended_status_replaces_the_response_status(http_pair):
    out = http_pair.run(_traffic("ps_opts"))
    statuses = [r["status"].split(" ", 2)[1] for r in out.envoy.result]
    # NR 500, UH/UO/RL/URX 503, UF/UC/UPE 502, UT 504; FI (http_request_error) keeps its 418.
    assert statuses == ["200", "500", "503", "502", "502", "503", "504", "502", "502", "502",
                        "503", "503", "418", "200", "503", "503"]  # fmt: skip
    assert [e["code"] for e in out.envoy.log] == [int(s) for s in statuses]
    assert _proxy_status_lines(out)[1] == [
        'proxy-status: edge-proxy; error=destination_not_found; details="route_not_found"'
    ]
    out.assert_same()


NO_DETAILS = Listener(
    name="ps_nodetails", filters=_filters(), routes=_routes("ps_nodetails"),
    hcm={"proxy_status_config": {"remove_details": True, "literal_proxy_name": "px-1"}},
)  # fmt: skip


@scenario(NO_DETAILS, *_clusters("ps_nodetails"))
def test_remove_details_and_a_literal_proxy_name(http_pair):
    out = http_pair.run(_traffic("ps_nodetails", ("/none", "/e500")))
    assert _proxy_status_lines(out) == [
        ["proxy-status: px-1; error=destination_unavailable"],
        ["proxy-status: px-1; error=destination_unavailable"],
    ]
    out.assert_same()


H2 = Listener(
    name="ps_h2", filters=_filters(), routes=_routes("ps_h2"),
    hcm={"codec_type": "HTTP2", "proxy_status_config": {"set_recommended_response_code": True}},
)  # fmt: skip


@scenario(H2, *_clusters("ps_h2"))
def test_over_http2(http_pair):
    def traffic(side):
        with H2Client(side, "ps_h2") as client:
            for path in ("/ok", "/nowhere", "/none", "/e500"):
                client.request([*GET, (":path", path)])
                client.wait()
            return client.view()

    out = http_pair.run(traffic)
    streams = out.envoy.result["streams"]
    assert streams[3]["headers"][:1] == [[":status", "500"]]
    assert [h for h in streams[3]["headers"] if h[0] == "proxy-status"] == [
        ["proxy-status", 'envoy; error=destination_not_found; details="route_not_found; NR"']
    ]
    out.assert_same()


def _bootstrap(proxy_status: dict) -> dict:
    typed = {"@type": HCM, "stat_prefix": "v", "proxy_status_config": proxy_status,
             "route_config": {"virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [
                 {"match": {"prefix": "/"}, "direct_response": {"status": 200}}]}]},
             "http_filters": [{"name": "envoy.filters.http.router",
                               "typed_config": {"@type": ROUTER}}]}  # fmt: skip
    return {"static_resources": {"listeners": [{
        "name": "v", "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": typed}]}]}]}}  # fmt: skip


@pytest.mark.parametrize("proxy_status", [
    {"literal_proxy_name": "p", "remove_details": True, "remove_response_flags": True,
     "remove_connection_termination_details": True, "set_recommended_response_code": True},
    {"use_node_id": True},
])  # fmt: skip
def test_configuration_verdicts(proxy_status, tmp_path):
    """Envoy and legatus take every option (``use_node_id``: see
    test_hcm_stream_errors_envoy.py)."""
    path = tmp_path / "config.json"
    path.write_text(json.dumps(_bootstrap(proxy_status)))
    envoy, legatus = envoy_validate(path), legatus_validate(path)
    assert envoy.code == 0, envoy.output[-2000:]
    assert legatus.code == 0, legatus.output[-2000:]
