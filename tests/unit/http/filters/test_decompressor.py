"""The decompressor filter and the gzip decompression library, driven without sockets: the
library's chunk-by-chunk inflation (ratio stop, errors, what decodes before an error), the
Accept-Encoding advertisement, header updates, trailers through the real filter manager, stats
and config refusals."""

from __future__ import annotations

import random
import zlib

import pytest

from legatus.config.errors import ConfigError
from legatus.config.factory_context import FactoryContext
from legatus.config.proto_json import message_class, parse
from legatus.extensions.filters.http.decompressor import filter as decompressor_filter
from legatus.extensions.filters.http.decompressor.config import compile_config
from legatus.extensions.filters.http.decompressor.filter import (
    DecompressorFilter,
    add_encoding_to_accept_encoding,
)
from legatus.extensions.registry import default_registry
from legatus.http.filter import (
    FilterDataStatus,
    FilterHeadersStatus,
    FilterTrailersStatus,
    StreamFilter,
)
from legatus.http.filter_manager import FilterManager
from legatus.http.headers import HeaderMap
from legatus.stats.store import Store
from legatus.stream_info import StreamInfo

DECOMPRESSOR = "envoy.extensions.filters.http.decompressor.v3.Decompressor"
GZIP = "type.googleapis.com/envoy.extensions.compression.gzip.decompressor.v3.Gzip"
TEXT = b"".join(b"line %d of a compressible body\n" % i for i in range(200))
PREFIX = "http.ing.decompressor.lib.gzip."


def gz(data: bytes) -> bytes:
    c = zlib.compressobj(6, zlib.DEFLATED, 31)
    return c.compress(data) + c.flush()


def _config(store: Store, library=None, **fields):
    proto = parse({
        "decompressor_library": {"name": "lib", "typed_config": {"@type": GZIP, **(library or {})}},
        **fields,
    }, message_class(DECOMPRESSOR), path="")  # fmt: skip
    context = FactoryContext(
        registry=default_registry(), store=store, options=None,  # type: ignore[arg-type]
        random=random.Random(1), http_stat_prefix="ing", http_filter_name="decompressor",
    )  # fmt: skip
    return compile_config(proto, context, "f")


def _decompressor(store: Store | None = None, **library):
    config = _config(store if store is not None else Store(), library)
    return config.factory.create(config.library_scope)


def _stats(store: Store) -> dict:
    return {s.name[len(PREFIX) :]: s.value for s in store if s.name.startswith(PREFIX)}


# The gzip library ------------------------------------------------------------------------


def test_pieces_decode_to_the_body():
    d = _decompressor()
    data = gz(TEXT)
    assert b"".join(d.decompress(data[i : i + 37]) for i in range(0, len(data), 37)) == TEXT


def test_past_the_inflate_ratio_a_piece_yields_whole_chunks_and_a_data_error():
    store = Store()
    d = _decompressor(store)
    bomb = gz(b"\0" * 1_000_000)
    out = d.decompress(bomb)
    # 100 x the piece's length, then the chunk that went past it.
    assert len(out) == (100 * len(bomb) // 4096 + 1) * 4096
    assert _stats(store)["decompressor_library.zlib_data_error"] == 1


def test_ratio_and_chunk_size_are_configurable():
    d = _decompressor(max_inflate_ratio=5, chunk_size=8192)
    assert len(d.decompress(gz(b"\0" * 100_000))) == 8192


def test_the_rest_of_a_piece_past_the_ratio_is_dropped():
    """The stream goes on with the next piece as if the dropped bytes were never there."""
    d = _decompressor(max_inflate_ratio=5)
    bomb = gz(b"\0" * 1_000_000)
    first = d.decompress(bomb[:500])
    assert len(first) == 4096
    assert len(d.decompress(bomb[500:])) == 4096


def test_what_decodes_before_an_error_goes_on():
    data = bytearray(gz(TEXT * 3))
    data[len(data) // 2] ^= 0xFF
    expected = bytearray()
    reference = zlib.decompressobj(31)
    for i in range(len(data)):  # byte by byte: everything before the error
        try:
            expected += reference.decompress(bytes(data[i : i + 1]))
        except zlib.error:
            break
    store = Store()
    d = _decompressor(store)
    assert d.decompress(bytes(data)) == expected
    assert len(expected) > 4096  # more than the whole chunks before the failing step
    assert _stats(store)["decompressor_library.zlib_data_error"] == 1
    assert d.decompress(b"more") == b""  # the stream stays failed, and counts again
    assert _stats(store)["decompressor_library.zlib_data_error"] == 2


def test_a_distance_beyond_a_small_window_fails_at_the_next_chunk():
    """Within one chunk zlib reaches back into the chunk itself; past it, only the window."""
    d = _decompressor(window_bits=9, chunk_size=8192)
    assert d.decompress(gz(TEXT * 20)) == (TEXT * 20)[:8192]


def test_bytes_after_the_gzip_stream_are_ignored():
    store = Store()
    d = _decompressor(store)
    assert d.decompress(gz(TEXT) + b"junk") == TEXT
    assert d.decompress(b"more junk") == b""
    assert _stats(store)["decompressor_library.zlib_data_error"] == 0


def test_a_large_chunk_with_a_small_window_is_refused():
    with pytest.raises(ConfigError) as e:
        _config(Store(), {"window_bits": 12, "chunk_size": 65536})
    assert e.value.path == "f.decompressor_library.typed_config.chunk_size"
    _config(Store(), {"window_bits": 15, "chunk_size": 65536})


def test_library_stats_come_with_the_first_decompressor():
    store = Store()
    config = _config(store)
    assert sorted(_stats(store)) == sorted(
        f"{d}.{s}" for d in ("request", "response")
        for s in ("decompressed", "not_decompressed", "total_compressed_bytes",
                  "total_uncompressed_bytes")
    )  # fmt: skip
    config.factory.create(config.library_scope)
    assert "decompressor_library.zlib_data_error" in _stats(store)


# The filter ------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "expected"), [
    ("one,two", "one,two,three"), ("", "three"), (None, "three"), ("three", "three"),
    ("three;q=0.3,two", "two,three"), ("two;q=0.3,three", "two;q=0.3,three"),
    (" , two ,, ", "two,three"), ("THREE", "THREE,three"), ("three ; q=0, x", "x,three"),
])  # fmt: skip
def test_add_encoding_to_accept_encoding(value, expected):
    assert add_encoding_to_accept_encoding(value, "three") == expected


