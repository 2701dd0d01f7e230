"""The L4 network filter contract (Envoy's ``envoy/network/filter.h``).

A connection runs an ordered chain of filters. Read filters see bytes from the
peer in configuration order; write filters see bytes going to the peer in
reverse order. Each hook returns a FilterStatus:

    downstream bytes ──> read filter 1 ──> read filter 2 ──> ... (terminal: tcp_proxy)
    peer <── write filter 1 <── write filter 2 <── ... connection.write()

A filter that returns STOP_ITERATION holds the chain; it resumes it later with
``callbacks.continue_reading()`` (read side). ``on_new_connection`` runs once,
when the chain is built, before any data; a filter that must wait for
something (an upstream connection, an auth check) returns STOP_ITERATION there
and data is buffered by the connection until it continues. Hooks never raise
for traffic reasons: they close the connection and count a stat instead.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from legatus.network.connection import Connection


class FilterStatus(enum.Enum):
    CONTINUE = 0
    """Pass the data (or the new-connection event) on to the next filter."""

    STOP_ITERATION = 1
    """Do not call the next filters now; this filter resumes the chain later
    with ``continue_reading()`` or has consumed the data for good."""


class ConnectionEvent(enum.Enum):
    """Envoy's ``Network::ConnectionEvent``."""

    REMOTE_CLOSE = 0
    """The peer closed (or reset) the connection."""
    LOCAL_CLOSE = 1
    """This side closed the connection."""
    CONNECTED = 2
    """An outgoing connection finished connecting."""


class CloseType(enum.Enum):
    """Envoy's ``Network::ConnectionCloseType``."""

    FLUSH_WRITE = 0
    """Send what is buffered, then close."""
    NO_FLUSH = 1
    """Close now and drop what is buffered."""
    ABORT_RESET = 2
    """Close now with a TCP RST."""


class ReadFilterCallbacks(Protocol):
    connection: Connection

    def continue_reading(self) -> None:
        """Resume the read chain after the filter that stopped it."""


class ReadFilter:
    """Base with safe defaults: every hook continues."""

    def initialize_read_filter_callbacks(self, callbacks: ReadFilterCallbacks) -> None:
        self.read_callbacks = callbacks

    def on_new_connection(self) -> FilterStatus:
        return FilterStatus.CONTINUE

    def on_data(self, data: bytes, end_stream: bool) -> FilterStatus:
        return FilterStatus.CONTINUE


class WriteFilter:
    def on_write(self, data: bytes, end_stream: bool) -> FilterStatus:
        return FilterStatus.CONTINUE


class ConnectionCallbacks(Protocol):
    def on_event(self, event: ConnectionEvent) -> None: ...

    def on_above_write_buffer_high_watermark(self) -> None: ...

    def on_below_write_buffer_low_watermark(self) -> None: ...


class FilterFactory:
    """What a network filter extension's factory returns: it adds a new instance of the
    filter to each new connection of a chain. ``terminal`` filters (a proxy, echo) must
    end the chain, and only they may."""

    __slots__ = ("create", "terminal")

    def __init__(self, create: Callable[[], Any], *, terminal: bool) -> None:
        self.create = create
        self.terminal = terminal

    def __call__(self, connection: Connection) -> None:
        connection.add_filter(self.create())
