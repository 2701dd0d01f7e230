"""What a delta xDS stream owes, in order (Envoy's ``PausableAckQueue``).

Every delta response is answered by a request of its own that echoes its nonce, even when
several responses of one type arrive while the type is paused (CDS while clusters warm):
each answer waits here, counted in ``control_plane.pending_requests``, and goes out once
the type is resumed. A paused type's entries are skipped, not blocking the others behind
them. The queue is emptied when a new stream starts (nonces are valid on one stream only).

Envoy sends a change of interest the moment it happens, if its type is not paused, and
before the answer to the response whose handling caused it (a cluster removed by CDS
unsubscribes from its endpoints before the CDS ACK goes out). Requests here go out from a
writer task, a moment later; an ``InterestChange`` entry keeps the place such a request
would have had among the answers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from google.rpc import status_pb2

__all__ = ["InterestChange", "PausableAckQueue", "UpdateAck"]


@dataclass(frozen=True, slots=True)
class UpdateAck:
    """The answer to one response: its nonce, and why it was refused (None: an ACK)."""

    type_url: str
    nonce: str
    error_detail: status_pb2.Status | None = None


@dataclass(frozen=True, slots=True)
class InterestChange:
    """The place of a request that says a change of interest of ``type_url``."""

    type_url: str


class PausableAckQueue:
    __slots__ = ("_entries", "_paused")

    def __init__(self, paused: Callable[[str], bool]) -> None:
        self._entries: list[UpdateAck | InterestChange] = []
        self._paused = paused

    def __len__(self) -> int:
        """Every answer owed, paused types' included (Envoy's pending_requests)."""
        return sum(1 for entry in self._entries if isinstance(entry, UpdateAck))

    def push(self, entry: UpdateAck | InterestChange) -> None:
        self._entries.append(entry)

    def front(self) -> UpdateAck | InterestChange | None:
        """The first entry of a type that is not paused."""
        for entry in self._entries:
            if not self._paused(entry.type_url):
                return entry
        return None

    def pop(self, entry: UpdateAck | InterestChange) -> None:
        self._entries.remove(entry)

    def clear(self) -> None:
        self._entries.clear()
