"""Local replies: the table recorded from Envoy 1.40, rendering, gRPC, local_reply_config."""

from __future__ import annotations

import pytest
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2,
)
from google.protobuf import json_format

from legatus.config.errors import ConfigError
from legatus.http.headers import HeaderMap
from legatus.http.local_reply import (
    ENVOY_LOCAL_REPLIES,
    LocalReply,
    compile_local_reply_config,
    http_to_grpc_status,
    is_grpc_request,
    percent_encode,
    render_local_reply,
    upstream_reset,
)
from legatus.stream_info import ResponseFlag, StreamInfo, response_flags_string

RESET = "upstream connect error or disconnect/reset before headers. "
REFUSED = "{remote_connection_failure|delayed_connect_error:_Connection_refused}"
# name -> (status, body, flags, details, headers before content-length), as Envoy 1.40 sent
# them (curl -v, and %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% from its access log).
RECORDED = {
    "route_not_found": (404, "", "NR", "route_not_found", []),
    "cluster_not_found": (503, "", "NC", "cluster_not_found", []),
    "direct_response": (200, "hello", "-", "direct_response", []),
    "direct_response_no_body": (503, "", "-", "direct_response", []),
    "redirect": (301, "", "-", "direct_response", [("location", "http://example.org/redirect")]),
    "upgrade_failed": (403, "", "-", "upgrade_failed", []),
    "connect_not_routed": (404, "", "NR", "route_not_found", []),
    "strict_check_failed": (400, "invalid header 'x-envoy-max-retries' with value 'abc'", "IH",
                            "request_headers_failed_strict_check{x-envoy-max-retries}", []),
    "no_healthy_upstream": (503, "no healthy upstream", "UH", "no_healthy_upstream", []),
    "upstream_connection_failure": (503, RESET + "reset reason: remote connection failure", "UF",
                                    "upstream_reset_before_response_started" + REFUSED, []),
    "upstream_retry_limit_exceeded": (
        503, RESET + "retried and the latest reset reason: remote connection failure", "UF,URX",
        "upstream_reset_before_response_started" + REFUSED, []),
    "upstream_overflow": (503, RESET + "reset reason: overflow", "UO",
                          "upstream_reset_before_response_started{overflow}",
                          [("x-envoy-overloaded", "true")]),
    "upstream_connection_termination": (
        503, RESET + "reset reason: connection termination", "UC",
        "upstream_reset_before_response_started{connection_termination}", []),
    "upstream_protocol_error": (502, RESET + "reset reason: protocol error", "UPE",
                                "upstream_reset_before_response_started{protocol_error}", []),
    "upstream_request_timeout": (504, "upstream request timeout", "UT", "response_timeout", []),
    "upstream_request_timeout_alt": (204, "", "UT", "response_timeout", []),
    "upstream_max_stream_duration": (504, "upstream max stream duration reached", "UMSDR",
                                     "upstream_max_stream_duration_reached", []),
    "max_duration_timeout": (504, "downstream duration timeout", "-", "max_duration_timeout", []),
    "stream_idle_timeout": (504, "stream timeout", "SI", "stream_idle_timeout", []),
    "stream_idle_timeout_request_incomplete": (408, "stream timeout", "SI",
                                               "stream_idle_timeout", []),
    "request_timeout": (408, "request timeout", "-", "request_overall_timeout", []),
    "request_header_timeout": (408, "request header timeout", "-", "request_header_timeout", []),
    "codec_error": (400, "Bad Request", "DPE", "http1.codec_error", []),
    "content_length_and_chunked": (400, "Bad Request", "DPE",
                                   "http1.content_length_and_chunked_not_allowed", []),
    "headers_too_large": (431, "Request Header Fields Too Large", "DPE",
                          "http1.headers_too_large", []),
    "low_version": (426, "Upgrade Required", "DPE", "low_version", []),
    "missing_host_header": (400, "", "-", "missing_host_header", []),
    # (closes as every 400 does: not by the table's flag)
    "path_normalization_failed": (400, "", "-", "path_normalization_failed", []),
    "request_payload_too_large": (413, "Payload Too Large", "-", "request_payload_too_large", []),
}  # fmt: skip
CLOSES = {"upgrade_failed", "connect_not_routed", "strict_check_failed", "request_timeout",
          "stream_idle_timeout_request_incomplete", "request_header_timeout", "codec_error",
          "content_length_and_chunked", "headers_too_large", "low_version",
          "missing_host_header", "request_payload_too_large"}  # fmt: skip


def get(method: str = "GET", *headers: tuple[str, str]) -> HeaderMap:
    return HeaderMap([(":method", method), (":path", "/p"), (":authority", "x"), *headers])


