"""The HTTP command operators, the durations and upstream operators, DYNAMIC_METADATA,
COALESCE, JSON numbers, and the compiled text format.

Strings marked "real Envoy" were written by envoy 1.40.0's file access log for the same
request through an HTTP connection manager (a direct_response route, or a route to a
static HTTP/1.1 upstream), or printed by ``envoy --mode validate`` for the same format.
"""

from __future__ import annotations

import pytest
from google.protobuf import json_format, struct_pb2

from legatus.access_log.formatter import compile_format, compile_json, json_number
from legatus.access_log.http_operators import first_query_value, percent_decode
from legatus.access_log.json_text import shortest_double
from legatus.config.errors import ConfigError
from legatus.http.headers import HeaderMap
from legatus.stream_info import StreamInfo

WALL = 1795708919.284554  # 2026-11-26T16:01:59.284554Z


def http_info(**overrides) -> StreamInfo:
    info = StreamInfo(now_monotonic=100.0, now_wall=WALL)
    info.end_monotonic = 100.004
    info.protocol = "HTTP/1.1"
    info.response_code = 200
    for name, value in overrides.items():
        setattr(info, name, value)
    return info


def fmt(text: str, info=None, req=None, resp=None, trl=None, **kwargs) -> str:
    return compile_format(text, "f", **kwargs).format(info or http_info(), req, resp, trl)


def typed(text: str, info=None, req=None, resp=None, trl=None) -> str:
    struct = json_format.ParseDict({"v": text}, struct_pb2.Struct())
    return compile_json(struct, "f").format(info or http_info(), req, resp, trl)


def direct_request() -> HeaderMap:
    """The request headers Envoy's HCM holds for ``GET /direct`` with ``Host: a``."""
    return HeaderMap(
        [
            (":authority", "a"),
            (":path", "/direct"),
            (":method", "GET"),
            (":scheme", "http"),
            ("x-forwarded-proto", "http"),
            ("x-request-id", "d8d53be3-8d54-4e71-9630-e3ba4e06001d"),
        ]
    )


def direct_response() -> HeaderMap:
    return HeaderMap(
        [
            (":status", "201"),
            ("location", "http://a/direct"),
            ("content-length", "5"),
            ("content-type", "text/plain"),
            ("date", "Thu, 26 Nov 2026 18:55:54 GMT"),
            ("server", "envoy"),
        ]
    )


# Durations and upstream ------------------------------------------------------------------

DURATIONS = (
    "%REQUEST_DURATION%|%REQUEST_TX_DURATION%|%RESPONSE_DURATION%|%RESPONSE_TX_DURATION%|%DURATION%"
)


def test_durations_of_a_direct_response_like_real_envoy():
    info = http_info(last_downstream_rx_byte_received=100.0002, end_monotonic=100.0004)
    info.first_downstream_tx_byte_sent = info.last_downstream_tx_byte_sent = 100.0003
    assert fmt(DURATIONS, info) == "0|-|-|-|0"  # real Envoy: no upstream, no upstream timing


def test_durations_of_a_proxied_request():
    info = http_info(
        last_downstream_rx_byte_received=100.0031,
        first_upstream_tx_byte_sent=100.0035,
        last_upstream_tx_byte_sent=100.0042,
        first_upstream_rx_byte_received=100.0049,
        last_upstream_rx_byte_received=100.0051,
        first_downstream_tx_byte_sent=100.005,
        last_downstream_tx_byte_sent=100.0093,
        end_monotonic=100.0094,
    )
    assert fmt(DURATIONS, info) == "3|4|4|4|9"
    assert typed("%RESPONSE_TX_DURATION%", info) == '{"v":4}\n'
    assert typed("%REQUEST_TX_DURATION%", http_info()) == '{"v":null}\n'


def test_durations_do_not_lose_a_millisecond_to_float_error():
    info = http_info(last_downstream_rx_byte_received=100.003, end_monotonic=100.003)
    assert fmt("%REQUEST_DURATION% %DURATION%", info) == "3 3"


