"""HTTP header maps: Envoy's HeaderMap, for HTTP/1.1 now and HTTP/2 later.

Names are lower-case (HTTP/1 codecs lower-case them on the way in, as Envoy's
do); pseudo-headers carry the request line and status (``:method``, ``:path``,
``:authority``, ``:scheme``, ``:status``) so filters see HTTP/1 and HTTP/2
alike. Order is kept. A name may repeat (``set-cookie``, or a client sending a
header twice): ``get`` returns the first value, ``get_all`` every value.

Hot path: most names occur once, so the map is one dict of name -> value; a
repeated name moves its values into a side list. No copies on read; ``items()`` of a map
without repeats is the dict's own iterator. A codec decodes a block into a plain dict and
hands it over with ``adopt`` (one object, no per-header method call).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Set


class HeaderMap:
    __slots__ = ("_multi", "_values")

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._values: dict[str, str] = {}
        self._multi: dict[str, list[str]] | None = None
        for name, value in items:
            self.add(name, value)

    @classmethod
    def adopt(cls, values: dict[str, str]) -> HeaderMap:
        """A map over ``values`` (lower-case names, one value each), taken over, not copied:
        the caller must not use the dict afterwards."""
        new = cls.__new__(cls)
        new._values = values
        new._multi = None
        return new

    # Reading -----------------------------------------------------------------------

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value of ``name`` (lower-case), or ``default``."""
        return self._values.get(name, default)

    def get_all(self, name: str) -> list[str]:
        multi = self._multi
        if multi is not None and name in multi:
            return list(multi[name])
        value = self._values.get(name)
        return [] if value is None else [value]

    def __contains__(self, name: object) -> bool:
        return name in self._values

    def __len__(self) -> int:
        multi = self._multi
        if multi is None:
            return len(self._values)
        return len(self._values) + sum(len(v) - 1 for v in multi.values())

    def items(self) -> Iterator[tuple[str, str]]:
        """Every (name, value), repeated names once per value, in insertion order."""
        if self._multi is None:
            return iter(self._values.items())
        return self._items_with_repeats()

    def _items_with_repeats(self) -> Iterator[tuple[str, str]]:
        multi = self._multi
        assert multi is not None
        for name, value in self._values.items():
            values = multi.get(name)
            if values is None:
                yield name, value
            else:
                for v in values:
                    yield name, v

    @property
    def has_repeats(self) -> bool:
        """Some name has more than one value (a codec then joins the ones it reads)."""
        return self._multi is not None

    def names(self) -> Iterable[str]:
        return self._values.keys()

    def byte_size(self) -> int:
        """Bytes of names and values, as Envoy counts them against max_request_headers_kb."""
        return sum(len(n) + len(v) for n, v in self.items())

    # Writing -----------------------------------------------------------------------

    def add(self, name: str, value: str) -> None:
        """Append a value (the name may already be present)."""
        values = self._values
        if name not in values:
            values[name] = value
            return
        multi = self._multi
        if multi is None:
            multi = self._multi = {}
        existing = multi.get(name)
        if existing is None:
            multi[name] = [values[name], value]
        else:
            existing.append(value)

    def set(self, name: str, value: str) -> None:
        """Replace every value of ``name`` with one."""
        self._values[name] = value
        if self._multi is not None:
            self._multi.pop(name, None)

    def set_default(self, name: str, value: str) -> str:
        """Set ``name`` unless present; returns the value now first."""
        current = self._values.get(name)
        if current is None:
            self._values[name] = value
            return value
        return current

    def append_value(self, name: str, value: str, separator: str = ",") -> None:
        """Append to the first value with a separator (x-forwarded-for style)."""
        current = self._values.get(name)
        self.set(name, value if not current else f"{current}{separator}{value}")

    def remove(self, name: str) -> None:
        self._values.pop(name, None)
        if self._multi is not None:
            self._multi.pop(name, None)

    def remove_all(self, names: Set[str]) -> None:
        """``remove`` each of ``names`` (a set or frozenset): for fixed lists of names, most
        often all absent, which one C-level set check finds."""
        values = self._values
        if names.isdisjoint(values):
            return
        for name in names.intersection(values):
            self.remove(name)

    def remove_prefix(self, prefix: str) -> None:
        for name in [n for n in self._values if n.startswith(prefix)]:
            self.remove(name)

    def copy(self) -> HeaderMap:
        new = HeaderMap.adopt(self._values.copy())
        if self._multi is not None:
            new._multi = {k: list(v) for k, v in self._multi.items()}
        return new

    def __repr__(self) -> str:
        return f"HeaderMap({list(self.items())!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, HeaderMap) and list(self.items()) == list(other.items())

    __hash__ = None  # type: ignore[assignment]
