"""The compressor filter (``envoy.filters.http.compressor``) with gzip, brotli and zstd, Envoy
against legatus.

Compressed bytes are not compared as such: each response's body is decoded by its
``content-encoding`` and the view shows the decoded body, how it was encoded and its framing.
Headers, the upstream's requests (their bodies decoded too), the access log and every stat of
the test's listeners (the compressor's among them) are compared as they are, except where the
compressed size shows: Envoy links zlib-ng and its own brotli and zstd builds, whose output
differs from the Python packages' at some settings (gzip at its default level matches byte for
byte), and the split of a large body into reads varies; there ``total_compressed_bytes``, the
bytes sent and the access log's ``tx`` are compared by presence (``sizes_vary``). Each test has
its own listener: ``downstream_cx_tx_bytes_total`` is compared relative to what the test's
clients read, which only holds for a listener's first test.
"""

from __future__ import annotations

import gzip
import zlib

import brotli
import httpx
import zstandard

from tests.differential.http_scenario import (  # noqa: F401 (fixtures)
    Cluster,
    Listener,
    Reply,
    body_view,
    header_line_view,
    http_pair_fixture,
    http_pair_processes_fixture,
    scenario,
)

COMPRESSOR = "type.googleapis.com/envoy.extensions.filters.http.compressor.v3.Compressor"
PER_ROUTE = "type.googleapis.com/envoy.extensions.filters.http.compressor.v3.CompressorPerRoute"
GZIP = "type.googleapis.com/envoy.extensions.compression.gzip.compressor.v3.Gzip"
BROTLI = "type.googleapis.com/envoy.extensions.compression.brotli.compressor.v3.Brotli"
ZSTD = "type.googleapis.com/envoy.extensions.compression.zstd.compressor.v3.Zstd"

TEXT = b"".join(b"line %d of a compressible body\n" % i for i in range(200))
LARGE = b"".join(b"%08d lorem ipsum dolor sit amet\n" % i for i in range(40000))  # ~1.3 MB


def _reply(content_type: str | None = "text/plain", body: bytes = TEXT, **extra) -> Reply:
    headers = (("content-type", content_type),) if content_type else ()
    return Reply(headers=headers + tuple(extra.pop("headers", ())), body=body, **extra)


SCRIPTS = {
    "/text": _reply(),
    "/small": _reply(body=b"tiny body"),
    "/thirty": _reply(body=b"x" * 30),
    "/html": _reply("text/html; charset=utf-8"),
    "/json": _reply("application/json"),
    "/xml": _reply("application/xml"),
    "/grpc-web": _reply("application/grpc-web"),
    "/image": _reply("image/png"),
    "/untyped": _reply(None),
    "/encoded": _reply(headers=(("content-encoding", "identity"),)),
    "/no-transform": _reply(headers=(("cache-control", "public, no-transform"),)),
    "/etag-strong": _reply(headers=(("etag", '"v1"'),)),
    "/etag-weak": _reply(headers=(("etag", 'W/"v1"'),)),
    "/etag-html": _reply("text/html", headers=(("etag", '"v2"'),)),
    "/vary": _reply(headers=(("vary", "origin"),)),
    "/vary-ae": _reply(headers=(("vary", "Accept-Encoding"),)),
    "/chunked": Reply(chunks=(TEXT[:1000], TEXT[1000:3000], TEXT[3000:])),
    "/no-content": Reply(status=204, body=b""),
    "/created": _reply(status=201),
    "/large": _reply(body=LARGE),
    "/echo": Reply(echo=True),
}


def _decode(encoding: str, body: bytes) -> bytes:
    if encoding == "gzip":
        return gzip.decompress(body)
    if encoding == "br":
        return brotli.decompress(body)
    if encoding == "zstd":
        return zstandard.ZstdDecompressor().decompressobj().decompress(body)
    if encoding == "deflate":
        return zlib.decompress(body)
    return body