def test_upstream_operators_like_real_envoy():
    text = (
        "%UPSTREAM_PROTOCOL% %UPSTREAM_REQUEST_ATTEMPT_COUNT% %VIRTUAL_CLUSTER_NAME% "
        "%UPSTREAM_CLUSTER_RAW% %UPSTREAM_REMOTE_ADDRESS% %UPSTREAM_REMOTE_ADDRESS_WITHOUT_PORT% "
        "%UPSTREAM_REMOTE_PORT%"
    )
    assert fmt(text) == "- 0 - - - - -"  # real Envoy: a direct response
    proxied = http_info(
        upstream_protocol="HTTP/1.1",
        upstream_request_attempt_count=1,
        virtual_cluster_name="vc1",
        upstream_cluster="backend",
        upstream_host="127.0.0.1:33351",
    )
    assert fmt(text, proxied) == (  # real Envoy
        "HTTP/1.1 1 vc1 backend 127.0.0.1:33351 127.0.0.1 33351"
    )
    assert typed("%UPSTREAM_REMOTE_PORT%", proxied) == '{"v":33351}\n'
    assert typed("%UPSTREAM_REQUEST_ATTEMPT_COUNT%", proxied) == '{"v":1}\n'


# Headers ---------------------------------------------------------------------------------


def test_header_byte_sizes_like_real_envoy():
    text = "%REQUEST_HEADERS_BYTES% %RESPONSE_HEADERS_BYTES% %RESPONSE_TRAILERS_BYTES%"
    assert fmt(text, req=direct_request(), resp=direct_response()) == "113 114 0"  # real Envoy
    assert fmt(text) == "0 0 0"  # TCP: no header maps
    assert typed("%REQUEST_HEADERS_BYTES%", req={"ab": "cd"}) == '{"v":4}\n'


def test_header_aliases_and_truncation():
    req = HeaderMap([("x-a", "abcdef"), ("x-b", "zz")])
    assert fmt("%REQUEST_HEADER(X-A):2% %REQ(X-MISSING?X-B)% %REQ(X-MISSING?X-C):1%", req=req) == (
        "ab zz -"
    )
    assert fmt("%RESPONSE_HEADER(x)% %RESPONSE_TRAILER(y)%", resp={"x": "1"}, trl={"y": "2"}) == (
        "1 2"
    )


def test_stream_id_is_the_request_id_like_real_envoy():
    assert fmt("%STREAM_ID%", req=direct_request()) == "d8d53be3-8d54-4e71-9630-e3ba4e06001d"
    assert fmt("%STREAM_ID%", req=HeaderMap([(":path", "/")])) == "-"  # no x-request-id
    assert fmt("%STREAM_ID%") == "-"


def test_local_reply_body_is_empty_in_access_logs_like_real_envoy():
    assert fmt("[%LOCAL_REPLY_BODY%]", req=direct_request()) == "[]"
    assert typed("%LOCAL_REPLY_BODY%") == '{"v":""}\n'


# PATH and QUERY_PARAM --------------------------------------------------------------------


def test_path_options_like_real_envoy():
    req = {":path": "/direct?a=1%20x&b=hello&c=&d&a=2&e=%zz+y"}
    text = "%PATH%|%PATH(NQ)%|%PATH(WQ:ORIG)%|%PATH(NQ:PATH):4%"
    assert fmt(text, req=req) == (  # real Envoy
        "/direct?a=1%20x&b=hello&c=&d&a=2&e=%zz+y|/direct|-|/dir"
    )
    rewritten = {":path": "/new?q", "x-envoy-original-path": "/old?q"}
    assert fmt("%PATH% %PATH(NQ:PATH)% %PATH(:ORIG)%", req=rewritten) == "/old?q /new /old?q"
    assert fmt("%PATH%") == "-"


@pytest.mark.parametrize(
    ("text", "message"),
    [  # real Envoy
        ("%PATH(ORIG)%", "Invalid PATH option: 'ORIG', only 'WQ'/'NQ' are allowed"),
        (
            "%PATH(NQ:X)%",
            "Invalid PATH option: 'X', only 'ORIG'/'PATH'/'ORIG_OR_PATH' are allowed",
        ),
        ("%QUERY_PARAM%", "QUERY_PARAM requires parameters"),
        ("%GRPC_STATUS:4%", "GRPC_STATUS does not allow length to be specified."),
        (
            "%GRPC_STATUS(FOO)%",
            "GrpcStatusFormatter only supports CAMEL_STRING, SNAKE_STRING or NUMBER. Got: FOO",
        ),
        ("%COALESCE%", "COALESCE requires parameters"),
    ],
)
def test_http_operator_errors_are_envoys(text, message):
    with pytest.raises(ConfigError) as e:
        compile_format(text, "p")
    assert e.value.message == message


