"""A connection manager's configured HTTP filters, ready to make each stream's filter manager
(Envoy's FilterChainFactory::createFilterChain).

What a stream's build needs from the configuration (which filters are enabled, which one is
terminal, whether the router is alone) is worked out once here, when the configuration is
compiled, not again for every stream.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from legatus.http.filter import StreamDecoderFilter, StreamEncoderFilter
from legatus.http.filter_manager import FilterManager, TerminalFilterManager
from legatus.stream_info import StreamInfo


class HttpFilterChain:
    """The HTTP filter factories of a connection manager (or of one upgrade type), in
    configuration order. A factory has ``create()``, ``terminal`` and ``disabled`` (see the
    connection manager's HttpFilterFactory); the config keeps the terminal one last.

    ``disabled`` filters are never created (legatus does not enable them per route yet)."""

    __slots__ = ("factories", "others", "router_only", "terminal")

    def __init__(self, factories: Sequence[Any] = ()) -> None:
        self.factories = tuple(factories)
        enabled = [factory for factory in self.factories if not factory.disabled]
        terminal = enabled[-1] if enabled and enabled[-1].terminal else None
        self.terminal = terminal  # the terminal factory (the router's), if enabled
        self.others = tuple(enabled[:-1] if terminal is not None else enabled)
        # The router alone: its stream needs no chain to walk (TerminalFilterManager).
        self.router_only = terminal is not None and not self.others

    def __repr__(self) -> str:
        return f"HttpFilterChain({[getattr(f, 'name', f) for f in self.factories]!r})"

    def create_filter_manager(
        self,
        sink: Any,
        stream_info: StreamInfo,
        buffer_limit: int,
        route: Any = None,
        route_resolver: Callable[[], Any] | None = None,
    ) -> FilterManager | TerminalFilterManager:
        """A new stream's filters, made in configuration order, in their manager. The
        terminal filter gets no slot (the manager calls it and is its callbacks) unless it
        also encodes, which the router does not."""
        if self.router_only:
            return TerminalFilterManager(
                self.terminal.create(), sink=sink, stream_info=stream_info, route=route,
                route_resolver=route_resolver,
            )  # fmt: skip
        decoders: list = []
        encoders: list = []
        for factory in self.others:
            f = factory.create()
            if isinstance(f, StreamDecoderFilter):
                decoders.append(f)
            if isinstance(f, StreamEncoderFilter):
                encoders.append(f)
        terminal = self.terminal
        if terminal is not None:
            terminal = terminal.create()
            if isinstance(terminal, StreamEncoderFilter):  # a slot on each side, as any filter
                decoders.append(terminal)
                encoders.append(terminal)
                terminal = None
        return FilterManager(
            decoders, encoders, sink, stream_info, buffer_limit, route, route_resolver, terminal
        )


NO_HTTP_FILTERS = HttpFilterChain()
