"""One bootstrap and one traffic pattern, run through the real Envoy and legatus side by side.

Both proxies get the same bootstrap (apart from the listener ports, which are picked per run),
`--concurrency 1`, their own workdir, and the same connections. The tests then compare what
the two report. Stat names carry listener ports (`listener.127.0.0.1_<port>.`), so every name
is normalized: a bound port becomes `<listener name>`, which makes the two runs comparable.

The listeners:

- `tcp`: tcp_proxy -> cluster `backend` -> an EchoServer; 3 connections echo 1000 bytes each.
- `refused`: tcp_proxy -> cluster `dead`, whose only endpoint refuses connections.
- `noroute`: tcp_proxy -> cluster `missing`, which does not exist (`downstream_cx_no_route`).
- `echo`: the echo network filter; 1 connection echoes 100 bytes.
- `direct`: direct_response `hello`; 1 connection reads it to EOF.
- `zero`: the echo filter on a listener configured with port 0 (Envoy names listener stats by
  the *configured* address, so this one is `listener.127.0.0.1_0.`); 1 connection.
"""

from __future__ import annotations

import json
import re
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.process import (
    ProxyProcess,
    envoy_command,
    legatus_command,
    start_proxy,
    wait_for,
)
from tests.support.upstreams import EchoServer

TCP_PROXY = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
ECHO = "type.googleapis.com/envoy.extensions.filters.network.echo.v3.Echo"
DIRECT = "type.googleapis.com/envoy.extensions.filters.network.direct_response.v3.Config"

FIXED_PORT_LISTENERS = ("tcp", "refused", "noroute", "echo", "direct")
PORT0_LISTENER = "zero"
LISTENERS = (*FIXED_PORT_LISTENERS, PORT0_LISTENER)
CLUSTERS = ("backend", "dead")
DIRECT_BODY = b"hello"

# Placeholder for the bound port of the listener configured with port 0.
ZERO_BOUND = "<zero-bound-port>"


@dataclass
class Run:
    """One proxy that ran the scenario."""

    name: str  # "envoy" or "legatus"
    proxy: ProxyProcess
    ports: dict[str, int]  # listener name -> bound port

    def normalize(self, text: str) -> str:
        """Replace this run's listener ports with `<listener name>` placeholders."""
        names = {str(port): f"<{name}>" for name, port in self.ports.items()}
        names[str(self.ports[PORT0_LISTENER])] = ZERO_BOUND
        return re.sub(
            r"(127\.0\.0\.1[_:])(\d+)",
            lambda m: m.group(1) + names.get(m.group(2), m.group(2)),
            text,
        )

    def stats(self) -> tuple[dict[str, int | str], set[str]]:
        """(counters and gauges by normalized name, normalized histogram names)."""
        status, body = self.proxy.admin("/stats?format=json")
        assert status == 200, body
        values: dict[str, int | str] = {}
        histograms: set[str] = set()
        for entry in json.loads(body)["stats"]:
            if "name" in entry:
                values[self.normalize(entry["name"])] = entry["value"]
            elif "histograms" in entry:
                for h in entry["histograms"].get("computed_quantiles", []):
                    histograms.add(self.normalize(h["name"]))
        return values, histograms


def _listener(name: str, port: int, typed_config: dict, filter_name: str) -> dict:
    return {
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{"filters": [{"name": filter_name, "typed_config": typed_config}]}],
    }


def _tcp_proxy(name: str, port: int, cluster: str) -> dict:
    config = {"@type": TCP_PROXY, "stat_prefix": name, "cluster": cluster}
    return _listener(name, port, config, "envoy.filters.network.tcp_proxy")


def _static_cluster(name: str, port: int) -> dict:
    endpoint = {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}
    return {
        "name": name,
        "connect_timeout": "1s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
            {"endpoint": endpoint}]}]},
    }  # fmt: skip


def bootstrap(*, echo_port: int, dead_port: int, ports: dict[str, int]) -> dict:
    """The scenario's bootstrap; `ports` maps each fixed-port listener to its port."""
    echo = {"@type": ECHO}
    direct = {"@type": DIRECT, "response": {"inline_string": DIRECT_BODY.decode()}}
    listeners = [
        _tcp_proxy("tcp", ports["tcp"], "backend"),
        _tcp_proxy("refused", ports["refused"], "dead"),
        _tcp_proxy("noroute", ports["noroute"], "missing"),
        _listener("echo", ports["echo"], echo, "envoy.filters.network.echo"),
        _listener("direct", ports["direct"], direct, "envoy.filters.network.direct_response"),
        _listener(PORT0_LISTENER, 0, echo, "envoy.filters.network.echo"),
    ]
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "listeners": listeners,
            "clusters": [_static_cluster("backend", echo_port), _static_cluster("dead", dead_port)],
        },
    }


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            break
        out += chunk
    return bytes(out)


def _recv_to_eof(sock: socket.socket) -> bytes:
    out = bytearray()
    while chunk := sock.recv(4096):
        out += chunk
    return bytes(out)


def _echo_roundtrip(port: int, size: int) -> None:
    payload = bytes(i % 251 for i in range(size))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(payload)
        assert _recv_exactly(s, size) == payload
    # Closing sends our FIN only after the whole echo came back: the proxy sees a clean
    # downstream half-close, then the upstream's FIN.