def test_the_table_is_the_recorded_one():
    assert set(ENVOY_LOCAL_REPLIES) == set(RECORDED)


@pytest.mark.parametrize("name", sorted(RECORDED))
def test_table_row(name):
    status, body, flags, details, extra = RECORDED[name]
    reply = ENVOY_LOCAL_REPLIES[name]
    assert (reply.status, reply.body, reply.details) == (status, body, details)
    assert response_flags_string(reply.flags) == flags
    assert reply.close_connection is (name in CLOSES)
    info = StreamInfo(now_monotonic=0.0)
    headers, data = render_local_reply(reply, request_headers=get(), info=info)
    expected = [(":status", str(status)), *extra]
    if body:
        expected += [("content-length", str(len(body))), ("content-type", "text/plain")]
    assert list(headers.items()) == expected
    assert data == body.encode()
    assert (info.response_code, info.response_code_details) == (status, details)


def test_head_keeps_the_length_but_sends_no_body():
    headers, data = render_local_reply(
        ENVOY_LOCAL_REPLIES["no_healthy_upstream"], request_headers=get("HEAD")
    )
    assert headers.get("content-length") == "19" and data == b""


@pytest.mark.parametrize(
    ("name", "grpc_status"),
    [("no_healthy_upstream", "14"), ("route_not_found", "12"), ("codec_error", "13"),
     ("upgrade_failed", "7"), ("request_timeout", "2")],
)  # fmt: skip
def test_grpc_requests_get_trailers_only_replies(name, grpc_status):
    reply = ENVOY_LOCAL_REPLIES[name]
    request = get("POST", ("content-type", "application/grpc"))
    headers, data = render_local_reply(reply, request_headers=request)
    expected = [(":status", "200"), ("content-type", "application/grpc"),
                ("grpc-status", grpc_status)]  # fmt: skip
    if reply.body:
        expected.append(("grpc-message", reply.body))
    assert list(headers.items()) == expected
    assert data == b""


def test_grpc_detection_and_status_mapping():
    assert is_grpc_request(get("POST", ("content-type", "application/grpc+proto")))
    assert not is_grpc_request(get("POST", ("content-type", "application/grpc-web")))
    assert not is_grpc_request(HeaderMap([("content-type", "application/grpc")]))  # no :path
    assert not is_grpc_request(None)
    assert [http_to_grpc_status(s) for s in (400, 401, 403, 404, 429, 500)] == [
        13,
        16,
        7,
        12,
        14,
        2,
    ]
    reply = LocalReply(status=503, body="x", details="d", grpc_status=8)
    grpc = get("POST", ("content-type", "application/grpc"))
    headers, _ = render_local_reply(reply, request_headers=grpc)
    assert headers.get("grpc-status") == "8"


def test_percent_encoding_of_grpc_message():
    assert percent_encode("no healthy upstream") == "no healthy upstream"
    assert percent_encode("a\nb%c~ é") == "a%0Ab%25c%7E %C3%A9"


def test_upstream_reset_with_transport_failure():
    reply = upstream_reset(
        "remote connection failure",
        flags=ResponseFlag.UPSTREAM_CONNECTION_FAILURE,
        transport_failure_reason="TLS error: 268435703:SSL routines:WRONG_VERSION_NUMBER",
    )
    assert reply.body == RESET + "reset reason: remote connection failure"
    assert reply.details == (
        "upstream_reset_before_response_started{remote_connection_failure|"
        "TLS_error:_268435703:SSL_routines:WRONG_VERSION_NUMBER}"
    )


# local_reply_config

CONFIG = {
    "mappers": [
        {
            "filter": {"status_code_filter": {"comparison": {
                "op": "EQ", "value": {"default_value": 503, "runtime_key": "k"}}}},
            "status_code": 502,
            "body": {"inline_string": "custom body"},
            "headers_to_add": [
                {"header": {"key": "x-mapped", "value": "%RESPONSE_CODE% %REQ(x-foo)%"},
                 "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"},
                {"header": {"key": "content-type", "value": "text/custom-hdr"}},
            ],
        },
        {
            "filter": {"header_filter": {"header": {"name": "x-json", "present_match": True}}},
            "body_format_override": {"json_format": {
                "code": "%RESPONSE_CODE%", "msg": "%LOCAL_REPLY_BODY%", "nested": {
                    "quoted": "<%LOCAL_REPLY_BODY%>"}}},
        },
        {
            "filter": {"response_flag_filter": {"flags": ["NR"]}},
            "headers_to_add": [
                {"header": {"key": "x-a", "value": "1"}, "append_action": "ADD_IF_ABSENT"},
                {"header": {"key": "x-b", "value": "%REQ(x-missing)%"}},
                {"header": {"key": "x-c", "value": "%REQ(x-missing)%"}, "keep_empty_value": True},
                {"header": {"key": "x-d", "value": "2"}, "append_action": "OVERWRITE_IF_EXISTS"},
                {"header": {"key": "X-E", "value": "3"}, "append": False},
            ],
        },
    ],
    "body_format": {
        "text_format": "[%LOCAL_REPLY_BODY%] %RESPONSE_CODE% %RESPONSE_FLAGS% "
        "%RESPONSE_CODE_DETAILS%\n",
        "content_type": "text/x-custom",
    },
}  # fmt: skip