def test_query_params_like_real_envoy():
    req = {":path": "/direct?a=1%20x&b=hello&c=&d&a=2&e=%zz+y"}
    text = "%QUERY_PARAM(a)%|%QUERY_PARAM(b):2%|%QUERY_PARAM(c)%|%QUERY_PARAM(d)%|%QUERY_PARAM(e)%"
    assert fmt(text, req=req) == "1 x|he|||%zz+y"  # real Envoy
    assert fmt("%QUERY_PARAM(a)%", req={":path": "/up/x?a=%2Fq"}) == "/q"  # real Envoy
    assert fmt("%QUERY_PARAM(zz)%", req=req) == "-"
    assert fmt("%QUERY_PARAM(a)%", req={":path": "/no-query"}) == "-"


def test_query_param_helpers():
    assert percent_decode("%41%4a%zz%4") == "AJ%zz%4"
    assert percent_decode("%C3%A9") == "\u00e9"
    assert first_query_value("/p?%61=1&a=2", "a") == "1"  # names are decoded too
    assert first_query_value("/p?&&a", "a") == ""


# gRPC status -----------------------------------------------------------------------------

GRPC = "%GRPC_STATUS%|%GRPC_STATUS(SNAKE_STRING)%|%GRPC_STATUS(NUMBER)%|%GRPC_STATUS_NUMBER%"
GRPC_REQUEST = {":path": "/grpc/svc", "content-type": "application/grpc"}


def test_grpc_status_like_real_envoy():
    resp = {":status": "200", "grpc-status": "3"}
    assert fmt(GRPC, req=GRPC_REQUEST, resp=resp) == (  # real Envoy
        "InvalidArgument|INVALID_ARGUMENT|3|3"
    )
    plain = {":path": "/grpc/svc", "content-type": "text/plain"}
    assert fmt(GRPC, req=plain, resp=resp) == "-|-|-|-"  # real Envoy: not a gRPC request
    # A local reply to a gRPC request: grpc-status 2 in its headers (real Envoy).
    plus = {":path": "/direct", "content-type": "application/grpc+proto"}
    assert fmt(GRPC, req=plus, resp={":status": "200", "grpc-status": "2"}) == (
        "Unknown|UNKNOWN|2|2"
    )


def test_grpc_status_sources_and_odd_values():
    info = http_info(response_code=503)
    assert fmt("%GRPC_STATUS%", info, req=GRPC_REQUEST) == "Unavailable"  # from the HTTP code
    trailers = {"grpc-status": "1"}
    assert fmt("%GRPC_STATUS%", info, GRPC_REQUEST, {"grpc-status": "0"}, trailers) == "Canceled"
    assert fmt(GRPC, req=GRPC_REQUEST, resp={"grpc-status": "20"}) == "20|20|20|20"
    assert fmt(GRPC, req=GRPC_REQUEST, resp={"grpc-status": "abc"}) == "-1|-1|-1|-1"
    assert fmt("%GRPC_STATUS%", http_info(response_code=None), req=GRPC_REQUEST) == "-"
    assert typed("%GRPC_STATUS_NUMBER%", req=GRPC_REQUEST, resp={"grpc-status": "5"}) == (
        '{"v":5}\n'
    )
    assert typed("%GRPC_STATUS%", req=GRPC_REQUEST, resp={"grpc-status": "5"}) == (
        '{"v":"NotFound"}\n'
    )


# DYNAMIC_METADATA ------------------------------------------------------------------------

METADATA = {
    "ns": {
        "s": "foo",
        "n": 1,
        "neg": -3,
        "b": True,
        "z": None,
        "l": [1, "a", False, None, {"k": "v"}],
        "o": {"inner": "bar", "x": 2.0},
        "u": 'h\u00e9"\\\n\t/<',
        "e": {},
        "el": [],
        "f": 1.5,
        "big": 1e20,
        "tiny": 1e-7,
        "huge": 123456789012345678,
        "million": 1000000,
    }
}


