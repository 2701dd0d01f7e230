"""Header key formats of the HTTP/1 codecs: proper_case_words and preserve_case, both sides,
and the Http1ProtocolOptions fields each side honours or refuses."""

from __future__ import annotations

import pytest
from envoy.config.core.v3 import protocol_pb2
from envoy.extensions.http.header_formatters.preserve_case.v3 import preserve_case_pb2

from legatus.config.errors import ConfigError
from legatus.extensions.http.header_formatters.preserve_case import PreserveCaseConfig
from legatus.http.headers import HeaderMap
from legatus.http.http1 import ClientCodec, ProtocolError, ResponseHeaders, ServerCodec
from legatus.http.http1.client_codec import client_codec_factory
from legatus.http.http1.header_formatter import FormattedHeaderMap, proper_case
from legatus.http.http1.settings import DEFAULT_SETTINGS, HeaderKeyFormat, Http1Settings

PROPER = Http1Settings(header_key_format=HeaderKeyFormat.PROPER_CASE)


def preserving(**config) -> Http1Settings:
    return Http1Settings(
        header_key_format=HeaderKeyFormat.STATEFUL,
        stateful_formatter=PreserveCaseConfig(**config),
        enable_trailers=True,
    )


REQUEST = (
    b"POST /p HTTP/1.1\r\nHOST: h\r\nX-MiXed: a\r\nx-dup: 1\r\nX-DUP: 2\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\nX-Trailer: t\r\n\r\n"
)


@pytest.mark.parametrize(
    ("name", "formatted"),
    [
        ("content-type", "Content-Type"),
        ("x-123abc", "X-123abc"),
        ("abc1def.ghi", "Abc1def.Ghi"),
        ("x-lower_under", "X-Lower_Under"),
        ("foo$b#$are", "Foo$B#$Are"),
        ("1abc", "1abc"),
        ("te", "Te"),
    ],
)
def test_proper_case_words(name, formatted):
    assert proper_case(name) == formatted


def test_preserve_case_formatter_keeps_the_first_spelling():
    formatter = PreserveCaseConfig().create()
    formatter.process_keys(["X-MiXed", "x-dup", "X-DUP"])
    assert formatter.format("x-mixed") == "X-MiXed"
    assert formatter.format("x-dup") == "x-dup"
    assert formatter.format("x-envoy-added") == "x-envoy-added"
    formatter.set_reason_phrase("Fine")
    assert formatter.reason_phrase == ""  # not forwarded unless configured
    proper = PreserveCaseConfig(forward_reason_phrase=True, envoy_headers_proper=True).create()
    proper.process_keys(["x-lower"])
    proper.set_reason_phrase("Fine")
    assert (proper.format("x-lower"), proper.format("x-added")) == ("x-lower", "X-Added")
    assert proper.reason_phrase == "Fine"


# Downstream ------------------------------------------------------------------------------------


def test_default_codec_decodes_plain_maps():
    codec = ServerCodec(DEFAULT_SETTINGS)
    (head, *_) = codec.feed(REQUEST)
    assert type(head.headers) is HeaderMap


def test_server_codec_records_the_case_of_heads_not_trailers():
    codec = ServerCodec(preserving())
    head, _body, trailers = codec.feed(REQUEST)
    headers = head.headers
    assert type(headers) is FormattedHeaderMap
    assert headers.get_all("x-dup") == ["1", "2"] and headers[":authority"] == "h"
    assert [headers.formatter.format(n) for n in ("host", "x-mixed", "x-dup")] == [
        "HOST", "X-MiXed", "x-dup"
    ]  # fmt: skip
    assert type(trailers.trailers) is HeaderMap


