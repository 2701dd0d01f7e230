"""Access-log formats: operators, defaults, errors, START_TIME and JSON.

Expected strings marked "real Envoy" were written by envoy 1.40.0 for the same format and
an equivalent connection (tcp_proxy to an echo server on 127.0.0.1, or an HTTP request for
the header operators), or printed by ``envoy --mode validate`` for the same bad format.
"""

from __future__ import annotations

import socket

import pytest
from google.protobuf import json_format, struct_pb2

from legatus.access_log.date_formatter import DateFormatter
from legatus.access_log.formatter import (
    DEFAULT_FORMAT,
    compile_format,
    compile_json,
    compile_substitution_format,
    json_number,
    json_string,
)
from legatus.config.errors import ConfigError
from legatus.stream_info import ResponseFlag, StreamInfo

WALL = 1795708919.284554  # 2026-11-26T16:01:59.284554Z


def tcp_info(**overrides) -> StreamInfo:
    """The StreamInfo of one echoed tcp_proxy connection (12 bytes each way)."""
    info = StreamInfo(now_monotonic=100.0, now_wall=WALL)
    info.end_monotonic = 100.0025
    info.bytes_received = 12
    info.bytes_sent = 12
    info.upstream_host = "127.0.0.1:19002"
    info.upstream_cluster = "echo"
    info.upstream_local_address = "127.0.0.1:53102"
    info.downstream_remote_address = "127.0.0.1:53386"
    info.downstream_direct_remote_address = "127.0.0.1:53386"
    info.downstream_local_address = "127.0.0.1:19001"
    info.connection_id = 0
    info.upstream_connection_id = 1
    for name, value in overrides.items():
        setattr(info, name, value)
    return info


def fmt(text: str, info=None, **kwargs) -> str:
    headers = {k: kwargs.pop(k) for k in ("req", "resp", "trl") if k in kwargs}
    formatter = compile_format(text, "f", **kwargs)
    return formatter.format(
        info or tcp_info(), headers.get("req"), headers.get("resp"), headers.get("trl")
    )


def json_struct(document: dict) -> struct_pb2.Struct:
    return json_format.ParseDict(document, struct_pb2.Struct())


# Defaults ---------------------------------------------------------------------------


def test_default_format_for_a_tcp_connection_matches_real_envoy():
    assert fmt(DEFAULT_FORMAT) == (  # real Envoy
        '[2026-11-26T16:01:59.284Z] "- - -" 0 - 12 12 2 - "-" "-" "-" "-" "127.0.0.1:19002"\n'
    )


def test_default_format_with_upstream_connect_failure_matches_real_envoy():
    info = tcp_info(bytes_received=0, bytes_sent=0, end_monotonic=100.0)
    info.set_flag(ResponseFlag.UPSTREAM_CONNECTION_FAILURE)
    info.set_flag(ResponseFlag.UPSTREAM_RETRY_LIMIT_EXCEEDED)
    assert fmt(DEFAULT_FORMAT, info).endswith(
        '"- - -" 0 UF,URX 0 0 0 - "-" "-" "-" "-" "127.0.0.1:19002"\n'
    )


def test_default_format_for_an_http_request():
    info = tcp_info(
        protocol="HTTP/1.1",
        response_code=200,
        bytes_received=0,
        bytes_sent=2,
        end_monotonic=100.0,
        upstream_host=None,
    )
    req = {
        ":method": "GET",
        ":path": "/p?q=1",
        ":authority": "x",
        "user-agent": "ua",
        "x-request-id": "cf6bddfd-7039-466c-97f9-8ae3cfc12ea3",
    }
    assert fmt(DEFAULT_FORMAT, info, req=req) == (  # real Envoy (direct_response route)
        '[2026-11-26T16:01:59.284Z] "GET /p?q=1 HTTP/1.1" 200 - 0 2 0 - "-" "ua" '
        '"cf6bddfd-7039-466c-97f9-8ae3cfc12ea3" "x" "-"\n'
    )


