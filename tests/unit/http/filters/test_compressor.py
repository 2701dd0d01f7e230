"""The compressor filter and the gzip, brotli and zstd libraries, driven without sockets through
the real filter manager: negotiation, skips, headers, streaming, stats and config refusals."""

from __future__ import annotations

import gzip
import random

import brotli
import pytest
import zstandard

from legatus.config.errors import ConfigError
from legatus.config.factory_context import FactoryContext
from legatus.config.proto_json import parse
from legatus.extensions.filters.http.compressor.config import compile_config, compile_per_route
from legatus.extensions.filters.http.compressor.filter import CompressorFilter, choose_encoding
from legatus.extensions.registry import default_registry
from legatus.http.filter import FilterDataStatus, FilterHeadersStatus, StreamFilter
from legatus.http.filter_manager import FilterManager
from legatus.http.headers import HeaderMap
from legatus.stats.store import Store
from legatus.stream_info import StreamInfo

COMPRESSOR = "envoy.extensions.filters.http.compressor.v3.Compressor"
PER_ROUTE = "envoy.extensions.filters.http.compressor.v3.CompressorPerRoute"
LIBRARIES = {
    "gzip": "envoy.extensions.compression.gzip.compressor.v3.Gzip",
    "brotli": "envoy.extensions.compression.brotli.compressor.v3.Brotli",
    "zstd": "envoy.extensions.compression.zstd.compressor.v3.Zstd",
}
BODY = b"".join(b"piece %d of a body that compresses well\n" % i for i in range(300))


def _message(type_name: str, value: dict):
    from legatus.config.proto_json import message_class

    return parse(value, message_class(type_name), path="")


def _context(store: Store) -> FactoryContext:
    return FactoryContext(
        registry=default_registry(),
        store=store,
        options=None,  # type: ignore[arg-type]
        random=random.Random(1),
        http_stat_prefix="ing",
        http_filter_name="compressor",
    )


def _config(store: Store, library: str = "gzip", lib_name: str | None = None, lib=None, **fields):
    proto = _message(COMPRESSOR, {
        "compressor_library": {"name": lib_name or library, "typed_config": {
            "@type": f"type.googleapis.com/{LIBRARIES[library]}", **(lib or {})}},
        **fields,
    })  # fmt: skip
    return compile_config(proto, _context(store), "f")


class Loop:
    """call_soon, run by hand."""

    def __init__(self) -> None:
        self.ready: list = []

    def call_soon(self, fn, *args):
        handle = _Handle(fn, args)
        self.ready.append(handle)
        return handle

    def run(self) -> None:
        while self.ready:
            handle = self.ready.pop(0)
            if not handle.cancelled:
                handle.fn(*handle.args)


class _Handle:
    def __init__(self, fn, args) -> None:
        self.fn, self.args, self.cancelled = fn, args, False

    def cancel(self) -> None:
        self.cancelled = True


class Sink:
    def __init__(self) -> None:
        self.headers: HeaderMap | None = None
        self.data: list[tuple[bytes, bool]] = []

    def write_headers(self, headers, end_stream):
        self.headers = headers

    def write_data(self, data, end_stream):
        self.data.append((bytes(data), end_stream))

    def write_trailers(self, trailers):
        self.data.append((b"<trailers>", True))

    def on_watermark(self, *, decoding, above):
        pass


class Upstream(StreamFilter):
    """The terminal filter: records the request, answers as told."""

    def __init__(self, response: HeaderMap, body: list[bytes]) -> None:
        self.response = response
        self.body = body
        self.request: HeaderMap | None = None
        self.request_body: list[tuple[bytes, bool]] = []

    def decode_headers(self, headers, end_stream):
        self.request = headers
        if end_stream:
            self._answer()
        return FilterHeadersStatus.STOP_ITERATION

    def decode_data(self, data, end_stream):
        self.request_body.append((bytes(data), end_stream))
        if end_stream:
            self._answer()
        return FilterDataStatus.STOP_ITERATION_NO_BUFFER

    def _answer(self) -> None:
        cb = self.decoder_callbacks
        cb.encode_headers(self.response, not self.body)
        for i, piece in enumerate(self.body):
            cb.encode_data(piece, i == len(self.body) - 1)


