"""The decompressor filter (``envoy.filters.http.decompressor``) with the gzip library
(``envoy.compression.gzip.decompressor``), Envoy against legatus.

Everything is compared as it is: responses (headers, decoded bytes, framing, trailers), the
upstream's requests (the advertised ``accept-encoding``, bodies decoded on the way up), the
access log and every stat of the test's listeners (the filter's ``decompressor.*`` and the
library's ``zlib_*`` among them). gzip decodes to the same bytes in both; what a corrupt
stream, a stream past ``max_inflate_ratio`` or one needing a larger window yields depends on
how each piece is inflated, which legatus does as Envoy does, and is compared too. Bodies
here arrive in one read, except the large one, whose pieces (and so the bytes sent, chunked)
are compared by presence.
"""

from __future__ import annotations

import zlib

from tests.differential.http_scenario import (  # noqa: F401 (fixtures)
    Cluster,
    Listener,
    Reply,
    body_view,
    http_pair_fixture,
    http_pair_processes_fixture,
    scenario,
)

DECOMPRESSOR = "type.googleapis.com/envoy.extensions.filters.http.decompressor.v3.Decompressor"
GZIP = "type.googleapis.com/envoy.extensions.compression.gzip.decompressor.v3.Gzip"
COMPRESSOR = "type.googleapis.com/envoy.extensions.filters.http.compressor.v3.Compressor"
GZIP_COMPRESSOR = "type.googleapis.com/envoy.extensions.compression.gzip.compressor.v3.Gzip"
HTTP_OPTIONS = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"

TEXT = b"".join(b"line %d of a compressible body\n" % i for i in range(200))
LARGE = b"".join(b"%08d lorem ipsum dolor sit amet\n" % i for i in range(40000))  # ~1.3 MB
ZEROS = b"\0" * 1_000_000
JSON = b'{"k": "%s"}' % (b"v" * 300)


def gz(data: bytes) -> bytes:
    c = zlib.compressobj(6, zlib.DEFLATED, 31)
    return c.compress(data) + c.flush()


GZ_TEXT = gz(TEXT)


