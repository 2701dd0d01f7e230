"""Many deadlines under one loop timer: the per-stream timeouts of an HTTP/2 connection.

An HTTP/2 connection carries many streams, each with its ``stream_idle_timeout`` and its
route timeout, and they are moved by every piece of activity. A loop timer per deadline
would make (and cancel) timer handles on the data path; ``Deadlines`` keeps one handle per
connection at the nearest deadline: setting or moving a deadline stores a number (a new
handle only when it is sooner than the armed one), and when the handle fires it calls what
is due and re-arms itself for the next. Deadlines are far (minutes, seconds) and the
streams of a connection few, so the scan when it fires costs nothing that matters.
"""

from __future__ import annotations

from typing import Any


class Deadlines:
    """The deadlines of one connection under one timer handle: the handle
    fires at the nearest deadline, calls what is due and re-arms for the next."""

    __slots__ = ("_at", "_handle", "entries", "loop")

    def __init__(self, loop) -> None:
        self.loop = loop
        self._handle: Any = None
        self._at = 0.0
        self.entries: set[Deadline] = set()

    def arm(self, deadline: float) -> None:
        handle = self._handle
        if handle is None or deadline < self._at:
            if handle is not None:
                handle.cancel()
            self._at = deadline
            self._handle = self.loop.call_at(deadline, self._fire)

    def _fire(self) -> None:
        self._handle = None
        now = self.loop.time()
        nearest = None
        for entry in list(self.entries):
            deadline = entry.deadline
            if deadline is None:
                continue
            if deadline <= now:
                callback, args = entry.callback, entry.args
                entry.cancel()
                callback(*args)
            elif nearest is None or deadline < nearest:
                nearest = deadline
        if nearest is not None:
            self.arm(nearest)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        for entry in self.entries:
            # (as ``Deadline.cancel``: a callback bound to its owner is a reference cycle)
            entry.deadline = entry.callback = None
            entry.args = ()
        self.entries = set()


class Deadline:
    """One deadline of a ``Deadlines``, with ``DeadlineTimer``'s interface (the router's
    route timer is one): ``set``, ``move`` (later, same callback), ``cancel``."""

    __slots__ = ("_owner", "args", "callback", "deadline")

    def __init__(self, owner: Deadlines) -> None:
        self._owner = owner
        self.deadline: float | None = None
        self.callback: Any = None
        self.args: tuple = ()

    def set(self, delay: float, callback, *args) -> None:
        owner = self._owner
        deadline = self.deadline = owner.loop.time() + delay
        self.callback = callback
        self.args = args
        owner.entries.add(self)
        if owner._handle is None or deadline < owner._at:
            owner.arm(deadline)

    def move(self, delay: float) -> None:
        """The deadline is ``delay`` from now (activity): a number stored, mostly."""
        if self.deadline is None:
            return
        owner = self._owner
        deadline = self.deadline = owner.loop.time() + delay
        if owner._handle is None or deadline < owner._at:
            owner.arm(deadline)

    def cancel(self) -> None:
        if self.deadline is not None:
            self.deadline = None
            self.callback = None
            self.args = ()
            self._owner.entries.discard(self)

    close = cancel

    @property
    def active(self) -> bool:
        return self.deadline is not None
