"""DeadlineTimer on a real event loop: fires at the deadline in force, never twice."""

from __future__ import annotations

import asyncio

from legatus.common.deadline_timer import DeadlineTimer


async def test_moving_the_deadline_later_fires_once_at_the_new_one():
    loop = asyncio.get_running_loop()
    fired: list[float] = []
    timer = DeadlineTimer(loop)
    start = loop.time()
    timer.set(0.05, lambda: fired.append(loop.time() - start))
    await asyncio.sleep(0.02)
    timer.set(0.08, lambda: fired.append(loop.time() - start))
    await asyncio.sleep(0.2)
    assert len(fired) == 1 and fired[0] >= 0.1


async def test_moving_the_deadline_earlier_and_cancelling():
    loop = asyncio.get_running_loop()
    fired: list[str] = []
    timer = DeadlineTimer(loop)
    timer.set(1.0, fired.append, "late")
    timer.set(0.02, fired.append, "early")
    await asyncio.sleep(0.1)
    assert fired == ["early"]
    timer.set(0.02, fired.append, "cancelled")
    timer.cancel()
    await asyncio.sleep(0.1)
    assert fired == ["early"]
    assert not timer.active
    timer.close()
