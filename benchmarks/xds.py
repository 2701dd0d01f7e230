#!/usr/bin/env python3
"""xDS benchmark: how fast legatus and Envoy apply pushed config, one worker each.

Run by hand (never from the test suite), from the repository root::

    python benchmarks/xds.py                       # legatus + Envoy, SotW and delta, < 1 min
    python benchmarks/xds.py --api sotw            # one ADS flavour
    python benchmarks/xds.py --skip-envoy --profile   # legatus only, py-spy on its processes
    python benchmarks/xds.py --help                # every option

Each proxy in turn is started with ``--concurrency 1``, pinned with ``taskset -c
<proxy-cpu>`` (default 1), with a bootstrap that has an admin listener (port 0) and ADS to the
benchmark's control plane (CDS and LDS over ADS, SotW or delta). The control plane is the test
suite's (tests/support/xds_server.py, grpcio aio on a thread of this script); it, the polling
client, the upstream and this orchestrator are pinned to ``<load-cpu>`` (default 0).

The control plane serves one listener (LDS) whose HTTP connection manager takes its routes
from RDS: ``/route`` answers a ``direct_response`` and ``/`` goes to the cluster named by the
request's ``x-cluster`` header (``cluster_header``). Measured, for legatus and Envoy:

1. route update: a new RouteConfiguration (a new direct_response body) is pushed; time from
   the push until a client polling ``/route`` over one keep-alive connection gets the new
   body. ``--iterations`` times; median and p90;
2. cluster update: a new EDS cluster with its assignment (one endpoint, a real upstream) is
   pushed by CDS, replacing the previous one, and its ClusterLoadAssignment is served by EDS
   when the proxy asks; time from the CDS push until a client asking for that cluster
   (``x-cluster``) gets a 200 from the upstream. ``--iterations`` times;
3. scale: ``--clusters`` (1,000) EDS clusters with ``--endpoints`` (10) endpoints each, on
   127.0.0.1 ports where nothing listens, no health checks, replace the cluster set in one
   CDS push; time until the proxy has ACKed the CDS response and the EDS response(s) holding
   every assignment, and its admin stats say ``cluster_manager.warming_clusters`` 0 and
   ``cluster_manager.active_clusters`` = static clusters + 1,000. Also: when a request for the
   last cluster of the push first reaches an endpoint (Envoy's 503 "upstream connect error"
   instead of the 503 of an unknown cluster), the proxy's CPU time over the update, and its
   RSS growth (settled ``--settle`` s before and after): legatus main + worker processes (its
   worker zygote is recorded apart), Envoy's one process. Then every assignment changes one
   endpoint in one EDS push: time until that push is ACKed. The control plane's own time to
   encode the two big responses is recorded too (it is part of both proxies' times).

Times are ``time.monotonic()`` (one clock for every process of the machine). "Push" is when
the control plane has queued the response for its gRPC stream; "ACK" is when the control
plane received the request acknowledging that response's nonce; "seen" is when the polling
client read the first response with the new answer (it polls every ``--poll-interval`` s;
``--probe-interval`` in the scale test, to leave the proxy's core to the update).

Results are printed as a markdown table and written as JSON to
``benchmarks/results/xds-<timestamp>.json``. See benchmarks/README.md.

The script also holds the helper roles it starts as subprocesses (``_upstream``, ``_poll``);
they are not meant to be called by hand.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import platform
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

# The test suite's control plane lives in tests/support: the repository root goes to the
# front of the import path. This file's name shadows the ``xds`` package of xds-protos (which
# Envoy's protos import), so its own directory, needed for the sibling benchmark modules,
# moves to the end.
HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(HERE.parent))
sys.path.append(str(HERE))

import yaml  # noqa: E402
from envoy.config.cluster.v3 import cluster_pb2  # noqa: E402
from envoy.config.endpoint.v3 import endpoint_pb2  # noqa: E402
from envoy.config.listener.v3 import listener_pb2  # noqa: E402
from envoy.config.route.v3 import route_pb2  # noqa: E402
from envoy.extensions.filters.http.router.v3 import router_pb2  # noqa: E402, F401 (Any types)
from envoy.extensions.filters.network.http_connection_manager.v3 import (  # noqa: E402, F401
    http_connection_manager_pb2,
)
from envoy.service.discovery.v3 import discovery_pb2  # noqa: E402
from google.protobuf import json_format  # noqa: E402
from http1 import role_upstream  # noqa: E402
from tcp_proxy import (  # noqa: E402
    HOST,
    RESULTS_DIR,
    Bench,
    cpu_model,
    cpu_ticks,
    envoy_version,
    free_ports,
    mem_of,
    pinning_problem,
    run_bench,
    say,
    summarize_profile,
)

from legatus.config_subscription.decode import CLUSTER, ENDPOINT, LISTENER, ROUTE  # noqa: E402
from tests.support.process import children, workers  # noqa: E402
from tests.support.xds_thread import XdsThread, ads_bootstrap  # noqa: E402

READY_TIMEOUT_S = 60.0
CONNECT_ERROR = "upstream connect error"  # Envoy's body for a failed upstream connection
HCM_TYPE = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
    "HttpConnectionManager"
)
ROUTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"


# --------------------------------------------------------------------------------------------
# Helper role: the polling client (a subprocess on the load CPU)
# --------------------------------------------------------------------------------------------


def role_poll(argv: list[str]) -> None:
    """A keep-alive HTTP/1.1 client driven by JSON lines on stdin.

    Each command ``{"path", "headers", "status", "body", "interval", "timeout"}`` starts a
    poll: requests every ``interval`` s until a response has ``status`` and a body starting
    with ``body``. The role prints ``{"polling": ...}`` after the first response (if that one
    matched already: ``{"already": true}``), then ``{"seen": t, ...}`` (``t`` is
    ``time.monotonic()`` when the matching response was read) or ``{"timeout": true, ...}``.
    """
    p = argparse.ArgumentParser(prog="_poll")
    p.add_argument("--port", type=int, required=True)
    a = p.parse_args(argv)
    conn: http.client.HTTPConnection | None = None

    def request(path: str, headers: dict) -> tuple[int, str]:
        nonlocal conn
        for attempt in (0, 1):  # one reconnect: the proxy may close a kept-alive connection
            if conn is None:
                conn = http.client.HTTPConnection(HOST, a.port, timeout=10)
            try:
                conn.request("GET", path, headers=headers)
                resp = conn.getresponse()
                body = resp.read().decode("latin-1")
                if resp.getheader("connection", "").lower() == "close":
                    conn.close()
                    conn = None
                return resp.status, body
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = None
                if attempt:
                    raise
        raise AssertionError("unreachable")

    for line in sys.stdin:
        cmd = json.loads(line)
        path, headers = cmd["path"], cmd.get("headers", {})
        deadline = time.monotonic() + cmd["timeout"]
        answers: dict[str, float] = {}  # distinct answers -> first seen
        count = 0
        out: dict = {"timeout": True}
        while True:
            try:
                status, body = request(path, headers)
                answer = f"{status} {body[:100]}"
            except (OSError, http.client.HTTPException) as e:
                status, body, answer = 0, "", f"error {e!r}"
            now = time.monotonic()
            count += 1
            answers.setdefault(answer, now)
            if status == cmd["status"] and body.startswith(cmd["body"]):
                out = {"already": True} if count == 1 else {"seen": now}
                break
            if count == 1:
                print(json.dumps({"polling": answer}), flush=True)
            if now > deadline:
                break
            time.sleep(cmd["interval"])
        out.update(requests=count, answers=answers)
        print(json.dumps(out), flush=True)


ROLES = {"_upstream": role_upstream, "_poll": role_poll}


# --------------------------------------------------------------------------------------------
# Resources
# --------------------------------------------------------------------------------------------


def listener(port: int) -> listener_pb2.Listener:
    hcm = {
        "@type": HCM_TYPE,
        "stat_prefix": "ingress",
        "rds": {
            "route_config_name": "routes",
            "config_source": {"ads": {}, "resource_api_version": "V3"},
        },
        "http_filters": [
            {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER_TYPE}}
        ],
    }
    return json_format.ParseDict(
        {
            "name": "http",
            "address": {"socket_address": {"address": HOST, "port_value": port}},
            "filter_chains": [
                {
                    "filters": [
                        {
                            "name": "envoy.filters.network.http_connection_manager",
                            "typed_config": hcm,
                        }
                    ]
                }
            ],
        },
        listener_pb2.Listener(),
    )


def routes(body: str) -> route_pb2.RouteConfiguration:
    return json_format.ParseDict(
        {
            "name": "routes",
            "virtual_hosts": [
                {
                    "name": "all",
                    "domains": ["*"],
                    "routes": [
                        {
                            "match": {"prefix": "/route"},
                            "direct_response": {"status": 200, "body": {"inline_string": body}},
                        },
                        {
                            "match": {"prefix": "/"},
                            "route": {"cluster_header": "x-cluster", "timeout": "5s"},
                        },
                    ],
                }
            ],
        },
        route_pb2.RouteConfiguration(),
    )


def eds_cluster(name: str) -> cluster_pb2.Cluster:
    return json_format.ParseDict(
        {
            "name": name,
            "type": "EDS",
            "connect_timeout": "1s",
            "eds_cluster_config": {"eds_config": {"ads": {}, "resource_api_version": "V3"}},
        },
        cluster_pb2.Cluster(),
    )


def assignment(name: str, ports: list[int]) -> endpoint_pb2.ClusterLoadAssignment:
    cla = endpoint_pb2.ClusterLoadAssignment(cluster_name=name)
    locality = cla.endpoints.add()
    for port in ports:
        address = locality.lb_endpoints.add().endpoint.address.socket_address
        address.address, address.port_value = HOST, port
    return cla


def refused_ports(start: int, n: int) -> list[int]:
    """``n`` ports from ``start`` up where nothing listens on 127.0.0.1 (checked now)."""
    out = []
    port = start
    while len(out) < n:
        try:
            socket.create_connection((HOST, port), timeout=0.5).close()
        except ConnectionRefusedError:
            out.append(port)
        except OSError:
            pass
        port += 1
    return out


# --------------------------------------------------------------------------------------------
# The control plane's side: push, then note when the proxy ACKs
# --------------------------------------------------------------------------------------------


async def push_and_track(
    server, type_url: str, eds_names: frozenset[str] = frozenset(), timeout: float = 30.0
) -> dict:
    """Push ``type_url`` to the open streams; wait until the proxy ACKs (or NACKs) that push,
    and, with ``eds_names``, until it has ACKed EDS responses holding every one of those
    assignments (EDS is never pushed: the proxy asks for the assignments of its new clusters).

    Returns monotonic times: ``push``, ``ack`` (of the push), ``eds_ack``; ``nack`` holds the
    error of a NACK. Runs on the control plane's loop; each request is checked as it arrives.
    """
    req0, resp0 = len(server.requests), len(server.responses)
    server.push(type_url)
    push = time.monotonic()
    nonces = {s.nonce for s in server.responses[resp0:] if s.type_url == type_url}
    out: dict = {"push": push, "ack": None, "eds_ack": None, "nack": None}
    if not nonces:
        raise RuntimeError(f"nothing was pushed for {type_url}: is the proxy subscribed?")
    eds_sent: dict[str, object] = {}  # EDS response nonce -> the response (Sent)
    eds_acked: set[str] = set()
    seen = {"requests": req0, "responses": resp0}

    def check() -> bool:
        for s in server.responses[seen["responses"] :]:
            if eds_names and s.type_url == ENDPOINT:
                eds_sent[s.nonce] = s
        seen["responses"] = len(server.responses)
        for r in server.requests[seen["requests"] :]:
            if r.response_nonce not in nonces and r.response_nonce not in eds_sent:
                continue
            now = time.monotonic()  # before the names are unpacked below
            if r.is_nack:
                out["nack"] = f"{r.type_url}: {r.error_detail.message[:500]}"
            elif r.response_nonce in nonces:
                out["ack"] = out["ack"] or now
            else:
                eds_acked.update(set(eds_sent[r.response_nonce].names) & eds_names)
                if eds_acked >= eds_names:
                    out["eds_ack"] = out["eds_ack"] or now
        seen["requests"] = len(server.requests)
        return out["nack"] is not None or (
            out["ack"] is not None and (not eds_names or out["eds_ack"] is not None)
        )

    try:
        await server.until(check, timeout)
    except TimeoutError:
        out["timeout"] = True
        out["eds_acked"] = len(eds_acked)
    return out


def encode_cost(clusters: list, assignments: list) -> dict[str, float]:
    """Seconds this control plane spends packing and serializing the scale test's CDS and
    EDS responses: a floor under both proxies' times, measured here for scale."""
    out = {}
    for key, messages in (("cds", clusters), ("eds", assignments)):
        t = time.perf_counter()
        response = discovery_pb2.DiscoveryResponse(version_info="1", nonce="1")
        for message in messages:
            response.resources.add().Pack(message)
        response.SerializeToString()
        out[key] = round(time.perf_counter() - t, 4)
    return out