class Sink:
    def __init__(self) -> None:
        self.headers: HeaderMap | None = None
        self.data: list[bytes] = []
        self.trailers: HeaderMap | None = None
        self.ended = False

    def write_headers(self, headers, end_stream):
        self.headers, self.ended = headers, end_stream

    def write_data(self, data, end_stream):
        self.data.append(bytes(data))
        self.ended = end_stream

    def write_trailers(self, trailers):
        self.trailers, self.ended = trailers, True

    def on_watermark(self, *, decoding, above):
        pass


class Upstream(StreamFilter):
    """The terminal filter: records the request, answers with ``response`` and ``body``."""

    def __init__(self, response: HeaderMap, body: list[bytes]) -> None:
        self.response, self.body = response, body
        self.request: HeaderMap | None = None
        self.request_body: list[bytes] = []
        self.request_trailers: HeaderMap | None = None

    def decode_headers(self, headers, end_stream):
        self.request = headers
        if end_stream:
            self._answer()
        return FilterHeadersStatus.STOP_ITERATION

    def decode_data(self, data, end_stream):
        self.request_body.append(bytes(data))
        if end_stream:
            self._answer()
        return FilterDataStatus.STOP_ITERATION_NO_BUFFER

    def decode_trailers(self, trailers):
        self.request_trailers = trailers
        self._answer()
        return FilterTrailersStatus.CONTINUE

    def _answer(self) -> None:
        cb = self.decoder_callbacks
        cb.encode_headers(self.response, not self.body)
        for i, piece in enumerate(self.body):
            cb.encode_data(piece, i == len(self.body) - 1)


def run(config, response: HeaderMap, body=(), request_headers=(), request_body=None):
    f = DecompressorFilter(config)
    upstream = Upstream(response, list(body))
    sink = Sink()
    fm = FilterManager(
        decoder_filters=[f, upstream], encoder_filters=[f], sink=sink,
        stream_info=StreamInfo(now_monotonic=0.0), buffer_limit=1 << 20,
    )  # fmt: skip
    headers = HeaderMap([(":method", "POST" if request_body else "GET"), (":path", "/")])
    for name, value in request_headers:
        headers.add(name, value)
    fm.decode_headers(headers, request_body is None)
    for i, piece in enumerate(request_body or ()):
        fm.decode_data(piece, i == len(request_body) - 1)
    return sink, upstream


@pytest.fixture(autouse=True)
def _fresh_trailer_names(monkeypatch):
    """The trailer names are fixed by the process's first stream: each test is a process."""
    monkeypatch.setattr(decompressor_filter, "_TRAILER_NAMES", [])


def _gzipped_response(*extra) -> HeaderMap:
    return HeaderMap([(":status", "200"), ("content-encoding", "gzip"),
                      ("content-length", "999"), *extra])  # fmt: skip