def compiled(config=CONFIG):
    proto = json_format.ParseDict(config, http_connection_manager_pb2.LocalReplyConfig())
    return compile_local_reply_config(proto, "local_reply_config", None)


def render(name: str, request: HeaderMap, config=None):
    reply = ENVOY_LOCAL_REPLIES[name]
    info = StreamInfo(now_monotonic=0.0)
    info.set_flag(reply.flags)
    return render_local_reply(
        reply, request_headers=request, info=info, config=config or compiled()
    )


def test_mapper_rewrites_status_body_and_headers():
    headers, data = render("no_healthy_upstream", get("GET", ("x-foo", "bar")))
    assert data == b"[custom body] 502 UH no_healthy_upstream\n"
    assert list(headers.items()) == [
        (":status", "502"), ("x-mapped", "503 bar"), ("content-type", "text/custom-hdr"),
        ("content-length", str(len(data)))]  # fmt: skip


def test_body_format_without_a_matching_mapper():
    headers, data = render("route_not_found", get())
    assert data == b"[] 404 NR route_not_found\n"
    assert headers.get("content-type") == "text/x-custom"


def test_json_body_format_override():
    headers, data = render("upstream_request_timeout", get("GET", ("x-json", "1")))
    assert data == (
        b'{"code":504,"msg":"upstream request timeout",'
        b'"nested":{"quoted":"<upstream request timeout>"}}\n'
    )
    assert headers.get("content-type") == "application/json"
    grpc = get("GET", ("x-json", "1"), ("content-type", "application/grpc"))
    headers, data = render("upstream_request_timeout", grpc)
    assert headers.get("grpc-message").endswith("}")  # the JSON newline is dropped...
    headers, _ = render("no_healthy_upstream", get("POST", ("content-type", "application/grpc")))
    assert headers.get("grpc-message").endswith("%0A")  # ...a text one is not


def test_header_append_actions():
    headers, _ = render("route_not_found", get())
    assert headers.get("x-a") == "1"
    assert "x-b" not in headers  # an empty value is skipped...
    assert headers.get("x-c") == ""  # ...unless kept
    assert "x-d" not in headers  # overwrite only if present
    assert headers.get("x-e") == "3"


def test_text_format_source_and_json_escaping(tmp_path):
    path = tmp_path / "format.txt"
    path.write_text("<<%LOCAL_REPLY_BODY%>>")
    config = compiled({"body_format": {"text_format_source": {"filename": str(path)}}})
    _, data = render("no_healthy_upstream", get(), config)
    assert data == b"<<no healthy upstream>>"
    config = compiled({"body_format": {"json_format": {"m": "%LOCAL_REPLY_BODY%"}}})
    reply = LocalReply(status=500, body='say "hi"\n', details="d")
    _, data = render_local_reply(reply, request_headers=get(), config=config)
    assert data == b'{"m":"say \\"hi\\"\\n"}\n'


@pytest.mark.parametrize(
    ("config", "path"),
    [
        ({"mappers": [{"filter": {"not_health_check_filter": {}},
                       "headers_to_add": [{"header": {"key": ":path", "value": "/"}}]}]},
         "local_reply_config.mappers[0].headers_to_add[0].header.key"),
        ({"mappers": [{"filter": {"not_health_check_filter": {}},
                       "headers_to_add": [{"header": {"key": "x", "raw_value": "eA=="}}]}]},
         "local_reply_config.mappers[0].headers_to_add[0].header.raw_value"),
        ({"mappers": [{"filter": {"not_health_check_filter": {}}, "headers_to_add": [
            {"header": {"key": "x", "value": "1"}, "append": True,
             "append_action": "ADD_IF_ABSENT"}]}]},
         "local_reply_config.mappers[0].headers_to_add[0]"),
        ({"mappers": [{"filter": {"metadata_filter": {}}}]},
         "local_reply_config.mappers[0].filter.metadata_filter"),
        ({"body_format": {"text_format": "%NOPE%"}}, "local_reply_config.body_format"),
    ],
)  # fmt: skip
def test_config_errors(config, path):
    with pytest.raises(ConfigError) as e:
        compiled(config)
    assert e.value.path.startswith(path)
