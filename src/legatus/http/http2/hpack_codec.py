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
  curl, browsers, gRPC) decodes the same way again while the table stays the same, so its
  decoding is cached per connection, keyed by the block and the table's state (its length
  and its newest entry, held: see ``store``). The cache holds what the caller made of the
  fields (validated, converted), not only the fields.
- Encoding is ``HeaderBlockEncoder``: static-table and dynamic-table lookups in dicts, a
  literal with incremental indexing for what is worth indexing (nghttp2's choices: not
  ``:path``, ``content-length``, ``set-cookie``... nor entries larger than 3/4 of the
  table), never-indexed literals for ``authorization`` and short cookies, no Huffman coding
  (valid HPACK, a few bytes longer, a fraction of the CPU). About 1 us per response.
"""

from __future__ import annotations

from collections import deque

import hpack
from hpack.table import HeaderTable

_CACHE_MAX = 64

HPACKError = (hpack.HPACKError, IndexError, ValueError)


class HeaderBlockDecoder:
    """One connection's HPACK decoder (see module doc)."""

    __slots__ = ("_cache", "_decoder", "_entries")

    def __init__(self, *, max_table_size: int, max_list_size: int) -> None:
        decoder = self._decoder = hpack.Decoder(max_header_list_size=max_list_size)
        decoder.max_allowed_table_size = max_table_size
        self._entries = decoder.header_table.dynamic_entries
        self._cache: dict[tuple[int, bytes], tuple] = {}

    def decode(self, block: bytes) -> list[tuple[bytes, bytes]]:
        """The fields of ``block``, raw. Raises one of ``HPACKError`` on a bad block (the
        connection's HPACK state is then unusable: a COMPRESSION_ERROR)."""
        return self._decoder.decode(block, raw=True)  # type: ignore[return-value]

    def marker(self) -> tuple:
        """The dynamic table's state: its length and its newest entry (a new entry is a new
        object; entries are only dropped from the other end, or all at once)."""
        entries = self._entries
        return (len(entries), entries[0] if entries else None)

    def cached(self, kind: int, block: bytes):
        """What ``store`` kept for ``block`` (of this ``kind``: request, response...) if the
        table is in the state the block was decoded in; else None."""
        hit = self._cache.get((kind, block))
        if hit is None:
            return None
        entries = self._entries
        if hit[1] == len(entries) and hit[2] is (entries[0] if entries else None):
            return hit[0]
        return None

    def store(self, kind: int, block: bytes, before: tuple, value) -> None:
        """Keep ``value`` (what ``block`` decoded to) if decoding it left the table as it was
        (``before``: the ``marker`` taken before) and it holds no table size update (which
        changes how later entries are evicted). The marker keeps the newest entry alive:
        compared by identity, it cannot be mistaken for a new entry at the same address."""
        if not block or block[0] & 0xE0 == 0x20:
            return
        entries = self._entries
        if before[0] != len(entries) or before[1] is not (entries[0] if entries else None):
            return
        cache = self._cache
        if len(cache) >= _CACHE_MAX:
            cache.clear()
        cache[(kind, block)] = (value, before[0], before[1])


# Static table lookups (RFC 7541 appendix A), with str keys: what header maps hold.
_STATIC_EXACT: dict[tuple[str, str], int] = {}
_STATIC_NAME: dict[str, int] = {}
for _i, (_n, _v) in enumerate(HeaderTable.STATIC_TABLE, start=1):
    _STATIC_EXACT.setdefault((_n.decode(), _v.decode()), _i)
    _STATIC_NAME.setdefault(_n.decode(), _i)
_STATIC_COUNT = len(HeaderTable.STATIC_TABLE)
# Literals without indexing whose name is in the static table do not depend on the dynamic
# table: their bytes are kept (content-length: 64...), for every connection.
_PLAIN: dict[tuple[str, str], bytes] = {}
_PLAIN_MAX = 4096

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
    numbered in insertion order; an entry's index is 62 plus the number inserted after it."""

    __slots__ = ("_evicted", "_exact", "_inserted", "_max", "_names", "_size", "_size_update",
                 "_table")  # fmt: skip

    def __init__(self, max_table_size: int = 4096) -> None:
        self._table: deque[tuple[str, str, int]] = deque()  # oldest first: (name, value, size)
        self._exact: dict[tuple[str, str], int] = {}  # (name, value) -> insertion number
        self._names: dict[str, int] = {}  # name -> newest insertion number
        self._inserted = 0
        self._evicted = 0
        self._size = 0
        self._max = max_table_size
        self._size_update: int | None = None

    def set_max_table_size(self, size: int) -> None:
        """The peer's SETTINGS_HEADER_TABLE_SIZE: the table never grows past 4096 bytes (what
        nghttp2 uses by default), and shrinks when the peer asks for less; the size update
        goes at the start of the next block."""
        size = min(size, 4096)
        if size != self._max:
            self._max = size
            self._evict(0)
            self._size_update = size

    def encode(self, fields) -> bytes:
        """``fields``: (name, value) str pairs, names lower-case. Raises ``ValueError`` for a
        name or value that is not latin-1 (a filter put something there no codec can send),
        before anything of the block changes the dynamic table: a half-encoded block would
        leave our table ahead of the peer's."""
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
        for name, value in fields:
            key = (name, value)
            index = static_exact.get(key)
            if index is None:
                number = exact.get(key)
                if number is not None and number >= self._evicted:
                    index = _STATIC_COUNT + self._inserted - number
            if index is not None:
                if index < 127:
                    out.append(0x80 | index)
                else:
                    out += _integer(index, 7, 0x80)
                continue
            self._literal(out, name, value)
        return bytes(out)

    def _literal(self, out: bytearray, name: str, value: str) -> None:
        if not name.islower() and name.lower() != name:
            name = name.lower()  # HTTP/2 names are lower-case (a filter may set others)
        key = (name, value)
        plain = _PLAIN.get(key)
        if plain is not None:  # a literal the table has no part in: the same bytes every time
            out += plain
            return
        try:
            raw_value = value.encode("latin-1")
        except UnicodeEncodeError:
            raise ValueError(f"header {name!r} has a value that is not latin-1") from None
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
            if not index_it and name_index <= _STATIC_COUNT and len(_PLAIN) < _PLAIN_MAX:
                _PLAIN[key] = encoded
        else:
            encoded = bytes((pattern,)) + _string(name.encode("latin-1")) + _string(raw_value)
        out += encoded
        if index_it:
            self._evict(size)
            number = self._inserted
            self._inserted += 1
            self._table.append((name, value, size))
            self._exact[(name, value)] = number
            self._names[name] = number
            self._size += size

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