def view(response) -> dict:
    """The response with its body decoded (``encoding`` says from what)."""
    values = dict(response.headers)
    encoding = values.get("content-encoding", "")
    decoded = _decode(encoding, response.body) if response.body else response.body
    return {
        "status": response.status_line,
        "headers": [header_line_view(line) for line in response.header_lines],
        "body": body_view(decoded),
        "encoding": encoding or None,
        "framing": response.framing,
    }


def compressor(
    library: str,
    name: str | None = None,
    config: dict | None = None,
    filter_name: str = "envoy.filters.http.compressor",
    **fields,
) -> dict:
    typed = {"gzip": GZIP, "brotli": BROTLI, "zstd": ZSTD}[library]
    return {
        "name": filter_name,
        "typed_config": {
            "@type": COMPRESSOR,
            "compressor_library": {
                "name": name or library,
                "typed_config": {"@type": typed, **(config or {})},
            },
            **fields,
        },
    }


def get(
    side,
    listener: str,
    path: str,
    accept: str | None = "gzip",
    method: str = "GET",
    headers: tuple = (),
) -> dict:
    fields = [("accept-encoding", accept)] if accept is not None else []
    with side.connect(listener) as c:
        return view(c.request(method, path, [*fields, *headers]))


SIZES = ("total_compressed_bytes", "downstream_cx_tx_bytes_total", "upstream_cx_tx_bytes_total")


def sizes_vary(out) -> None:
    """Both sides agree, compressed sizes aside (module doc)."""
    for side in (out.envoy, out.legatus):
        for entry in side.log:
            entry["tx"] = "<varies>"
    out.assert_same()


RESPONSE = {"response_direction_config": {}}


def gzip_listener(name: str) -> tuple[Listener, Cluster]:
    return Listener(name=name, filters=[compressor("gzip", **RESPONSE)]), Cluster(name=name)


@scenario(*gzip_listener("gz"))
def test_gzip_negotiation(http_pair):
    accepts = [
        "gzip", "GZIP", "gzip, deflate, br", "deflate;q=1, gzip;q=0.5", "gzip;q=0", "*",
        "*;q=0", "gzip;q=0, *", "*;q=0, gzip", "identity", "identity;q=0", "deflate", "",
        "gzip;q=abc", "br;q=0.9, gzip;q=0.8", "x-gzip", " gzip ; q = 0.7 ", "gzip;q=1e-1",
        "gzip,", "identity, *;q=0", "*;q=0, *", None,
    ]  # fmt: skip

    def traffic(side):
        out = [get(side, "gz", "/text", a) for a in accepts]
        with side.connect("gz") as c:  # a request body: request compression is off by default
            out.append(view(c.request("POST", "/echo", [("content-type", "text/plain")], TEXT)))
        return out

    out = http_pair.run(traffic)
    first = out.envoy.result[0]
    assert first["encoding"] == "gzip"
    assert "vary: Accept-Encoding" in first["headers"]
    assert not any(h.startswith("content-length") for h in first["headers"])
    assert first["body"] == body_view(TEXT)
    out.assert_same()


@scenario(*gzip_listener("gzskip"))
def test_gzip_skips(http_pair):
    paths = [
        "/small", "/thirty", "/html", "/json", "/xml", "/grpc-web", "/image", "/untyped",
        "/encoded", "/no-transform", "/etag-strong", "/etag-weak", "/vary", "/vary-ae",
        "/chunked", "/no-content", "/created",
    ]  # fmt: skip

    def traffic(side):
        out = [get(side, "gzskip", p) for p in paths]
        out.append(get(side, "gzskip", "/text", method="HEAD"))
        out.append(get(side, "gzskip", "/small", accept="br"))
        out.append(get(side, "gzskip", "/image", accept=None))
        return out

    out = http_pair.run(traffic)
    out.assert_same()


@scenario(*gzip_listener("gzlarge"))
def test_gzip_large_body_streams(http_pair):
    """Compressed as it comes (each read flushed), so the sizes vary with the reads."""

    def traffic(side):
        return [get(side, "gzlarge", "/large"), get(side, "gzlarge", "/large", accept="identity")]

    out = http_pair.run(traffic, varying=SIZES)
    assert out.envoy.result[0]["body"] == body_view(LARGE)
    assert out.envoy.result[0]["framing"] == "chunked"
    sizes_vary(out)


