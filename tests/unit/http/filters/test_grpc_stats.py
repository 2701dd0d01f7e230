"""The grpc_stats filter through the real filter manager: which calls count under which names,
message counting across pieces, Connect calls, upstream time, filter state."""

from __future__ import annotations

from types import SimpleNamespace

from legatus.config.proto_json import message_class, parse
from legatus.extensions.filters.http.grpc_stats.filter import (
    NAME,
    GrpcStatsFilter,
    compile_config,
)
from legatus.extensions.filters.http.grpc_stats.response_frame_counter import (
    ResponseFrameCounter,
)
from legatus.grpc.common import FLAG_CONNECT_END_STREAM, frame
from legatus.stats.store import Store
from tests.unit.http.filters.grpc_support import Stream, cluster_manager, stat_values

CONFIG_TYPE = "envoy.extensions.filters.http.grpc_stats.v3.FilterConfig"
GRPC_OK = [(":status", "200"), ("content-type", "application/grpc")]
ONE_REQUEST = (frame(b"a"),)
ONE_RESPONSE = (frame(b"r"),)


def config(store: Store, **fields):
    proto = parse(fields, message_class(CONFIG_TYPE), path="")
    return compile_config(proto, SimpleNamespace(cluster_manager=cluster_manager(store)), "grpc")


def call(cfg, *, path="/pkg.Svc/Call", request=ONE_REQUEST, response=ONE_RESPONSE,
         status="0", content_type="application/grpc", headers=(), response_headers=GRPC_OK,
         trailers_only=False) -> Stream:  # fmt: skip
    s = Stream([GrpcStatsFilter(cfg)])
    s.send([(":method", "POST"), (":path", path), ("content-type", content_type), *headers],
           list(request))  # fmt: skip
    if trailers_only:
        s.upstream.respond([*response_headers, ("grpc-status", status)])
    else:
        s.upstream.respond(
            response_headers, list(response), [("grpc-status", status)] if status else None
        )
    return s


def test_stats_for_all_methods():
    store = Store()
    cfg = config(store, stats_for_all_methods=True)
    call(cfg, request=[frame(b"a") + frame(b"b")[:2], frame(b"b")[2:]])
    call(cfg, status="14", response=[frame(b"1"), frame(b"2")])
    call(cfg, status="5", trailers_only=True)
    assert stat_values(store) == {
        "grpc.pkg.Svc.Call.request_message_count": 4,
        "grpc.pkg.Svc.Call.response_message_count": 3,
        "grpc.pkg.Svc.Call.0": 1, "grpc.pkg.Svc.Call.14": 1, "grpc.pkg.Svc.Call.5": 1,
        "grpc.pkg.Svc.Call.success": 1, "grpc.pkg.Svc.Call.failure": 2,
        "grpc.pkg.Svc.Call.total": 3,
    }  # fmt: skip


def test_by_default_calls_count_without_their_method():
    store = Store()
    cfg = config(store)
    call(cfg)
    call(cfg, path="/not-a-grpc-path")  # not counted at all
    assert stat_values(store) == {
        "grpc.request_message_count": 1, "grpc.response_message_count": 1, "grpc.0": 1,
        "grpc.success": 1, "grpc.total": 1,
    }  # fmt: skip


def test_allowlist():
    store = Store()
    cfg = config(store, individual_method_stats_allowlist={
        "services": [{"name": "pkg.Svc", "method_names": ["Call"]}]})  # fmt: skip
    call(cfg, response=())
    call(cfg, path="/pkg.Svc/Other?x=/y", response=())
    assert stat_values(store) == {
        "grpc.pkg.Svc.Call.request_message_count": 1, "grpc.pkg.Svc.Call.0": 1,
        "grpc.pkg.Svc.Call.success": 1, "grpc.pkg.Svc.Call.total": 1,
        "grpc.request_message_count": 1, "grpc.0": 1, "grpc.success": 1, "grpc.total": 1,
    }  # fmt: skip


def test_replace_dots_and_odd_statuses():
    store = Store()
    cfg = config(store, stats_for_all_methods=True, replace_dots_in_grpc_service_name=True)
    call(cfg, request=(), response=(), status="abc")
    call(cfg, request=(), response=(), status=None)  # no grpc-status: not charged
    assert stat_values(store) == {
        "grpc.pkg_Svc.Call.abc": 1, "grpc.pkg_Svc.Call.failure": 1,
        "grpc.pkg_Svc.Call.total": 1,
    }  # fmt: skip