def damaged(data: bytes) -> bytes:
    """A byte flipped mid-stream: zlib fails there, after thousands of good bytes."""
    out = bytearray(data)
    out[len(out) // 2] ^= 0xFF
    return bytes(out)


def _gzipped(body: bytes = TEXT, encoding: str = "gzip", *extra, **kwargs) -> Reply:
    headers = (("content-type", "text/plain"), ("content-encoding", encoding), *extra)
    return Reply(headers=headers, body=gz(body) if body else b"", **kwargs)


SCRIPTS = {
    "/gz": _gzipped(),
    "/upper": _gzipped(encoding="GZIP"),
    "/then-br": _gzipped(encoding="gzip, br"),
    "/spaced": _gzipped(encoding=" gzip ,  br "),
    "/comma": _gzipped(encoding="gzip,"),
    "/br-then-gzip": _gzipped(encoding="br, gzip"),
    "/x-gzip": _gzipped(encoding="x-gzip"),
    "/identity": Reply(headers=(("content-encoding", "identity"),), body=b"as is"),
    "/plain": Reply(body=b"plain"),
    "/no-transform": _gzipped(TEXT, "gzip", ("cache-control", "max-age=1, No-Transform")),
    "/empty": _gzipped(b""),
    "/no-content": Reply(status=204, headers=(("content-encoding", "gzip"),), body=b""),
    "/corrupt": Reply(headers=(("content-encoding", "gzip"),), body=b"this is not gzip at all"),
    "/bomb": _gzipped(ZEROS),
    "/truncated": Reply(headers=(("content-encoding", "gzip"),), body=gz(TEXT)[:100]),
    "/damaged": Reply(headers=(("content-encoding", "gzip"),), body=damaged(gz(TEXT * 3))),
    "/trailing": Reply(headers=(("content-encoding", "gzip"),), body=gz(TEXT) + b"junk"),
    "/chunked": Reply(headers=(("content-encoding", "gzip"),), chunks=(GZ_TEXT[:50], GZ_TEXT[50:])),
    "/far": _gzipped(TEXT * 20),  # back-references 6290 bytes away
    "/large": _gzipped(LARGE),
    "/json": Reply(headers=(("content-type", "application/json"),), body=JSON),
    "/echo": Reply(echo=True),
}


def decompressor(library: str = "lib", config: dict | None = None, **fields) -> dict:
    library_config = {"@type": GZIP, **(config or {})}
    return {"name": "envoy.filters.http.decompressor", "typed_config": {
        "@type": DECOMPRESSOR,
        "decompressor_library": {"name": library, "typed_config": library_config},
        **fields,
    }}  # fmt: skip


def get(side, listener: str, path: str, headers=(), method: str = "GET", body=None, **kw):
    with side.connect(listener) as c:
        return c.request(method, path, list(headers), body, **kw).view()


def post(side, listener: str, body: bytes, headers=(("content-encoding", "gzip"),), **kw):
    return get(side, listener, "/echo", headers, "POST", body, **kw)


def gz_listener(name: str) -> tuple[Listener, Cluster]:
    """A listener of its own per test: ``downstream_cx_tx_bytes_total`` is compared relative to
    what the test's clients read, which holds for a listener's first test only."""
    return Listener(name=name, filters=[decompressor()]), Cluster(name=name)


@scenario(*gz_listener("gz"))
def test_response_decompression(http_pair):
    paths = ["/gz", "/upper", "/then-br", "/spaced", "/comma", "/br-then-gzip", "/x-gzip",
             "/identity", "/plain", "/no-transform", "/empty", "/no-content", "/chunked",
             "/trailing"]  # fmt: skip

    def traffic(side):
        out = [get(side, "gz", p) for p in paths]
        out.append(get(side, "gz", "/gz", method="HEAD"))
        return out

    out = http_pair.run(traffic)
    first = out.envoy.result[0]
    assert first["body"] == body_view(TEXT)
    assert first["framing"] == "chunked"
    assert not any(h.startswith(("content-encoding", "content-length")) for h in first["headers"])
    assert "content-encoding: br" in out.envoy.result[2]["headers"]
    out.assert_same()


@scenario(*gz_listener("gzrq"))
def test_request_decompression_and_accept_encoding(http_pair):
    accepts = [None, "br", "gzip", "gzip;q=0.3, br", "GZIP", " , br ,, ", "gzip ; q=0, x",
               "identity;q=1"]  # fmt: skip

    def traffic(side):
        out = [get(side, "gzrq", "/plain", [("accept-encoding", a)] if a else []) for a in accepts]
        out.append(post(side, "gzrq", gz(TEXT)))
        out.append(post(side, "gzrq", gz(TEXT), chunked=True))
        out.append(post(side, "gzrq", gz(TEXT), [("content-encoding", "gzip, identity")]))
        out.append(post(side, "gzrq", gz(TEXT), [("content-encoding", "br")]))
        out.append(post(side, "gzrq", gz(TEXT), [("content-encoding", "gzip"),
                                              ("cache-control", "no-transform")]))  # fmt: skip
        out.append(post(side, "gzrq", b"", chunked=True))
        out.append(get(side, "gzrq", "/echo", [("content-encoding", "gzip")]))  # no body
        return out

    out = http_pair.run(traffic)
    assert out.envoy.upstream[0]["headers"][-2] == "accept-encoding: gzip"
    assert out.envoy.upstream[len(accepts)]["body"] == body_view(TEXT)
    out.assert_same()


@scenario(*gz_listener("gzbad"))
def test_corrupt_truncated_and_bomb(http_pair):
    """Past max_inflate_ratio (100 by default) a piece yields whole chunks up to the limit;
    a zlib error stops the stream after what decoded before it."""

    def traffic(side):
        out = [get(side, "gzbad", p) for p in ("/corrupt", "/truncated", "/damaged", "/bomb")]
        out.append(post(side, "gzbad", gz(ZEROS)))
        out.append(post(side, "gzbad", b"not gzip either"))
        return out

    out = http_pair.run(traffic)
    assert out.envoy.result[3]["body"] == body_view(b"\0" * 102400)
    out.assert_same()


@scenario(*gz_listener("gzlarge"))
def test_large_body_streams(http_pair):
    def traffic(side):
        return [get(side, "gzlarge", "/large"), post(side, "gzlarge", gz(LARGE))]

    # How the pieces were read and written (chunk sizes, when the upstream's buffer made
    # the client's reading pause) varies from run to run.
    varying = ("downstream_cx_tx_bytes_total", "upstream_cx_tx_bytes_total", "flow_control")
    out = http_pair.run(traffic, varying=varying)
    assert out.envoy.result[0]["body"] == body_view(LARGE)
    out.assert_same()


# The library of Envoy's gzip example (window_bits 9, chunk_size 8192, max_inflate_ratio 1000),
# response decompression off through a runtime flag that is not set.
EXAMPLE = Listener(name="example", filters=[decompressor(
    "upload", {"window_bits": 9, "chunk_size": 8192, "max_inflate_ratio": 1000},
    response_direction_config={"common_config": {"enabled": {
        "default_value": False, "runtime_key": "response_decompressor_enabled"}}},
)])  # fmt: skip
SMALL_WINDOW = {"window_bits": 9, "chunk_size": 8192, "max_inflate_ratio": 1000}
WINDOW = Listener(name="window", filters=[decompressor("small_window", SMALL_WINDOW)])


@scenario(EXAMPLE, Cluster(name="example"), WINDOW, Cluster(name="window"))
def test_gzip_example_library(http_pair):
    """A 512-byte window: references farther back than the current chunk fail (zlib error)."""

    def traffic(side):
        out = [get(side, "example", "/gz"), get(side, "example", "/plain")]
        out.append(post(side, "example", gz(TEXT)))
        out.append(post(side, "example", gz(TEXT * 20)))
        out.append(post(side, "example", gz(ZEROS)))
        out += [get(side, "window", p) for p in ("/gz", "/far", "/bomb")]
        return out

    out = http_pair.run(traffic)
    assert out.envoy.result[0]["headers"][1] == "content-encoding: gzip"
    out.assert_same()


RATIO = Listener(name="ratio", filters=[decompressor(
    "tight", {"max_inflate_ratio": 5},
    request_direction_config={"advertise_accept_encoding": False,
                              "common_config": {"ignore_no_transform_header": True}},
    response_direction_config={"common_config": {"ignore_no_transform_header": True}},
)])  # fmt: skip
OFF = Listener(name="off", filters=[decompressor(
    "off",
    request_direction_config={"common_config": {"enabled": {
        "default_value": True, "runtime_key": "decompressor.off.request"}}},
    response_direction_config={"common_config": {"enabled": {
        "default_value": True, "runtime_key": "decompressor.off.response"}}},
)])  # fmt: skip
BOOTSTRAP = {"layered_runtime": {"layers": [{"name": "static", "static_layer": {
    "decompressor.off.request": False, "decompressor.off.response": False}}]}}  # fmt: skip


@scenario(RATIO, Cluster(name="ratio"), OFF, Cluster(name="off"))
def test_ratio_no_transform_and_runtime_off(http_pair):
    def traffic(side):
        out = [get(side, "ratio", p, [("accept-encoding", "br")])
               for p in ("/gz", "/bomb", "/no-transform", "/chunked")]  # fmt: skip
        out.append(post(side, "ratio", gz(TEXT), [("content-encoding", "gzip"),
                                                 ("cache-control", "no-transform")]))  # fmt: skip
        out.append(post(side, "ratio", gz(b"\0" * 100000)))
        out.append(get(side, "off", "/gz", [("accept-encoding", "br")]))
        out.append(post(side, "off", gz(TEXT)))
        return out

    out = http_pair.run(traffic)
    assert out.envoy.result[0]["body"] == body_view(TEXT[:4096])
    out.assert_same()


UPSTREAM_TRAILERS = {"typed_extension_protocol_options": {
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": HTTP_OPTIONS,
        "explicit_http_config": {"http_protocol_options": {"enable_trailers": True}}}}}  # fmt: skip
