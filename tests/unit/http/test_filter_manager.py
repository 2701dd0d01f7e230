"""The HTTP filter chain contract, driven without sockets."""

from __future__ import annotations

import pytest

from legatus.http.filter import (
    FilterDataStatus,
    FilterHeadersStatus,
    FilterTrailersStatus,
    StreamEncoderFilter,
    StreamFilter,
)
from legatus.http.filter_manager import FilterManager, TerminalFilterManager
from legatus.http.headers import HeaderMap
from legatus.stream_info import StreamInfo

H = FilterHeadersStatus
D = FilterDataStatus
T = FilterTrailersStatus


class Sink:
    def __init__(self) -> None:
        self.out: list = []
        self.watermarks: list = []

    def write_headers(self, headers, end_stream):
        self.out.append(("headers", headers.get(":status"), end_stream))

    def write_data(self, data, end_stream):
        self.out.append(("data", bytes(data), end_stream))

    def write_trailers(self, trailers):
        self.out.append(("trailers",))

    def on_watermark(self, *, decoding, above):
        self.watermarks.append((decoding, above))

    def build_local_reply(self, status, body, details, headers, modify_headers=None):
        h = HeaderMap([(":status", str(status)), ("content-length", str(len(body)))])
        if modify_headers is not None:
            modify_headers(h)
        return h, body

    def reset_stream(self):
        self.out.append(("reset",))


class Recorder(StreamFilter):
    """Records what it sees; returns scripted statuses."""

    def __init__(
        self, name, log, *, headers=H.CONTINUE, data=D.CONTINUE, trailers=T.CONTINUE
    ) -> None:
        self.name = name
        self.log = log
        self.headers_status = headers
        self.data_status = data
        self.trailers_status = trailers

    def decode_headers(self, headers, end_stream):
        self.log.append((self.name, "headers", end_stream))
        return self.headers_status

    def decode_data(self, data, end_stream):
        self.log.append((self.name, "data", bytes(data), end_stream))
        return self.data_status

    def decode_trailers(self, trailers):
        self.log.append((self.name, "trailers"))
        return self.trailers_status


class Router(StreamFilter):
    """A terminal filter that echoes the request body back as the response."""

    def __init__(self, log) -> None:
        self.log = log

    def decode_headers(self, headers, end_stream):
        self.log.append(("router", "headers", end_stream))
        self.decoder_callbacks.encode_headers(HeaderMap([(":status", "200")]), False)
        if end_stream:
            self.decoder_callbacks.encode_data(b"", True)
        return H.STOP_ITERATION

    def decode_data(self, data, end_stream):
        self.log.append(("router", "data", bytes(data), end_stream))
        self.decoder_callbacks.encode_data(data, end_stream)
        return D.STOP_ITERATION_NO_BUFFER

    def decode_trailers(self, trailers):
        self.log.append(("router", "trailers"))
        self.decoder_callbacks.encode_data(b"", True)
        return T.STOP_ITERATION


@pytest.fixture(params=["router-in-chain", "router-apart"], autouse=True)
def router_placement(request, monkeypatch):
    """Every chain test runs twice: with the router as the chain's last slot, and given
    apart as the manager's ``terminal`` (as the connection manager builds streams)."""
    monkeypatch.setitem(_PLACEMENT, "apart", request.param == "router-apart")


_PLACEMENT = {"apart": False}


def _manager(filters, encoders=(), limit=1 << 20):
    sink = Sink()
    terminal = None
    if _PLACEMENT["apart"] and filters and isinstance(filters[-1], Router):
        *filters, terminal = filters
    fm = FilterManager(
        decoder_filters=filters,
        encoder_filters=list(encoders),
        sink=sink,
        stream_info=StreamInfo(now_monotonic=0.0),
        buffer_limit=limit,
        terminal=terminal,
    )
    return fm, sink


def _request(fm, body=(b"a", b"b"), trailers=False):
    fm.decode_headers(HeaderMap([(":method", "POST"), (":path", "/")]), False)
    for i, piece in enumerate(body):
        fm.decode_data(piece, i == len(body) - 1 and not trailers)
    if trailers:
        fm.decode_trailers(HeaderMap([("x-t", "1")]))


def test_everything_continues_in_order():
    log = []
    fm, sink = _manager([Recorder("a", log), Recorder("b", log), Router(log)])
    _request(fm)
    assert [e[:2] for e in log] == [
        ("a", "headers"),
        ("b", "headers"),
        ("router", "headers"),
        ("a", "data"),
        ("b", "data"),
        ("router", "data"),
        ("a", "data"),
        ("b", "data"),
        ("router", "data"),
    ]
    assert sink.out == [("headers", "200", False), ("data", b"a", False), ("data", b"b", True)]


