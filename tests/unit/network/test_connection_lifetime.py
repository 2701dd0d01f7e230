"""A closed connection, its filters and its transport are freed by reference counting.

A worker's cyclic collector walks every tracked object; under connection churn it ran for a
third of the worker's time. So nothing a connection builds may keep a cycle past its close.
"""

from __future__ import annotations

import asyncio

from legatus.network.connection import Connection, ConnectionEvent
from legatus.network.filter import FilterStatus, ReadFilter
from tests.support.garbage import cyclic_garbage


class _Transport(asyncio.Transport):
    """A transport socket's shape (TLS: it points back at its connection)."""

    def __init__(self, connection: Connection) -> None:
        super().__init__()
        self.connection = connection
        self.closed = False

    def set_write_buffer_limits(self, high=None, low=None) -> None:
        """Nothing is buffered here."""

    def get_extra_info(self, name, default=None):
        return ("127.0.0.1", 1) if name in ("sockname", "peername") else default

    def get_write_buffer_size(self) -> int:
        return 0

    def write(self, data) -> None:
        """What the connection writes is not looked at."""

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True


class _Filter(ReadFilter):
    """Keeps its callbacks, as every read filter does."""

    def __init__(self) -> None:
        self.events: list[ConnectionEvent] = []

    def on_event(self, event: ConnectionEvent) -> None:
        self.events.append(event)


def _connection_through_its_close() -> None:
    async def run() -> None:
        connection = Connection()
        f = _Filter()
        connection.add_read_filter(f)
        connection.add_connection_callbacks(f)
        transport = _Transport(connection)
        connection.connection_made(transport)
        connection.initialize_read_filters()
        connection.close()
        assert transport.closed and f.events == [ConnectionEvent.LOCAL_CLOSE]
        connection.connection_lost(None)  # the transport reports the socket gone
        assert connection.transport is None

    asyncio.run(run())


def test_a_closed_connection_leaves_no_reference_cycle():
    garbage = cyclic_garbage(_connection_through_its_close)
    assert not {"Connection", "_Filter", "_Transport", "_ReadCallbacks"} & garbage, garbage


def test_a_read_filter_injects_by_position():
    """The callbacks name their filter by position: injected data reaches the next filters,
    and nothing once the connection is closed."""

    class Taker(ReadFilter):
        def on_data(self, data, end_stream):
            return FilterStatus.STOP_ITERATION

    class Seen(ReadFilter):
        def __init__(self) -> None:
            self.data: list[bytes] = []

        def on_data(self, data, end_stream):
            self.data.append(data)
            return FilterStatus.STOP_ITERATION

    async def run() -> list[bytes]:
        connection = Connection()
        taker, seen = Taker(), Seen()
        connection.add_read_filter(taker)
        connection.add_read_filter(seen)
        connection.connection_made(_Transport(connection))
        connection.data_received(b"raw")
        taker.read_callbacks.inject_read_data_to_filter_chain(b"cooked", False)
        connection.close()
        taker.read_callbacks.inject_read_data_to_filter_chain(b"late", False)
        return seen.data

    assert asyncio.run(run()) == [b"cooked"]