def _response(content_type="text/plain", length: int | None = len(BODY), status="200", **extra):
    h = HeaderMap([(":status", status)])
    if content_type:
        h.add("content-type", content_type)
    if length is not None:
        h.add("content-length", str(length))
    for name, value in extra.items():
        h.add(name.replace("_", "-"), value)
    return h


def run(configs, *, accept="gzip", response=None, body=(BODY,), request_body=None,
        request_headers=(), method="GET", route=None):  # fmt: skip
    loop = Loop()
    filters = [CompressorFilter(c, f"c{i}", loop) for i, c in enumerate(configs)]
    upstream = Upstream(response if response is not None else _response(), list(body))
    sink = Sink()
    fm = FilterManager(
        decoder_filters=[*filters, upstream], encoder_filters=filters, sink=sink,
        stream_info=StreamInfo(now_monotonic=0.0), buffer_limit=1 << 20,
    )  # fmt: skip
    fm.route = route
    headers = HeaderMap([(":method", method), (":path", "/")])
    if accept is not None:
        headers.add("accept-encoding", accept)
    for name, value in request_headers:
        headers.add(name, value)
    fm.decode_headers(headers, request_body is None)
    for i, piece in enumerate(request_body or ()):
        fm.decode_data(piece, i == len(request_body) - 1)
    loop.run()
    return sink, upstream


def _body(sink) -> bytes:
    assert sink.data[-1][1] is True
    return b"".join(d for d, _ in sink.data)


def _stats(store: Store, prefix="http.ing.compressor.gzip.gzip.") -> dict:
    return {s.name[len(prefix) :]: s.value for s in store if s.name.startswith(prefix) and s.value}


# Negotiation --------------------------------------------------------------------------


@pytest.mark.parametrize(("accept", "expected"), [
    ("gzip", ("gzip", 0)), ("GZIP", ("identity", 3)), ("deflate, gzip;q=0.5", ("gzip", 0)),
    ("gzip;q=0", ("identity", 3)), ("*", ("gzip", 2)), ("*;q=0", ("identity", 3)),
    ("gzip;q=0, *", ("identity", 3)), ("identity", ("identity", 1)), ("", ("identity", 3)),
    ("gzip;q=abc", ("identity", 3)), ("br;q=0.9, gzip;q=0.8", ("gzip", 0)),
    (" gzip ; q = 0.7 ", ("gzip", 0)), ("*;q=0, *", ("gzip", 2)),
])  # fmt: skip
def test_choose_encoding_one_compressor(accept, expected):
    config = _config(Store(), response_direction_config={})
    assert choose_encoding(accept, "text/plain", [config]) == expected


def test_choose_encoding_several_compressors():
    store = Store()
    gz = _config(store, "gzip", response_direction_config={})
    br = _config(store, "brotli", response_direction_config={})
    zs = _config(store, "zstd", choose_first=True, response_direction_config={})
    html = _config(store, "gzip", "html", response_direction_config={
        "common_config": {"content_type": ["text/html"]}})  # fmt: skip
    chain = [html, br, zs, gz]
    assert choose_encoding("gzip, br", "text/plain", chain) == ("gzip", 0)  # first of equal q
    assert choose_encoding("gzip, zstd, br", "text/plain", chain) == ("zstd", 0)  # choose_first
    assert choose_encoding("*", "text/plain", chain) == ("br", 2)  # html not allowed: br first
    assert choose_encoding("*", "text/html", chain) == ("gzip", 2)
    assert choose_encoding("br;q=0.5, gzip", "text/plain", chain) == ("gzip", 0)


# Responses ----------------------------------------------------------------------------


@pytest.mark.parametrize("library", ["gzip", "brotli", "zstd"])
def test_response_compressed_and_decodes(library):
    store = Store()
    config = _config(store, library, response_direction_config={})
    encoding = config.content_encoding
    sink, _ = run([config], accept=encoding, body=(BODY[:5000], BODY[5000:]))
    h = sink.headers
    assert h.get("content-encoding") == encoding
    assert h.get("vary") == "Accept-Encoding"
    assert "content-length" not in h
    raw = _body(sink)
    decoded = {
        "gzip": gzip.decompress,
        "br": brotli.decompress,
        "zstd": lambda b: zstandard.ZstdDecompressor().decompressobj().decompress(b),
    }[encoding](raw)
    assert decoded == BODY
    # Each piece is flushed on its own: the first piece decodes without the rest.
    if library == "gzip":
        import zlib

        d = zlib.decompressobj(16 + 15)
        assert d.decompress(sink.data[0][0]) == BODY[:5000]
    stats = _stats(store, f"http.ing.compressor.{library}.{library}.")
    assert stats == {
        "response.compressed": 1, "request.not_compressed": 1, "header_compressor_used": 1,
        "response.total_uncompressed_bytes": len(BODY),
        "response.total_compressed_bytes": len(raw),
    }  # fmt: skip