def test_original_path_wins_over_path_in_default_format():
    req = {":method": "GET", ":path": "/rewritten", "x-envoy-original-path": "/orig"}
    assert '"GET /orig -"' in fmt(DEFAULT_FORMAT, req=req)


# Operators --------------------------------------------------------------------------

OPS = (
    "D=%DURATION% BR=%BYTES_RECEIVED% BS=%BYTES_SENT% RF=%RESPONSE_FLAGS% "
    "RFL=%RESPONSE_FLAGS_LONG% RC=%RESPONSE_CODE% RCD=%RESPONSE_CODE_DETAILS% "
    "CTD=%CONNECTION_TERMINATION_DETAILS% P=%PROTOCOL% UH=%UPSTREAM_HOST% UC=%UPSTREAM_CLUSTER% "
    "ULA=%UPSTREAM_LOCAL_ADDRESS% UTFR=%UPSTREAM_TRANSPORT_FAILURE_REASON% "
    "DRA=%DOWNSTREAM_REMOTE_ADDRESS% DRAWP=%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT% "
    "DRP=%DOWNSTREAM_REMOTE_PORT% DDRA=%DOWNSTREAM_DIRECT_REMOTE_ADDRESS% "
    "DDRAWP=%DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT% DLA=%DOWNSTREAM_LOCAL_ADDRESS% "
    "DLAWP=%DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT% DLP=%DOWNSTREAM_LOCAL_PORT% "
    "CID=%CONNECTION_ID% UCID=%UPSTREAM_CONNECTION_ID% SNI=%REQUESTED_SERVER_NAME% "
    "RN=%ROUTE_NAME% REQ=%REQ(X-FOO?Y):3% RESP=%RESP(A)% TR=%TRAILER(B)% PCT=%% "
    "ST=%START_TIME(%Y/%m/%dT%H:%M:%S.%3f|%f|%1f|%9f|%s|%z)%\n"
)


def test_every_operator_for_a_tcp_connection_matches_real_envoy():
    assert fmt(OPS) == (  # real Envoy
        "D=2 BR=12 BS=12 RF=- RFL=- RC=0 RCD=- CTD=- P=- UH=127.0.0.1:19002 UC=echo "
        "ULA=127.0.0.1:53102 UTFR=- DRA=127.0.0.1:53386 DRAWP=127.0.0.1 DRP=53386 "
        "DDRA=127.0.0.1:53386 DDRAWP=127.0.0.1 DLA=127.0.0.1:19001 DLAWP=127.0.0.1 DLP=19001 "
        "CID=0 UCID=1 SNI=- RN=- REQ=- RESP=- TR=- PCT=% "
        "ST=2026/11/26T16:01:59.284|284554000|2|284554000|1795708919|+0000\n"
    )


def test_response_flags_short_and_long_in_the_order_set():
    # Envoy 1.40 prints flags in the order they were set: its HTTP router sets URX then UF
    # ("URX,UF"), its tcp_proxy UF then URX ("UF,URX").
    info = tcp_info()
    info.set_flag(ResponseFlag.UPSTREAM_RETRY_LIMIT_EXCEEDED)
    info.set_flag(ResponseFlag.UPSTREAM_CONNECTION_FAILURE)
    info.set_flag(ResponseFlag.UPSTREAM_RETRY_LIMIT_EXCEEDED)  # again: no change
    assert fmt("%RESPONSE_FLAGS% %RESPONSE_FLAGS_LONG%", info) == (
        "URX,UF UpstreamRetryLimitExceeded,UpstreamConnectionFailure"
    )
    info.set_flag(ResponseFlag.UNCONDITIONAL_DROP_OVERLOAD)
    info.set_flag(ResponseFlag.FAILED_LOCAL_HEALTH_CHECK)
    assert fmt("%RESPONSE_FLAGS%", info) == "URX,UF,UDO,LH"


