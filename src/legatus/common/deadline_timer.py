"""A timer that costs nothing to move.

asyncio makes a TimerHandle (and a heap entry) per ``call_later``; cancelling leaves the
entry behind until it comes up. The data path re-arms its timeouts on every request (a
route timeout, an idle timeout), so ``DeadlineTimer`` keeps one handle and a deadline: moving
the deadline later only stores a number, and the handle, when it fires early, re-arms itself
for the deadline then in force. Only a deadline moved earlier than the handle's time costs a
new handle.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any


class DeadlineTimer:
    __slots__ = ("_args", "_at", "_callback", "_deadline", "_handle", "_loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._handle: asyncio.TimerHandle | None = None
        self._at = 0.0  # when the handle fires
        self._deadline: float | None = None
        self._callback: Callable[..., Any] | None = None
        self._args: tuple = ()

    def set(self, delay: float, callback: Callable[..., Any], *args: Any) -> None:
        """Call ``callback(*args)`` ``delay`` seconds from now (replacing any earlier set)."""
        deadline = self._deadline = self._loop.time() + delay
        self._callback = callback
        self._args = args
        handle = self._handle
        if handle is None or deadline < self._at:
            if handle is not None:
                handle.cancel()
            self._at = deadline
            self._handle = self._loop.call_at(deadline, self._fire)

    def cancel(self) -> None:
        """Forget the deadline (the handle, if any, fires once more and does nothing)."""
        self._deadline = None
        self._callback = None
        self._args = ()

    def close(self) -> None:
        self.cancel()
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    @property
    def active(self) -> bool:
        return self._deadline is not None

    def _fire(self) -> None:
        self._handle = None
        deadline = self._deadline
        if deadline is None:
            return
        if self._loop.time() < deadline:
            self._at = deadline
            self._handle = self._loop.call_at(deadline, self._fire)
            return
        callback, args = self._callback, self._args
        self.cancel()
        callback(*args)  # type: ignore[misc]
