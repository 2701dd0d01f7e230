"""HTTP header maps: Envoy's HeaderMap, for HTTP/1.1 now and HTTP/2 later.

Names are lower-case (HTTP/1 codecs lower-case them on the way in, as Envoy's
do); pseudo-headers carry the request line and status (``:method``, ``:path``,
``:authority``, ``:scheme``, ``:status``) so filters see HTTP/1 and HTTP/2
alike. A name may repeat (``set-cookie``, or a client sending a header twice):
``get`` returns the first value, ``get_all`` every value.

Order is Envoy's: entries stay in insertion order, a repeated name at each of its own
positions (``add`` appends); ``set`` replaces the first value in place and drops the
others; ``remove`` drops them all. (Envoy also keeps pseudo-headers before the others; the
HTTP/1 encoders write the one that becomes a header line, ``host``, first.)

Hot path: most maps have no repeated name, and a request reads its map some thirty times
(``get``, ``in``). So the map *is* a dict of name -> first value (a dict subclass): ``get``
and ``in`` are the dict's own C methods, not a Python method around one, and ``items()`` is
the dict's iterator. The first repeat switches the map to also keep the full entry list
(``_entries``), which then drives ``items()`` and ``len()``. The dict's own mutators
(``update``, ``pop``, ``setdefault``, ``clear``, ``|=``) are overridden to go through that
bookkeeping. ``m[name] = value`` and ``del m[name]`` stay the dict's, in C, because ``set``
and ``add`` store through it several times a request (overriding either one routes both
through Python, which costs more than the C ``get`` saves): they equal ``set`` and
``remove`` only while no name repeats, so code outside this module calls those.
Iterating a map gives its names, each once. A codec decodes a block into a map it seeded
itself (no copy at all), or into a plain dict it hands over with ``adopt`` (one C-level copy,
no per-header method call).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Set

_dict_new = dict.__new__
_dict_update = dict.update
_dict_pop = dict.pop
_dict_items = dict.items
_dict_keys = dict.keys
_dict_clear = dict.clear
_dict_len = dict.__len__


class HeaderMap(dict):
    __slots__ = ("_entries",)

    # Inherited from dict, unchanged and in C: get(name, default=None) -> the first value of
    # ``name`` (lower-case) or ``default``; ``name in map``; iteration over the names.

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._entries: list[tuple[str, str]] | None = None  # every entry, once a name repeats
        for name, value in items:
            self.add(name, value)

    @classmethod
    def adopt(cls, values: dict[str, str]) -> HeaderMap:
        """A map over ``values`` (lower-case names, one value each); the caller must not use
        the dict afterwards (it may be the map's storage one day)."""
        new = _dict_new(cls)
        _dict_update(new, values)
        new._entries = None
        return new

    # Reading -----------------------------------------------------------------------

    def get_all(self, name: str) -> list[str]:
        entries = self._entries
        if entries is not None:
            return [v for n, v in entries if n == name]
        value = self.get(name)
        return [] if value is None else [value]

    def __len__(self) -> int:
        """The number of entries (a repeated name counts each time)."""
        return _dict_len(self) if self._entries is None else len(self._entries)

    def items(self) -> Iterator[tuple[str, str]]:  # type: ignore[override]
        """Every (name, value), in Envoy's order (see module doc)."""
        return iter(_dict_items(self) if self._entries is None else self._entries)

    @property
    def has_repeats(self) -> bool:
        """Some name has more than one value (a codec then joins the ones it reads)."""
        return self._entries is not None and len(self._entries) != _dict_len(self)

    def names(self) -> Iterable[str]:
        return _dict_keys(self)

    def byte_size(self) -> int:
        """Bytes of names and values, as Envoy counts them against max_request_headers_kb."""
        return sum(len(n) + len(v) for n, v in self.items())

    # Writing -----------------------------------------------------------------------

    def add(self, name: str, value: str) -> None:
        """Append an entry (the name may already be present)."""
        if self._entries is None:
            if name not in self:
                self[name] = value
                return
            self._entries = list(_dict_items(self))
        elif name not in self:
            self[name] = value
        self._entries.append((name, value))

    def set(self, name: str, value: str) -> None:
        """Replace the first value of ``name`` in place (appending if absent); drop the rest."""
        if self._entries is not None:
            entries = self._entries
            if name in self:
                first = True
                out = []
                for entry in entries:
                    if entry[0] == name:
                        if first:
                            out.append((name, value))
                            first = False
                        continue
                    out.append(entry)
                self._entries = out
            else:
                entries.append((name, value))
        self[name] = value

    def set_default(self, name: str, value: str) -> str:
        """Set ``name`` unless present; returns the value now first."""
        current = self.get(name)
        if current is None:
            self.add(name, value)
            return value
        return current

    def append_value(self, name: str, value: str, separator: str = ",") -> None:
        """Append to the first value with a separator (x-forwarded-for style)."""
        current = self.get(name)
        self.set(name, value if not current else f"{current}{separator}{value}")

    def remove(self, name: str) -> None:
        if _dict_pop(self, name, None) is not None and self._entries is not None:
            self._entries = [e for e in self._entries if e[0] != name]

    def remove_all(self, names: Set[str]) -> None:
        """``remove`` each of ``names``: for fixed lists of names, most often all absent, which
        one C-level set check finds."""
        if not names.isdisjoint(self):
            for name in names.intersection(self):
                _dict_pop(self, name)
            if self._entries is not None:
                self._entries = [e for e in self._entries if e[0] not in names]

    def remove_prefix(self, prefix: str) -> None:
        for name in [n for n in self if n.startswith(prefix)]:
            self.remove(name)

    def copy(self) -> HeaderMap:
        new = _dict_new(HeaderMap)
        _dict_update(new, self)
        entries = self._entries
        new._entries = None if entries is None else entries.copy()
        return new

    # The dict's mutators, through the bookkeeping above (dict-style code stays correct).

    def pop(self, name: str, *default: str) -> str:  # type: ignore[override]
        """Remove ``name``; its first value (or ``default``; KeyError without one)."""
        value = self.get(name)
        if value is None:
            if default:
                return default[0]
            raise KeyError(name)
        self.remove(name)
        return value

    def popitem(self) -> tuple[str, str]:
        raise TypeError("HeaderMap does not support popitem()")

    def setdefault(self, name: str, value: str) -> str:  # type: ignore[override]
        return self.set_default(name, value)

    def update(self, *others: object, **named: str) -> None:  # type: ignore[override]
        """``set`` each (name, value) of a mapping or pairs, then of ``named``."""
        for other in others:
            pairs = other.items() if hasattr(other, "items") else other
            for name, value in pairs:  # type: ignore[attr-defined]
                self.set(name, value)
        for name, value in named.items():
            self.set(name, value)

    def __ior__(self, other: object) -> HeaderMap:  # type: ignore[override]
        self.update(other)
        return self

    def clear(self) -> None:
        _dict_clear(self)
        self._entries = None

    def __repr__(self) -> str:
        return f"HeaderMap({list(self.items())!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, HeaderMap) and list(self.items()) == list(other.items())

    def __ne__(self, other: object) -> bool:
        return not self == other

    def __reduce__(self) -> tuple[object, tuple[list[tuple[str, str]]]]:
        return (HeaderMap, (list(self.items()),))

    __hash__ = None  # type: ignore[assignment]