def test_transport_failure_reason_and_details_replace_spaces():
    info = tcp_info(
        upstream_transport_failure_reason="delayed connect error: Connection refused",
        response_code_details="via upstream\tand more",
    )
    assert fmt("%UPSTREAM_TRANSPORT_FAILURE_REASON%", info) == (  # real Envoy
        "delayed_connect_error:_Connection_refused"
    )
    assert fmt("%RESPONSE_CODE_DETAILS%", info) == "via_upstream_and_more"
    assert fmt("%RESPONSE_CODE_DETAILS(ALLOW_WHITESPACES)%", info) == "via upstream\tand more"


def test_ipv6_addresses():
    info = tcp_info(downstream_remote_address="[::1]:5555")
    assert (
        fmt(
            "%DOWNSTREAM_REMOTE_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT% "
            "%DOWNSTREAM_REMOTE_PORT%",
            info,
        )
        == "[::1]:5555 ::1 5555"
    )


def test_unset_values_render_dash_or_nothing():
    info = StreamInfo(now_monotonic=0.0, now_wall=WALL)
    text = "%DURATION%|%UPSTREAM_HOST%|%DOWNSTREAM_LOCAL_PORT%|%CONNECTION_ID%|%RESPONSE_CODE%"
    assert fmt(text, info) == "-|-|-|0|0"
    assert fmt(text, info, omit_empty_values=True) == "|||0|0"
    assert fmt("[%PROTOCOL%][%BYTES_SENT%]\n", omit_empty_values=True) == "[][12]\n"  # real Envoy


def test_requested_server_name_is_sanitized_like_envoy():
    assert fmt("%REQUESTED_SERVER_NAME%", tcp_info(requested_server_name="a.example")) == (
        "a.example"
    )
    assert fmt("%REQUESTED_SERVER_NAME%", tcp_info(requested_server_name="a b")) == "invalid:a_b"


def test_route_name_cluster_and_hostname():
    info = tcp_info(route_name="r1")
    assert fmt("%ROUTE_NAME% %UPSTREAM_CLUSTER% %HOSTNAME%", info) == (
        f"r1 echo {socket.gethostname()}"
    )


def test_headers_main_alternative_and_length():
    req = {"x-bar": "abcdef", "x-empty": "", ":method": "GET"}
    resp = {"x-r": "resp val"}
    trl = {"grpc-status": "0"}
    text = "%REQ(X-FOO?X-BAR):3% [%REQ(X-EMPTY)%] %REQ(:METHOD)% %RESP(X-R)% %TRAILER(GRPC-STATUS)%"
    assert fmt(text, req=req, resp=resp, trl=trl) == "abc [] GET resp val 0"  # real Envoy
    assert fmt("%REQ(X-BAR?X-FOO)%", req={"x-foo": "1", "x-bar": "2"}) == "2"
    assert fmt("%REQ(A?)%", req={"a": "v"}) == "v"


def test_environment_and_unique_id(monkeypatch):
    monkeypatch.setenv("LEGATUS_TEST_ENV", "hello")
    assert fmt("%ENVIRONMENT(LEGATUS_TEST_ENV):4% %ENVIRONMENT(LEGATUS_NOPE_ENV)%") == "hell -"
    first, second = fmt("%UNIQUE_ID%"), fmt("%UNIQUE_ID%")
    assert len(first) == 36 and first != second


def test_escapes_and_literals():
    assert fmt("100%% %%PROTOCOL%%") == "100% %PROTOCOL%"  # real Envoy
    assert fmt("") == ""
    assert fmt("no newline") == "no newline"


