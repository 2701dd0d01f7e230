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
    before = ours.marker()
    ours.decode(first)
    ours.store(0, first, before, "first")  # it added to the table: not kept
    assert ours.cached(0, first) is None
    second = client.encode(request)
    before = ours.marker()
    assert [(n.decode(), v.decode()) for n, v in ours.decode(second)] == request
    ours.store(0, second, before, "kept")
    assert ours.cached(0, second) == "kept"
    assert ours.cached(1, second) is None  # another kind (a response) is another entry
    third = client.encode([("x-new", "1")])  # changes the table
    ours.decode(third)
    assert ours.cached(0, second) is None
