"""CDS and EDS over ADS through the real Envoy and legatus, each with a control plane of its own.

A scenario is a function of one ``XdsSide`` (a proxy, its control plane, its upstreams) that
drives the control plane and returns what it observed, already normalized (the ports of the
upstreams and of the control plane replaced by names) so that the two runs compare with
``==``. ``run_both`` runs it through Envoy and legatus at once, each in its own thread, with
the same bootstrap (apart from the control plane's port and the access log's path) and the
same flags.

The bootstrap (``bootstrap``, unless ``run_both`` is given another): ADS (``GRPC`` or
``DELTA_GRPC``) to the control plane, CDS over ADS, and one static HTTP listener ``http``
whose route names the cluster ``backend`` that only CDS defines (``validate_clusters:
false``), with a file access log of the response code and flags.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import json_format

from tests.support.http_upstream import HttpUpstream, http_proxy_config
from tests.support.process import ProxyProcess, envoy_command, legatus_command, start_proxy
from tests.support.xds_server import Received, Sent
from tests.support.xds_thread import XdsThread, ads_bootstrap

SIDES = ("envoy", "legatus")
ACCESS_LOG = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"
LOG_FORMAT = "%RESPONSE_CODE% %RESPONSE_FLAGS%\n"


# Resources --------------------------------------------------------------------------------


def eds_cluster(name: str, **extra: Any) -> cluster_pb2.Cluster:
    """An EDS cluster whose endpoints come over ADS."""
    return json_format.ParseDict(
        {
            "name": name,
            "type": "EDS",
            "connect_timeout": "1s",
            "eds_cluster_config": {"eds_config": {"ads": {}, "resource_api_version": "V3"}},
            **extra,
        },
        cluster_pb2.Cluster(),
    )


def _lb_endpoints(ports: tuple[int, ...]) -> list[dict]:
    return [
        {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": p}}}}
        for p in ports
    ]


def static_cluster(name: str, *ports: int) -> cluster_pb2.Cluster:
    return json_format.ParseDict(
        {
            "name": name,
            "type": "STATIC",
            "connect_timeout": "1s",
            "load_assignment": {
                "cluster_name": name,
                "endpoints": [{"lb_endpoints": _lb_endpoints(ports)}],
            },
        },
        cluster_pb2.Cluster(),
    )


def assignment(name: str, *ports: int) -> endpoint_pb2.ClusterLoadAssignment:
    return json_format.ParseDict(
        {"cluster_name": name, "endpoints": [{"lb_endpoints": _lb_endpoints(ports)}]},
        endpoint_pb2.ClusterLoadAssignment(),
    )


def bootstrap(xds_port: int, *, delta: bool, access_log: Path) -> dict:
    config = http_proxy_config(0)
    listener = config["static_resources"]["listeners"][0]
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["route_config"]["validate_clusters"] = False
    hcm["access_log"] = [
        {
            "name": "envoy.access_loggers.file",
            "typed_config": {
                "@type": ACCESS_LOG,
                "path": str(access_log),
                "log_format": {"text_format_source": {"inline_string": LOG_FORMAT}},
            },
        }
    ]
    return ads_bootstrap(xds_port, delta=delta, static_resources={"listeners": [listener]})


# Views ------------------------------------------------------------------------------------


def short_type(type_url: str) -> str:
    return type_url.rpartition(".")[2]


def response_view(sent: Sent) -> str:
    """A response, by what it holds: its type, version and resource names (removed ones
    after a minus sign, in delta)."""
    message = sent.message
    delta = isinstance(message, discovery_pb2.DeltaDiscoveryResponse)
    version = message.system_version_info if delta else message.version_info
    names = sorted(sent.names)
    if delta and message.removed_resources:
        names += [f"-{n}" for n in sorted(message.removed_resources)]
    return f"{short_type(sent.type_url)} v{version} {names}"


def request_view(r: Received, sent: dict[str, Sent]) -> dict[str, Any]:
    """What a request says, without node.user_agent_* or metadata (those differ by design).
    The nonce it echoes is shown as the response it answers (``sent``: responses by nonce),
    which does not depend on how many responses came before."""
    view: dict[str, Any] = {"stream": r.stream, "type": short_type(r.type_url)}
    if r.delta:
        view["subscribe"] = sorted(r.subscribe)
        view["unsubscribe"] = sorted(r.unsubscribe)
        view["initial_resource_versions"] = r.initial_resource_versions
    else:
        view["version_info"] = r.version_info
        view["resource_names"] = sorted(r.resource_names)
    nonce = r.response_nonce
    if nonce:
        view["answers"] = response_view(sent[nonce]) if nonce in sent else f"nonce {nonce}?"
    else:
        view["answers"] = None
    view["node"] = f"{r.node.id}/{r.node.cluster}" if r.has_node else None
    if r.is_nack:
        view["nack_code"] = r.error_detail.code
    return view


def reply_view(r: Received) -> dict[str, Any]:
    """An ACK or a NACK: the version it names and the error it carries."""
    return {
        "version_info": r.version_info,
        "nack": r.is_nack,
        "code": r.error_detail.code if r.is_nack else None,
        "message": r.error_detail.message if r.is_nack else None,
    }


# One side ---------------------------------------------------------------------------------


@dataclass
class XdsSide:
    """One proxy and what surrounds it, as a scenario drives it."""

    name: str
    proxy: ProxyProcess
    xds: XdsThread
    upstreams: list[HttpUpstream]
    access_log: Path

    def requests(self) -> list[Received]:
        return self.xds.call(lambda: list(self.xds.server.requests))

    def request_views(self, start: int = 0, end: int | None = None) -> list[dict[str, Any]]:
        """``request_view`` of ``requests()[start:end]``."""
        sent = {s.nonce: s for s in self.xds.call(lambda: list(self.xds.server.responses))}
        return [request_view(r, sent) for r in self.requests()[start:end]]

    def mark(self) -> int:
        """A place in the list of requests, for ``reply``."""
        return len(self.requests())

    def reply(self, type_url: str, since: int, timeout: float = 10.0) -> Received:
        """The first request of ``type_url`` answering a response (ACK or NACK) from ``since``."""

        def answers(r: Received) -> bool:
            return r.type_url == type_url and bool(r.response_nonce)

        return self.xds.run(self.xds.server.wait_for(answers, since=since, timeout=timeout), 30)

    def push(self, type_url: str, resources: list) -> str:
        return self.xds.set_resources(type_url, resources)

    def stats(self, names: Callable[[str], bool]) -> dict[str, Any]:
        return {k: v for k, v in self.proxy.stats().items() if names(k)}

    def settled_stats(self, names: Callable[[str], bool], timeout: float = 5.0) -> dict[str, Any]:
        """The stats once two snapshots 100 ms apart agree (the last update fully applied)."""
        deadline = time.monotonic() + timeout
        previous = self.stats(names)
        while time.monotonic() < deadline:
            time.sleep(0.1)
            current = self.stats(names)
            if current == previous:
                return current
            previous = current
        return previous

    def get(self, path: str = "/") -> dict[str, Any]:
        """One request through the listener: what the client sees."""
        port = self.proxy.listener_port("http")
        response = httpx.get(f"http://127.0.0.1:{port}{path}", timeout=5)
        return {
            "status": response.status_code,
            "body": response.text,
            "content-type": response.headers.get("content-type"),
            "content-length": response.headers.get("content-length"),
        }

    def access_log_lines(self, count: int, timeout: float = 5.0) -> list[str]:
        """The first ``count`` lines of the access log, once they are written."""
        deadline = time.monotonic() + timeout
        lines: list[str] = []
        while time.monotonic() < deadline:
            text = self.access_log.read_text() if self.access_log.exists() else ""
            lines = text.splitlines()
            if len(lines) >= count:
                break
            time.sleep(0.02)
        return lines

    def admin_json(self, path: str) -> Any:
        status, body = self.proxy.admin(path)
        return {"status": status, "body": json.loads(body) if status == 200 else body}

    def normalize(self, value: Any) -> Any:
        """``value`` with every upstream port replaced by ``<upstream N>``."""
        ports = {str(u.port): f"<upstream {i}>" for i, u in enumerate(self.upstreams)}
        ports[str(self.xds.port)] = "<control plane>"

        def port(m: re.Match) -> str:
            return m.group(1) + ports.get(m.group(2), m.group(2))

        text = re.sub(r'(127\.0\.0\.1[:_]|"port_value": )(\d+)', port, json.dumps(value))
        return json.loads(text)


# The pair ---------------------------------------------------------------------------------


def _command(name: str) -> tuple[list[str], list[str]]:
    if name == "envoy":
        return envoy_command(), []  # envoy_command() has --use-dynamic-base-id
    return legatus_command(), ["--use-dynamic-base-id"]


# (control plane port, delta, access log path) -> the bootstrap
Bootstrap = Callable[..., dict]


def _run_one(
    name: str,
    workdir: Path,
    *,
    delta: bool,
    before_start: Callable[[XdsThread, list[HttpUpstream]], None],
    scenario: Callable[[XdsSide], dict[str, Any]],
    config: Bootstrap,
) -> dict[str, Any]:
    upstreams = [HttpUpstream(), HttpUpstream()]
    try:
        with XdsThread() as xds:
            before_start(xds, upstreams)
            side_dir = workdir / name
            access_log = side_dir / "access.log"
            command, args = _command(name)
            # Started, driven and stopped in this thread: Envoy asks for a signal when the
            # thread that started it ends.
            proxy = start_proxy(
                config(xds.port, delta=delta, access_log=access_log),
                side_dir,
                command=command,
                args=[*args, "--concurrency", "1", "--file-flush-interval-msec", "10"],
            )
            try:
                side = XdsSide(name, proxy, xds, upstreams, access_log)
                observed = scenario(side)
                observed["streams_opened"] = xds.call(lambda: xds.server.streams_opened)
                return observed
            finally:
                proxy.stop()
    finally:
        for upstream in upstreams:
            upstream.close()


def run_both(
    workdir: Path,
    *,
    delta: bool,
    before_start: Callable[[XdsThread, list[HttpUpstream]], None],
    scenario: Callable[[XdsSide], dict[str, Any]],
    config: Bootstrap = bootstrap,
) -> dict[str, dict[str, Any]]:
    """Run ``scenario`` through Envoy and legatus at once; what each observed, by side.
    ``config(xds_port, delta=, access_log=)`` makes the bootstrap (``bootstrap``)."""
    with ThreadPoolExecutor(len(SIDES)) as pool:
        futures = {
            name: pool.submit(
                _run_one, name, workdir, delta=delta, before_start=before_start,
                scenario=scenario, config=config,
            )
            for name in SIDES
        }  # fmt: skip
        return {name: future.result() for name, future in futures.items()}


def side_by_side(envoy: Any, legatus: Any) -> str:
    """Both values, for an assertion message."""
    return (
        f"\nenvoy:   {json.dumps(envoy, default=str)}\nlegatus: {json.dumps(legatus, default=str)}"
    )
