"""One owner's subscription on a ``GrpcMux``, and the stats it keeps (Envoy's
``GrpcSubscriptionImpl``).

The owner calls ``start(names)`` once (no names: the wildcard), then
``update_resource_interest(names)`` whenever its interest changes (no names again means the
wildcard, as in Envoy's watches), and ``close()`` when done. The mux calls back:

- ``deliver(update)``: the owner's ``on_config_update``. Accepted: ``update_success``,
  ``version``, ``version_text``, ``update_time``, ``update_duration``. A raise propagates to
  the mux, which NACKs and calls ``rejected()`` on every subscription of the type.
- ``rejected(error)``: ``update_rejected``, and the owner's
  ``on_config_update_failed(UPDATE_REJECTED, error)`` (whether it raised the error, or the
  response could not be decoded and it never saw it), as Envoy tells every watch of the
  type.
- ``connection_failed()``: ``update_failure``. Envoy does not tell the owner: its last
  config stays in place and a new stream follows; an owner that waits for its first
  update is released by ``initial_fetch_timeout`` instead.
- the initial fetch timer: no update or rejection within ``initial_fetch_timeout`` seconds
  of ``start`` calls ``on_config_update_failed(FETCH_TIMEDOUT, None)`` once and counts
  ``init_fetch_timeout``; the subscription carries on.

``update_attempt`` counts, as Envoy does, ``start``, each interest change, each update,
rejection, connection failure and fetch timeout (a delta update that its owner refuses
counts twice: once before the owner is called, once as rejected; one refused as it is
decoded, which the owner never sees, once).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Collection
from typing import TYPE_CHECKING

from legatus.config.subscription import (
    ConfigUpdate,
    SubscriptionCallbacks,
    UpdateFailureReason,
)
from legatus.config_subscription.stats import SubscriptionStats

if TYPE_CHECKING:
    from legatus.config_subscription.grpc.grpc_mux import GrpcMux

__all__ = ["GrpcSubscription"]

log = logging.getLogger("legatus.config")


class GrpcSubscription:
    __slots__ = (
        "_callbacks",
        "_closed",
        "_initial_fetch_timeout",
        "_mux",
        "_started",
        "_stats",
        "_timer",
        "names",
        "type_url",
        "wildcard",
    )

    def __init__(
        self,
        mux: GrpcMux,
        type_url: str,
        callbacks: SubscriptionCallbacks,
        stats: SubscriptionStats,
        initial_fetch_timeout: float | None,
    ) -> None:
        if initial_fetch_timeout is not None and initial_fetch_timeout < 0:
            raise ValueError("initial_fetch_timeout must not be negative")
        self._mux = mux
        self.type_url = type_url
        self._callbacks = callbacks
        self._stats = stats
        self._initial_fetch_timeout = initial_fetch_timeout or None  # 0: no timeout
        self._timer: asyncio.TimerHandle | None = None
        self._started = False
        self._closed = False
        self.names: frozenset[str] = frozenset()
        self.wildcard = False

    def _set_names(self, resource_names: Collection[str]) -> None:
        if isinstance(resource_names, str):
            raise TypeError("resource_names must be a collection of names, not a string")
        self.names = frozenset(resource_names)
        self.wildcard = not self.names

    # Subscription -----------------------------------------------------------------

    def start(self, resource_names: Collection[str]) -> None:
        if self._started:
            raise RuntimeError(f"subscription to {self.type_url} already started")
        if self._closed:
            raise RuntimeError(f"subscription to {self.type_url} is closed")
        self._set_names(resource_names)
        self._started = True
        if self._initial_fetch_timeout is not None:
            self._timer = self._mux.loop.call_later(
                self._initial_fetch_timeout, self._on_initial_fetch_timeout
            )
        self._mux.add_watch(self)
        self._stats.stats.update_attempt.inc()

    def update_resource_interest(self, resource_names: Collection[str]) -> None:
        if not self._started or self._closed:
            raise RuntimeError(f"subscription to {self.type_url} is not running")
        self._set_names(resource_names)
        self._mux.interest_changed(self)
        self._stats.stats.update_attempt.inc()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._cancel_timer()
        if self._started:
            self._mux.remove_watch(self)

    # Called by the mux ------------------------------------------------------------

    def deliver(self, update: ConfigUpdate) -> None:
        if self._closed:
            return
        self._cancel_timer()
        stats = self._stats
        started = time.monotonic()
        if not update.state_of_the_world:
            stats.stats.update_attempt.inc()
        self._callbacks.on_config_update(update)
        if update.state_of_the_world:
            stats.stats.update_attempt.inc()
        stats.accepted(update.version_info, started)

    def rejected(self, error: Exception) -> None:
        if self._closed:
            return
        self._cancel_timer()
        self._stats.rejected()
        try:
            self._callbacks.on_config_update_failed(UpdateFailureReason.UPDATE_REJECTED, error)
        except Exception:
            log.exception("the owner of %s failed on a rejected update", self.type_url)
        self._stats.stats.update_attempt.inc()

    def connection_failed(self) -> None:
        if self._closed:
            return
        self._stats.stats.update_failure.inc()
        self._stats.stats.update_attempt.inc()

    def _on_initial_fetch_timeout(self) -> None:
        self._timer = None
        if self._closed:
            return
        self._stats.stats.init_fetch_timeout.inc()
        self._stats.stats.update_attempt.inc()
        log.warning("gRPC config: initial fetch timed out for %s", self.type_url)
        try:
            self._callbacks.on_config_update_failed(UpdateFailureReason.FETCH_TIMEDOUT, None)
        except Exception:
            log.exception("the owner of %s failed on its initial fetch timeout", self.type_url)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