LEGACY = Listener(name="legacy", filters=[compressor(
    "gzip", "legacy_lib", {"compression_level": "BEST_SPEED", "window_bits": 15},
    content_length=100, content_type=["text/html", "application/json"],
    disable_on_etag_header=True, remove_accept_encoding_header=True)])  # fmt: skip


@scenario(LEGACY, Cluster(name="legacy"))
def test_deprecated_top_level_fields(http_pair):
    """Without response_direction_config the top-level fields apply and the stats have no
    ``response.`` part."""

    def traffic(side):
        return [
            get(side, "legacy", "/html"),
            get(side, "legacy", "/text"),
            get(side, "legacy", "/json", headers=(("x", "y"),)),
            get(side, "legacy", "/small"),
            get(side, "legacy", "/etag-strong", headers=()),
            get(side, "legacy", "/etag-html"),
            get(side, "legacy", "/echo"),
        ]

    out = http_pair.run(traffic, varying=SIZES)  # BEST_SPEED: zlib-ng's differs from zlib's
    assert out.envoy.result[0]["encoding"] == "gzip"
    assert out.envoy.result[4]["headers"][1] == 'etag: "v1"'
    sizes_vary(out)


BR = Listener(name="br", filters=[compressor(
    "brotli", "br_lib", {"quality": 5, "window_bits": 20, "encoder_mode": "TEXT"},
    response_direction_config={"common_config": {"min_content_length": 50}},
)])  # fmt: skip
ZSTD_LISTENER = Listener(name="zs", filters=[compressor(
    "zstd", None, {"compression_level": 7, "enable_checksum": True, "strategy": "LAZY2"},
    response_direction_config={"disable_on_etag_header": True},
)])  # fmt: skip


@scenario(BR, Cluster(name="br"), ZSTD_LISTENER, Cluster(name="zs"))
def test_brotli_and_zstd(http_pair):
    def traffic(side):
        return [
            get(side, "br", "/text", "br"),
            get(side, "br", "/text", "gzip, br"),
            get(side, "br", "/thirty", "br"),
            get(side, "br", "/large", "br"),
            get(side, "br", "/text", "gzip"),
            get(side, "zs", "/text", "zstd"),
            get(side, "zs", "/etag-strong", "zstd"),
            get(side, "zs", "/large", "zstd, gzip"),
            get(side, "zs", "/chunked", "*"),
        ]

    out = http_pair.run(traffic, varying=SIZES)
    assert out.envoy.result[0]["encoding"] == "br"
    assert out.envoy.result[5]["encoding"] == "zstd"
    sizes_vary(out)


MULTI = Listener(name="multi", filters=[
    compressor("gzip", "gz_html", filter_name="gzip-html",
               response_direction_config={"common_config": {"content_type": ["text/html"]}}),
    compressor("brotli", filter_name="brotli", **RESPONSE),
    compressor("zstd", filter_name="zstd", choose_first=True, **RESPONSE),
    compressor("gzip", "gz_all", filter_name="gzip-all", **RESPONSE),
])  # fmt: skip


@scenario(MULTI, Cluster(name="multi"))
def test_several_compressors_in_one_chain(http_pair):
    cases = [
        ("/html", "gzip"), ("/text", "gzip"), ("/html", "br, gzip"), ("/text", "br;q=0.5, gzip"),
        ("/text", "*"), ("/html", "*"), ("/text", "gzip, zstd, br"), ("/text", "zstd;q=0, *"),
        ("/text", "identity"), ("/text", "deflate"), ("/image", "gzip"), ("/text", None),
    ]  # fmt: skip

    def traffic(side):
        return [get(side, "multi", path, accept) for path, accept in cases]

    out = http_pair.run(traffic, varying=SIZES)
    sizes_vary(out)