def test_stop_iteration_still_sees_data_and_continuing_releases_headers():
    log = []
    a = Recorder("a", log, headers=H.STOP_ITERATION, data=D.STOP_ITERATION_AND_BUFFER)
    fm, _sink = _manager([a, Router(log)])
    _request(fm)
    assert ("router", "headers", False) not in log
    assert [e for e in log if e[0] == "a"] == [
        ("a", "headers", False),
        ("a", "data", b"a", False),
        ("a", "data", b"b", True),
    ]
    assert fm.decoder.queued_bytes == 2
    a.decoder_callbacks.continue_decoding()
    assert [e for e in log if e[0] == "router"] == [
        ("router", "headers", False),
        ("router", "data", b"a", False),
        ("router", "data", b"b", True),
    ]
    assert fm.decoder.queued_bytes == 0


def test_data_continue_releases_stopped_headers():
    log = []
    a = Recorder("a", log, headers=H.STOP_ITERATION)
    fm, _sink = _manager([a, Router(log)])
    fm.decode_headers(HeaderMap([(":path", "/")]), False)
    assert not any(e[0] == "router" for e in log)
    fm.decode_data(b"x", True)  # the filter's data hook continues: headers go first
    assert [e[:2] for e in log if e[0] == "router"] == [("router", "headers"), ("router", "data")]


def test_stop_all_holds_body_and_trailers_without_calling_the_filter():
    log = []
    a = Recorder("a", log, headers=H.STOP_ALL_ITERATION_AND_BUFFER)
    fm, _sink = _manager([a, Router(log)])
    _request(fm, trailers=True)
    assert [e for e in log if e[0] == "a"] == [("a", "headers", False)]
    assert a.decoder_callbacks.decoding_buffer() == bytearray(b"ab")
    a.decoder_callbacks.continue_decoding()
    assert [e[:2] for e in log if e[0] == "router"] == [
        ("router", "headers"),
        ("router", "data"),
        ("router", "data"),
        ("router", "trailers"),
    ]


def test_nested_stops_resume_in_order():
    log = []
    a = Recorder("a", log, headers=H.STOP_ALL_ITERATION_AND_BUFFER)
    b = Recorder("b", log, headers=H.STOP_ALL_ITERATION_AND_BUFFER)
    fm, sink = _manager([a, b, Router(log)])
    _request(fm)
    a.decoder_callbacks.continue_decoding()
    assert [e[:2] for e in log] == [("a", "headers"), ("b", "headers")]
    b.decoder_callbacks.continue_decoding()
    assert sink.out[-1] == ("data", b"b", True)


def test_buffer_limit_gives_413_and_stops_decoding():
    log = []
    a = Recorder("a", log, headers=H.STOP_ALL_ITERATION_AND_BUFFER)
    fm, sink = _manager([a, Router(log)], limit=3)
    fm.decode_headers(HeaderMap([(":path", "/")]), False)
    fm.decode_data(b"12", False)
    fm.decode_data(b"34", False)
    assert sink.out[0] == ("headers", "413", False)
    assert sink.out[1] == ("data", b"Payload Too Large", True)
    assert fm.stream_info.response_code_details == "request_payload_too_large"
    fm.decode_data(b"5", True)  # nothing more reaches the router
    assert not any(e[0] == "router" for e in log)


def test_watermark_status_asks_to_stop_reading_instead():
    log = []
    a = Recorder("a", log, headers=H.STOP_ALL_ITERATION_AND_WATERMARK)
    fm, sink = _manager([a, Router(log)], limit=3)
    fm.decode_headers(HeaderMap([(":path", "/")]), False)
    fm.decode_data(b"12", False)
    fm.decode_data(b"34", False)
    assert sink.watermarks == [(True, True)]
    a.decoder_callbacks.continue_decoding()
    assert sink.watermarks == [(True, True), (True, False)]
    assert sink.out[0] == ("headers", "200", False)


def test_local_reply_from_a_decoder_filter():
    log = []

    class Deny(Recorder):
        def decode_headers(self, headers, end_stream):
            self.decoder_callbacks.send_local_reply(403, b"denied", details="rbac_access_denied")
            return H.STOP_ITERATION

    fm, sink = _manager([Deny("d", log), Router(log)])
    _request(fm)
    assert sink.out == [("headers", "403", False), ("data", b"denied", True)]
    assert not any(e[0] == "router" for e in log)
    assert fm.stream_info.response_code_details == "rbac_access_denied"


def test_encoder_filters_run_in_reverse_order():
    log = []

    class Enc(StreamFilter):
        def __init__(self, name):
            self.name = name

        def encode_headers(self, headers, end_stream):
            log.append(self.name)
            headers.set("x-" + self.name, "1")
            return H.CONTINUE

    fm, _sink = _manager([Router([])], encoders=[Enc("first"), Enc("second")])
    fm.decode_headers(HeaderMap([(":path", "/")]), True)
    assert log == ["second", "first"]


