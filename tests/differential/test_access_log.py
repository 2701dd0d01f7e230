"""tcp_proxy access logs: the same connections through Envoy and legatus log the same lines."""

from __future__ import annotations

import json
import re
import socket
import time

from tests.support.process import envoy_command, start_proxy
from tests.support.upstreams import EchoServer, free_port

TEXT_FORMAT = (
    "%RESPONSE_FLAGS% %RESPONSE_FLAGS_LONG% %BYTES_RECEIVED% %BYTES_SENT% %UPSTREAM_CLUSTER% "
    "%UPSTREAM_HOST% %PROTOCOL% %RESPONSE_CODE% %DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT% "
    "%UPSTREAM_TRANSPORT_FAILURE_REASON% %REQ(:METHOD)%\n"
)
JSON_FORMAT = {
    "flags": "%RESPONSE_FLAGS%",
    "rx": "%BYTES_RECEIVED%",
    "tx": "%BYTES_SENT%",
    "cluster": "%UPSTREAM_CLUSTER%",
    "mixed": "rx=%BYTES_RECEIVED% host=%UPSTREAM_HOST%",
}


def _config(tmp, *, echo_port: int, dead_port: int) -> dict:
    def access_log(name: str, fmt: dict | None) -> dict:
        typed_config = {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
            "path": str(tmp / name),
        }
        if fmt is not None:
            typed_config["log_format"] = fmt
        return {"name": "envoy.access_loggers.file", "typed_config": typed_config}

    logs = [
        access_log("text.log", {"text_format_source": {"inline_string": TEXT_FORMAT}}),
        access_log("json.log", {"json_format": JSON_FORMAT}),
        access_log("default.log", None),
    ]

    def listener(name: str, cluster: str) -> dict:
        return {
            "name": name,
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
            "filter_chains": [
                {
                    "filters": [
                        {
                            "name": "envoy.filters.network.tcp_proxy",
                            "typed_config": {
                                "@type": "type.googleapis.com/envoy.extensions.filters.network"
                                ".tcp_proxy.v3.TcpProxy",
                                "stat_prefix": name,
                                "cluster": cluster,
                                "access_log": logs,
                            },
                        }
                    ]
                }
            ],
        }

    def cluster(name: str, port: int) -> dict:
        return {
            "name": name,
            "connect_timeout": "1s",
            "load_assignment": {
                "cluster_name": name,
                "endpoints": [
                    {
                        "lb_endpoints": [
                            {
                                "endpoint": {
                                    "address": {
                                        "socket_address": {
                                            "address": "127.0.0.1",
                                            "port_value": port,
                                        }
                                    }
                                }
                            }
                        ]
                    }
                ],
            },
        }

    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "listeners": [listener("ok", "backend"), listener("refused", "dead")],
            "clusters": [cluster("backend", echo_port), cluster("dead", dead_port)],
        },
    }


def _traffic(proxy) -> None:
    with socket.create_connection(("127.0.0.1", proxy.listener_port("ok")), timeout=5) as s:
        s.sendall(b"x" * 100)
        got = b""
        while len(got) < 100:
            got += s.recv(100)
    with socket.create_connection(("127.0.0.1", proxy.listener_port("refused")), timeout=5) as s:
        s.settimeout(5)
        assert s.recv(1) == b""


def _lines(path, n: int, timeout: float = 10.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            lines = path.read_text().splitlines()
            if len(lines) >= n:
                return sorted(lines)
        time.sleep(0.05)
    raise AssertionError(f"{path} has fewer than {n} lines")


def _normalize(line: str, ports: dict[int, str]) -> str:
    line = re.sub(r"\[\d{4}-\d\d-\d\dT[\d:.]+Z\]", "[TIME]", line)
    for port, name in ports.items():
        line = line.replace(f":{port}", f":<{name}>")
    return line


def test_access_logs_match_envoy(tmp_path):
    echo = EchoServer()
    dead = free_port()
    ports = {echo.port: "echo", dead: "dead"}
    results = {}
    try:
        for name, command in (("envoy", envoy_command()), ("legatus", None)):
            workdir = tmp_path / name
            workdir.mkdir()
            proxy = start_proxy(
                _config(workdir, echo_port=echo.port, dead_port=dead),
                workdir,
                command=command,
                args=["--concurrency", "1", "--file-flush-interval-msec", "50"],
            )
            try:
                _traffic(proxy)
                logs = {f: _lines(workdir / f, 2) for f in ("text.log", "json.log", "default.log")}
            finally:
                proxy.stop()
            results[name] = {
                f: [_normalize(line, ports) for line in lines] for f, lines in logs.items()
            }
    finally:
        echo.close()
    envoy, legatus = results["envoy"], results["legatus"]
    assert legatus["text.log"] == envoy["text.log"]
    assert [json.loads(x) for x in legatus["json.log"]] == [
        json.loads(x) for x in envoy["json.log"]
    ]
    # The default format has the duration (ms) in it: compare everything else.
    strip = re.compile(r'(" \d+ \S+ \d+ \d+ )\d+')
    assert [strip.sub(r"\1D", x) for x in legatus["default.log"]] == [
        strip.sub(r"\1D", x) for x in envoy["default.log"]
    ]
