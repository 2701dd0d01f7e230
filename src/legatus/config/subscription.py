"""What every xDS subscription gives its owner, whatever carries it (gRPC, REST, a file).

Envoy's Config::Subscription, reduced to what legatus's owners need. A subscription is made
for one resource type (a type URL such as
``type.googleapis.com/envoy.config.cluster.v3.Cluster``) and a set of resource names (empty:
the wildcard, every resource of the type). Updates reach the owner through one call,
``SubscriptionCallbacks.on_config_update(update)``:

- ``update.state_of_the_world`` is True when ``update.added`` is the whole set (a SotW
  response, a REST poll, a file): the owner removes what it holds and the update lacks.
  It is False for an incremental (delta) response: ``added`` are new or changed resources,
  ``removed`` the names that went away.
- The owner validates the resources and either applies all of them or raises
  ``ConfigError`` (or any ``ValueError``): the subscription then NACKs the response with
  ``str(error)`` as error_detail and counts ``update_rejected``; the owner keeps serving its
  previous config. Returning normally ACKs.
- ``on_config_update_failed(reason, error)`` reports what is not an accepted update: the
  connection to the control plane failed or was lost (``CONNECTION_FAILURE``), the first
  update did not arrive within ``initial_fetch_timeout`` (``FETCH_TIMEDOUT``), an update
  was rejected (``UPDATE_REJECTED``, with the error: the owner's own, or one found before
  the owner saw the update, such as a resource breaking its proto's constraints), as
  Envoy's ``onConfigUpdateFailed`` reports them. An owner waiting for its first update
  stops waiting on any of them.

Stats (Envoy's SubscriptionStats, under the prefix the owner gives, e.g.
``cluster_manager.cds.``): ``update_attempt``, ``update_success``, ``update_failure``,
``update_rejected``, ``init_fetch_timeout`` counters; ``version`` (a
hash of version_info), ``update_time`` (ms since epoch of the last accepted update) gauges;
``version_text`` text readout; ``update_duration`` histogram.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = [
    "ConfigUpdate",
    "DecodedResource",
    "Subscription",
    "SubscriptionCallbacks",
    "UpdateFailureReason",
]


@dataclass(frozen=True, slots=True)
class DecodedResource:
    """One resource of an update, unpacked from its Any into its message class."""

    name: str
    resource: Any  # the protobuf message (e.g. envoy.config.cluster.v3.Cluster)
    version: str = ""  # the resource's own version (delta xDS); "" in SotW
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ConfigUpdate:
    type_url: str
    added: Sequence[DecodedResource]
    removed: Sequence[str]
    version_info: str  # SotW version_info, or delta system_version_info
    state_of_the_world: bool


class UpdateFailureReason(enum.Enum):
    CONNECTION_FAILURE = "connection failure"
    FETCH_TIMEDOUT = "initial fetch timed out"
    UPDATE_REJECTED = "update rejected"


class SubscriptionCallbacks(Protocol):
    def on_config_update(self, update: ConfigUpdate) -> None:
        """Apply the update or raise (the error text becomes the NACK's error_detail)."""

    def on_config_update_failed(self, reason: UpdateFailureReason, error: Exception | None) -> None:
        """No update this time: the control plane is unreachable or too slow."""


class Subscription(Protocol):
    def start(self, resource_names: Collection[str]) -> None:
        """Begin fetching (empty names: wildcard). Called once."""

    def update_resource_interest(self, resource_names: Collection[str]) -> None:
        """Change the names subscribed to; the next request carries them."""

    def close(self) -> None:
        """Stop fetching; no callback is made afterwards."""