TRAILERS = Listener(
    name="trailers",
    filters=[decompressor("with_trailers")],
    hcm={"http_protocol_options": {"enable_trailers": True}},
)


@scenario(TRAILERS, Cluster(name="trailers", extra=UPSTREAM_TRAILERS))
def test_byte_count_trailers(http_pair):
    """With trailers on, each decompressed body ends with the byte counts. Their names come
    from the first decompressor filter the process ran a stream through (in Envoy and here):
    whichever test of this module came first."""

    def traffic(side):
        out = [get(side, "trailers", "/gz"), get(side, "trailers", "/plain")]
        out.append(post(side, "trailers", gz(TEXT), chunked=True))
        out.append(post(side, "trailers", gz(TEXT)))
        return out

    out = http_pair.run(traffic)
    assert [t.split(":")[0].rsplit("-", 2)[1:] for t in out.envoy.result[0]["trailers"]] == [
        ["compressed", "bytes"], ["uncompressed", "bytes"]]  # fmt: skip
    assert out.envoy.upstream[2].get("trailers")
    out.assert_same()


# Envoy's gzip example: compressor then decompressor (the request's body is decompressed on its
# way up, the response compressed on its way down).
BOTH = Listener(name="both", filters=[
    {"name": "envoy.filters.http.compressor", "typed_config": {
        "@type": COMPRESSOR,
        "response_direction_config": {"common_config": {
            "min_content_length": 100, "content_type": ["application/json"]},
            "disable_on_etag_header": True},
        "compressor_library": {"name": "text_optimized", "typed_config": {
            "@type": GZIP_COMPRESSOR, "memory_level": 3, "window_bits": 10}}}},
    EXAMPLE.filters[0],
])  # fmt: skip


@scenario(BOTH, Cluster(name="both"))
def test_with_the_compressor(http_pair):
    def traffic(side):
        with side.connect("both") as c:
            response = c.request("GET", "/json", [("accept-encoding", "gzip")])
        out = [response.view(), body_view(zlib.decompress(response.body, 31))]
        out.append(post(side, "both", gz(TEXT), [("content-encoding", "gzip"),
                                                ("content-type", "application/json")]))  # fmt: skip
        return out

    # Envoy links zlib-ng: its compressed bytes at these settings differ from zlib's.
    out = http_pair.run(traffic, varying=("total_compressed_bytes", "downstream_cx_tx_bytes"))
    for side in (out.envoy, out.legatus):
        side.result[0]["body"] = "<compressed: decoded next>"
        for entry in side.log:
            entry["tx"] = "<varies>"
    assert out.envoy.upstream[1]["body"] == body_view(TEXT)
    out.assert_same()
