"""A stream without sockets for the gRPC filters: the real filter manager between a recording
sink (rendering local replies as the connection manager does) and a scripted terminal filter
that plays the upstream."""

from __future__ import annotations

from dataclasses import dataclass, field

from legatus.http.filter import FilterDataStatus, FilterHeadersStatus, StreamDecoderFilter
from legatus.http.filter_manager import FilterManager
from legatus.http.headers import HeaderMap
from legatus.http.local_reply import LocalReply, render_local_reply
from legatus.stats.store import Store
from legatus.stream_info import StreamInfo


class Sink:
    """Records what reaches the client, as (kind, payload, end_stream) events."""

    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        self.events: list[tuple[str, object, bool]] = []

    def write_headers(self, headers, end_stream):
        self.events.append(("headers", headers, end_stream))

    def write_data(self, data, end_stream):
        self.events.append(("data", bytes(data), end_stream))

    def write_trailers(self, trailers):
        self.events.append(("trailers", trailers, True))

    def on_watermark(self, *, decoding, above):
        pass

    def build_local_reply(self, status, body, details, headers, modify_headers=None):
        reply = LocalReply(
            status=status,
            body=body.decode("utf-8", "surrogateescape"),
            details=details,
            headers=tuple((headers or {}).items()),
        )
        return render_local_reply(
            reply,
            request_headers=self.stream.request,
            info=self.stream.info,
            modify_headers=modify_headers,
        )

    def reset_stream(self):
        self.events.append(("reset", None, True))

    # What the client got ---------------------------------------------------------------------

    @property
    def headers(self) -> HeaderMap:
        return next(p for k, p, _ in self.events if k == "headers")

    @property
    def body(self) -> bytes:
        return b"".join(p for k, p, _ in self.events if k == "data")

    @property
    def trailers(self) -> HeaderMap | None:
        return next((p for k, p, _ in self.events if k == "trailers"), None)

    @property
    def ended(self) -> bool:
        return bool(self.events) and self.events[-1][2]


class Upstream(StreamDecoderFilter):
    """The terminal filter: records the request, answers when told to."""

    def __init__(self) -> None:
        self.request: HeaderMap | None = None
        self.body = b""
        self.ended = False

    def decode_headers(self, headers, end_stream):
        self.request = headers
        self.ended = end_stream
        return FilterHeadersStatus.STOP_ITERATION

    def decode_data(self, data, end_stream):
        self.body += bytes(data)
        self.ended = end_stream
        return FilterDataStatus.STOP_ITERATION_NO_BUFFER

    def decode_trailers(self, trailers):
        self.ended = True
        return super().decode_trailers(trailers)

    # Answers ----------------------------------------------------------------------------------

    def respond(self, headers, body: bytes | list[bytes] = b"", trailers=None) -> None:
        cb = self.decoder_callbacks
        pieces = [body] if isinstance(body, bytes) else list(body)
        pieces = [p for p in pieces if p]
        cb.encode_headers(HeaderMap(headers), not pieces and trailers is None)
        for i, piece in enumerate(pieces):
            cb.encode_data(piece, i == len(pieces) - 1 and trailers is None)
        if trailers is not None:
            cb.encode_trailers(HeaderMap(trailers))


@dataclass
class Route:
    cluster_name: str | None = "backend"

    def most_specific_per_filter_config(self, name):
        return None


@dataclass
class Cluster:
    scope: object


@dataclass
class ClusterManager:
    clusters: dict = field(default_factory=dict)

    def get(self, name):
        return self.clusters.get(name)


class Stream:
    """One request through ``filters`` and the scripted upstream."""

    def __init__(self, filters, *, route=None, buffer_limit: int = 1 << 20) -> None:
        self.info = StreamInfo(now_monotonic=0.0)
        self.request: HeaderMap | None = None
        self.sink = Sink(self)
        self.upstream = Upstream()
        decoders = [*filters, self.upstream]
        self.manager = FilterManager(
            decoder_filters=decoders,
            encoder_filters=list(filters),
            sink=self.sink,
            stream_info=self.info,
            buffer_limit=buffer_limit,
            route=Route() if route is None else route,
        )

    def send(self, headers, body: bytes | list[bytes] = b"", trailers=None) -> None:
        self.request = HeaderMap(headers)
        pieces = [body] if isinstance(body, bytes) else list(body)
        pieces = [p for p in pieces if p]
        self.manager.decode_headers(self.request, not pieces and trailers is None)
        for i, piece in enumerate(pieces):
            self.manager.decode_data(piece, i == len(pieces) - 1 and trailers is None)
        if trailers is not None:
            self.manager.decode_trailers(HeaderMap(trailers))


def cluster_manager(store: Store) -> ClusterManager:
    return ClusterManager({"backend": Cluster(store.scope("cluster.backend."))})


def stat_values(store: Store, prefix: str = "cluster.backend.") -> dict[str, object]:
    out = {}
    for stat in store:
        if stat.name.startswith(prefix):
            value = getattr(stat, "value", None)
            out[stat.name[len(prefix) :]] = value if value is not None else stat.kind.value
    return out