# --------------------------------------------------------------------------------------------
# Orchestrator
# --------------------------------------------------------------------------------------------


class Poller:
    """The ``_poll`` helper process: one keep-alive connection to the listener."""

    def __init__(self, cmd: list[str]) -> None:
        self.popen = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
        )

    def start(self, **cmd) -> dict:
        """Start a poll; returns its first line (``polling`` or the final answer)."""
        self.popen.stdin.write(json.dumps(cmd) + "\n")  # type: ignore[union-attr]
        return self._line()

    def result(self) -> dict:
        return self._line()

    def _line(self) -> dict:
        line = self.popen.stdout.readline()  # type: ignore[union-attr]
        if not line:
            raise RuntimeError(f"the polling client exited ({self.popen.poll()})")
        return json.loads(line)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.popen.stdin.close()  # type: ignore[union-attr]
        try:
            self.popen.wait(5)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(5)


class ProxyUnderTest:
    """A started proxy: its processes, admin port and stats."""

    def __init__(self, name: str, proc, admin_port: int) -> None:
        self.name = name
        self.proc = proc
        self.admin_port = admin_port

    @property
    def pid(self) -> int:
        return self.proc.popen.pid

    def roles(self) -> dict[int, str]:
        """pid -> role: ``main`` / ``zygote`` / ``worker`` for legatus, ``envoy``."""
        if self.name != "legatus":
            return {self.pid: "envoy"}
        out = {self.pid: "main"}
        for child in children(self.pid):
            out[child] = "zygote"
        for w in workers(self.pid):
            out[w] = "worker"
        return out

    def counted_pids(self) -> list[int]:
        """The processes whose RSS and CPU count: main + workers, or Envoy."""
        return [pid for pid, role in self.roles().items() if role != "zygote"]

    def cpu_by_role(self) -> dict[str, float]:
        """CPU seconds (user + system) so far of each counted process, by role."""
        hz = os.sysconf("SC_CLK_TCK")
        out: dict[str, float] = {}
        for pid, role in self.roles().items():
            if role != "zygote":
                out[role] = out.get(role, 0.0) + sum(cpu_ticks([pid])) / hz
        return out

    def memory(self) -> dict:
        per = {}
        for pid, role in self.roles().items():
            with contextlib.suppress(OSError):
                per[str(pid)] = {"role": role, **mem_of(pid)}
        counted = [m for m in per.values() if m["role"] != "zygote"]
        return {
            "processes": per,
            "rss_kib": sum(m["rss_kib"] for m in counted),
            "pss_kib": sum(m["pss_kib"] for m in counted),
        }

    def admin(self, path: str, timeout: float = 10.0) -> tuple[int, str]:
        url = f"http://{HOST}:{self.admin_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def stats(self, pattern: str) -> dict[str, str]:
        status, body = self.admin("/stats?filter=" + urllib.parse.quote(pattern, safe=""))
        if status != 200:
            raise RuntimeError(f"{self.name} /stats answered {status}: {body[:300]}")
        out = {}
        for line in body.splitlines():
            name, sep, value = line.partition(": ")
            if sep:
                out[name.strip()] = value.strip()
        return out

    def cluster_counts(self) -> tuple[int, int]:
        """(active_clusters, warming_clusters)."""
        s = self.stats(r"^cluster_manager\.(active|warming)_clusters$")
        return (
            int(s.get("cluster_manager.active_clusters", -1)),
            int(s.get("cluster_manager.warming_clusters", -1)),
        )