def test_skips_and_vary():
    store = Store()
    config = _config(store, response_direction_config={"disable_on_etag_header": False})
    cases = {
        "small": _response(length=10),
        "image": _response("image/png"),
        "encoded": _response(content_encoding="br"),
        "no-transform": _response(cache_control="max-age=1, No-Transform"),
        "te-gzip": _response(transfer_encoding="gzip"),
    }
    for name, response in cases.items():
        sink, _ = run([config], response=response)
        assert "content-encoding" not in sink.headers or name == "encoded", name
        assert "vary" not in sink.headers or name == "te-gzip", name
    sink, _ = run([config], accept="identity")
    assert "content-encoding" not in sink.headers
    assert sink.headers.get("vary") == "Accept-Encoding"  # could have been compressed
    sink, _ = run([config], body=())  # headers only
    assert sink.headers.get("vary") == "Accept-Encoding"
    assert "content-encoding" not in sink.headers


def test_etag_and_existing_vary():
    store = Store()
    config = _config(store, response_direction_config={})
    sink, _ = run([config], response=_response(etag='"strong"', vary="origin"))
    assert "etag" not in sink.headers
    assert sink.headers.get("vary") == "origin, Accept-Encoding"
    sink, _ = run([config], response=_response(etag='W/"weak"', vary="Accept-Encoding"))
    assert sink.headers.get("etag") == 'W/"weak"'
    assert sink.headers.get_all("vary") == ["Accept-Encoding"]
    off = _config(store, "gzip", "off", response_direction_config={"disable_on_etag_header": True})
    sink, _ = run([off], response=_response(etag='"strong"'))
    assert "content-encoding" not in sink.headers
    assert _stats(store, "http.ing.compressor.off.gzip.")["not_compressed_etag"] == 1


def test_uncompressible_response_codes_and_disabled_runtime():
    store = Store()
    config = _config(store, response_direction_config={"uncompressible_response_codes": [206]})
    sink, _ = run([config], response=_response(status="206"))
    assert "content-encoding" not in sink.headers and "vary" not in sink.headers
    off = _config(store, "gzip", "off", response_direction_config={
        "common_config": {"enabled": {"default_value": False, "runtime_key": "k"}}})  # fmt: skip
    sink, _ = run([off])
    assert "content-encoding" not in sink.headers
    assert _stats(store, "http.ing.compressor.off.gzip.") == {
        "response.not_compressed": 1, "request.not_compressed": 1}  # fmt: skip


def test_legacy_fields_and_stat_names():
    store = Store()
    config = _config(store, content_length=100, content_type=["text/html"],
                     remove_accept_encoding_header=True)  # fmt: skip
    sink, upstream = run([config], response=_response("text/html"))
    assert sink.headers.get("content-encoding") == "gzip"
    assert "accept-encoding" not in upstream.request
    names = {s.name for s in store if s.name.startswith("http.ing.compressor.")}
    assert "http.ing.compressor.gzip.gzip.compressed" in names  # no "response."
    assert "http.ing.compressor.gzip.gzip.request.compressed" in names
    assert "http.ing.compressor.gzip.gzip.header_wildcard" in names


def test_several_filters_decide_once():
    store = Store()
    gz = _config(store, "gzip", response_direction_config={})
    br = _config(store, "brotli", response_direction_config={})
    sink, _ = run([gz, br], accept="gzip;q=0.5, br")
    assert sink.headers.get("content-encoding") == "br"
    assert brotli.decompress(_body(sink)) == BODY
    assert _stats(store)["header_compressor_overshadowed"] == 1
    assert _stats(store, "http.ing.compressor.brotli.brotli.")["header_compressor_used"] == 1


