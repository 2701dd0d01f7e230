"""The configured HTTP filters, split once, and the filter manager each stream gets."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from legatus.http.filter import StreamDecoderFilter, StreamEncoderFilter, StreamFilter
from legatus.http.filter_chain import NO_HTTP_FILTERS, HttpFilterChain
from legatus.http.filter_manager import FilterManager, TerminalFilterManager
from legatus.stream_info import StreamInfo


@dataclass(frozen=True)
class Factory:
    name: str
    create: Any
    terminal: bool = False
    disabled: bool = False


class Router(StreamDecoderFilter):
    """Decodes only, as the real router."""


class Both(StreamFilter):
    """Decodes and encodes."""


class EncoderOnly(StreamEncoderFilter):
    """Encodes only."""


def _made(log, cls):
    def create():
        log.append(cls.__name__)
        return cls()

    return create


def _build(chain):
    return chain.create_filter_manager(object(), StreamInfo(now_monotonic=0.0), 1 << 20)


def test_the_router_alone_gets_the_terminal_manager_even_after_disabled_filters():
    log = []
    chain = HttpFilterChain(
        [Factory("off", _made(log, Both), disabled=True), Factory("r", _made(log, Router), True)]
    )
    assert chain.router_only and len(chain.factories) == 2
    fm = _build(chain)
    assert isinstance(fm, TerminalFilterManager)
    assert log == ["Router"]  # the disabled filter is never made


def test_filters_are_made_in_order_and_the_router_has_no_slot():
    log = []
    chain = HttpFilterChain(
        [
            Factory("both", _made(log, Both)),
            Factory("enc", _made(log, EncoderOnly)),
            Factory("off", _made(log, Both), disabled=True),
            Factory("router", _made(log, Router), True),
        ]
    )
    assert not chain.router_only
    fm = _build(chain)
    assert isinstance(fm, FilterManager)
    assert log == ["Both", "EncoderOnly", "Router"]
    assert [type(s.filter) for s in fm.decoder.slots] == [Both]
    assert [type(s.filter) for s in fm.encoder.slots] == [EncoderOnly, Both]  # reversed
    assert isinstance(fm.terminal, Router) and fm.terminal.decoder_callbacks is fm


def test_a_terminal_filter_that_also_encodes_keeps_a_slot_on_each_side():
    chain = HttpFilterChain([Factory("d", Router), Factory("t", Both, True)])
    fm = _build(chain)
    assert fm.terminal is None
    assert [type(s.filter) for s in fm.decoder.slots] == [Router, Both]
    assert [type(s.filter) for s in fm.encoder.slots] == [Both]


def test_no_filters_and_a_disabled_router():
    assert isinstance(_build(NO_HTTP_FILTERS), FilterManager) and not NO_HTTP_FILTERS.router_only
    chain = HttpFilterChain([Factory("b", Both), Factory("r", Router, True, disabled=True)])
    fm = _build(chain)
    assert fm.terminal is None and [type(s.filter) for s in fm.decoder.slots] == [Both]