def test_response_is_decompressed_and_ends_with_trailers():
    store = Store()
    data = gz(TEXT)
    sink, upstream = run(_config(store), _gzipped_response(("vary", "x")),
                         [data[:100], data[100:]])  # fmt: skip
    assert list(sink.headers.items()) == [(":status", "200"), ("vary", "x")]
    assert b"".join(sink.data) == TEXT
    assert list(sink.trailers.items()) == [
        ("x-envoy-decompressor-lib-compressed-bytes", str(len(data))),
        ("x-envoy-decompressor-lib-uncompressed-bytes", str(len(TEXT))),
    ]
    assert upstream.request.get("accept-encoding") == "gzip"
    stats = _stats(store)
    assert stats["response.decompressed"] == 1
    assert stats["response.total_compressed_bytes"] == len(data)
    assert stats["response.total_uncompressed_bytes"] == len(TEXT)


def test_request_is_decompressed_and_ends_with_trailers():
    store = Store()
    data = gz(TEXT)
    request = (("content-encoding", "gzip, br"), ("content-length", str(len(data))))
    _, upstream = run(_config(store), HeaderMap([(":status", "200")]),
                      request_headers=request, request_body=[data[:10], data[10:]])  # fmt: skip
    assert upstream.request.get("content-encoding") == "br"
    assert "content-length" not in upstream.request
    assert b"".join(upstream.request_body) == TEXT
    assert upstream.request_trailers.get("x-envoy-decompressor-lib-uncompressed-bytes") == str(
        len(TEXT))  # fmt: skip
    assert _stats(store)["request.decompressed"] == 1


@pytest.mark.parametrize(("extra", "decompressed"), [
    ((), True), ((("cache-control", "public, No-Transform"),), False),
])  # fmt: skip
def test_no_transform(extra, decompressed):
    store = Store()
    sink, _ = run(_config(store), _gzipped_response(*extra), [gz(TEXT)])
    assert (b"".join(sink.data) == TEXT) is decompressed
    assert _stats(store)["response.not_decompressed"] == (0 if decompressed else 1)


def test_ignore_no_transform_header():
    config = _config(Store(), response_direction_config={"common_config": {
        "ignore_no_transform_header": True}})  # fmt: skip
    sink, _ = run(config, _gzipped_response(("cache-control", "no-transform")), [gz(TEXT)])
    assert b"".join(sink.data) == TEXT


@pytest.mark.parametrize(("encoding", "left"), [
    ("GZIP", None), (" gzip ,  br ", "br"), ("gzip,", ""), ("br, gzip", "br, gzip"),
    ("x-gzip", "x-gzip"),
])  # fmt: skip
def test_content_encoding(encoding, left):
    response = HeaderMap([(":status", "200"), ("content-encoding", encoding)])
    sink, _ = run(_config(Store()), response, [gz(TEXT)])
    assert sink.headers.get("content-encoding") == left


def test_headers_only_messages_count_nothing():
    store = Store()
    run(_config(store), _gzipped_response(), [], request_headers=(("content-encoding", "gzip"),))
    assert not any(_stats(store).values())


def test_no_advertisement_while_response_decompression_is_off():
    store = Store()
    off = {"common_config": {"enabled": {"default_value": False, "runtime_key": "k"}}}
    _, upstream = run(_config(store, response_direction_config=off), _gzipped_response(),
                      [gz(TEXT)], request_headers=(("accept-encoding", "br"),))  # fmt: skip
    assert upstream.request.get("accept-encoding") == "br"
    config = _config(Store(), request_direction_config={"advertise_accept_encoding": False})
    _, upstream = run(config, _gzipped_response(), [gz(TEXT)])
    assert "accept-encoding" not in upstream.request


def test_trailer_names_are_the_first_streams():
    store = Store()
    first = _config(store)
    other = _config(store, None)
    object.__setattr__(other, "trailer_names", ("x-other-c", "x-other-u"))
    run(first, HeaderMap([(":status", "200")]), [b"x"])
    sink, _ = run(other, _gzipped_response(), [gz(TEXT)])
    assert [n for n, _ in sink.trailers.items()] == list(first.trailer_names)


def test_brotli_and_zstd_decompressors_are_refused_by_name():
    for library in ("brotli", "zstd"):
        url = (f"type.googleapis.com/envoy.extensions.compression.{library}.decompressor.v3."
               f"{library.capitalize()}")  # fmt: skip
        proto = parse({"decompressor_library": {"name": "x", "typed_config": {"@type": url}}},
                      message_class(DECOMPRESSOR), path="")  # fmt: skip
        context = FactoryContext(
            registry=default_registry(), store=Store(), options=None,  # type: ignore[arg-type]
            random=random.Random(1), http_stat_prefix="ing",
        )  # fmt: skip
        with pytest.raises(ConfigError) as e:
            compile_config(proto, context, "f")
        assert e.value.path == "f.decompressor_library.typed_config"
        assert "envoy.compression.decompressor" in str(e.value)
