"""``envoy.retry_priorities.previous_priorities``: retries move off the priorities already
tried (Envoy's PreviousPrioritiesRetryPriority).

One per request with a route whose retry policy names it. The router hands ``load`` to the
load balancer with each pick of a retry; the balancer calls it with its priority set and
picks by the (healthy, degraded) loads it returns, or by the set's own when it returns None.

As in Envoy 1.40, with ``update_frequency`` N and the hosts of the tries so far:

- fewer than N tries: the set's own loads;
- a multiple of N tries: every priority of a host tried so far is excluded (exclusions only
  accumulate), and the loads are the set's spill-over computed again from the availability
  (health and degraded, 0-100 each) of the priorities left, as if the excluded ones had no
  host: levels in order take ``availability * 100 / total`` (total capped at 100) until 100
  is given out, rounding left-overs going round again from the first level;
- otherwise the loads of the last multiple are kept;
- when no priority is left with any availability, the exclusions and the tries so far are
  forgotten (the count starts again from the next try), and the loads are computed from
  every priority (the set's own spill-over, panic aside); with no availability anywhere,
  the set's own loads.
"""

from __future__ import annotations

from collections.abc import Sequence


class PreviousPriorities:
    __slots__ = ("_attempted", "_excluded", "_forgotten", "_load", "update_frequency")

    def __init__(self, update_frequency: int) -> None:
        self.update_frequency = update_frequency
        self._attempted: Sequence = ()
        self._forgotten = 0  # tries before the last fresh start
        self._excluded: set[int] = set()
        self._load: tuple[list[int], list[int]] | None = None

    def for_attempts(self, attempted_hosts: Sequence):
        """The balancer's ``priority_load`` for a pick after the tries on ``attempted_hosts``
        (every try of the request so far, in order)."""
        self._attempted = attempted_hosts
        return self.load

    def load(self, priority_set) -> tuple[list[int], list[int]] | None:
        attempted = self._attempted[self._forgotten :]
        n = len(attempted)
        frequency = self.update_frequency
        if n < frequency:
            return None
        if n % frequency == 0:
            for host in attempted:
                self._excluded.add(host.config.priority)
            self._load = self._adjusted(priority_set)
            if self._load is None:  # every priority tried: start afresh, from every one
                self._excluded.clear()
                self._forgotten += n
                self._load = self._adjusted(priority_set)
        return self._load

    def _adjusted(self, priority_set) -> tuple[list[int], list[int]] | None:
        excluded = self._excluded
        health = [0 if p in excluded else a for p, a in enumerate(priority_set.health_availability)]
        degraded = [
            0 if p in excluded else a for p, a in enumerate(priority_set.degraded_availability)
        ]
        total = min(100, sum(health) + sum(degraded))
        if total == 0:
            return None
        healthy_load = [0] * len(health)
        degraded_load = [0] * len(degraded)
        left = 100
        while left:  # (the largest share is at least 100 / levels: each pass gives some)
            for loads, availability in ((healthy_load, health), (degraded_load, degraded)):
                for i, a in enumerate(availability):
                    delta = min(left, a * 100 // total)
                    loads[i] += delta
                    left -= delta
        return healthy_load, degraded_load