REQUEST = Listener(name="reqz", filters=[compressor(
    "gzip", "rq",
    request_direction_config={"common_config": {"min_content_length": 100}},
    response_direction_config={"common_config": {"enabled": {
        "default_value": False, "runtime_key": "compressor.response.off"}}},
)])  # fmt: skip


@scenario(REQUEST, Cluster(name="reqz"))
def test_request_compression(http_pair):
    def traffic(side):
        out = []
        for headers, body in [
            ((("content-type", "text/plain"),), TEXT),
            ((("content-type", "text/plain"),), b"short"),
            ((("content-type", "image/png"),), TEXT),
            ((("content-type", "text/plain"), ("content-encoding", "identity")), TEXT),
            ((("content-type", "application/json"), ("accept-encoding", "gzip")), TEXT),
        ]:
            with side.connect("reqz") as c:
                out.append(view(c.request("POST", "/echo", list(headers), body)))
        with side.connect("reqz") as c:
            out.append(view(c.request("POST", "/echo", [("content-type", "text/plain")], TEXT,
                                      chunked=True)))  # fmt: skip
        # What the upstream got, decoded by its content-encoding.
        for request in side.upstream.requests[-len(out) :]:
            encoding = dict(request.headers).get("content-encoding", "")
            out.append(body_view(_decode(encoding, request.body or b"")))
        return out

    # Envoy's router sends a request body that came while it connected as one chunk, legatus
    # as the pieces it got: the bytes sent upstream differ by chunk headers.
    out = http_pair.run(traffic, varying=("upstream_cx_tx_bytes_total",))
    assert out.envoy.upstream[0]["headers"][4] == "content-encoding: gzip"
    assert out.envoy.result[6:] == [body_view(TEXT), "short", *[body_view(TEXT)] * 4]
    for side in (out.envoy, out.legatus):
        for request in side.upstream:
            request.pop("body")
    out.assert_same()


ROUTED = Listener(
    name="routed",
    filters=[compressor("gzip", **RESPONSE)],
    virtual_hosts=[{
        "name": "routed", "domains": ["*"],
        "typed_per_filter_config": {"envoy.filters.http.compressor": {
            "@type": PER_ROUTE, "disabled": True}},
        "routes": [
            {"match": {"prefix": "/on"}, "route": {"cluster": "routed", "prefix_rewrite": "/text"},
             "typed_per_filter_config": {"envoy.filters.http.compressor": {
                 "@type": PER_ROUTE, "overrides": {"response_direction_config": {
                     "remove_accept_encoding_header": True}}}}},
            {"match": {"prefix": "/"}, "route": {"cluster": "routed"}},
        ],
    }],
)  # fmt: skip


@scenario(ROUTED, Cluster(name="routed"))
def test_per_route_disable_and_override(http_pair):
    def traffic(side):
        return [get(side, "routed", "/text"), get(side, "routed", "/on")]

    out = http_pair.run(traffic)
    assert out.envoy.result[0]["encoding"] is None
    assert out.envoy.result[1]["encoding"] == "gzip"
    out.assert_same()


CODES = Listener(name="codes", filters=[compressor("gzip", response_direction_config={
    "uncompressible_response_codes": [201]})])  # fmt: skip


@scenario(CODES, Cluster(name="codes"))
def test_uncompressible_response_codes(http_pair):
    def traffic(side):
        return [get(side, "codes", "/created"), get(side, "codes", "/text")]

    out = http_pair.run(traffic)
    out.assert_same()


@scenario(*gzip_listener("gzreal"))
def test_real_clients_decode(http_pair):
    """httpx asks for gzip, br and zstd and decodes what it gets."""

    def traffic(side):
        port = side.ports["gzreal"]
        out = []
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
            for path in ("/text", "/large", "/chunked"):
                r = client.get(path, headers={"accept-encoding": "gzip, br, zstd"})
                out.append([r.status_code, r.headers.get("content-encoding"),
                            body_view(r.content)])  # fmt: skip
        return out

    out = http_pair.run(traffic, varying=SIZES)
    assert out.envoy.result[0] == [200, "gzip", body_view(TEXT)]
    out.assert_same("result", "stats")