def test_no_buffer_end_stream_waits_for_continue():
    log = []
    a = Recorder("a", log, data=D.STOP_ITERATION_NO_BUFFER)
    fm, _sink = _manager([a, Router(log)])
    _request(fm, body=(b"z",))
    assert ("router", "data", b"z", True) not in log
    a.decoder_callbacks.continue_decoding()
    assert log[-1] == ("router", "data", b"", True)


# The router-only chain ----------------------------------------------------------------


def _terminal(router):
    sink = Sink()
    return TerminalFilterManager(router, sink=sink, stream_info=StreamInfo(now_monotonic=0.0)), sink


def test_terminal_manager_passes_the_request_and_response_through():
    log = []
    fm, sink = _terminal(Router(log))
    _request(fm, body=(b"a", b"b"))
    assert log == [("router", "headers", False), ("router", "data", b"a", False),
                   ("router", "data", b"b", True)]  # fmt: skip
    assert sink.out == [("headers", "200", False), ("data", b"a", False), ("data", b"b", True)]
    assert fm.done


def test_terminal_manager_local_reply_ends_the_request_side():
    class Refuser(StreamFilter):
        def decode_headers(self, headers, end_stream):
            self.decoder_callbacks.send_local_reply(404, b"", details="route_not_found")
            return H.STOP_ITERATION

        def decode_data(self, data, end_stream):
            raise AssertionError("the request is over after a local reply")

    fm, sink = _terminal(Refuser())
    _request(fm, body=(b"ignored",))
    assert sink.out == [("headers", "404", True)]
    assert fm.stream_info.response_code_details == "route_not_found"


def test_terminal_manager_local_reply_after_the_response_started_resets():
    class Late(StreamFilter):
        def decode_headers(self, headers, end_stream):
            self.decoder_callbacks.encode_headers(HeaderMap([(":status", "200")]), False)
            self.decoder_callbacks.send_local_reply(504, b"late", details="response_timeout")
            return H.STOP_ITERATION

    fm, sink = _terminal(Late())
    fm.decode_headers(HeaderMap([(":method", "GET")]), True)
    assert sink.out == [("headers", "200", False), ("reset",)]


# The router given apart (no slot: the manager is its callbacks) ----------------------------


class _Told(StreamFilter):
    def __init__(self, name, told) -> None:
        self.name, self.told = name, told

    def on_destroy(self):
        self.told.append(self.name)


class _EncoderOnly(StreamEncoderFilter):
    def __init__(self, told) -> None:
        self.told = told

    def on_destroy(self):
        self.told.append("encoder")


def test_router_apart_has_the_manager_as_callbacks_and_follows_the_route():
    class Rerouter(StreamFilter):
        def decode_headers(self, headers, end_stream):
            self.decoder_callbacks.clear_route_cache()
            return H.CONTINUE

    class Sees(Router):
        def decode_headers(self, headers, end_stream):
            self.log.append(self.decoder_callbacks.route)
            return super().decode_headers(headers, end_stream)

    log = []
    router = Sees(log)
    fm = FilterManager([Rerouter()], [], Sink(), StreamInfo(now_monotonic=0.0), 1 << 20,
                       "old", lambda: "new", router)  # fmt: skip
    assert router.decoder_callbacks is fm
    _request(fm, body=(b"x",))
    assert log[0] == "new" and fm.route == "new"
    assert log[1:] == [("router", "headers", False), ("router", "data", b"x", True)]


def test_router_apart_gets_nothing_after_a_local_reply():
    class Refuser(StreamFilter):
        def decode_headers(self, headers, end_stream):
            self.decoder_callbacks.send_local_reply(403, b"no", details="rbac_access_denied")
            return H.CONTINUE  # (even if it lets the headers go on)

    log = []
    router = Router(log)
    fm = FilterManager([Refuser()], [], Sink(), StreamInfo(now_monotonic=0.0), 1 << 20,
                       terminal=router)  # fmt: skip
    _request(fm, body=(b"x",), trailers=True)
    assert log == []
    assert fm.sink.out == [("headers", "403", False), ("data", b"no", True)]


def test_destroy_tells_decoders_then_the_router_then_encoders_once_and_cuts_the_chains():
    told = []
    a, both = _Told("a", told), _Told("both", told)

    class Router_(Router):
        def on_destroy(self):
            told.append("router")

    router = Router_([])
    fm = FilterManager([a, both], [both, _EncoderOnly(told)], Sink(),
                       StreamInfo(now_monotonic=0.0), 1 << 20, terminal=router)  # fmt: skip
    fm.on_destroy()
    assert told == ["a", "both", "router", "encoder"]
    assert fm.terminal is None
    a.decoder_callbacks.continue_decoding()  # late: goes nowhere
    assert fm.sink.out == []
