"""Proxy-Status (http/proxy_status.py): the error each flag names, the entry under each
option, the recommended status. The expected values were written by Envoy 1.40
(tests/differential/test_hcm_proxy_status_envoy.py drives the same cases through both)."""

from __future__ import annotations

import pytest
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from google.protobuf import json_format

from legatus.http.conn_manager_utility import compile_request_policy, mutate_response_headers
from legatus.http.headers import HeaderMap
from legatus.http.proxy_status import compile_proxy_status_config, proxy_status_error
from legatus.stream_info import ResponseFlag as F
from legatus.stream_info import StreamInfo

Config = hcm_pb2.HttpConnectionManager.ProxyStatusConfig


def config(server_name: str = "envoy", **fields):
    return compile_proxy_status_config(
        json_format.ParseDict(fields, Config()), "p", server_name=server_name
    )


def info(*flags: F, details: str | None = "no_healthy_upstream", termination=None) -> StreamInfo:
    result = StreamInfo(now_monotonic=0.0)
    for flag in flags:
        result.set_flag(flag)
    result.response_code_details = details
    result.connection_termination_details = termination
    return result


@pytest.mark.parametrize(
    ("flags", "error"),
    [
        ((F.NO_HEALTHY_UPSTREAM,), "destination_unavailable"),
        ((F.UPSTREAM_RETRY_LIMIT_EXCEEDED, F.UPSTREAM_CONNECTION_FAILURE), "connection_refused"),
        ((F.UPSTREAM_REQUEST_TIMEOUT,), "http_response_timeout"),
        ((F.NO_ROUTE_FOUND,), "destination_not_found"),
        ((F.DELAY_INJECTED, F.FAULT_INJECTED), "http_request_error"),
        ((F.RATE_LIMITED,), "connection_limit_reached"),
        ((F.UPSTREAM_PROTOCOL_ERROR,), "http_protocol_error"),
        ((F.DELAY_INJECTED,), None),
        ((F.UNCONDITIONAL_DROP_OVERLOAD,), None),
        ((F.DOWNSTREAM_PROTOCOL_ERROR,), None),  # set after Envoy's codec-error reply
        ((), None),
    ],
)
def test_the_first_mapped_flag_names_the_error(flags, error):
    assert proxy_status_error(info(*flags).response_flags) == error


def test_the_entry_and_its_options():
    stream = info(F.UPSTREAM_RETRY_LIMIT_EXCEEDED, F.UPSTREAM_CONNECTION_FAILURE,
                  termination="closed")  # fmt: skip
    assert config().header_value(stream) == (
        'envoy; error=connection_refused; details="no_healthy_upstream; closed; URX,UF"'
    )
    assert config("edge", remove_connection_termination_details=True).header_value(stream) == (
        'edge; error=connection_refused; details="no_healthy_upstream; URX,UF"'
    )
    assert config(remove_response_flags=True, literal_proxy_name="p").header_value(stream) == (
        'p; error=connection_refused; details="no_healthy_upstream; closed"'
    )
    assert config(remove_details=True).header_value(stream) == "envoy; error=connection_refused"
    no_details = info(F.NO_HEALTHY_UPSTREAM, details=None)
    assert config().header_value(no_details) == "envoy; error=destination_unavailable"
    assert config().header_value(info()) is None


def test_details_are_escaped_as_envoy_escapes_them():
    stream = info(F.NO_ROUTE_FOUND, details='a"b\tc\\d')
    assert config().header_value(stream) == (
        'envoy; error=destination_not_found; details="a\\"b\\tc\\d; NR"'
    )


def test_the_recommended_status():
    recommending = config(set_recommended_response_code=True)
    assert recommending.recommended_status(info(F.NO_ROUTE_FOUND)) == "500"
    assert recommending.recommended_status(info(F.UPSTREAM_CONNECTION_TERMINATION)) == "502"
    assert recommending.recommended_status(info(F.STREAM_IDLE_TIMEOUT)) == "504"
    assert recommending.recommended_status(info(F.RATE_LIMITED)) == "503"
    assert recommending.recommended_status(info(F.FAULT_INJECTED)) is None  # request error
    assert config().recommended_status(info(F.NO_ROUTE_FOUND)) is None


def test_use_node_id_names_the_proxy_by_the_node_id():
    def name(**fields):
        proto = json_format.ParseDict(fields, Config())
        return compile_proxy_status_config(proto, "p", server_name="s", node_id="n").proxy_name

    assert name(use_node_id=True) == "n"
    assert name(use_node_id=False) == "s"  # (the oneof's case, false: the server name)
    assert name(literal_proxy_name="l") == "l"


def test_the_entry_goes_last_appended_to_the_upstreams():
    hcm = json_format.ParseDict(
        {"stat_prefix": "s", "via": "1.1 v", "proxy_status_config": {}},
        hcm_pb2.HttpConnectionManager(),
    )
    policy = compile_request_policy(hcm, "hcm", proxy_status=config())
    assert policy.response_extras
    assert not compile_request_policy(hcm_pb2.HttpConnectionManager(), "h").response_extras
    headers = HeaderMap([(":status", "503"), ("proxy-status", "up")])
    mutate_response_headers(policy, headers, None, date="D", info=info(F.NO_HEALTHY_UPSTREAM))
    assert list(headers.items()) == [
        (":status", "503"),
        ("proxy-status", 'up, envoy; error=destination_unavailable; '
                         'details="no_healthy_upstream; UH"'),
        ("date", "D"), ("server", "envoy"), ("via", "1.1 v"),
    ]  # fmt: skip
    plain = HeaderMap([(":status", "200")])
    mutate_response_headers(policy, plain, None, info=info())
    assert "proxy-status" not in plain
