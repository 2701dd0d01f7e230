"""Upgrades and CONNECT run through the real Envoy and legatus, and what the two are compared on.

A test module lists its listeners (``LISTENERS``: http_scenario's ``Listener``, one HCM each,
with its own stat prefix and access log) and clusters (``CLUSTERS``: name -> endpoint kind);
the ``tunnel_pair`` fixture starts Envoy and legatus once per module with all of them, each
proxy with its own upstreams, and ``tunnel_pair.run(traffic, listeners, clusters)`` drives
the same traffic against both at once. Endpoint kinds:

- ``tunnel``: ``TunnelUpstream``, a raw HTTP/1.1 server that records every request head and
  answers by target: ``/ws...`` a 101 (the WebSocket accept computed from the key) and then
  echoes bytes; ``.../status/<code>`` that status with a header and a 4-byte body; a target
  with ``/delay/<s>`` first waits; one with ``/peek`` records (as a last line of its head)
  what arrived after the head before the answer; ``.../close`` a 101 and the close of the
  connection after the first bytes; a CONNECT a 200 and an echo (or, for
  ``s<code>.example:<port>``, that status);
- ``websocket``: a ``websockets`` server (tests/support/websocket_upstream.py);
- ``echo``: a TCP echo server; ``refused``: a port where nothing listens.

What is compared once both proxies have settled (no connection left on the test's listeners
and clusters, and nothing moving between two polls): the traffic function's result, the
request heads the ``tunnel`` upstream saw, the access-log entries (http_scenario's JSON
format) and the counters and gauges of the test's listeners and clusters. Ports, dates,
request IDs, WebSocket keys and service times are normalized; durations too, unless a test
reads them.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import re
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.differential.http_scenario import Listener
from tests.support.process import ProxyProcess, envoy_command, legatus_command, start_proxy
from tests.support.upstreams import EchoServer
from tests.support.websocket_upstream import WebSocketUpstream

SIDES = ("envoy", "legatus")
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_PORT = re.compile(r"(127\.0\.0\.1[_:])(\d+)")
_UUID4 = re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}\b")
_IMF_DATE = re.compile(r"[A-Z][a-z]{2}, \d\d [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d GMT")
_ISO_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
_WS_KEY = re.compile(r"(sec-websocket-(key|accept): )\S+", re.IGNORECASE)
_SERVICE_TIME = re.compile(r"(x-envoy-upstream-service-time: )\d+")


# The upstreams --------------------------------------------------------------------------


class TunnelUpstream:
    """A raw HTTP/1.1 upstream for upgrades and CONNECT (see module doc)."""

    def __init__(self) -> None:
        self.heads: list[list[str]] = []  # request line and header lines of each request
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=64)
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        with contextlib.suppress(OSError), conn:
            buf = b""
            while b"\r\n\r\n" not in buf:
                data = conn.recv(65536)
                if not data:
                    return
                buf += data
            head, _, rest = buf.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            with self._lock:
                self.heads.append(lines)
            method, target = lines[0].split(" ")[:2]
            fields = {n.strip().lower(): v.strip() for n, _, v in (x.partition(":") for x in lines)}
            delay = re.search(r"/delay/([\d.]+)", target)
            if delay:
                time.sleep(float(delay.group(1)))
            if "/peek" in target:  # what the proxy sent after the head, before any answer
                time.sleep(0.3)
                conn.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    rest += conn.recv(65536)
                conn.setblocking(True)
                lines.append(f"<before the answer: {rest!r}>")
            status = re.search(r"/status/(\d{3})", target) or re.match(r"s(\d{3})\.", target)
            if status:
                conn.sendall(
                    f"HTTP/1.1 {status.group(1)} Whatever\r\nx-upstream: yes\r\n"
                    "content-type: text/x-up\r\ncontent-length: 4\r\n\r\nbody".encode()
                )
                conn.recv(65536)  # until the proxy closes
                return
            if method == "CONNECT":
                conn.sendall(b"HTTP/1.1 200 Connection established\r\nx-upstream: yes\r\n\r\n")
            else:
                key = fields.get("sec-websocket-key", "").encode()
                accept = base64.b64encode(hashlib.sha1(key + _GUID).digest()).decode()
                conn.sendall(
                    b"HTTP/1.1 101 Switching Protocols\r\nconnection: Upgrade\r\n"
                    b"upgrade: websocket\r\nsec-websocket-accept: %s\r\nx-upstream: yes\r\n\r\n"
                    % accept.encode()
                )
            if rest:
                conn.sendall(rest)
            while data := conn.recv(65536):
                if target.endswith("/close"):
                    conn.sendall(data)
                    return  # the upstream ends the tunnel
                conn.sendall(data)


# One proxy ------------------------------------------------------------------------------


@dataclass
class Observation:
    result: Any
    upstream: list
    log: list
    stats: dict[str, Any]


class Side:
    """One proxy (Envoy or legatus) with its own upstreams and listener ports."""

    def __init__(self, name: str, proxy: ProxyProcess, ports: dict[str, int], upstreams: dict,
                 log_dir: Path) -> None:  # fmt: skip
        self.name = name
        self.proxy = proxy
        self.ports = ports
        self.upstreams = upstreams
        self.log_dir = log_dir
        self._names = {str(p): f"<{n}>" for n, p in ports.items()}
        for kind, upstream in upstreams.items():
            self._names[str(upstream if isinstance(upstream, int) else upstream.port)] = f"<{kind}>"

    def connect(self, listener: str, timeout: float = 5.0) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.ports[listener]), timeout=timeout)

    def normalize(self, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: self.normalize(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.normalize(v) for v in value]
        if isinstance(value, bytes):
            value = value.decode("latin-1")
        if not isinstance(value, str):
            return value
        value = _PORT.sub(lambda m: m.group(1) + self._names.get(m.group(2), "<ephemeral>"), value)
        value = _UUID4.sub("<uuid4>", value)
        value = _IMF_DATE.sub("<date>", value)
        value = _ISO_TIME.sub("<time>", value)
        value = _SERVICE_TIME.sub(r"\1<ms>", value)
        return _WS_KEY.sub(r"\1<key>", value)

    def log_entries(self, listener: str, durations: bool) -> list[dict]:
        path = self.log_dir / f"{listener}.log"
        entries = (
            [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
        )
        for entry in entries:
            if not durations:
                entry["duration"] = "<ms>"
            entry["service_time"] = "<ms>" if entry.get("service_time") else None
        return entries

    def stats(self, listeners, clusters) -> dict[str, Any]:
        names = "|".join(map(re.escape, listeners)) or "(?!)"
        cluster_names = "|".join(map(re.escape, clusters)) or "(?!)"
        scope = re.compile(rf"^(http\.({names})\.|cluster\.({cluster_names})\.upstream_(rq|cx)_)")
        status, body = self.proxy.admin("/stats?format=json")
        assert status == 200, body
        out = {}
        for entry in json.loads(body)["stats"]:
            name = entry.get("name")
            if name is not None and scope.match(name):
                value = entry["value"]
                if name.endswith("_bytes_buffered"):
                    value = "> 0" if value else 0
                out[name] = value
        return out


def _settled(values: dict[str, Any]) -> bool:
    active = ("downstream_cx_active", "downstream_rq_active", "upstream_cx_active",
              "upstream_rq_active", "downstream_cx_upgrades_active")  # fmt: skip
    return all(v == 0 for k, v in values.items() if k.endswith(active))


def _observe(side: Side, traffic, listeners, clusters, durations: bool) -> Observation:
    tunnel = side.upstreams["tunnel"]
    mark = len(tunnel.heads)
    logged = {n: len(side.log_entries(n, durations)) for n in listeners}  # earlier tests'
    try:
        result = traffic(side)
    except Exception as e:  # shown side by side with the other proxy's
        result = {"traffic raised": f"{type(e).__name__}: {e}"}
    deadline = time.monotonic() + 8
    previous = None
    while True:
        values = side.stats(listeners, clusters)
        logs = [e for n in listeners for e in side.log_entries(n, durations)[logged[n] :]]
        snapshot = (values, logs)
        if (snapshot == previous and _settled(values)) or time.monotonic() > deadline:
            break
        previous = snapshot
        time.sleep(0.1)
    return Observation(
        result=side.normalize(result),
        upstream=side.normalize(tunnel.heads[mark:]),
        log=side.normalize(logs),
        stats=values,
    )


# The pair -------------------------------------------------------------------------------


def cluster(name: str, port: int) -> dict:
    endpoint = {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}
    assignment = {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": endpoint}]}]}
    return {"name": name, "connect_timeout": "1s", "load_assignment": assignment}


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class Outcome:
    def __init__(self, envoy: Observation, legatus: Observation | None, error: str | None):
        self.envoy = envoy
        self._legatus = legatus
        self._error = error

    @property
    def legatus(self) -> Observation:
        if self._legatus is None:
            pytest.fail(f"legatus did not run: {self._error}", pytrace=False)
        return self._legatus

    def assert_same(self, *parts: str) -> None:
        parts = parts or ("result", "upstream", "log", "stats")
        diff = {}
        for part in parts:
            a, b = getattr(self.envoy, part), getattr(self.legatus, part)
            if part == "stats":
                keys = sorted(set(a) | set(b))
                d = {k: {"envoy": a.get(k, "<absent>"), "legatus": b.get(k, "<absent>")}
                     for k in keys if a.get(k, "<absent>") != b.get(k, "<absent>")}  # fmt: skip
                if d:
                    diff[part] = d
            elif a != b:
                diff[part] = {"envoy": a, "legatus": b}
        if diff:
            text = json.dumps(diff, indent=1, default=str)
            pytest.fail(f"Envoy and legatus differ:\n{text}", pytrace=False)


class TunnelPair:
    """Envoy and legatus with every listener and cluster of a test module."""

    def __init__(self, workdir: Path, listeners: list[Listener], clusters: dict[str, str]):
        self.sides: dict[str, Side] = {}
        self.error: str | None = None
        self._closers: list[Callable[[], None]] = []
        ports = iter(_free_ports(1 + len(SIDES) * len(listeners)))
        refused = next(ports)
        try:
            for name in SIDES:
                self._start(name, workdir, listeners, clusters, ports, refused)
        except BaseException:
            self.close()
            raise

    def _start(self, name, workdir, listeners, clusters, ports, refused) -> None:
        upstreams: dict[str, Any] = {"tunnel": TunnelUpstream(), "websocket": WebSocketUpstream(),
                                     "echo": EchoServer(), "refused": refused}  # fmt: skip
        self._closers += [u.close for u in upstreams.values() if not isinstance(u, int)]
        log_dir = workdir / name
        log_dir.mkdir(parents=True)
        listener_ports = {spec.name: next(ports) for spec in listeners}
        endpoint = {k: (u if isinstance(u, int) else u.port) for k, u in upstreams.items()}
        config = {
            "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
            "static_resources": {
                "listeners": [{
                    "name": spec.name,
                    "address": {"socket_address": {
                        "address": "127.0.0.1", "port_value": listener_ports[spec.name]}},
                    "filter_chains": [{"filters": [{
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": spec.typed_config(log_dir / f"{spec.name}.log")}]}],
                } for spec in listeners],
                "clusters": [cluster(c, endpoint[kind]) for c, kind in clusters.items()],
            },
        }  # fmt: skip
        command = envoy_command() if name == "envoy" else legatus_command()
        args = ["--concurrency", "1", "--file-flush-interval-msec", "10"]
        if name == "legatus":
            args.append("--use-dynamic-base-id")
        try:
            proxy = start_proxy(config, log_dir, command=command, args=args)
        except RuntimeError as e:
            if name == "envoy":
                raise
            self.error = str(e)[-3000:]
            return
        self.sides[name] = Side(name, proxy, listener_ports, upstreams, log_dir)

    def run(self, traffic: Callable[[Side], Any], listeners, clusters, *,
            durations: bool = False) -> Outcome:  # fmt: skip
        sides = list(self.sides.values())
        with ThreadPoolExecutor(len(sides)) as pool:
            futures = {s.name: pool.submit(_observe, s, traffic, listeners, clusters, durations)
                       for s in sides}  # fmt: skip
            observed = {name: f.result() for name, f in futures.items()}
        return Outcome(observed["envoy"], observed.get("legatus"), self.error)

    def close(self) -> None:
        failures = []
        for side in self.sides.values():
            try:
                side.proxy.stop()
            except AssertionError as e:
                failures.append(f"{side.name}: {e}")
        for close in self._closers:
            close()
        assert not failures, "\n".join(failures)


@pytest.fixture(scope="module", name="tunnel_pair")
def tunnel_pair_fixture(request, tmp_path_factory):
    pair = TunnelPair(
        tmp_path_factory.mktemp("tunnels"), request.module.LISTENERS, request.module.CLUSTERS
    )
    yield pair
    pair.close()


# Client helpers ---------------------------------------------------------------------------


def read_head(s: socket.socket) -> bytes:
    """A response head, byte by byte (what follows it stays in the socket)."""
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        chunk = s.recv(1)
        if not chunk:
            return head + b"<closed>"
        head += chunk
    return head


def read_exactly(s: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = s.recv(n - len(out))
        if not chunk:
            return out + b"<closed>"
        out += chunk
    return out


def ending(s: socket.socket, wait: float = 3.0) -> str:
    """How the proxy ends the connection: "closed", "reset", "open", or the bytes it sent."""
    s.settimeout(wait)
    try:
        data = s.recv(65536)
        return "closed" if not data else f"data: {data[:200]!r}"
    except TimeoutError:
        return "open"
    except ConnectionResetError:
        return "reset"


def timed(fn: Callable[[], Any], low: float, high: float) -> tuple[Any, str]:
    start = time.monotonic()
    value = fn()
    elapsed = time.monotonic() - start
    return value, "in bounds" if low <= elapsed <= high else f"took {elapsed:.2f}s"
