"""The subscriptions that share one resource type on a mux, and who gets what.

Several owners may watch one type over one stream (an EDS subscription per cluster on an
ADS stream). The stream asks for the union of their names; a response is split among them
as Envoy's watch maps do:

- a wildcard watch (no names) gets every resource of the response;
- a named watch gets the resources named in its interest. In SotW it is not called when
  the response holds none of them (an EDS response for other clusters says nothing about
  this one); in delta it is called when a resource of its interest was added, changed or
  removed. A delta response that adds and removes nothing still reaches the wildcard
  watches, as an empty update.

Watches are called newest first (the most recently added, or whose interest changed
last), as Envoy's mux keeps them. It matters when two watch one name: a changed EDS
cluster's new version and the version in place. The new one takes the assignment first;
if that ends its warming at once, the old one is closed before its turn and skipped.

The response is all or nothing: the first watch that raises stops the delivery, and the
error becomes the NACK.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

from legatus.config.subscription import ConfigUpdate, DecodedResource

__all__ = ["Watch", "WatchMap"]


class Watch(Protocol):
    names: frozenset[str]
    wildcard: bool

    def deliver(self, update: ConfigUpdate) -> None:
        """Hand the update to the owner; raises what the owner raised."""


def _index(resources: Sequence[DecodedResource]) -> dict[str, list[int]]:
    """Name (or alias) -> positions in the response: each watch then looks up its own names
    instead of scanning the whole response (1,000 EDS watches x 1,000 assignments)."""
    index: dict[str, list[int]] = {}
    for i, resource in enumerate(resources):
        index.setdefault(resource.name, []).append(i)
        for alias in resource.aliases:
            index.setdefault(alias, []).append(i)
    return index


def _pick(
    resources: Sequence[DecodedResource], index: dict[str, list[int]], names: frozenset[str]
) -> tuple[DecodedResource, ...]:
    """The resources a named watch wants, in the response's order."""
    hits = {i for name in names for i in index.get(name, ())}
    return tuple(resources[i] for i in sorted(hits))


class WatchMap:
    __slots__ = ("_watches", "type_url")

    def __init__(self, type_url: str) -> None:
        self.type_url = type_url
        self._watches: dict[Watch, None] = {}  # an ordered set, the newest last

    def add(self, watch: Watch) -> None:
        """A new watch, or one whose interest changed: it comes first from now on."""
        self._watches.pop(watch, None)
        self._watches[watch] = None

    def remove(self, watch: Watch) -> None:
        self._watches.pop(watch, None)

    def __len__(self) -> int:
        return len(self._watches)

    def __iter__(self) -> Iterator[Watch]:
        return iter(tuple(self._watches))

    def interest(self) -> tuple[frozenset[str], bool]:
        """(the union of the names, whether any watch is a wildcard)."""
        names: set[str] = set()
        wildcard = False
        for watch in self._watches:
            names |= watch.names
            wildcard = wildcard or watch.wildcard
        return frozenset(names), wildcard

    def _live(self) -> Iterator[Watch]:
        # Newest first. An owner may close a subscription (its own or another) while being
        # called: a watch closed before its turn is skipped.
        for watch in reversed(tuple(self._watches)):
            if watch in self._watches:
                yield watch

    def deliver_sotw(self, resources: Sequence[DecodedResource], version_info: str) -> None:
        everything = tuple(resources)
        index = _index(everything)
        for watch in self._live():
            if watch.wildcard:
                found = everything
            else:
                found = _pick(everything, index, watch.names)
                if not found:
                    continue
            watch.deliver(
                ConfigUpdate(
                    type_url=self.type_url,
                    added=found,
                    removed=(),
                    version_info=version_info,
                    state_of_the_world=True,
                )
            )

    def deliver_delta(
        self, added: Sequence[DecodedResource], removed: Sequence[str], version_info: str
    ) -> None:
        all_added, all_removed = tuple(added), tuple(removed)
        index = _index(all_added)
        removed_set = frozenset(all_removed)
        for watch in self._live():
            if watch.wildcard:
                mine_added, mine_removed = all_added, all_removed
            else:
                mine_added = _pick(all_added, index, watch.names)
                gone = watch.names & removed_set
                mine_removed = tuple(n for n in all_removed if n in gone) if gone else ()
                if not mine_added and not mine_removed:
                    continue
            watch.deliver(
                ConfigUpdate(
                    type_url=self.type_url,
                    added=mine_added,
                    removed=mine_removed,
                    version_info=version_info,
                    state_of_the_world=False,
                )
            )
