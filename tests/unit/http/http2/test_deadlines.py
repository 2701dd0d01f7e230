"""Deadlines (the HTTP/2 connection's stream timers): one loop timer for all, moved for free."""

from __future__ import annotations

import asyncio

from legatus.http.deadlines import Deadline, Deadlines


def test_deadlines_fire_in_order_move_and_cancel():
    loop = asyncio.new_event_loop()
    try:
        deadlines = Deadlines(loop)
        fired: list[str] = []
        a, b, c = Deadline(deadlines), Deadline(deadlines), Deadline(deadlines)
        a.set(0.05, fired.append, "a")
        b.set(0.01, fired.append, "b")
        c.set(0.02, fired.append, "c")
        c.cancel()
        a.move(0.03)  # activity: later, same callback
        assert a.active and not c.active
        loop.run_until_complete(asyncio.sleep(0.1))
        assert fired == ["b", "a"]
        assert not deadlines.entries and not a.active
        a.move(1.0)  # a fired deadline is not revived by activity
        assert not a.active
        a.set(0.01, fired.append, "again")
        deadlines.close()
        loop.run_until_complete(asyncio.sleep(0.03))
        assert fired == ["b", "a"]
    finally:
        loop.close()


def test_closing_drops_the_callbacks():
    """A closed set of deadlines keeps no callback: one bound to the deadlines' owner would
    be a reference cycle outliving the connection."""
    loop = asyncio.new_event_loop()
    try:
        deadlines = Deadlines(loop)
        idle = Deadline(deadlines)
        idle.set(10.0, print, "late")
        deadlines.close()
        assert (idle.active, idle.callback, idle.args) == (False, None, ())
    finally:
        loop.close()
