"""The HPACK encoder against hpack's decoder, and the decoder's cache of header blocks."""

from __future__ import annotations

import hpack

from legatus.http.http2.hpack_codec import HeaderBlockDecoder, HeaderBlockEncoder

RESPONSE = [
    (":status", "200"),
    ("content-type", "text/plain"),
    ("content-length", "64"),
    ("x-envoy-upstream-service-time", "3"),
    ("date", "Fri, 27 Nov 2026 02:34:35 GMT"),
    ("server", "envoy"),
]


def decoded(decoder: hpack.Decoder, block: bytes) -> list[tuple[str, str]]:
    return [(n.decode("latin-1"), v.decode("latin-1")) for n, v in decoder.decode(block, raw=True)]


def test_blocks_decode_to_what_was_encoded_and_repeats_are_indexed():
    encoder = HeaderBlockEncoder()
    decoder = hpack.Decoder()
    first = encoder.encode(RESPONSE)
    assert decoded(decoder, first) == RESPONSE
    second = encoder.encode(RESPONSE)
    assert decoded(decoder, second) == RESPONSE
    assert len(second) == 10  # five indexed fields, content-length a literal of 5 bytes
    changed = [*RESPONSE[:4], ("date", "Fri, 27 Nov 2026 02:34:36 GMT"), RESPONSE[5]]
    assert decoded(decoder, encoder.encode(changed)) == changed


def test_sensitive_and_unique_values_stay_out_of_the_table():
    encoder = HeaderBlockEncoder()
    decoder = hpack.Decoder()
    fields = [
        (":status", "200"),
        ("authorization", "secret"),
        ("set-cookie", "a=b"),
        ("cookie", "short"),
        ("location", "/x"),
    ]
    for _ in range(2):
        assert decoded(decoder, encoder.encode(fields)) == fields
    assert decoder.header_table.dynamic_entries == type(decoder.header_table.dynamic_entries)()
    never = [e for e in decoder.decode(encoder.encode(fields[1:2]), raw=True)]
    assert isinstance(never[0], hpack.NeverIndexedHeaderTuple)


def test_eviction_and_a_smaller_table_from_the_peer():
    encoder = HeaderBlockEncoder()
    decoder = hpack.Decoder()
    for i in range(200):  # far more than 4096 bytes of entries: the oldest are evicted
        fields = [("x-n", f"value-{i}"), ("x-m", "v" * (i % 50))]
        assert decoded(decoder, encoder.encode(fields)) == fields
    encoder.set_max_table_size(100)
    decoder.max_allowed_table_size = 100
    fields = [("x-n", "value-199"), ("x-late", "1")]
    block = encoder.encode(fields)
    assert block[0] & 0xE0 == 0x20  # the size update comes first
    assert decoded(decoder, block) == fields
    assert decoder.header_table.maxsize == 100


def test_names_go_out_lower_case():
    decoder = hpack.Decoder()
    assert decoded(decoder, HeaderBlockEncoder().encode([("X-Custom", "A")])) == [("x-custom", "A")]


def test_a_value_that_is_not_latin1_is_refused_before_the_table_changes():
    """A refused block must leave the encoder's table as the peer's: nothing of it went out."""
    import pytest

    encoder = HeaderBlockEncoder()
    decoder = hpack.Decoder()
    with pytest.raises(ValueError):
        encoder.encode([("x-new", "indexed first"), ("x-a", "snow \u2603")])
    with pytest.raises(ValueError):
        encoder.encode([("x-other", "v"), ("x-\u2603", "name")])
    assert decoded(decoder, encoder.encode(RESPONSE)) == RESPONSE
    fields = [("x-new", "indexed first"), ("x-other", "v")]
    assert decoded(decoder, encoder.encode(fields)) == fields
    assert decoded(decoder, encoder.encode(fields)) == fields


def test_the_decoder_cache_follows_the_table():
    client = hpack.Encoder()
    ours = HeaderBlockDecoder(max_table_size=4096, max_list_size=1 << 20)
    request = [(":method", "GET"), (":path", "/"), ("user-agent", "x")]
    first = client.encode(request)
    ours.decode(first)
    ours.store(first, "first")  # it added to the table: not kept
    assert first not in ours.cache
    second = client.encode(request)
    assert [(n.decode(), v.decode()) for n, v in ours.decode(second)] == request
    ours.store(second, "kept")
    assert ours.cache[second] == "kept"
    third = client.encode([("x-new", "1")])  # changes the table
    ours.decode(third)
    assert second not in ours.cache


def test_a_block_with_a_table_size_update_is_not_kept():
    client = hpack.Encoder()
    ours = HeaderBlockDecoder(max_table_size=4096, max_list_size=1 << 20)
    client.header_table_size = 2048
    block = client.encode([(":method", "GET")])
    assert block[0] & 0xE0 == 0x20
    ours.decode(block)
    ours.store(block, "head")
    assert block not in ours.cache


class _Map:
    """What ``encode_headers`` reads of a header map."""

    def __init__(self, items):
        self._items = items

    def items(self):
        return iter(self._items)


def test_a_map_is_encoded_pseudo_headers_first_and_known_fields_reused():
    encoder = HeaderBlockEncoder()
    decoder = hpack.Decoder()
    reordered = [*RESPONSE[1:3], RESPONSE[0], *RESPONSE[3:]]
    assert decoded(decoder, encoder.encode_headers(_Map(reordered))) == RESPONSE
    again = encoder.encode_headers(_Map(RESPONSE))
    assert decoded(decoder, again) == RESPONSE
    assert len(again) == 10
    # The same fields, known now, in an order that is not valid: still pseudo-headers first.
    assert encoder.encode_headers(_Map(reordered)) == again
    trailers = [("grpc-status", "0"), ("grpc-message", "")]
    for _ in range(3):
        assert decoded(decoder, encoder.encode_headers(_Map(trailers))) == trailers
    assert decoded(decoder, encoder.encode_headers(_Map([]))) == []


def test_known_fields_follow_table_changes():
    encoder = HeaderBlockEncoder()
    decoder = hpack.Decoder()
    request = [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/svc/Method"),
        (":authority", "backend"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ]
    for i in range(300):  # each block inserts an entry: the indexes of the others move
        fields = [*request, ("x-n", f"value-{i % 70}")]
        assert decoded(decoder, encoder.encode_headers(_Map(fields))) == fields
        assert decoded(decoder, encoder.encode_headers(_Map(fields))) == fields
        if i == 150:
            encoder.set_max_table_size(256)
            decoder.max_allowed_table_size = 256
            block = encoder.encode_headers(_Map(fields))
            assert block[0] & 0xE0 == 0x20
            assert decoded(decoder, block) == fields
    assert decoder.header_table.maxsize == 256
