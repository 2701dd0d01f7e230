"""The fault, buffer, health_check and CORS filters, driven through the real filter manager
without sockets: decisions, timers, stats and config refusals."""

from __future__ import annotations

import random

import pytest

from legatus.config.errors import ConfigError
from legatus.config.factory_context import FactoryContext
from legatus.config.proto_json import message_class, parse
from legatus.extensions.filters.http.buffer import BufferConfig, BufferFilter, compile_buffer
from legatus.extensions.filters.http.buffer import compile_per_route as buffer_per_route
from legatus.extensions.filters.http.cors.filter import CorsFilter, compile_config, compile_policy
from legatus.extensions.filters.http.fault.config import compile_filter_config
from legatus.extensions.filters.http.fault.filter import FaultFilter, parse_uint
from legatus.extensions.filters.http.health_check.filter import HealthCheckFilter
from legatus.extensions.filters.http.health_check.filter import (
    compile_config as compile_health_check,
)
from legatus.extensions.registry import default_registry
from legatus.http.filter import StreamEncoderFilter, StreamFilter
from legatus.http.filter_manager import FilterManager
from legatus.http.headers import HeaderMap
from legatus.server.server_health import ServerHealth
from legatus.stats.store import Store
from legatus.stream_info import ResponseFlag, StreamInfo

FAULT = "envoy.extensions.filters.http.fault.v3.HTTPFault"
BUFFER = "envoy.extensions.filters.http.buffer.v3.Buffer"
BUFFER_PER_ROUTE = "envoy.extensions.filters.http.buffer.v3.BufferPerRoute"
HEALTH_CHECK = "envoy.extensions.filters.http.health_check.v3.HealthCheck"
CORS = "envoy.extensions.filters.http.cors.v3.Cors"
CORS_POLICY = "envoy.extensions.filters.http.cors.v3.CorsPolicy"
ALL = {"numerator": 100}


def _message(type_name: str, value: dict):
    return parse(value, message_class(type_name), path="")


class Loop:
    """call_later, fired by hand."""

    def __init__(self) -> None:
        self.now = 0.0
        self.timers: list = []

    def time(self) -> float:
        return self.now

    def call_later(self, delay, fn, *args):
        handle = _Handle(self.now + delay, fn, args)
        self.timers.append(handle)
        return handle

    def advance(self, seconds: float) -> None:
        self.now += seconds
        for handle in [h for h in self.timers if h.when <= self.now and not h.cancelled]:
            self.timers.remove(handle)
            handle.fn(*handle.args)


class _Handle:
    def __init__(self, when, fn, args) -> None:
        self.when, self.fn, self.args, self.cancelled = when, fn, args, False

    def cancel(self) -> None:
        self.cancelled = True


def _context(store: Store, loop=None, **kw) -> FactoryContext:
    return FactoryContext(
        registry=default_registry(), store=store, options=None,  # type: ignore[arg-type]
        random=random.Random(1), loop=loop, http_stat_prefix="ing", **kw,
    )  # fmt: skip


class Sink:
    def __init__(self) -> None:
        self.headers: HeaderMap | None = None
        self.body = b""

    def write_headers(self, headers, end_stream):
        self.headers = headers

    def write_data(self, data, end_stream):
        self.body += bytes(data)

    def write_trailers(self, trailers):
        pass

    def on_watermark(self, *, decoding, above):
        pass

    def build_local_reply(self, status, body, details, headers, modify_headers=None):
        reply = HeaderMap([(":status", str(status))])
        for name, value in (headers or {}).items():
            reply.set(name, value)
        if modify_headers is not None:
            modify_headers(reply)
        return reply, body

    def reset_stream(self):
        pass


class Upstream(StreamFilter):
    def __init__(self) -> None:
        self.request: HeaderMap | None = None
        self.body = b""

    def decode_headers(self, headers, end_stream):
        self.request = headers
        if end_stream:
            self.decoder_callbacks.encode_headers(HeaderMap([(":status", "200")]), True)
        return super().decode_headers(headers, end_stream)

    def decode_data(self, data, end_stream):
        self.body += bytes(data)
        if end_stream:
            self.decoder_callbacks.encode_headers(HeaderMap([(":status", "200")]), True)
        return super().decode_data(data, end_stream)


