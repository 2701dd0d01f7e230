"""The gRPC stats filter (Envoy's GrpcStatsFilter, checked against Envoy 1.40).

For a gRPC request (``application/grpc[+...]``), a Connect unary request (a
``connect-protocol-version`` header) or a Connect streaming one (``application/connect+...``)
whose route has a cluster, the call is counted in that cluster's scope (grpc/context.py)::

    cluster.<cluster>.grpc.<service>.<method>.{success,failure,total,<grpc-status>}
    cluster.<cluster>.grpc.<service>.<method>.{request,response}_message_count
    cluster.<cluster>.grpc.<service>.<method>.upstream_rq_time      (enable_upstream_stats)

Which methods get their own names: every method with ``stats_for_all_methods: true``; with an
``individual_method_stats_allowlist``, the listed ones, the others being counted without the
service and method (``cluster.<cluster>.grpc.success``...); by default (neither) every call is
counted without them. A ``:path`` that is not ``/service/method`` is not counted. With
``replace_dots_in_grpc_service_name`` the dots of the service become ``_``.

A gRPC call's outcome is its ``grpc-status`` (in the response headers, or the trailers): ``0``
is a success, anything else a failure, and the value itself is a counter too; a response
without one is not counted. A Connect unary call succeeds with a 200; a Connect stream by its
end-of-stream frame (response_frame_counter.py). Messages are counted as their frame starts.
``upstream_rq_time`` is the time from the last byte sent upstream to the last byte received.

``emit_filter_state`` keeps the message counts in the stream's filter state under the filter's
name (``GrpcStatsObject``; Envoy's ``FilterObject`` proto), once a message was seen.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from envoy.extensions.filters.http.grpc_stats.v3 import config_pb2

from legatus.config.errors import join_path
from legatus.config.supported import check_supported
from legatus.extensions.filters.http.grpc_stats.response_frame_counter import (
    ResponseFrameCounter,
)
from legatus.grpc.common import (
    FrameInspector,
    is_connect_request_headers,
    is_connect_streaming_request_headers,
    is_connect_streaming_response_headers,
    is_grpc_request_headers,
    is_grpc_response_headers,
    resolve_service_and_method,
)
from legatus.grpc.context import GRPC, GrpcStatsContext, MethodStats
from legatus.http.filter import (
    FilterDataStatus,
    FilterHeadersStatus,
    FilterTrailersStatus,
    StreamFilter,
)

NAME = "envoy.filters.http.grpc_stats"
_FIELDS = ("emit_filter_state", "individual_method_stats_allowlist", "stats_for_all_methods",
           "enable_upstream_stats", "replace_dots_in_grpc_service_name")  # fmt: skip

_CONTINUE = FilterHeadersStatus.CONTINUE
_DATA_CONTINUE = FilterDataStatus.CONTINUE
_TRAILERS_CONTINUE = FilterTrailersStatus.CONTINUE


@dataclass(frozen=True, slots=True, kw_only=True)
class GrpcStatsConfig:
    cluster_manager: Any  # the worker's ThreadLocalClusterManager
    stats: GrpcStatsContext
    emit_filter_state: bool = False
    enable_upstream_stats: bool = False
    replace_dots: bool = False
    stats_for_all_methods: bool = False
    allowlist: frozenset[tuple[str, str]] | None = None  # (service, method) pairs


def compile_config(proto, context, path: str) -> GrpcStatsConfig:
    check_supported(proto, _FIELDS, path, "FilterConfig")
    allowlist = None
    if proto.WhichOneof("per_method_stat_specifier") == "individual_method_stats_allowlist":
        methods = proto.individual_method_stats_allowlist
        list_path = join_path(path, "individual_method_stats_allowlist")
        check_supported(methods, ("services",), list_path, "GrpcMethodList")
        for i, service in enumerate(methods.services):
            check_supported(service, ("name", "method_names"), f"{list_path}.services[{i}]",
                            "GrpcMethodList.Service")  # fmt: skip
        allowlist = frozenset(
            (service.name, method)
            for service in methods.services
            for method in service.method_names
        )
    return GrpcStatsConfig(
        cluster_manager=context.cluster_manager,
        stats=GrpcStatsContext(),
        emit_filter_state=proto.emit_filter_state,
        enable_upstream_stats=proto.enable_upstream_stats,
        replace_dots=proto.replace_dots_in_grpc_service_name,
        stats_for_all_methods=proto.stats_for_all_methods.value,
        allowlist=allowlist,
    )


class GrpcStatsObject:
    """The filter state object: the call's message counts so far."""

    __slots__ = ("request_message_count", "response_message_count")

    def __init__(self) -> None:
        self.request_message_count = 0
        self.response_message_count = 0

    def serialize_as_proto(self) -> config_pb2.FilterObject:
        return config_pb2.FilterObject(
            request_message_count=self.request_message_count,
            response_message_count=self.response_message_count,
        )

    def get_field(self, name: str) -> int | None:
        if name in self.__slots__:
            return getattr(self, name)
        return None