def _cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {role: round(after[role] - before.get(role, 0.0), 2) for role in after}


class XdsBench(Bench):
    """The process plumbing of the tcp_proxy benchmark (pinning, start/stop, waiting for a
    quiet machine), with a control plane and the xDS measurements."""

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args)
        self.script = str(Path(__file__).resolve())  # helper roles live in this file
        self.envoy = args.envoy_bin or shutil.which("envoy") or "envoy"

    # processes ------------------------------------------------------------------------------

    def command(self, name: str, cfg: Path, address_path: Path) -> list[str]:
        a = self.args
        tail = ["-c", str(cfg), "--concurrency", "1", "-l", a.log_level,
                "--admin-address-path", str(address_path)]  # fmt: skip
        if name == "legatus":
            base = (
                shlex.split(a.legatus_cmd) if a.legatus_cmd else [sys.executable, "-m", "legatus"]
            )
            return [*base, *tail]
        return [self.envoy, *tail, "--use-dynamic-base-id"]

    def start(self, name: str, xds: XdsThread, delta: bool, route_port: int) -> ProxyUnderTest:
        lds = {"lds_config": {"ads": {}, "resource_api_version": "V3"}}
        config = ads_bootstrap(xds.port, delta=delta, dynamic_resources=lds)
        config["node"] = {"id": "bench-node", "cluster": "bench"}
        cfg = self.tmp / f"{name}-{'delta' if delta else 'sotw'}.yaml"
        cfg.write_text(yaml.safe_dump(config, sort_keys=False))
        address_path = self.tmp / f"{name}.admin"
        address_path.unlink(missing_ok=True)
        proc = self.start_proxy(name, self.command(name, cfg, address_path))
        deadline = time.monotonic() + READY_TIMEOUT_S
        admin_port = None
        while admin_port is None:
            if proc.popen.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.popen.returncode}:\n{proc.tail()}")
            text = address_path.read_text().strip() if address_path.exists() else ""
            if text:
                admin_port = int(text.rsplit(":", 1)[1])
            elif time.monotonic() > deadline:
                raise RuntimeError(f"{name} wrote no admin address:\n{proc.tail()}")
            else:
                time.sleep(0.02)
        proxy = ProxyUnderTest(name, proc, admin_port)
        while True:  # LIVE, and the listener serves the first routes
            with contextlib.suppress(OSError, http.client.HTTPException):
                c = http.client.HTTPConnection(HOST, route_port, timeout=2)
                c.request("GET", "/route")
                resp = c.getresponse()
                body = resp.read()
                c.close()
                if resp.status == 200 and body == b"r0":
                    break
            if proc.popen.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.popen.returncode}:\n{proc.tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name}: the listener never served its routes:\n{proc.tail()}")
            time.sleep(0.05)
        if name == "legatus":
            while not workers(proxy.pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if len(workers(proxy.pid)) != 1:
                raise RuntimeError(f"expected 1 legatus worker, found {workers(proxy.pid)}")
        return proxy

    # measurements ---------------------------------------------------------------------------

    def route_updates(self, xds: XdsThread, poller: Poller) -> list[dict]:
        a = self.args
        runs = []
        for i in range(1, a.iterations + 1):
            body = f"r{i}"
            xds.set_resources(ROUTE, [routes(body)], push=False)
            first = poller.start(path="/route", status=200, body=body,
                                 interval=a.poll_interval, timeout=a.timeout)  # fmt: skip
            if "polling" not in first:
                raise RuntimeError(f"route update {i}: the new body was served before the push")
            track = xds.run(push_and_track(xds.server, ROUTE, timeout=a.timeout), a.timeout + 10)
            seen = poller.result()
            runs.append(self._run_record(track, seen))
            time.sleep(a.gap)
        return runs

    def cluster_updates(self, xds: XdsThread, poller: Poller, upstream: int) -> list[dict]:
        a = self.args
        runs = []
        for i in range(1, a.iterations + 1):
            name = f"c{i}"
            xds.set_resources(ENDPOINT, [assignment(name, [upstream])], push=False)
            xds.set_resources(CLUSTER, [eds_cluster(name)], push=False)
            first = poller.start(path="/64", headers={"x-cluster": name}, status=200, body="x",
                                 interval=a.poll_interval, timeout=a.timeout)  # fmt: skip
            if "polling" not in first:
                raise RuntimeError(f"cluster update {i}: served before the push")
            track = xds.run(
                push_and_track(xds.server, CLUSTER, frozenset([name]), timeout=a.timeout),
                a.timeout + 10,
            )
            seen = poller.result()
            runs.append(self._run_record(track, seen))
            time.sleep(a.gap)
        return runs

    @staticmethod
    def _run_record(track: dict, seen: dict) -> dict:
        push = track["push"]

        def ms(t: float | None) -> float | None:
            return round((t - push) * 1000, 3) if t is not None else None

        out = {
            "seen_ms": ms(seen.get("seen")),
            "ack_ms": ms(track["ack"]),
            "eds_ack_ms": ms(track["eds_ack"]),
            "requests": seen.get("requests"),
            "answers_ms": {k: ms(v) for k, v in seen.get("answers", {}).items()},
        }
        if track.get("nack"):
            out["nack"] = track["nack"]
        if track.get("timeout") or seen.get("timeout"):
            out["timeout"] = True
        return out

    def scale(self, xds: XdsThread, proxy: ProxyUnderTest, poller: Poller, static: int) -> dict:
        a = self.args
        n, per = a.clusters, a.endpoints
        names = [f"bulk-{k:04d}" for k in range(n)]
        # The last cluster's endpoints are checked to refuse connections (the probe needs a
        # connect error); the others only need to be ports, listening or not.
        probe_ports = refused_ports(a.port_base, per)
        span = 20000

        def ports_of(k: int, shift: int = 0) -> list[int]:
            if k == n - 1 and not shift:
                return probe_ports
            return [a.port_base + 100 + (k * per + j + shift) % span for j in range(per)]

        xds.set_resources(
            ENDPOINT, [assignment(nm, ports_of(k)) for k, nm in enumerate(names)], push=False
        )
        xds.set_resources(CLUSTER, [eds_cluster(nm) for nm in names], push=False)
        out: dict = {"clusters": n, "endpoints_per_cluster": per}
        out["control_plane_encode_s"] = encode_cost(
            [eds_cluster(nm) for nm in names],
            [assignment(nm, ports_of(k)) for k, nm in enumerate(names)],
        )
        time.sleep(a.settle)
        mem_before = proxy.memory()
        cpu0 = proxy.cpu_by_role()
        first = poller.start(path="/", headers={"x-cluster": names[-1]}, status=503,
                             body=CONNECT_ERROR, interval=a.probe_interval,
                             timeout=a.scale_timeout)  # fmt: skip
        if "polling" not in first:
            raise RuntimeError("scale: the last cluster answered before the push")
        spies = self.start_pyspy(proxy) if a.profile and proxy.name == "legatus" else []
        fut = asyncio.run_coroutine_threadsafe(
            push_and_track(xds.server, CLUSTER, frozenset(names), timeout=a.scale_timeout),
            xds.loop,
        )
        try:
            track = fut.result(a.scale_timeout + 15)
        except TimeoutError:
            track = {"push": None, "timeout": True}
        if track.get("timeout") or track.get("nack"):
            out.update(self.stalled(proxy, track, static + n))
            seen = poller.result()
            out["probe"] = seen
            self.stop_pyspy(spies, out)
            return out
        # Both ACKed: the admin stats confirm (polled only now, to leave the proxy alone).
        polls = out["stats_polls"] = []
        while True:
            t = time.monotonic()
            active, warming = proxy.cluster_counts()
            stats_ok = time.monotonic()
            polls.append([round(t - track["push"], 3), round(stats_ok - t, 3), active, warming])
            if active == static + n and warming == 0:
                break
            if time.monotonic() - track["push"] > a.scale_timeout:
                out.update(self.stalled(proxy, track, static + n))
                self.stop_pyspy(spies, out)
                return out
            time.sleep(0.02)
        seen = poller.result()
        push = track["push"]
        done = max(track["ack"], track["eds_ack"], stats_ok)
        out.update(
            done_s=round(done - push, 3),
            cds_ack_s=round(track["ack"] - push, 3),
            eds_ack_s=round(track["eds_ack"] - push, 3),
            stats_ok_s=round(stats_ok - push, 3),
            served_s=round(seen["seen"] - push, 3) if "seen" in seen else None,
            probe=seen,
        )
        time.sleep(a.settle)
        out["cpu_by_role_s"] = _cpu_delta(cpu0, proxy.cpu_by_role())
        out["cpu_s"] = round(sum(out["cpu_by_role_s"].values()), 2)
        self.stop_pyspy(spies, out)
        mem_after = proxy.memory()
        t = time.monotonic()
        proxy.cluster_counts()
        out["stats_request_idle_s"] = round(time.monotonic() - t, 3)
        out["mem_before"], out["mem_after"] = mem_before, mem_after
        out["rss_growth_kib"] = mem_after["rss_kib"] - mem_before["rss_kib"]
        out["pss_growth_kib"] = mem_after["pss_kib"] - mem_before["pss_kib"]
        # Every assignment changes one endpoint; pushed by EDS alone.
        xds.set_resources(
            ENDPOINT, [assignment(nm, ports_of(k, 1)) for k, nm in enumerate(names)], push=False
        )
        cpu0 = proxy.cpu_by_role()
        eds = xds.run(
            push_and_track(xds.server, ENDPOINT, timeout=a.scale_timeout), a.scale_timeout + 15
        )
        time.sleep(a.settle)
        cpu = _cpu_delta(cpu0, proxy.cpu_by_role())
        out["eds_update"] = {
            "ack_s": round(eds["ack"] - eds["push"], 3) if eds["ack"] else None,
            "nack": eds["nack"],
            "timeout": eds.get("timeout", False),
            "cpu_by_role_s": cpu,
            "cpu_s": round(sum(cpu.values()), 2),
        }
        return out

    def stalled(self, proxy: ProxyUnderTest, track: dict, expected: int) -> dict:
        """What a scale run that did not finish looked like: the ACK state, the stats, a
        py-spy dump of legatus's main process."""
        out: dict = {"failed": True, "track": track, "expected_active": expected}
        with contextlib.suppress(Exception):
            out["cluster_counts"] = proxy.cluster_counts()
        pyspy = shutil.which("py-spy")
        if pyspy and proxy.name == "legatus":
            r = subprocess.run([pyspy, "dump", "--pid", str(proxy.pid)], capture_output=True,
                               text=True, timeout=60, check=False)  # fmt: skip
            out["pyspy_dump"] = r.stdout[-20000:] or r.stderr[-2000:]
        out["log_tail"] = proxy.proc.tail(40)
        return out

    def start_pyspy(self, proxy: ProxyUnderTest) -> list:
        """py-spy (``--nonblocking``) on legatus's main and worker processes."""
        pyspy = shutil.which("py-spy")
        if pyspy is None:
            say("py-spy not found: skipping --profile")
            return []
        outdir = RESULTS_DIR / f"xds-{self.stamp}-pyspy"
        outdir.mkdir(parents=True, exist_ok=True)
        duration = str(int(self.args.scale_timeout))
        spies = []
        for pid, role in proxy.roles().items():
            if role == "zygote":
                continue
            raw = outdir / f"scale-{role}.txt"
            cmd = [pyspy, "record", "--pid", str(pid), "--rate", "1000", "--format", "raw",
                   "--output", str(raw), "--nonblocking", "--duration", duration]  # fmt: skip
            popen = subprocess.Popen(self.pin(self.args.load_cpu, cmd), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)  # fmt: skip
            spies.append((role, popen, raw))
        time.sleep(1.0)  # attach
        return spies

    @staticmethod
    def stop_pyspy(spies: list, out: dict) -> None:
        for role, popen, raw in spies:
            popen.send_signal(signal.SIGINT)  # py-spy writes what it has
            with contextlib.suppress(subprocess.TimeoutExpired):
                popen.communicate(timeout=30)
            if raw.exists():
                summary = summarize_profile(raw, 25)
                summary["callbacks"] = top_callbacks(raw, 15)
                summary["raw"] = str(raw)
                out.setdefault("profile", {})[role] = summary

    # one proxy ------------------------------------------------------------------------------

    def run_proxy(self, name: str, delta: bool, upstream: int) -> dict:
        a = self.args
        label = f"{name}/{'delta' if delta else 'sotw'}"
        background = self.wait_quiet(label)
        route_port = free_ports(1)[0]
        res: dict = {"background_busy_pct": background}
        with XdsThread() as xds:
            # Every type starts non-empty: a delta server has nothing to say about an empty
            # set, and the proxy would wait out its initial fetch timeout.
            xds.set_resources(CLUSTER, [eds_cluster("c0")])
            xds.set_resources(ENDPOINT, [assignment("c0", [upstream])])
            xds.set_resources(ROUTE, [routes("r0")])
            xds.set_resources(LISTENER, [listener(route_port)])
            t0 = time.monotonic()
            proxy = self.start(name, xds, delta, route_port)
            poller = Poller(self.helper("_poll", "--port", str(route_port)))
            try:
                res["ready_s"] = round(time.monotonic() - t0, 3)
                res["roles"] = {str(k): v for k, v in proxy.roles().items()}
                active, _ = proxy.cluster_counts()
                static = res["static_clusters"] = active - 1  # all but c0
                time.sleep(a.settle)
                res["mem_idle"] = proxy.memory()
                say(f"[{label}] route updates x{a.iterations} ...")
                res["route"] = self.route_updates(xds, poller)
                say(f"    {_summary_line(res['route'])}")
                say(f"[{label}] cluster updates x{a.iterations} ...")
                res["cluster"] = self.cluster_updates(xds, poller, upstream)
                say(f"    {_summary_line(res['cluster'])}")
                if a.clusters:
                    say(f"[{label}] {a.clusters} clusters x {a.endpoints} endpoints ...")
                    res["scale"] = self.scale(xds, proxy, poller, static)
                    say(f"    {_scale_line(res['scale'])}")
                if proxy.proc.popen.poll() is not None:
                    raise RuntimeError(f"{name} died during the run:\n{proxy.proc.tail()}")
            finally:
                poller.close()
                proxy.proc.stop()
                self.procs.remove(proxy.proc)
        return res

    def run(self) -> dict:
        a = self.args
        os.sched_setaffinity(0, {a.load_cpu})  # this thread, and the ones it starts
        upstream = self.start_upstream()["port"]
        results: dict = {"meta": self.meta(), "runs": {}}
        names = [n for n in ("legatus", "envoy") if not getattr(a, f"skip_{n}")]
        for api in a.api.split(","):
            for name in names:
                key = f"{name}/{api}"
                try:
                    results["runs"][key] = self.run_proxy(name, api == "delta", upstream)
                except RuntimeError as e:
                    say(f"[{key}] FAILED: {e}")
                    results["runs"][key] = {"error": str(e)[-5000:]}
        return results

    def meta(self) -> dict:
        a = self.args
        return {
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "host": platform.node(),
            "kernel": platform.release(),
            "cpus": os.cpu_count(),
            "cpu_model": cpu_model(),
            "python": sys.version.split()[0],
            "envoy_version": None if a.skip_envoy else envoy_version(self.envoy),
            "proxy_cpu": a.proxy_cpu,
            "load_cpu": a.load_cpu,
            "iterations": a.iterations,
            "poll_interval_s": a.poll_interval,
            "probe_interval_s": a.probe_interval,
            "clusters": a.clusters,
            "endpoints": a.endpoints,
            "api": a.api,
        }


def top_callbacks(raw: Path, top: int) -> list[list]:
    """Share of the samples under each callback the event loop ran (the first frame below
    the loop's runner), from py-spy's collapsed stacks: which step of an update took the
    time (decoding the response, warming clusters, merging a worker's stats, ...)."""
    runners = ("Runner.run", "run_forever", "run_until_complete", "run_worker")
    counts: dict[str, int] = {}
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        frames = [f.partition(" (")[0] for f in stack.split(";")]
        total += int(n)
        at = [i for i, f in enumerate(frames) if f in runners]
        name = frames[at[-1] + 1] if at and at[-1] + 1 < len(frames) else "(the loop itself)"
        counts[name] = counts.get(name, 0) + int(n)
    ordered = sorted(counts.items(), key=lambda kv: -kv[1])[:top]
    return [[name, round(100.0 * c / max(1, total), 1)] for name, c in ordered]


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summarize(runs: list[dict], key: str = "seen_ms") -> dict:
    values = [r[key] for r in runs if r.get(key) is not None]
    return {
        "n": len(values),
        "failed": len(runs) - len(values),
        "median": statistics.median(values) if values else None,
        "p90": _pct(values, 0.9),
        "max": max(values) if values else None,
    }


def _summary_line(runs: list[dict]) -> str:
    s, ack = summarize(runs), summarize(runs, "ack_ms")
    return (
        f"seen median {_ms(s['median'])} p90 {_ms(s['p90'])} max {_ms(s['max'])}"
        f" (ACK median {_ms(ack['median'])}), {s['failed']} failed"
    )


def _scale_line(s: dict) -> str:
    if s.get("failed"):
        return f"FAILED: {json.dumps(s.get('track'))[:300]}, counts {s.get('cluster_counts')}"
    return (
        f"done {s['done_s']} s (CDS ACK {s['cds_ack_s']}, EDS ACK {s['eds_ack_s']}, "
        f"served {s['served_s']}), CPU {s['cpu_s']} s, RSS +{s['rss_growth_kib'] / 1024:.1f} MiB"
        f"; EDS update ACK {s['eds_update']['ack_s']} s"
    )


def _ms(v: float | None) -> str:
    return f"{v:.1f} ms" if v is not None else "-"


def _s(v: float | None) -> str:
    return f"{v:.3f} s" if v is not None else "-"


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.1f}x" if a is not None and b else "-"