def _run(filters, headers, body: bytes | None = None, limit: int = 1 << 20):
    sink, upstream = Sink(), Upstream()
    info = StreamInfo(now_monotonic=0.0)
    encoders = [f for f in filters if isinstance(f, StreamEncoderFilter)]
    fm = FilterManager(decoder_filters=[*filters, upstream], encoder_filters=encoders,
                       sink=sink, stream_info=info, buffer_limit=limit)  # fmt: skip
    fm.decode_headers(HeaderMap(headers), body is None)
    if body is not None:
        fm.decode_data(body, True)
    return fm, sink, upstream, info


# Fault --------------------------------------------------------------------------------------


def test_parse_uint_is_simple_atoi():
    assert parse_uint(" 42 ") == 42
    assert parse_uint("+7") == 7
    assert parse_uint("-1") is None
    assert parse_uint("4x") is None
    assert parse_uint("") is None
    assert parse_uint(str(2**32), 2**32 - 1) is None


def _fault(store, loop, **fields):
    return compile_filter_config(_message(FAULT, fields), _context(store, loop), "f")


def test_fault_abort_flags_stats_and_body():
    store, loop = Store(), Loop()
    config = _fault(store, loop, abort={"http_status": 503, "percentage": ALL})
    _, sink, upstream, info = _run([FaultFilter(config)], [(":method", "GET"), (":path", "/")])
    assert sink.headers[":status"] == "503" and sink.body == b"fault filter abort"
    assert info.response_code_details == "fault_filter_abort"
    assert info.has_flag(ResponseFlag.FAULT_INJECTED)
    assert upstream.request is None
    assert store.value("http.ing.fault.aborts_injected") == 1


def test_fault_delay_uses_a_timer_and_is_cancelled_on_destroy():
    store, loop = Store(), Loop()
    config = _fault(store, loop, delay={"fixed_delay": "1s", "percentage": ALL},
                    max_active_faults=1)  # fmt: skip
    fm, _, upstream, info = _run([FaultFilter(config)], [(":method", "GET")])
    assert upstream.request is None and info.has_flag(ResponseFlag.DELAY_INJECTED)
    assert store.value("http.ing.fault.active_faults") == 1
    # A second request overflows max_active_faults and passes at once.
    _, _, second, _ = _run([FaultFilter(config)], [(":method", "GET")])
    assert second.request is not None
    assert store.value("http.ing.fault.faults_overflow") == 1
    fm.on_destroy()  # the client went away during the delay
    assert store.value("http.ing.fault.active_faults") == 0
    assert not loop.timers or loop.timers[0].cancelled


def test_fault_delay_then_continue_with_body():
    store, loop = Store(), Loop()
    config = _fault(store, loop, delay={"header_delay": {}, "percentage": ALL})
    _, _, upstream, _ = _run([FaultFilter(config)], [
        (":method", "POST"), ("x-envoy-fault-delay-request", "500")], body=b"abc")  # fmt: skip
    assert upstream.request is None
    loop.advance(0.5)
    assert upstream.request is not None and upstream.body == b"abc"
    assert store.value("http.ing.fault.active_faults") == 0


def test_fault_downstream_cluster_stats_and_runtime_key():
    store, loop = Store(), Loop()
    config = _fault(store, loop, abort={"header_abort": {}, "percentage": ALL})
    _, sink, _, _ = _run([FaultFilter(config)], [
        ("x-envoy-fault-abort-request", "429"), ("x-envoy-downstream-service-cluster", "web"),
    ])  # fmt: skip
    assert sink.headers[":status"] == "429"
    assert store.value("http.ing.fault.web.aborts_injected") == 1


@pytest.mark.parametrize("fields,where", [
    ({"response_rate_limit": {"fixed_limit": {"limit_kbps": 1}, "percentage": ALL}},
     "f.response_rate_limit"),
    ({"filter_metadata": {"a": 1}}, "f.filter_metadata"),
])  # fmt: skip
def test_fault_refuses_what_it_does_not_do(fields, where):
    with pytest.raises(ConfigError) as e:
        _fault(Store(), Loop(), **fields)
    assert e.value.path == where


# Buffer -------------------------------------------------------------------------------------