class GrpcStatsFilter(StreamFilter):
    __slots__ = ("config", "connect_stream", "connect_stream_response", "connect_unary",
                 "connect_unary_request", "connect_unary_response", "decoder_callbacks",
                 "encoder_callbacks", "grpc", "grpc_response", "requests", "responses",
                 "state", "stats", "tracking")  # fmt: skip

    def __init__(self, config: GrpcStatsConfig) -> None:
        self.config = config
        self.grpc = False
        self.grpc_response = False
        self.connect_unary = False
        self.connect_stream = False
        self.connect_stream_response = False
        self.connect_unary_request = False  # a Connect unary call's body was seen
        self.connect_unary_response = False
        self.tracking = False  # the call is counted (a cluster and a /service/method path)
        self.stats: MethodStats | None = None
        self.requests: FrameInspector | None = None
        self.responses: ResponseFrameCounter | None = None
        self.state: GrpcStatsObject | None = None

    # Request ------------------------------------------------------------------------------

    def decode_headers(self, headers, end_stream: bool) -> FilterHeadersStatus:
        self.grpc = is_grpc_request_headers(headers)
        self.connect_unary = is_connect_request_headers(headers)
        self.connect_stream = is_connect_streaming_request_headers(headers)
        if not (self.grpc or self.connect_unary or self.connect_stream):
            return _CONTINUE
        self.requests = FrameInspector()
        self.responses = ResponseFrameCounter()
        route = self.decoder_callbacks.route
        config = self.config
        name = route.cluster_name if route is not None else None
        manager = config.cluster_manager
        cluster = manager.get(name) if name and manager is not None else None
        if cluster is None:
            return _CONTINUE
        names = resolve_service_and_method(headers.get(":path"))
        if names is None:
            return _CONTINUE
        self.tracking = True
        if config.replace_dots:
            names = (names[0].replace(".", "_"), names[1])
        if not config.stats_for_all_methods:
            allowlist = config.allowlist
            if allowlist is None or names not in allowlist:
                names = None  # counted without the service and method
        self.stats = config.stats.method_stats(cluster.scope, GRPC, names)
        return _CONTINUE

    def decode_data(self, data: bytes, end_stream: bool) -> FilterDataStatus:
        requests = self.requests
        if requests is None:
            return _DATA_CONTINUE
        if self.grpc or self.connect_stream:
            delta = requests.inspect(data)
            if delta:
                self._write_filter_state()
                if self.stats is not None:
                    self.stats.counter("request_message_count").add(delta)
        elif self.connect_unary and end_stream:
            self.connect_unary_request = True
            self._write_filter_state()
            if self.stats is not None:
                self.stats.counter("request_message_count").inc()
        return _DATA_CONTINUE

    # Response -----------------------------------------------------------------------------

    def encode_headers(self, headers, end_stream: bool) -> FilterHeadersStatus:
        self.grpc_response = is_grpc_response_headers(headers, end_stream)
        self.connect_stream_response = is_connect_streaming_response_headers(headers)
        if self.grpc_response and self.responses is None:  # a gRPC answer to another request
            self.responses = ResponseFrameCounter()
        stats = self.stats
        if self.tracking and stats is not None:
            if self.connect_unary:
                stats.charge_success(headers.get(":status") == "200")
            elif not self.connect_stream_response:
                stats.charge_status(headers.get("grpc-status"))
            if end_stream:
                self._charge_upstream_time()
        return _CONTINUE

    def encode_data(self, data: bytes, end_stream: bool) -> FilterDataStatus:
        responses = self.responses
        stats = self.stats
        if self.grpc_response and responses is not None:
            delta = responses.inspect(data)
            if delta:
                self._write_filter_state()
                if stats is not None:
                    stats.counter("response_message_count").add(delta)
        elif self.connect_stream and responses is not None:
            delta = responses.inspect(data)
            if delta:
                self._write_filter_state()
                if stats is not None:
                    stats.counter("response_message_count").add(delta)
            if end_stream and stats is not None:
                stats.charge_success(responses.connect_success())
                self._charge_upstream_time()
        elif self.connect_unary and end_stream:
            self.connect_unary_response = True
            self._write_filter_state()
            if stats is not None:
                stats.counter("response_message_count").inc()
                self._charge_upstream_time()
        return _DATA_CONTINUE

    def encode_trailers(self, trailers) -> FilterTrailersStatus:
        stats = self.stats
        if self.grpc and self.tracking and stats is not None:
            stats.charge_status(trailers.get("grpc-status"))
            self._charge_upstream_time()
        return _TRAILERS_CONTINUE

    # Helpers ------------------------------------------------------------------------------

    def _charge_upstream_time(self) -> None:
        if not self.config.enable_upstream_stats:
            return
        info = self.decoder_callbacks.stream_info
        sent = info.last_upstream_tx_byte_sent
        received = info.last_upstream_rx_byte_received
        if sent is not None and received is not None:
            self.stats.charge_upstream_time(int((received - sent) * 1000))

    def _write_filter_state(self) -> None:
        if not self.config.emit_filter_state:
            return
        state = self.state
        if state is None:
            info = self.decoder_callbacks.stream_info
            if info.filter_state is None:
                info.filter_state = {}
            state = self.state = info.filter_state[NAME] = GrpcStatsObject()
        if self.connect_unary:
            state.request_message_count = int(self.connect_unary_request)
            state.response_message_count = int(self.connect_unary_response)
        else:
            state.request_message_count = self.requests.count if self.requests else 0
            state.response_message_count = self.responses.count if self.responses else 0

    def on_destroy(self) -> None:
        self.requests = self.responses = None