def _rss_by_role(scale: dict) -> dict[str, float]:
    """RSS growth in MiB per role (main, worker; envoy) of a scale run."""
    before = (scale.get("mem_before") or {}).get("processes", {})
    after = (scale.get("mem_after") or {}).get("processes", {})
    out: dict[str, float] = {}
    for pid, m in after.items():
        if m["role"] != "zygote" and pid in before:
            out[m["role"]] = (
                out.get(m["role"], 0.0) + (m["rss_kib"] - before[pid]["rss_kib"]) / 1024
            )
    return out


def _scale_rows(sl: dict, se: dict, n: int) -> list[tuple[str, str, str, str]]:
    def pair(key: str, scale: float = 1.0) -> tuple[float | None, float | None]:
        a, b = sl.get(key), se.get(key)
        return (a / scale if a is not None else None, b / scale if b is not None else None)

    rows = []
    for label, key in (
        ("push → CDS ACK", "cds_ack_s"),
        (f"push → EDS ACK (all {n:,} assignments)", "eds_ack_s"),
        ("push → first request reaching the last cluster's endpoints", "served_s"),
        ("push → admin stats read: 0 warming, all active", "stats_ok_s"),
        ("**push → done** (both ACKs and the stats)", "done_s"),
        ("(the same admin stats read, idle, afterwards)", "stats_request_idle_s"),
        ("proxy CPU time for the update", "cpu_s"),
    ):
        a, b = pair(key)
        cpu = sl.get("cpu_by_role_s") or {}
        detail = (
            f" (main {cpu['main']:.2f}, worker {cpu['worker']:.2f})"
            if key == "cpu_s" and "worker" in cpu
            else ""
        )
        rows.append((label, _s(a) + detail, _s(b), _ratio(a, b)))
    a, b = pair("rss_growth_kib", 1024)
    split = _rss_by_role(sl)
    detail = (
        f" (main {split['main']:.1f}, worker {split['worker']:.1f})" if "worker" in split else ""
    )
    rows.append(("RSS growth, MiB", f"{a:.1f}{detail}" if a is not None else "-",
                 f"{b:.1f}" if b is not None else "-", _ratio(a, b)))  # fmt: skip
    el, ee = sl.get("eds_update") or {}, se.get("eds_update") or {}
    for label, key in (("push → ACK", "ack_s"), ("proxy CPU time", "cpu_s")):
        a, b = el.get(key), ee.get(key)
        rows.append((f"then one EDS push changing all {n:,} assignments: {label}", _s(a), _s(b),
                     _ratio(a, b)))  # fmt: skip
    return rows