def test_buffer_holds_the_body_and_sets_content_length():
    config = BufferConfig(settings=compile_buffer(_message(BUFFER, {"max_request_bytes": 8}), "b"),
                          name="buffer")  # fmt: skip
    _, _, upstream, _ = _run([BufferFilter(config)], [(":method", "POST")], body=b"12345")
    assert upstream.request["content-length"] == "5" and upstream.body == b"12345"
    _, sink, upstream, info = _run([BufferFilter(config)], [(":method", "POST")], body=b"x" * 9)
    assert sink.headers[":status"] == "413"
    assert info.response_code_details == "request_payload_too_large"


def test_buffer_per_route():
    disabled = buffer_per_route(_message(BUFFER_PER_ROUTE, {"disabled": True}), "r")
    assert disabled.disabled
    bigger = buffer_per_route(
        _message(BUFFER_PER_ROUTE, {"buffer": {"max_request_bytes": 99}}), "r"
    )
    assert bigger.max_request_bytes == 99 and not bigger.disabled


# Health check -------------------------------------------------------------------------------


def test_health_check_answers_and_fails_with_the_server():
    store, server = Store(), ServerHealth()
    proto = _message(HEALTH_CHECK, {"pass_through_mode": False, "headers": [
        {"name": ":path", "string_match": {"exact": "/healthz"}}]})  # fmt: skip
    config = compile_health_check(proto, _context(store, server_health=server), "h")
    _, sink, upstream, info = _run([HealthCheckFilter(config)], [(":path", "/healthz")])
    assert sink.headers[":status"] == "200" and upstream.request is None and info.health_check
    assert "x-envoy-upstream-healthchecked-cluster" in sink.headers
    server.failed = True
    _, sink, _, info = _run([HealthCheckFilter(config)], [(":path", "/healthz")])
    assert sink.headers[":status"] == "503"
    assert info.has_flag(ResponseFlag.FAILED_LOCAL_HEALTH_CHECK)
    _, sink, upstream, info = _run([HealthCheckFilter(config)], [(":path", "/other")])
    assert upstream.request is not None and not info.health_check
    assert sink.headers["x-envoy-immediate-health-check-fail"] == "true"
    assert store.value("http.ing.health_check.request_total") == 2
    assert store.value("http.ing.health_check.failed") == 1


def test_health_check_cache_time_needs_pass_through():
    proto = _message(HEALTH_CHECK, {"pass_through_mode": False, "cache_time": "1s"})
    with pytest.raises(ConfigError) as e:
        compile_health_check(proto, _context(Store()), "h")
    assert e.value.path == "h.cache_time"


# CORS ---------------------------------------------------------------------------------------


class _Route:
    def __init__(self, policies) -> None:
        from legatus.router.action import RouteAction

        self.action = RouteAction(cluster="c")
        self.policies = policies

    def per_filter_configs(self, name):
        return list(self.policies)


def _cors_run(policy: dict, headers):
    store = Store()
    context = _context(store, http_filter_name="cors")
    config = compile_config(_message(CORS, {}), context, "c")
    compiled = compile_policy(_message(CORS_POLICY, policy), context, "p")
    f = CorsFilter(config)
    sink, upstream = Sink(), Upstream()
    fm = FilterManager(decoder_filters=[f, upstream], encoder_filters=[f], sink=sink,
                       stream_info=StreamInfo(now_monotonic=0.0), buffer_limit=1 << 20)  # fmt: skip
    fm.route = _Route([compiled])
    fm.decode_headers(HeaderMap(headers), True)
    return sink, upstream, store


def test_cors_preflight_and_simple_request():
    policy = {"allow_origin_string_match": [{"exact": "https://a.example"}],
              "allow_methods": "*", "expose_headers": "x-e"}  # fmt: skip
    sink, upstream, store = _cors_run(policy, [
        (":method", "OPTIONS"), ("origin", "https://a.example"),
        ("access-control-request-method", "PUT")])  # fmt: skip
    assert upstream.request is None
    assert sink.headers["access-control-allow-methods"] == "PUT"
    assert sink.headers["access-control-allow-origin"] == "https://a.example"
    sink, upstream, store = _cors_run(policy, [(":method", "GET"), ("origin", "https://b.example")])
    assert upstream.request is not None and "access-control-allow-origin" not in sink.headers
    assert store.value("http.ing.cors.origin_invalid") == 1


def test_cors_policy_refuses_unknown_matcher():
    with pytest.raises(ConfigError):
        compile_policy(_message(CORS_POLICY, {"allow_origin_string_match": [{}]}),
                       _context(Store()), "p")  # fmt: skip
