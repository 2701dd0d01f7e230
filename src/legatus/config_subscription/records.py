"""What each xDS owner remembers of its resources, for /config_dump.

Envoy dumps every dynamic resource with the version it came with and when it was accepted
(``dynamic_active_clusters``, ``dynamic_route_configs``...), and a resource whose last update
was refused with that update and why (``error_state``: ``UpdateFailureState``). The owners
(CDS, LDS, RDS, EDS) record both here as they apply updates; the admin handler reads them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Accepted", "Rejected", "ResourceRecords"]


@dataclass(frozen=True, slots=True)
class Accepted:
    resource: Any  # the resource's message
    version: str  # the version_info of the update that brought it
    last_updated: float  # seconds since the epoch


@dataclass(frozen=True, slots=True)
class Rejected:
    resource: Any  # the refused message (None when it could not be read)
    details: str  # why (the NACK's error text for this resource)
    last_update_attempt: float
    version: str = ""


@dataclass(slots=True)
class ResourceRecords:
    """One type's records (one owner): accepted resources and refusals, by name."""

    version_info: str = ""  # the version_info of the last update that changed something
    accepted: dict[str, Accepted] = field(default_factory=dict)
    rejected: dict[str, Rejected] = field(default_factory=dict)

    def accept(self, name: str, resource: Any, version: str) -> None:
        self.accepted[name] = Accepted(resource, version, time.time())
        self.rejected.pop(name, None)

    def reject(self, name: str, resource: Any, details: str, version: str = "") -> None:
        self.rejected[name] = Rejected(resource, details, time.time(), version)

    def remove(self, name: str) -> None:
        self.accepted.pop(name, None)
        self.rejected.pop(name, None)