# Errors (texts printed by envoy --mode validate) --------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("%FOO%", "Not supported field in StreamInfo: FOO"),
        ("%REQ%", "REQ requires parameters"),
        ("%REQ()%", "REQ requires parameters"),
        ("%PROTOCOL(x)%", "PROTOCOL does not take any parameters or length"),
        ("%DURATION:3%", "DURATION does not take any parameters or length"),
        ("%START_TIME:3%", "START_TIME does not allow length to be specified."),
        ("%REQ(A?B?C)%", "More than 1 alternative header specified in token: A?B?C"),
        ("abc %", "Incorrect configuration: abc %. Couldn't find valid command at position 4"),
        (
            "x %start_time% y",
            "Incorrect configuration: x %start_time% y. Couldn't find valid command at position 2",
        ),
        ("%START_TIME(%Y%n)%", "Invalid header configuration. Format string contains newline."),
        (
            "%REQ(a\nb)%",
            "Incorrect configuration: %REQ(a\nb)%. Couldn't find valid command at position 0",
        ),
        (
            "%REQ(a):x%",
            "Incorrect configuration: %REQ(a):x%. Couldn't find valid command at position 0",
        ),
        ("%REQ(a)b)%", "Invalid header configuration. Format string contains invalid characters."),
        (
            "%RESPONSE_FLAGS%%",
            "Incorrect configuration: %RESPONSE_FLAGS%%. Couldn't find valid "
            "command at position 16",
        ),
        (
            "%REQ(:a):99999999999999999999999%",
            "Incorrect configuration: "
            "%REQ(:a):99999999999999999999999%. Couldn't find valid command at position 0",
        ),
    ],
)
def test_bad_formats_are_rejected_with_envoys_text(text, message):
    with pytest.raises(ConfigError) as e:
        compile_format(text, "a.b")
    assert e.value.message == message
    assert e.value.path == "a.b"


def test_known_envoy_operator_not_implemented_is_named():
    with pytest.raises(ConfigError, match="%FILTER_STATE% command operator is not implemented"):
        compile_format("%FILTER_STATE(a:b)%", "p")


# START_TIME -------------------------------------------------------------------------

T = 1795709023.925844  # 2026-11-26T16:03:43.925844Z


@pytest.mark.parametrize(
    ("spec", "expected"),
    [  # every row printed by real Envoy for the same time
        ("%E3S", "43.925"),
        ("%Ez", "+00:00"),
        ("%c", "Thu Nov 26 16:03:43 2026"),
        ("%Z", "UTC"),
        ("%e", "26"),
        ("%%f", "%925844000"),
        ("%%s", "%1795709023"),
        ("%j", "330"),
        ("%3f%6f", "925925844"),
        ("%s.%3f", "1795709023.925"),
        ("%Es", "1795709023"),
        ("%E6f", "925844"),
        ("%H:%M:%S.%3f%z", "16:03:43.925+0000"),
        ("%F %T", "2026-11-26 16:03:43"),
        ("%%", "%"),
        ("%-d", "26"),
        ("%q", "%q"),
        ("a%", "a%"),
        ("%4Y", "2026"),
        ("%0f", "%0f"),
        ("%10f", "      %10f"),
        ("%E4S", "43.9258"),
        ("%E*S", "43.925844"),
    ],
)
def test_start_time_formats_match_real_envoy(spec, expected):
    info = tcp_info(start_time=T)
    assert fmt(f"%START_TIME({spec})%", info) == expected


def test_start_time_default_and_empty_argument():
    info = tcp_info(start_time=T)
    assert fmt("%START_TIME%", info) == "2026-11-26T16:03:43.925Z"  # real Envoy
    assert fmt("%START_TIME()%", info) == "2026-11-26T16:03:43.925Z"  # real Envoy


def test_dynamic_width_subseconds_on_a_whole_second():
    assert DateFormatter("%E*S|%*f|%E*f|%f").format(1795709023.0) == "43|0|0|000000000"


def test_start_time_cache_follows_the_second():
    formatter = DateFormatter("%H:%M:%S.%3f")
    assert formatter.format(T) == "16:03:43.925"
    assert formatter.format(T + 0.05) == "16:03:43.975"
    assert formatter.format(T + 1) == "16:03:44.925"