def test_dynamic_metadata_text_like_real_envoy():
    info = http_info(dynamic_metadata=METADATA)
    keys = [
        "s",
        "n",
        "neg",
        "b",
        "z",
        "l",
        "o",
        "o:inner",
        "u",
        "e",
        "el",
        "f",
        "big",
        "tiny",
        "huge",
        "million",
        "missing",
        "o:x",
        "s:deeper",
    ]
    text = "|".join(f"%DYNAMIC_METADATA(ns:{k})%" for k in keys)
    assert fmt(text, info) == (  # real Envoy (set_metadata filter)
        'foo|1|-3|true|-|[1,"a",false,null,{"k":"v"}]|{"inner":"bar","x":2}|bar|'
        'h\u00e9"\\\n\t/<|{}|[]|1.5|1e+20|1e-07|123456789012345680|1e+06|-|2|-'
    )
    assert fmt("%DYNAMIC_METADATA(ns):10%|%DYNAMIC_METADATA(ns:s):2%", info) == (
        '{"b":true,|fo'  # real Envoy
    )
    empty_keys = "%DYNAMIC_METADATA(nope)%|%DYNAMIC_METADATA(ns::s)%|%DYNAMIC_METADATA(ns:)%"
    assert fmt(empty_keys, info) == "-|-|-"  # real Envoy
    assert fmt("%DYNAMIC_METADATA(ns)%", http_info()) == "-"


def test_dynamic_metadata_whole_namespace_is_sorted_json_like_real_envoy():
    info = http_info(dynamic_metadata={"ns": METADATA["ns"]})
    assert fmt("%DYNAMIC_METADATA(ns)%", info) == (  # real Envoy
        '{"b":true,"big":1e+20,"e":{},"el":[],"f":1.5,"huge":123456789012345680,'
        '"l":[1,"a",false,null,{"k":"v"}],"million":1e+06,"n":1,"neg":-3,'
        '"o":{"inner":"bar","x":2},"s":"foo","tiny":1e-07,"u":"h\u00e9\\"\\\\\\n\\t/<",'
        '"z":null}'
    )


def test_dynamic_metadata_in_json_formats_like_real_envoy():
    info = http_info(dynamic_metadata={"ns": {"a": 1000000, "i": 0.0001, "s": "str",
                                              "o": {"x": 1000000}, "t": True}})  # fmt: skip
    doc = {
        "a": "%DYNAMIC_METADATA(ns:a)%",
        "i": "%DYNAMIC_METADATA(ns:i)%",
        "s": "%DYNAMIC_METADATA(ns:s)%",
        "o": "%DYNAMIC_METADATA(ns:o)%",
        "t": "%DYNAMIC_METADATA(ns:t)%",
        "ot": "%DYNAMIC_METADATA(ns:o):3%",
        "st": "%DYNAMIC_METADATA(ns:s):1%",
        "mx": "a=%DYNAMIC_METADATA(ns:a)% o=%DYNAMIC_METADATA(ns:o)%",
        "miss": "%DYNAMIC_METADATA(ns:zz)%",
        "c1": 1000000,
        "c2": 0.0001,
        "c3": 123456789012345678,
    }
    struct = json_format.ParseDict(doc, struct_pb2.Struct())
    assert compile_json(struct, "f").format(info) == (  # real Envoy
        '{"a":1e+06,"c1":1e+06,"c2":1e-04,"c3":123456789012345680,"i":1e-04,"miss":null,'
        '"mx":"a=1e+06 o={\\"x\\":1e+06}","o":{"x":1e+06},"ot":{"x":1e+06},"s":"str",'
        '"st":"s","t":true}\n'
    )


@pytest.mark.parametrize(
    ("number", "text"),
    [  # real Envoy, metadata and JSON-format numbers (std::to_chars)
        (1e6, "1e+06"),
        (100.0, "100"),
        (1234567.0, "1234567"),
        (12345678901.0, "12345678901"),
        (1e15, "1e+15"),
        (123456.0, "123456"),
        (0.001, "0.001"),
        (0.0001, "1e-04"),
        (2.5e-5, "2.5e-05"),
        (1e21, "1e+21"),
        (1.5e300, "1.5e+300"),
        (-0.0, "-0"),
        (0.1, "0.1"),
        (2.0**53, "9007199254740992"),
    ],
)
def test_doubles_are_written_as_envoy_writes_them(number, text):
    assert shortest_double(number) == text
    assert json_number(number) == text


def test_counters_stay_integers_in_json():
    assert json_number(1000000) == "1000000"  # real Envoy: %BYTES_SENT% of 1000000 bytes
    assert typed("%BYTES_SENT%", http_info(bytes_sent=1000000)) == '{"v":1000000}\n'


# EMIT_TIME and COALESCE ------------------------------------------------------------------


