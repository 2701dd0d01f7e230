"""A request's head as it goes to an HTTP/2 upstream (``request_headers``), sans I/O."""

from __future__ import annotations

from legatus.conn_pool.http2_stream import UPGRADE_NOT_SUPPORTED, request_headers
from legatus.http.headers import HeaderMap

GET = [(":method", "GET"), (":path", "/p"), (":authority", "a.example"), (":scheme", "http")]


def test_a_clean_head_is_sent_as_it_is():
    headers = HeaderMap([*GET, ("te", "trailers"), ("x-a", "1")])
    assert request_headers(headers, "http") is headers


def test_connection_specific_headers_go():
    headers = HeaderMap([*GET, ("connection", "keep-alive"), ("keep-alive", "timeout=5"),
                         ("proxy-connection", "close"), ("transfer-encoding", "chunked"),
                         ("x-a", "1")])  # fmt: skip
    out = request_headers(headers, "http")
    assert list(out.items()) == [*GET, ("x-a", "1")]
    assert "connection" in headers  # the router's own map is left as it was


def test_te_is_kept_only_as_trailers():
    out = request_headers(HeaderMap([*GET, ("te", "gzip")]), "http")
    assert "te" not in out
    out = request_headers(HeaderMap([*GET, ("te", "Trailers, deflate")]), "http")
    assert out.get_all("te") == ["trailers"]


def test_a_missing_scheme_is_the_connections():
    headers = HeaderMap([(":method", "GET"), (":path", "/"), (":authority", "a")])
    assert request_headers(headers, "https").get(":scheme") == "https"


def test_connect_has_neither_scheme_nor_path():
    headers = HeaderMap([(":method", "CONNECT"), (":authority", "a:443"), (":scheme", "http"),
                         (":path", "/")])  # fmt: skip
    out = request_headers(headers, "http")
    assert list(out.items()) == [(":method", "CONNECT"), (":authority", "a:443")]


def test_an_upgrade_is_refused():
    headers = HeaderMap([*GET, ("connection", "upgrade"), ("upgrade", "websocket")])
    assert request_headers(headers, "http") == UPGRADE_NOT_SUPPORTED


def test_what_no_codec_can_send_is_refused():
    assert "CR, LF or NUL" in request_headers(HeaderMap([*GET, ("x-a", "a\r\nb")]), "http")
    assert "latin-1" in request_headers(HeaderMap([*GET, ("x-a", "snow \u2603")]), "http")
    assert type(request_headers(HeaderMap([*GET, ("x-a", "caf\xe9")]), "http")) is HeaderMap
