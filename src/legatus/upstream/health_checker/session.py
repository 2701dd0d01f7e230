"""One host's active health-check state: Envoy's decisions, sans I/O.

A probe (http.py, tcp.py) turns one check into an ``Outcome``; ``HostSession.on_outcome``
applies it to the host's health flags and the thresholds, counts Envoy's
``health_check.*`` stats and says whether the host's health changed (``Transition``), which
picks the delay before the next check (``next_interval``).

The rules, as Envoy 1.40 applies them:

- a new host starts FAILED_ACTIVE_HC; its first result decides at once (one success makes
  it healthy, whatever ``healthy_threshold``);
- a success resets the failure count; a host failing becomes healthy after
  ``healthy_threshold`` successes in a row, which clears ACTIVE_HC_TIMEOUT and
  EXCLUDED_VIA_IMMEDIATE_HC_FAIL too; ``x-envoy-degraded`` in a passing response sets
  DEGRADED_ACTIVE_HC (cleared by a passing response without it);
- a failure resets the success count; network failures (connect refused, reset, timeout) and
  HTTP ``retriable_statuses`` count toward ``unhealthy_threshold``; any other HTTP status
  outside ``expected_statuses`` (a 503 for instance), and a passive failure (an upstream
  answering traffic with ``x-envoy-immediate-health-check-fail``), fail the host at once;
- ACTIVE_HC_TIMEOUT is set while a failed host's last check timed out, cleared by any other
  result;
- stats: ``attempt`` per check started, ``success``/``failure`` per result,
  ``network_failure`` for connect failures and timeouts, ``passive_failure`` for immediate
  failures reported by traffic; gauges ``healthy`` (hosts not FAILED_ACTIVE_HC) and
  ``degraded`` (hosts DEGRADED_ACTIVE_HC). ``verify_cluster`` stays 0 (service_name_matcher
  is refused).
"""

from __future__ import annotations

import enum
import random as _random

from legatus.stats.store import StatSet, counter, gauge
from legatus.upstream.health_checker.config import HealthCheckConfig
from legatus.upstream.host import HealthFlag

_FAILED = HealthFlag.FAILED_ACTIVE_HC
_DEGRADED = HealthFlag.DEGRADED_ACTIVE_HC
_TIMEOUT = HealthFlag.ACTIVE_HC_TIMEOUT
_EXCLUDED = HealthFlag.EXCLUDED_VIA_IMMEDIATE_HC_FAIL
_PENDING = HealthFlag.PENDING_ACTIVE_HC


class HealthCheckerStats(StatSet):
    """``cluster.<name>.health_check.*``, kept by the main process."""

    attempt = counter()
    success = counter()
    failure = counter()
    passive_failure = counter()
    network_failure = counter()
    verify_cluster = counter()
    healthy = gauge()
    degraded = gauge()


class Outcome(enum.Enum):
    """What one check (or a passive report) says about a host."""

    SUCCESS = "success"
    DEGRADED = "degraded"  # passed, with x-envoy-degraded
    FAILED = "failed"  # an HTTP status neither expected nor retriable: fails at once
    RETRIABLE = "retriable"  # an HTTP status in retriable_statuses: counts to the threshold
    NETWORK = "network"  # connect failure, reset, close before the answer
    TIMEOUT = "timeout"  # no answer within ``timeout``
    PASSIVE = "passive"  # x-envoy-immediate-health-check-fail seen by a worker


class Transition(enum.Enum):
    UNCHANGED = 0
    CHANGED = 1
    CHANGE_PENDING = 2  # a threshold is being counted


class HostSession:
    """The health-check state of one host. Flags are HealthFlag bits (only the HC ones)."""

    __slots__ = ("first_check", "flags", "num_healthy", "num_unhealthy")

    def __init__(self) -> None:
        self.flags = int(_FAILED)
        self.num_healthy = 0
        self.num_unhealthy = 0
        self.first_check = True

    @property
    def healthy(self) -> bool:
        return not self.flags & _FAILED

    def on_outcome(
        self, outcome: Outcome, config: HealthCheckConfig, stats: HealthCheckerStats
    ) -> Transition:
        if outcome is Outcome.SUCCESS or outcome is Outcome.DEGRADED:
            return self._success(outcome is Outcome.DEGRADED, config, stats)
        return self._failure(outcome, config, stats)

    def _success(
        self, degraded: bool, config: HealthCheckConfig, stats: HealthCheckerStats
    ) -> Transition:
        self.num_unhealthy = 0
        change = Transition.UNCHANGED
        if self.flags & _FAILED:
            self.num_healthy += 1
            if self.first_check or self.num_healthy == config.healthy_threshold:
                self.flags &= ~(_FAILED | _TIMEOUT | _EXCLUDED)
                change = Transition.CHANGED
            else:
                change = Transition.CHANGE_PENDING
        change = self._clear_pending(change)
        if degraded != bool(self.flags & _DEGRADED):
            self.flags ^= _DEGRADED
            if change is Transition.UNCHANGED:
                change = Transition.CHANGED
        stats.success.inc()
        self.first_check = False
        return change

    def _failure(
        self, outcome: Outcome, config: HealthCheckConfig, stats: HealthCheckerStats
    ) -> Transition:
        self.num_healthy = 0
        network = outcome is Outcome.NETWORK or outcome is Outcome.TIMEOUT
        change = Transition.UNCHANGED
        if not self.flags & _FAILED:
            self.num_unhealthy += 1
            immediate = not network and outcome is not Outcome.RETRIABLE
            if immediate or self.num_unhealthy == config.unhealthy_threshold:
                self.flags |= _FAILED
                change = Transition.CHANGED
            else:
                change = Transition.CHANGE_PENDING
        if outcome is Outcome.TIMEOUT and self.flags & _FAILED:
            self.flags |= _TIMEOUT
        else:
            self.flags &= ~_TIMEOUT
        change = self._clear_pending(change)
        stats.failure.inc()
        if network:
            stats.network_failure.inc()
        elif outcome is Outcome.PASSIVE:
            stats.passive_failure.inc()
        self.first_check = False
        return change

    def _clear_pending(self, change: Transition) -> Transition:
        if self.flags & _PENDING:
            self.flags &= ~_PENDING
            return Transition.CHANGED
        return change


def next_interval(
    config: HealthCheckConfig,
    *,
    healthy: bool,
    change: Transition,
    has_traffic: bool,
    rng: _random.Random,
) -> float:
    """Seconds until the next check (Envoy's HealthCheckerImplBase::interval).

    Until the cluster has carried traffic, ``no_traffic_interval`` (or
    ``no_traffic_healthy_interval`` for a settled healthy host); afterwards ``interval``,
    ``unhealthy_interval`` for a failed host, and the edge intervals while a threshold is
    being counted. Jitter adds ``interval_jitter_percent`` of the base and ``interval_jitter``,
    drawn in whole milliseconds.
    """
    pending = change is Transition.CHANGE_PENDING
    if has_traffic:
        if healthy:
            base = config.healthy_edge_interval if pending else config.interval
        else:
            base = config.unhealthy_edge_interval if pending else config.unhealthy_interval
    else:
        base = (
            config.no_traffic_healthy_interval
            if healthy and not pending
            else config.no_traffic_interval
        )
    base_ms = round(base * 1000)
    percent_ms = config.interval_jitter_percent * base_ms // 100
    if percent_ms > 0:
        base_ms += rng.randrange(percent_ms)
    jitter_ms = round(config.interval_jitter * 1000)
    if jitter_ms > 0:
        base_ms += rng.randrange(jitter_ms)
    return max(1, base_ms) / 1000