def test_start_time_local_uses_the_local_offset(monkeypatch):
    text = DateFormatter("%Y-%m-%dT%H:%M:%E3S%z", local=True).format(T)
    assert text.startswith("2026-11-2") and text[-5] in "+-"


# JSON -------------------------------------------------------------------------------

JSON_DOC = {
    "zeta": "%BYTES_SENT%",
    "alpha": "%UPSTREAM_HOST%",
    "mid": "%PROTOCOL%",
    "code": "%RESPONSE_CODE%",
    "port": "%DOWNSTREAM_REMOTE_PORT%",
    "dur": "%DURATION%",
    "flags": "%RESPONSE_FLAGS%",
    "start": "%START_TIME%",
    "combo": "%BYTES_SENT%-%PROTOCOL%",
    "num": 42,
    "flt": 1.5,
    "nested": {"b": "%CONNECTION_ID%", "a": "lit"},
    "list": ["%BYTES_SENT%", "x"],
    "lit": "plain",
    "empty": "",
}


def test_json_format_types_sorts_and_nests_like_real_envoy():
    formatter = compile_json(json_struct(JSON_DOC), "p")
    assert formatter.format(tcp_info()) == (  # real Envoy (JSON bootstrap)
        '{"alpha":"127.0.0.1:19002","code":0,"combo":"12--","dur":2,"empty":"","flags":"-",'
        '"flt":1.5,"list":[12,"x"],"lit":"plain","mid":null,"nested":{"a":"lit","b":0},'
        '"num":42,"port":53386,"start":"2026-11-26T16:01:59.284Z","zeta":12}\n'
    )


def test_json_omit_empty_values_like_real_envoy():
    doc = {
        "e": "",
        "m": "%PROTOCOL%%PROTOCOL%",
        "m2": "a%PROTOCOL%b",
        "n": {"x": "%PROTOCOL%"},
        "l": ["%PROTOCOL%"],
        "z": None,
        "pct": "%%",
        "fl": "%RESPONSE_FLAGS%",
        "c": "%RESPONSE_CODE%",
    }
    omit = compile_json(json_struct(doc), "p", omit_empty_values=True)
    assert omit.format(tcp_info()) == (  # real Envoy
        '{"c":0,"e":"","fl":"-","l":[],"m":"","m2":"ab","pct":"%"}\n'
    )
    keep = compile_json(json_struct({**doc, "t": True}), "p")
    assert keep.format(tcp_info()) == (  # real Envoy
        '{"c":0,"e":"","fl":"-","l":[null],"m":"--","m2":"a-b","n":{"x":null},"pct":"%",'
        '"t":true,"z":null}\n'
    )
    everything_empty = compile_json(json_struct({"a": "%PROTOCOL%"}), "p", omit_empty_values=True)
    assert everything_empty.format(tcp_info()) == "{}\n"


def test_json_numbers_like_real_envoy():
    doc = {
        "f": 1.5,
        "big": 1e20,
        "three": 3.0,
        "two": 2,
        "neg": -2.5,
        "bigint": 2**53,
        "tiny": 1e-7,
        "b": True,
    }
    assert compile_json(json_struct(doc), "p").format(tcp_info()) == (  # real Envoy
        '{"b":true,"big":1e+20,"bigint":9007199254740992,"f":1.5,"neg":-2.5,"three":3,'
        '"tiny":1e-07,"two":2}\n'
    )
    assert json_number(12) == "12"


def test_json_string_escaping_like_real_envoy():
    assert json_string('a\x01b\x1fc\x7fd\u2028e/f\u00e9\b\f\n\r\t"\\') == (  # real Envoy
        '"a\\u0001b\\u001fc\x7fd\u2028e/f\u00e9\\b\\f\\n\\r\\t\\"\\\\"'
    )
    # Undecodable bytes: Envoy escapes every non-printable-ASCII byte of the string.
    raw = b'bad \xff ok"'.decode("utf-8", "surrogateescape")
    assert json_string(raw) == '"bad \\u00ff ok\\u0022"'  # real Envoy


