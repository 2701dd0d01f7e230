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

Hot path: most maps have no repeated name, so the map is one dict of name -> value, and
``items()`` is the dict's own iterator. The first repeat switches the map to also keep the
full entry list, which then drives ``items()``. A codec decodes a block into a plain dict
and hands it over with ``adopt`` (one object, no per-header method call).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Set


class HeaderMap:
    __slots__ = ("_entries", "_values")

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._values: dict[str, str] = {}  # name -> first value
        self._entries: list[tuple[str, str]] | None = None  # every entry, once a name repeats
        for name, value in items:
            self.add(name, value)

    @classmethod
    def adopt(cls, values: dict[str, str]) -> HeaderMap:
        """A map over ``values`` (lower-case names, one value each), taken over, not copied:
        the caller must not use the dict afterwards."""
        new = cls.__new__(cls)
        new._values = values
        new._entries = None
        return new

    # Reading -----------------------------------------------------------------------

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value of ``name`` (lower-case), or ``default``."""
        return self._values.get(name, default)

    def get_all(self, name: str) -> list[str]:
        entries = self._entries
        if entries is not None:
            return [v for n, v in entries if n == name]
        value = self._values.get(name)
        return [] if value is None else [value]

    def __contains__(self, name: object) -> bool:
        return name in self._values

    def __len__(self) -> int:
        entries = self._entries
        return len(self._values) if entries is None else len(entries)

    def items(self) -> Iterator[tuple[str, str]]:
        """Every (name, value), in Envoy's order (see module doc)."""
        entries = self._entries
        if entries is None:
            return iter(self._values.items())
        return iter(entries)

    @property
    def has_repeats(self) -> bool:
        """Some name has more than one value (a codec then joins the ones it reads)."""
        entries = self._entries
        return entries is not None and len(entries) != len(self._values)

    def names(self) -> Iterable[str]:
        return self._values.keys()

    def byte_size(self) -> int:
        """Bytes of names and values, as Envoy counts them against max_request_headers_kb."""
        return sum(len(n) + len(v) for n, v in self.items())

    # Writing -----------------------------------------------------------------------

    def add(self, name: str, value: str) -> None:
        """Append an entry (the name may already be present)."""
        values = self._values
        entries = self._entries
        if entries is None:
            if name not in values:
                values[name] = value
                return
            entries = self._entries = list(values.items())
        elif name not in values:
            values[name] = value
        entries.append((name, value))

    def set(self, name: str, value: str) -> None:
        """Replace the first value of ``name`` in place (appending if absent); drop the rest."""
        values = self._values
        entries = self._entries
        if entries is not None and name in values:
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
        elif entries is not None:
            entries.append((name, value))
        values[name] = value

    def set_default(self, name: str, value: str) -> str:
        """Set ``name`` unless present; returns the value now first."""
        current = self._values.get(name)
        if current is None:
            self.add(name, value)
            return value
        return current

    def append_value(self, name: str, value: str, separator: str = ",") -> None:
        """Append to the first value with a separator (x-forwarded-for style)."""
        current = self._values.get(name)
        self.set(name, value if not current else f"{current}{separator}{value}")

    def remove(self, name: str) -> None:
        if self._values.pop(name, None) is not None and self._entries is not None:
            self._entries = [e for e in self._entries if e[0] != name]

    def remove_all(self, names: Set[str]) -> None:
        """``remove`` each of ``names``: for fixed lists of names, most often all absent, which
        one C-level set check finds."""
        values = self._values
        if names.isdisjoint(values):
            return
        for name in names.intersection(values):
            del values[name]
        if self._entries is not None:
            self._entries = [e for e in self._entries if e[0] not in names]

    def remove_prefix(self, prefix: str) -> None:
        for name in [n for n in self._values if n.startswith(prefix)]:
            self.remove(name)

    def copy(self) -> HeaderMap:
        new = HeaderMap.__new__(HeaderMap)
        new._values = self._values.copy()
        new._entries = None if self._entries is None else self._entries.copy()
        return new

    def __repr__(self) -> str:
        return f"HeaderMap({list(self.items())!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, HeaderMap) and list(self.items()) == list(other.items())

    __hash__ = None  # type: ignore[assignment]