def test_proper_case_connection_formats_responses_not_trailers():
    codec = ServerCodec(Http1Settings(header_key_format=HeaderKeyFormat.PROPER_CASE,
                                      enable_trailers=True))  # fmt: skip
    codec.feed(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    head = codec.encode_headers(HeaderMap([(":status", "200"), ("x-a-b", "1")]), False)
    assert head == b"HTTP/1.1 200 OK\r\nX-A-B: 1\r\nTransfer-Encoding: chunked\r\n\r\n"
    assert codec.encode_trailers(HeaderMap([("x-t", "1")])) == b"0\r\nx-t: 1\r\n\r\n"


def test_a_recorded_head_wins_over_the_connection_and_keeps_its_reason_phrase():
    formatter = PreserveCaseConfig(forward_reason_phrase=True).create()
    formatter.process_keys(["X-MiXed", "Content-Length"])
    formatter.set_reason_phrase("Very Fine")
    headers = FormattedHeaderMap.attach(
        HeaderMap([(":status", "200"), ("x-mixed", "a"), ("content-length", "0"), ("date", "d")]),
        formatter,
    )
    for settings in (DEFAULT_SETTINGS, PROPER):
        codec = ServerCodec(settings)
        codec.feed(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        assert codec.encode_headers(headers, True) == (
            b"HTTP/1.1 200 Very Fine\r\nX-MiXed: a\r\nContent-Length: 0\r\ndate: d\r\n\r\n"
        )


# Upstream --------------------------------------------------------------------------------------


def request(*extra: tuple[str, str]) -> HeaderMap:
    return HeaderMap([(":method", "GET"), (":path", "/p"), (":scheme", "http"),
                      (":authority", "up"), *extra])  # fmt: skip


def test_client_codec_writes_a_recorded_request_as_it_arrived():
    server = ServerCodec(preserving())
    (head, *_) = server.feed(b"GET /p HTTP/1.1\r\nHOST: up\r\nX-MiXed: a\r\n\r\n")
    headers = head.headers
    headers.set("x-envoy-added", "1")
    for settings in (DEFAULT_SETTINGS, PROPER):
        codec = client_codec_factory(settings)()
        assert codec.encode_request_headers(headers, True) == (
            b"GET /p HTTP/1.1\r\nHOST: up\r\nX-MiXed: a\r\nx-envoy-added: 1\r\n\r\n"
        )


def test_client_codec_proper_case_and_fully_qualified_url():
    codec = client_codec_factory(PROPER)()
    assert codec.encode_request_headers(request(("x-a", "1")), True) == (
        b"GET /p HTTP/1.1\r\nHost: up\r\nX-A: 1\r\n\r\n"
    )
    codec = client_codec_factory(Http1Settings(send_fully_qualified_url=True))()
    assert codec.encode_request_headers(request(), True) == (
        b"GET http://up/p HTTP/1.1\r\nhost: up\r\n\r\n"
    )
    no_scheme = request()
    no_scheme.remove(":scheme")
    with pytest.raises(ValueError, match=":scheme"):
        client_codec_factory(Http1Settings(send_fully_qualified_url=True))().encode_request_headers(
            no_scheme, True
        )


@pytest.mark.parametrize(
    ("status_line", "phrase"),
    [(b"HTTP/1.1 200 Very Fine", "Very Fine"), (b"HTTP/1.1 200 ", ""), (b"HTTP/1.1 200", "")],
)
def test_client_codec_records_the_reason_phrase(status_line, phrase):
    codec = client_codec_factory(preserving(forward_reason_phrase=True))()
    codec.encode_request_headers(request(), True)
    events = []
    response = status_line + b"\r\nX-MiXed: a\r\nContent-Length: 0\r\n\r\n"
    for i in range(len(response)):  # byte by byte: the phrase arrives in pieces
        events += codec.feed(response[i : i + 1])
    (head,) = events
    assert type(head.headers) is FormattedHeaderMap
    assert head.headers.formatter.reason_phrase == phrase
    assert head.headers.formatter.format("x-mixed") == "X-MiXed"


def test_client_codec_allow_chunked_length():
    response = (
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    )
    codec = client_codec_factory(Http1Settings(allow_chunked_length=True))()
    codec.encode_request_headers(request(), True)
    head = codec.feed(response)[0]
    assert isinstance(head, ResponseHeaders) and "content-length" not in head.headers
    codec = ClientCodec()
    codec.encode_request_headers(request(), True)
    assert isinstance(codec.feed(response)[-1], ProtocolError)


def test_default_settings_make_the_plain_codec():
    assert client_codec_factory(DEFAULT_SETTINGS) is ClientCodec


# Settings --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field",
    ["override_stream_error_on_invalid_http_message", "allow_custom_methods",
     "ignore_http_11_upgrade"],
)  # fmt: skip
def test_fields_refused_upstream(field):
    opts = protocol_pb2.Http1ProtocolOptions()
    if field == "ignore_http_11_upgrade":
        opts.ignore_http_11_upgrade.add().exact = "x"
    elif field == "allow_custom_methods":
        opts.allow_custom_methods = True
    else:
        opts.override_stream_error_on_invalid_http_message.value = True
    if field == "allow_custom_methods":  # (the other two are honoured downstream)
        with pytest.raises(ConfigError) as e:
            Http1Settings.from_protos(opts, path="hcm")
        assert e.value.path == f"hcm.http_protocol_options.{field}"
    with pytest.raises(ConfigError) as e:
        Http1Settings.from_upstream_proto(opts, path="c.http_protocol_options")
    assert e.value.path == f"c.http_protocol_options.{field}"


def test_downstream_only_fields_refused_upstream_and_the_reverse_accepted():
    opts = protocol_pb2.Http1ProtocolOptions(send_fully_qualified_url=True)
    opts.use_balsa_parser.value = False
    assert Http1Settings.from_protos(opts, path="hcm").key_format is None
    for field in ("accept_http_10", "use_balsa_parser"):
        opts = protocol_pb2.Http1ProtocolOptions()
        if field == "accept_http_10":
            opts.accept_http_10 = True
        else:
            opts.use_balsa_parser.value = True
        with pytest.raises(ConfigError, match=field):
            Http1Settings.from_upstream_proto(opts, path="c")


def test_header_key_format_compiled_on_both_sides():
    opts = protocol_pb2.Http1ProtocolOptions()
    opts.header_key_format.stateful_formatter.name = "preserve"
    opts.header_key_format.stateful_formatter.typed_config.Pack(
        preserve_case_pb2.PreserveCaseFormatterConfig(forward_reason_phrase=True)
    )
    for settings in (
        Http1Settings.from_protos(opts, path="hcm"),
        Http1Settings.from_upstream_proto(opts, path="c"),
    ):
        assert settings.header_key_format is HeaderKeyFormat.STATEFUL
        assert settings.stateful_formatter == PreserveCaseConfig(forward_reason_phrase=True)
    opts.header_key_format.proper_case_words.SetInParent()
    assert Http1Settings.from_upstream_proto(opts, path="c").key_format is proper_case