def test_json_keys_are_escaped_and_sorted_bytewise():
    doc = {"B": "upper", "_": "u", "1": "one", 'k"ey\u0002': "v"}
    assert compile_json(json_struct(doc), "p").format(tcp_info()) == (  # real Envoy
        '{"1":"one","B":"upper","_":"u","k\\"ey\\u0002":"v"}\n'
    )


def test_json_header_values_keep_their_type_and_length():
    doc = {"h": "%REQ(X-A):2%", "missing": "%REQ(X-B)%"}
    formatter = compile_json(json_struct(doc), "p")
    assert formatter.format(tcp_info(), {"x-a": 'a"bc'}) == '{"h":"a\\"","missing":null}\n'


def test_json_bad_operator_names_the_key_path():
    with pytest.raises(ConfigError) as e:
        compile_json(json_struct({"a": {"b": "%FOO%"}}), "log_format.json_format")
    assert e.value.path == "log_format.json_format.a.b"
    assert e.value.message == "Not supported field in StreamInfo: FOO"  # real Envoy


# SubstitutionFormatString -----------------------------------------------------------


def sfs(document: dict):
    from envoy.config.core.v3 import substitution_format_string_pb2

    return json_format.ParseDict(
        document, substitution_format_string_pb2.SubstitutionFormatString()
    )


def test_substitution_format_string_variants(tmp_path):
    info = tcp_info()
    assert (
        compile_substitution_format(sfs({"text_format": "%BYTES_SENT%\n"}), "p").format(info)
        == "12\n"
    )
    inline = sfs({"text_format_source": {"inline_string": "%BYTES_SENT%"}})
    assert compile_substitution_format(inline, "p").format(info) == "12"
    source = tmp_path / "format.txt"
    source.write_text("file %PROTOCOL%\n")
    from_file = sfs({"text_format_source": {"filename": str(source)}})
    assert compile_substitution_format(from_file, "p").format(info) == "file -\n"
    as_bytes = sfs({"text_format_source": {"inline_bytes": "Ynl0ZXMgJVBST1RPQ09MJQo="}})
    assert compile_substitution_format(as_bytes, "p").format(info) == "bytes -\n"  # real Envoy
    json = sfs(
        {
            "json_format": {"b": "%BYTES_SENT%"},
            "omit_empty_values": True,
            "content_type": "application/json",
            "json_format_options": {"sort_properties": False},
        }
    )
    assert compile_substitution_format(json, "p").format(info) == '{"b":12}\n'


def test_substitution_format_string_errors():
    with pytest.raises(ConfigError) as e:
        compile_substitution_format(sfs({"text_format": "%BAR%"}), "lf")
    assert (e.value.path, e.value.message) == (
        "lf.text_format",
        "Not supported field in StreamInfo: BAR",
    )
    with pytest.raises(ConfigError) as e:
        compile_substitution_format(
            sfs({"text_format_source": {"filename": "/nonexistent/x"}}), "lf"
        )
    assert e.value.path == "lf.text_format_source.filename"
    assert e.value.message.startswith("Invalid path: /nonexistent/x")
    formatters = sfs(
        {
            "text_format": "x",
            "formatters": [
                {
                    "name": "envoy.formatter.req_without_query",
                    "typed_config": {
                        "@type": "type.googleapis.com/google.protobuf.Struct",
                        "value": {},
                    },
                }
            ],
        }
    )
    with pytest.raises(ConfigError) as e:
        compile_substitution_format(formatters, "lf")
    assert e.value.path == "lf.formatters[0]"
    assert "envoy.formatter.req_without_query" in e.value.message