def report(res: dict, args: argparse.Namespace | None = None) -> str:
    m = res["meta"]
    lines = [
        f"xDS benchmark, {m['timestamp']}: {m['cpu_model']}, {m['cpus']} CPUs, proxy on cpu "
        f"{m['proxy_cpu']}, control plane and client on cpu {m['load_cpu']}; Python "
        f"{m['python']}; Envoy {m['envoy_version'] or 'skipped'}; {m['iterations']} updates "
        f"per latency row, polled every {m['poll_interval_s'] * 1000:g} ms",
        "",
        "| update (ADS flavour) | legatus median | legatus p90 | Envoy median | Envoy p90 "
        "| legatus/Envoy median | legatus/Envoy p90 |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    runs = res["runs"]
    apis = m["api"].split(",")
    for api in apis:
        lg, ev = runs.get(f"legatus/{api}", {}), runs.get(f"envoy/{api}", {})
        for case, label in (("route", "RDS route"), ("cluster", "CDS+EDS new cluster")):
            for key, what in (("seen_ms", "push → served"), ("ack_ms", "push → ACK")):
                sl = summarize(lg[case], key) if case in lg else {}
                se = summarize(ev[case], key) if case in ev else {}
                cells = [_ms(sl.get("median")), _ms(sl.get("p90")), _ms(se.get("median")),
                         _ms(se.get("p90")), _ratio(sl.get("median"), se.get("median")),
                         _ratio(sl.get("p90"), se.get("p90"))]  # fmt: skip
                lines.append(f"| {label}, {what} ({api}) | " + " | ".join(cells) + " |")
    for api in apis:
        lg, ev = runs.get(f"legatus/{api}", {}), runs.get(f"envoy/{api}", {})
        sl, se = lg.get("scale") or {}, ev.get("scale") or {}
        if not (sl or se):
            continue
        n = m["clusters"]
        lines += [
            "",
            f"| {n:,} EDS clusters x {m['endpoints']} endpoints, one CDS push ({api}) "
            "| legatus | Envoy | legatus/Envoy |",
            "|---|---:|---:|---:|",
        ]
        lines += [f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} |" for r in _scale_rows(sl, se, n)]
        enc = sl.get("control_plane_encode_s") or se.get("control_plane_encode_s")
        if enc:
            lines.append(
                f"\n(The control plane, Python, takes {enc['cds'] * 1000:.0f} ms to encode the "
                f"CDS response and {enc['eds'] * 1000:.0f} ms the EDS one: part of both columns.)"
            )
    for api in apis:
        for who in ("legatus", "envoy"):
            r = runs.get(f"{who}/{api}", {})
            if r.get("error"):
                lines.append(f"\n{who}/{api} failed: {r['error'][:500]}")
            if (r.get("scale") or {}).get("failed"):
                lines.append(f"\n{who}/{api} scale run did not finish: {_scale_line(r['scale'])}")
            for case in ("route", "cluster"):
                bad = [x for x in r.get(case, []) if x.get("nack") or x.get("timeout")]
                if bad:
                    lines.append(f"\n{who}/{api} {case}: {len(bad)} updates NACKed or timed out")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="xDS benchmark: update latency and 1,000-cluster cost, legatus vs Envoy",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--iterations", type=int, default=30, help="updates per latency row")
    p.add_argument(
        "--clusters", type=int, default=1000, help="clusters of the scale test (0: skip)"
    )
    p.add_argument("--endpoints", type=int, default=10, help="endpoints per scale cluster")
    p.add_argument("--api", default="sotw,delta", help="ADS flavours to run: sotw, delta or both")
    p.add_argument("--poll-interval", type=float, default=0.001, help="s between polls")
    p.add_argument(
        "--probe-interval", type=float, default=0.01, help="s between polls in the scale test"
    )
    p.add_argument("--gap", type=float, default=0.05, help="s between two updates")
    p.add_argument("--timeout", type=float, default=20.0, help="cap (s) of one small update")
    p.add_argument("--scale-timeout", type=float, default=180.0, help="cap (s) of the scale test")
    p.add_argument(
        "--port-base", type=int, default=20000, help="first endpoint port of the scale clusters"
    )
    p.add_argument("--skip-legatus", action="store_true")
    p.add_argument("--skip-envoy", action="store_true")
    p.add_argument(
        "--profile",
        action="store_true",
        help="py-spy (--nonblocking) legatus's main process during the scale test (slows it)",
    )
    p.add_argument(
        "--legatus-cmd",
        default=None,
        help="command that starts legatus (python -m legatus if unset)",
    )
    p.add_argument("--envoy-bin", default=None, help="Envoy binary (envoy on PATH if unset)")
    p.add_argument("--proxy-cpu", type=int, default=1, help="CPU the proxy is pinned to")
    p.add_argument(
        "--load-cpu", type=int, default=0, help="CPU of the control plane, client and upstream"
    )
    p.add_argument("--settle", type=float, default=1.0, help="s to settle before RSS readings")
    p.add_argument(
        "--wait-quiet",
        type=float,
        default=5.0,
        help="before each proxy, wait up to this long for the other processes to go quiet",
    )
    p.add_argument("--log-level", default="warning", help="-l of both proxies")
    p.add_argument(
        "--output",
        type=Path,
        default=None,
        help="JSON path (benchmarks/results/xds-<timestamp>.json if unset)",
    )
    args = p.parse_args(argv)
    for api in args.api.split(","):
        if api not in ("sotw", "delta"):
            p.error(f"--api: unknown flavour {api!r}")
    return args


def check_tools(args: argparse.Namespace) -> str | None:
    if not args.skip_envoy and shutil.which(args.envoy_bin or "envoy") is None:
        return "envoy not found: --envoy-bin, or --skip-envoy"
    return pinning_problem(args)


def main(argv: list[str]) -> int:
    return run_bench(
        argv,
        roles=ROLES,
        parse_args=parse_args,
        check_tools=check_tools,
        bench_class=XdsBench,
        report=report,
        name="xds",
    )


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