def test_non_grpc_requests_and_responses():
    store = Store()
    cfg = config(store, stats_for_all_methods=True)
    call(cfg, content_type="application/grpc-web")  # not gRPC here (grpc_web converts first)
    call(cfg, content_type="application/grpc;x=y")
    s = call(cfg, response=[b"oops"], status=None,
             response_headers=[(":status", "503"), ("content-type", "text/plain")])  # fmt: skip
    assert s.sink.body == b"oops"
    assert stat_values(store) == {
        "grpc.pkg.Svc.Call.request_message_count": 1
    }  # the 503 answer counts nothing


def test_connect_unary_and_streaming():
    store = Store()
    cfg = config(store, stats_for_all_methods=True)
    unary = [("connect-protocol-version", "1")]
    json = [(":status", "200"), ("content-type", "application/json")]
    call(cfg, content_type="application/json", headers=unary, request=[b"{}"],
         response=[b"{}"], status=None, response_headers=json)  # fmt: skip
    call(cfg, content_type="application/json", headers=unary, request=[b"{}"],
         response=[b"{}"], status=None, response_headers=[(":status", "404")])  # fmt: skip
    stream_type = [(":status", "200"), ("content-type", "application/connect+proto")]
    end_ok = frame(b"{}", FLAG_CONNECT_END_STREAM)
    end_error = frame(b'{"error": {"code": "unavailable"}}', FLAG_CONNECT_END_STREAM)
    call(cfg, content_type="application/connect+proto", response=[frame(b"m") + end_ok],
         status=None, response_headers=stream_type)  # fmt: skip
    call(cfg, content_type="application/connect+proto", response=[frame(b"m"), end_error],
         status=None, response_headers=stream_type)  # fmt: skip
    assert stat_values(store) == {
        "grpc.pkg.Svc.Call.request_message_count": 4,
        "grpc.pkg.Svc.Call.response_message_count": 4,
        "grpc.pkg.Svc.Call.success": 2, "grpc.pkg.Svc.Call.failure": 2,
        "grpc.pkg.Svc.Call.total": 4,
    }  # fmt: skip


def test_response_frame_counter_skips_the_connect_end_frame():
    counter = ResponseFrameCounter()
    message = frame(b"a") + frame(b"{}", FLAG_CONNECT_END_STREAM) + frame(b"after")
    assert counter.inspect(message[:4]) == 1
    assert counter.inspect(message[4:]) == 0
    assert counter.count == 1 and counter.connect_success()
    bad = ResponseFrameCounter()
    bad.inspect(frame(b"[1]", FLAG_CONNECT_END_STREAM))
    assert not bad.connect_success()


def test_upstream_time():
    store = Store()
    cfg = config(store, stats_for_all_methods=True, enable_upstream_stats=True)
    s = Stream([GrpcStatsFilter(cfg)])
    s.send([(":method", "POST"), (":path", "/pkg.Svc/Call"), ("content-type", "application/grpc")])
    s.info.last_upstream_tx_byte_sent = 1.0
    s.info.last_upstream_rx_byte_received = 1.25
    s.upstream.respond(GRPC_OK, frame(b"r"), [("grpc-status", "0")])
    histogram = store.get("cluster.backend.grpc.pkg.Svc.Call.upstream_rq_time")
    assert histogram is not None and histogram.quantile(1.0) >= 250


def test_filter_state():
    store = Store()
    cfg = config(store, emit_filter_state=True)
    s = call(cfg, request=[frame(b"a"), frame(b"b")], response=[frame(b"r")])
    state = s.info.filter_state[NAME]
    assert (state.request_message_count, state.response_message_count) == (2, 1)
    assert state.serialize_as_proto().request_message_count == 2
    assert state.get_field("response_message_count") == 1 and state.get_field("x") is None
    quiet = call(config(store), request=[frame(b"a")])
    assert quiet.info.filter_state is None


def test_unrouted_requests_are_not_counted():
    store = Store()
    cfg = config(store, stats_for_all_methods=True)
    s = Stream([GrpcStatsFilter(cfg)])
    s.manager.route = None
    s.send([(":method", "POST"), (":path", "/pkg.Svc/Call"), ("content-type", "application/grpc")],
           [frame(b"a")])  # fmt: skip
    assert stat_values(store) == {}
