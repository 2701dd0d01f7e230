"""Whether this server fails health checks on purpose (admin ``/healthcheck/fail``).

The main process owns the state (``POST /healthcheck/fail`` and ``/healthcheck/ok``) and sends
each change to every worker (``control.SetHealthCheckFailed``; a worker started later gets it
in its ``Configure``). In a worker, one ``ServerHealth`` is shared through the factory context
by what reads it: the HTTP ``health_check`` filter answers 503 while ``failed``, and marks
other responses with ``x-envoy-immediate-health-check-fail``.
"""

from __future__ import annotations


class ServerHealth:
    __slots__ = ("failed",)

    def __init__(self, failed: bool = False) -> None:
        self.failed = failed
