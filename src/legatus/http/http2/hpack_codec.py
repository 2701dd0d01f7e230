"""HPACK (RFC 7541) for the HTTP/2 codec: decoding with the ``hpack`` package, encoding with
a small indexer of our own.

Cost, measured on this codebase's machine (CPython 3.11): ``hpack.Decoder.decode`` takes
about 7 us for a five-field request whose fields are all in the tables, and
``hpack.Encoder.encode`` about 7 us for a six-field response. At the request rates the
proxy aims for, that is a third of the time one request may take, so:

- Decoding goes through ``hpack.Decoder`` (Huffman, integer and table handling, and its
  decompression-bomb bound ``max_header_list_size``), but a header block that left the
  dynamic table as it found it (indexed fields and literals without indexing: what a
  client sends for the second request with the same headers, ``:path`` aside, for h2load,
  curl, browsers, gRPC) decodes the same way again while the table stays the same, so what
  the caller made of its fields (validated, converted) is kept per connection in ``cache``,
  keyed by the block, and the whole cache is dropped when a block changes the table.
- Encoding is ``HeaderBlockEncoder``: static-table and dynamic-table lookups in dicts, a
  literal with incremental indexing for what is worth indexing (nghttp2's choices: not
  ``:path``, ``content-length``, ``set-cookie``... nor entries larger than 3/4 of the
  table), never-indexed literals for ``authorization`` and short cookies, no Huffman coding
  (valid HPACK, a few bytes longer, a fraction of the CPU). The bytes of a field that does
  not add to the table (an indexed field, a literal without indexing) stay the same until
  the table next changes, so they are kept per field, and a block whose fields are all kept
  (a response like the previous one, the usual case) is one C-level lookup per field and
  one join.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import hpack
from hpack.table import HeaderTable

_CACHE_MAX = 64

HPACKError = (hpack.HPACKError, IndexError, ValueError)


class HeaderBlockDecoder:
    """One connection's HPACK decoder (see module doc).

    ``cache`` maps a block to what the caller made of its fields, for blocks decoded the same
    way while the dynamic table stays as it is: the caller looks a block up there first, and
    after decoding one offers its result to ``store``."""

    __slots__ = ("_decoder", "_entries", "_reusable", "cache")

    def __init__(self, *, max_table_size: int, max_list_size: int) -> None:
        decoder = self._decoder = hpack.Decoder(max_header_list_size=max_list_size)
        decoder.max_allowed_table_size = max_table_size
        self._entries = decoder.header_table.dynamic_entries
        self.cache: dict[bytes, Any] = {}
        self._reusable: bytes | None = None  # the last block decoded, if it may be kept

    def decode(self, block: bytes) -> list[tuple[bytes, bytes]]:
        """The fields of ``block``, raw. Raises one of ``HPACKError`` on a bad block (the
        connection's HPACK state is then unusable: a COMPRESSION_ERROR). A block that
        changes the table drops ``cache``: the blocks kept there may decode otherwise now.
        The table's state is its length and its newest entry, held while decoding (a new
        entry is a new object, compared by identity; entries are only dropped from the other
        end, or all at once)."""
        self._reusable = None
        entries = self._entries
        length = len(entries)
        newest = entries[0] if entries else None
        fields = self._decoder.decode(block, raw=True)
        if length != len(entries) or newest is not (entries[0] if entries else None):
            self.cache.clear()
        elif block and block[0] & 0xE0 != 0x20:
            # (a block with a table size update is decoded each time: the update must apply)
            self._reusable = block
        return fields  # type: ignore[return-value]

    def store(self, block: bytes, value: Any) -> None:
        """Keep ``value`` (what ``block``, just decoded, was made into) in ``cache`` if
        decoding it left the table as it was."""
        if self._reusable is not block:
            return
        self._reusable = None
        cache = self.cache
        if len(cache) >= _CACHE_MAX:
            cache.clear()
        cache[block] = value


# Static table lookups (RFC 7541 appendix A), with str keys: what header maps hold.
_STATIC_EXACT: dict[tuple[str, str], int] = {}
_STATIC_NAME: dict[str, int] = {}
for _i, (_n, _v) in enumerate(HeaderTable.STATIC_TABLE, start=1):
    _STATIC_EXACT.setdefault((_n.decode(), _v.decode()), _i)
    _STATIC_NAME.setdefault(_n.decode(), _i)
_STATIC_COUNT = len(HeaderTable.STATIC_TABLE)
# Fields whose bytes an encoder keeps (see HeaderBlockEncoder), at most, and the longest
# literal kept (a long value unique to one message would only hold memory).
_KNOWN_MAX = 128
_KNOWN_LITERAL_MAX = 64

# nghttp2's fields that are never worth a table entry (values unique to one message).
_NOT_INDEXED = frozenset(("age", "content-length", "etag", "if-modified-since",
                          "if-none-match", "location", "set-cookie", ":path"))  # fmt: skip


def _integer(value: int, prefix_bits: int, first: int) -> bytes:
    """RFC 7541 5.1: ``value`` with an N-bit prefix, ``first`` holding the pattern bits."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _string(raw: bytes) -> bytes:
    n = len(raw)
    return (bytes((n,)) if n < 127 else _integer(n, 7, 0)) + raw