def drive_traffic(run: Run) -> None:
    """The same connections, one after the other, against one proxy."""
    for _ in range(3):
        _echo_roundtrip(run.ports["tcp"], 1000)
    for name in ("refused", "noroute"):
        with socket.create_connection(("127.0.0.1", run.ports[name]), timeout=5) as s:
            assert _recv_to_eof(s) == b"", name
    _echo_roundtrip(run.ports["echo"], 100)
    with socket.create_connection(("127.0.0.1", run.ports["direct"]), timeout=5) as s:
        assert _recv_to_eof(s) == DIRECT_BODY
    _echo_roundtrip(run.ports[PORT0_LISTENER], 100)


# Where the traffic above leaves both proxies once every connection is gone.
def _settled(values: dict[str, int | str]) -> bool:
    def is_(name: str, want: int) -> bool:
        return values.get(name) == want

    listeners_idle = all(
        v == 0 for k, v in values.items()
        if k.startswith("listener.127.0.0.1_") and k.endswith("downstream_cx_active")
    )  # fmt: skip
    return (
        listeners_idle
        and is_("tcp.tcp.downstream_cx_total", 3)
        and is_("cluster.backend.upstream_cx_destroy", 3)
        and is_("cluster.backend.upstream_cx_active", 0)
        and is_("cluster.dead.upstream_cx_connect_fail", 1)
        and is_("cluster.dead.upstream_cx_active", 0)
        and is_("tcp.noroute.downstream_cx_no_route", 1)
        and is_("listener.127.0.0.1_<direct>.downstream_cx_destroy", 1)
    )


def _traffic_view(values: dict[str, int | str]) -> dict[str, int | str]:
    """The stats the traffic moves (not uptime, memory, admin requests...)."""
    return {k: v for k, v in values.items() if k.startswith(("tcp.", "cluster.", "listener.127."))}


def settle(run: Run, timeout: float = 10.0) -> tuple[dict[str, int | str], set[str]]:
    """Poll until the traffic is fully accounted for and two snapshots agree."""
    deadline = time.monotonic() + timeout
    previous = None
    while True:
        values, histograms = run.stats()
        view = _traffic_view(values) if _settled(values) else None
        if view is not None and view == previous:
            return values, histograms
        previous = view
        if time.monotonic() > deadline:
            raise AssertionError(f"{run.name} did not settle: {_traffic_view(values)}")
        time.sleep(0.1)


def _start(name: str, config: dict, workdir: Path) -> ProxyProcess:
    command = envoy_command() if name == "envoy" else legatus_command()
    # Same flags for both (legatus accepts --use-dynamic-base-id as a no-op): /server_info
    # then reports the same command line options.
    args = ["--concurrency", "1"] + ([] if name == "envoy" else ["--use-dynamic-base-id"])
    return start_proxy(config, workdir / name, command=command, args=args, wait_live=False)


def _ready(name: str, proxy: ProxyProcess, ports: dict[str, int]) -> Run:
    def live() -> bool:
        try:
            return proxy.admin("/ready", timeout=1)[0] == 200
        except OSError:
            return False

    wait_for(live, timeout=30, what=f"{name} to become LIVE")
    bound = {n: proxy.listener_port(n) for n in LISTENERS}
    for n in FIXED_PORT_LISTENERS:
        assert bound[n] == ports[n], (name, n, bound[n], ports[n])
    return Run(name=name, proxy=proxy, ports=bound)


@dataclass
class Pair:
    envoy: Run
    legatus: Run
    envoy_stats: dict[str, int | str]
    envoy_histograms: set[str]
    legatus_stats: dict[str, int | str]
    legatus_histograms: set[str]

    @property
    def runs(self) -> tuple[Run, Run]:
        return self.envoy, self.legatus

    def both_stats(self) -> tuple[tuple[str, dict[str, int | str]], ...]:
        """(("envoy", stats), ("legatus", stats)): assert the same thing of each."""
        return ("envoy", self.envoy_stats), ("legatus", self.legatus_stats)


def _free_ports(n: int) -> list[int]:
    """n distinct ports nothing listens on (held together so none is handed out twice)."""
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


@contextmanager
def envoy_and_legatus(workdir: Path):
    """Run the scenario through both proxies at once; yield a settled Pair; stop both."""
    echo = EchoServer()
    runs: list[Run] = []
    try:
        free = iter(_free_ports(1 + 2 * len(FIXED_PORT_LISTENERS)))
        dead_port = next(free)  # nothing listens there: connects are refused
        procs = []
        # Popen from this thread: Envoy sets PR_SET_PDEATHSIG, so it gets SIGTERM when the
        # thread that started it exits (a pool thread would kill it on pool shutdown).
        for name in ("envoy", "legatus"):
            ports = {n: next(free) for n in FIXED_PORT_LISTENERS}
            config = bootstrap(echo_port=echo.port, dead_port=dead_port, ports=ports)
            proxy = _start(name, config, workdir)
            procs.append((name, proxy, ports))
            runs.append(Run(name=name, proxy=proxy, ports={}))  # stopped by `finally`
        with ThreadPoolExecutor(2) as pool:
            runs[:] = pool.map(lambda args: _ready(*args), procs)
            envoy, legatus = runs
            list(pool.map(drive_traffic, runs))
            (e_stats, e_hist), (l_stats, l_hist) = pool.map(settle, runs)
        yield Pair(envoy, legatus, e_stats, e_hist, l_stats, l_hist)
    finally:
        for run in runs:
            run.proxy.stop()
        echo.close()
