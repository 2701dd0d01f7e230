"""The server's drain sequences (Envoy's DrainManagerImpl), on a real event loop with short
drain times."""

from __future__ import annotations

import asyncio

import pytest

from legatus.network.drain_decision import DrainDirection, DrainStrategy
from legatus.server.drain_manager import DrainManager

ALL, INBOUND = DrainDirection.ALL, DrainDirection.INBOUND_ONLY


def manager(drain_time: float = 0.05) -> DrainManager:
    return DrainManager(
        drain_time=drain_time,
        strategy=DrainStrategy.GRADUAL,
        loop=asyncio.get_running_loop(),
        clock=lambda: 42.0,
    )


async def test_a_sequence_runs_its_callbacks_at_its_end():
    drains = manager()
    ended = []
    assert not drains.draining()
    event = drains.start_drain_sequence(ALL, lambda: ended.append("a"))
    assert event is not None
    assert (event.start, event.drain_time, event.strategy) == (42.0, 0.05, DrainStrategy.GRADUAL)
    assert drains.draining(ALL) and drains.draining(INBOUND)
    # Covered already: no new sequence; the callback waits for the end.
    assert drains.start_drain_sequence(ALL, lambda: ended.append("b")) is None
    await asyncio.sleep(0.1)
    assert ended == ["a", "b"]
    assert drains.events == {ALL: event}
    # Ended: a covered request's callback runs at once.
    assert drains.start_drain_sequence(ALL, lambda: ended.append("c")) is None
    assert ended == ["a", "b", "c"]


async def test_inbound_only_while_all_drains_runs_its_callback_at_once():
    drains = manager()
    ended = []
    drains.start_drain_sequence(ALL, lambda: ended.append("all"))
    assert drains.start_drain_sequence(INBOUND, lambda: ended.append("inbound")) is None
    assert ended == ["inbound"]  # no inbound sequence exists to wait for
    drains.close()


async def test_all_after_inbound_only_is_a_new_sequence_ended_with_the_first():
    """Envoy queues every end callback together: the first sequence to end runs them all."""
    drains = manager(drain_time=0.1)
    ended = []
    first = drains.start_drain_sequence(INBOUND, lambda: ended.append("inbound"))
    assert not drains.draining(ALL)
    await asyncio.sleep(0.05)
    second = drains.start_drain_sequence(ALL, lambda: ended.append("all"))
    assert first is not None and second is not None
    await asyncio.sleep(0.08)  # the inbound sequence is over, the other is not
    assert ended == ["inbound", "all"]
    await asyncio.sleep(0.05)
    assert ended == ["inbound", "all"]


async def test_a_sequence_needs_a_direction():
    with pytest.raises(ValueError):
        manager().start_drain_sequence(DrainDirection.NONE, lambda: None)