class HeaderBlockEncoder:
    """One connection's HPACK encoder (see module doc). Entries of the dynamic table are
    numbered in insertion order; an entry's index is 62 plus the number inserted after it.

    ``_known`` (regular fields) and ``_known_pseudo`` (pseudo-headers, kept apart so that a
    lookup also tells which kind a field is) hold the bytes of the fields encoded since the
    table last changed that add nothing to it: indexed fields and short literals without
    indexing. They are emptied whenever an entry is inserted or evicted (the indexes move),
    when the peer changes the table size (the next block must start with the size update),
    and when full (a bound on the memory a connection's varied values can take)."""

    __slots__ = ("_evicted", "_exact", "_inserted", "_known", "_known_pseudo", "_max",
                 "_names", "_size", "_size_update", "_table")  # fmt: skip

    def __init__(self, max_table_size: int = 4096) -> None:
        self._table: deque[tuple[str, str, int]] = deque()  # oldest first: (name, value, size)
        self._exact: dict[tuple[str, str], int] = {}  # (name, value) -> insertion number
        self._names: dict[str, int] = {}  # name -> newest insertion number
        self._inserted = 0
        self._evicted = 0
        self._size = 0
        self._max = max_table_size
        self._size_update: int | None = None
        self._known: dict[tuple[str, str], bytes] = {}
        self._known_pseudo: dict[tuple[str, str], bytes] = {}

    def set_max_table_size(self, size: int) -> None:
        """The peer's SETTINGS_HEADER_TABLE_SIZE: the table never grows past 4096 bytes (what
        nghttp2 uses by default), and shrinks when the peer asks for less; the size update
        goes at the start of the next block."""
        size = min(size, 4096)
        if size != self._max:
            self._max = size
            self._evict(0)
            self._size_update = size
            self._forget()

    def encode_headers(self, headers) -> bytes:
        """The block of a header map (its ``items()``: (name, value) str pairs), its
        pseudo-headers first. A map whose fields are all known, its pseudo-headers (if
        any) leading, is the usual response (``:status`` first) or trailers."""
        items = list(headers.items())
        parts = list(map(self._known.get, items))
        if parts and parts[0] is None:
            parts[0] = self._known_pseudo.get(items[0])
        if None in parts or not parts:
            return self._encode_map(items, parts)
        return b"".join(parts)

    def _encode_map(self, items: list, parts: list) -> bytes:
        """``encode_headers`` beyond one known pseudo-header: a run of known pseudo-headers
        (a request), else the pseudo-headers put first and each field encoded."""
        if parts and parts[0] is not None and items[0][0][:1] == ":":
            known_pseudo = self._known_pseudo
            i = 1
            while i < len(parts) and parts[i] is None:
                part = known_pseudo.get(items[i])
                if part is None:
                    break
                parts[i] = part
                i += 1
            if None not in parts:
                return b"".join(parts)
        pseudo = [item for item in items if item[0][:1] == ":"]
        if pseudo:
            items = pseudo + [item for item in items if item[0][:1] != ":"]
        return self.encode(items)

    def encode(self, fields) -> bytes:
        """``fields``: (name, value) str tuples, in order. Raises ``ValueError`` for a name or
        value that is not latin-1 (a filter put something there no codec can send), before
        anything of the block changes the dynamic table: a half-encoded block would leave
        our table ahead of the peer's."""
        for name, value in fields:
            if not (value.isascii() and name.isascii()):
                try:
                    name.encode("latin-1")
                    value.encode("latin-1")
                except UnicodeEncodeError:
                    raise ValueError(f"header {name!r} is not latin-1") from None
        out = bytearray()
        if self._size_update is not None:
            out += _integer(self._size_update, 5, 0x20)
            self._size_update = None
        static_exact = _STATIC_EXACT
        exact = self._exact
        for key in fields:
            index = static_exact.get(key)
            if index is None:
                number = exact.get(key)
                if number is not None and number >= self._evicted:
                    index = _STATIC_COUNT + self._inserted - number
            if index is None:
                out += self._literal(key)
                continue
            encoded = bytes((0x80 | index,)) if index < 127 else _integer(index, 7, 0x80)
            self._remember(key, encoded)
            out += encoded
        return bytes(out)

    def _literal(self, key: tuple[str, str]) -> bytes:
        name, value = key
        if not name.islower() and name.lower() != name:
            name = name.lower()  # HTTP/2 names are lower-case (a filter may set others)
        raw_value = value.encode("latin-1")
        name_index = _STATIC_NAME.get(name)
        if name_index is None:
            number = self._names.get(name)
            if number is not None and number >= self._evicted:
                name_index = _STATIC_COUNT + self._inserted - number
        size = len(name) + len(raw_value) + 32
        if name == "authorization" or (name == "cookie" and len(raw_value) < 20):
            pattern, bits, index_it = 0x10, 4, False  # never indexed
        elif name in _NOT_INDEXED or size > self._max * 3 // 4:
            pattern, bits, index_it = 0x00, 4, False  # without indexing
        else:
            pattern, bits, index_it = 0x40, 6, True  # incremental indexing
        if name_index is not None:
            encoded = _integer(name_index, bits, pattern) + _string(raw_value)
        else:
            encoded = bytes((pattern,)) + _string(name.encode("latin-1")) + _string(raw_value)
        if not index_it:
            if len(encoded) <= _KNOWN_LITERAL_MAX:
                self._remember(key, encoded)
            return encoded
        self._evict(size)
        number = self._inserted
        self._inserted += 1
        self._table.append((name, value, size))
        self._exact[(name, value)] = number
        self._names[name] = number
        self._size += size
        self._forget()
        return encoded

    def _remember(self, key: tuple[str, str], encoded: bytes) -> None:
        """Keep a field's bytes until the table changes (see the class doc)."""
        known = self._known_pseudo if key[0][:1] == ":" else self._known
        if len(known) >= _KNOWN_MAX:
            known.clear()
        known[key] = encoded

    def _forget(self) -> None:
        self._known.clear()
        self._known_pseudo.clear()

    def _evict(self, room: int) -> None:
        """Drop the oldest entries until ``room`` more bytes fit."""
        table = self._table
        while table and self._size + room > self._max:
            name, value, size = table.popleft()
            number = self._evicted
            self._evicted += 1
            self._size -= size
            if self._exact.get((name, value)) == number:
                del self._exact[(name, value)]
            if self._names.get(name) == number:
                del self._names[name]