def test_emit_time_is_the_time_of_writing(monkeypatch):
    monkeypatch.setattr("time.time", lambda: 1795719451.831)
    assert fmt("%EMIT_TIME(%s.%3f)% %START_TIME(%s)%") == "1795719451.831 1795708919"
    assert fmt("%EMIT_TIME%") == "2026-11-26T18:57:31.831Z"


def test_coalesce_first_non_empty_value():
    text = (
        '%COALESCE({"operators": [{"command": "REQ", "param": "x-a"}, '
        '{"command": "REQ", "param": "x-b", "max_length": 3}, "PROTOCOL"]}):6%'
    )
    assert fmt(text, req={"x-a": "", "x-b": "abcdef"}) == "abc"
    assert fmt(text, req={"x-a": "first-value"}) == "first-"
    assert fmt(text, req={}) == "HTTP/1"
    assert fmt(text, http_info(protocol=None)) == "-"
    assert typed('%COALESCE({"operators": ["RESPONSE_CODE", "PROTOCOL"]})%') == '{"v":200}\n'


@pytest.mark.parametrize(
    ("param", "message"),
    [  # real Envoy (the JSON parser's own message after the first colon differs)
        ('{"operators": []}', "COALESCE: 'operators' array must not be empty"),
        ('{"op": 1}', "COALESCE: JSON configuration must contain 'operators' array"),
        (
            '{"operators": ["NOPE"]}',
            "COALESCE: failed to parse operator at index 0: unknown command: 'NOPE'",
        ),
        (
            '{"operators": [{"command": "REQ"}]}',
            "COALESCE: failed to parse operator at index 0: REQ requires parameters",
        ),
        (
            '{"operators": [{"command": "REQ", "param": "a", "max_length": 0}]}',
            "COALESCE: failed to parse operator at index 0: 'max_length' must be a positive "
            "integer",
        ),
        (
            '{"operators": [5]}',
            "COALESCE: failed to parse operator at index 0: operator entry must be either a "
            "string (command name) or an object with 'command' field",
        ),
    ],
)
def test_coalesce_errors_are_envoys(param, message):
    with pytest.raises(ConfigError) as e:
        compile_format(f"%COALESCE({param})%", "p")
    assert e.value.message == message


def test_coalesce_bad_json_is_a_parse_error():
    with pytest.raises(ConfigError, match="COALESCE: failed to parse JSON configuration"):
        compile_format("%COALESCE(x)%", "p")


# The compiled text format ----------------------------------------------------------------


def test_literals_with_quotes_braces_and_escapes_survive_compilation():
    text = "{x} {{ }} '\"\\ \t\n %% %REQ(A)%{%REQ(B):1%}"
    assert fmt(text, req={"a": "{v}", "b": "quote'"}) == "{x} {{ }} '\"\\ \t\n % {v}{q}"


def test_omit_empty_values_in_the_compiled_format():
    assert fmt("[%REQ(A)%][%PROTOCOL%][%BYTES_SENT%]", omit_empty_values=True) == "[][HTTP/1.1][0]"
    assert fmt("", omit_empty_values=True) == ""
    assert fmt("only text") == "only text"


# METADATA ---------------------------------------------------------------------------------


def test_metadata_of_the_route_and_its_virtual_host():
    from types import SimpleNamespace

    route = SimpleNamespace(
        route=SimpleNamespace(metadata={"acme": {"tier": "gold", "n": 1000000.0}}),
        virtual_host=SimpleNamespace(metadata={"team": {"name": "core"}}),
    )
    info = http_info(route=route, dynamic_metadata={"ns": {"k": "v"}})
    text = "%METADATA(ROUTE:acme:tier)%|%METADATA(ROUTE:acme)%|%METADATA(VIRTUAL_HOST:team)%"
    assert fmt(text, info) == 'gold|{"n":1e+06,"tier":"gold"}|{"name":"core"}'
    assert fmt("%METADATA(DYNAMIC:ns:k)%|%METADATA(ROUTE:acme:tier):2%", info) == "v|go"
    assert fmt("%METADATA(ROUTE:acme)%|%METADATA(VIRTUAL_HOST:team)%", http_info()) == "-|-"


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("%METADATA(route:ns)%", "route is not supported type of metadata"),  # real Envoy
        ("%METADATA()%", " is not supported type of metadata"),  # real Envoy
    ],
)
def test_unknown_metadata_types_are_refused(text, says):
    with pytest.raises(ConfigError) as e:
        compile_format(text, "f")
    assert says in str(e.value)