def test_trailers_finish_the_stream():
    store = Store()
    config = _config(store, response_direction_config={})
    loop = Loop()
    f = CompressorFilter(config, "c", loop)
    sink = Sink()
    fm = FilterManager(decoder_filters=[f], encoder_filters=[f], sink=sink,
                       stream_info=StreamInfo(now_monotonic=0.0), buffer_limit=1 << 20)  # fmt: skip
    fm.decode_headers(HeaderMap([(":method", "GET"), ("accept-encoding", "gzip")]), True)
    fm.encode_headers(_response(length=None), False)
    fm.encode_data(BODY, False)
    fm.encode_trailers(HeaderMap([("grpc-status", "0")]))
    assert sink.data[-1] == (b"<trailers>", True)
    assert gzip.decompress(b"".join(d for d, _ in sink.data[:-1])) == BODY


# Requests and routes -------------------------------------------------------------------


def test_request_compression():
    store = Store()
    config = _config(store, request_direction_config={})
    _, upstream = run([config], method="POST", request_body=[BODY[:100], BODY[100:]],
                      request_headers=[("content-type", "text/plain"),
                                       ("content-length", str(len(BODY)))])  # fmt: skip
    assert upstream.request.get("content-encoding") == "gzip"
    assert "content-length" not in upstream.request
    assert upstream.request_body[-1] == (b"", True)
    assert gzip.decompress(b"".join(d for d, _ in upstream.request_body)) == BODY
    # Off without request_direction_config.
    plain = _config(store, "gzip", "plain", response_direction_config={})
    _, upstream = run([plain], method="POST", request_body=[BODY],
                      request_headers=[("content-type", "text/plain")])  # fmt: skip
    assert "content-encoding" not in upstream.request


class Route:
    def __init__(self, config) -> None:
        self.config = config

    def most_specific_per_filter_config(self, name):
        return self.config if name == "c0" else None


def test_per_route():
    store = Store()
    config = _config(store, response_direction_config={})
    disabled = compile_per_route(_message(PER_ROUTE, {"disabled": True}), None, "r")
    sink, upstream = run([config], route=Route(disabled))
    assert "content-encoding" not in sink.headers and "vary" not in sink.headers
    keep = compile_per_route(_message(PER_ROUTE, {"overrides": {"response_direction_config": {
        "remove_accept_encoding_header": True}}}), None, "r")  # fmt: skip
    sink, upstream = run([config], route=Route(keep))
    assert sink.headers.get("content-encoding") == "gzip"
    assert "accept-encoding" not in upstream.request


# Config --------------------------------------------------------------------------------


@pytest.mark.parametrize(("fields", "lib", "library", "where"), [
    ({"response_direction_config": {"status_header_enabled": True}}, None, "gzip",
     "f.response_direction_config.status_header_enabled"),
    ({}, {"disable_literal_context_modeling": True}, "brotli",
     "f.compressor_library.typed_config.disable_literal_context_modeling"),
    ({}, {"dictionary": {"inline_bytes": "YWJj"}}, "zstd",
     "f.compressor_library.typed_config.dictionary"),
])  # fmt: skip
def test_unsupported_fields_are_refused(fields, lib, library, where):
    with pytest.raises(ConfigError) as e:
        _config(Store(), library, lib=lib, **fields)
    assert e.value.path == where


def test_per_route_library_override_refused():
    proto = _message(
        PER_ROUTE,
        {
            "overrides": {
                "compressor_library": {
                    "name": "br",
                    "typed_config": {"@type": f"type.googleapis.com/{LIBRARIES['brotli']}"},
                }
            }
        },
    )
    with pytest.raises(ConfigError) as e:
        compile_per_route(proto, None, "r")
    assert e.value.path == "r.overrides.compressor_library"


def test_unknown_library_is_refused():
    proto = _message(
        COMPRESSOR,
        {
            "compressor_library": {
                "name": "x",
                "typed_config": {
                    "@type": "type.googleapis.com/"
                    + "envoy.extensions.compression.gzip.decompressor.v3.Gzip"
                },
            }
        },
    )
    with pytest.raises(ConfigError) as e:
        compile_config(proto, _context(Store()), "f")
    assert "compressor_library" in e.value.path
