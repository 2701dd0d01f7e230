"""Envoy's SubscriptionStats, under the prefix the subscription's owner chooses.

LDS counts under ``listener_manager.lds.``, CDS under ``cluster_manager.cds.``, EDS under
``cluster.<name>.``, RDS under ``http.<stat_prefix>.rds.<route_config>.``, RTDS under
``runtime.``, SDS under ``sds.<secret>.``.

These are every subscription's (Envoy's ALL_SUBSCRIPTION_STATS). What some owners add
beside them in the same scope is theirs: ``config_reload`` / ``config_reload_time_ms`` of
CDS (``upstream.cds_api``) and RDS, ``update_empty`` of RDS and EDS (``upstream.eds``),
``update_no_rebuild`` of EDS. LDS and RTDS add nothing.
"""

from __future__ import annotations

import time

from legatus.router.hash_policy import xxhash64
from legatus.stats.store import Scope, StatSet, counter, gauge, histogram

__all__ = ["SubscriptionStats"]


class _Stats(StatSet):
    update_attempt = counter()
    update_success = counter()
    update_failure = counter()  # a connection failure or a fetch timeout
    update_rejected = counter()  # the update was refused (NACK)
    init_fetch_timeout = counter()
    version = gauge()  # xxHash64 of the last accepted version_info
    update_time = gauge()  # ms since the epoch, last accepted update
    update_duration = histogram()


class SubscriptionStats:
    """The counters plus ``version_text``; ``accepted``/``rejected`` keep them consistent."""

    __slots__ = ("stats", "version_text")

    def __init__(self, scope: Scope) -> None:
        self.stats = _Stats(scope)
        self.version_text = scope.text_readout("version_text")

    def accepted(self, version_info: str, started: float) -> None:
        """An update the owner applied; ``started`` is ``time.monotonic()`` at its arrival."""
        s = self.stats
        s.update_success.inc()
        s.version.set(xxhash64(version_info) if version_info else 0)
        s.update_time.set(int(time.time() * 1000))
        s.update_duration.record((time.monotonic() - started) * 1000.0)
        self.version_text.set(version_info)

    def rejected(self) -> None:
        self.stats.update_rejected.inc()
