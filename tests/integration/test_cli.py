"""The command line, as an operator uses it: flags, modes, exit codes, log files, signals."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import yaml

from tests.support.process import start_proxy, wait_for
from tests.support.upstreams import EchoServer, tcp_proxy_config

LEGATUS = [sys.executable, "-m", "legatus"]


def _run(*args, cwd=None, timeout=60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*LEGATUS, *args], capture_output=True, text=True, cwd=cwd, timeout=timeout
    )


def _write(tmp_path, config, name="envoy.yaml"):
    path = tmp_path / name
    path.write_text(json.dumps(config) if name.endswith(".json") else yaml.safe_dump(config))
    return str(path)


def test_version_and_help():
    r = _run("--version")
    assert r.returncode == 0
    assert r.stdout.strip().startswith("legatus  version: legatus-")
    r = _run("--help")
    assert r.returncode == 0
    for flag in (
        "--config-path",
        "--config-yaml",
        "--mode",
        "--concurrency",
        "--log-level",
        "--component-log-level",
        "--log-path",
        "--log-format",
        "--service-cluster",
        "--service-node",
        "--service-zone",
        "--drain-time-s",
        "--parent-shutdown-time-s",
        "--drain-strategy",
        "--restart-epoch",
        "--disable-hot-restart",
        "--base-id",
        "--file-flush-interval-msec",
        "--local-address-ip-version",
        "--admin-address-path",
        "--allow-unknown-static-fields",
    ):
        assert flag in r.stdout


def test_bad_flags_exit_1():
    r = _run("--bogus")
    assert r.returncode == 1
    assert "PARSE ERROR" in r.stderr
    r = _run("-c", "x.yaml", "--mode", "nope")
    assert r.returncode == 1
    r = _run("-c", "x.yaml", "-l", "loud")
    assert r.returncode == 1
    assert "invalid log level specified 'loud'" in r.stderr


def test_validate_ok_and_error(tmp_path):
    good = _write(tmp_path, tcp_proxy_config(upstream_port=1))
    r = _run("--mode", "validate", "-c", good)
    assert (r.returncode, r.stdout) == (0, f"configuration '{good}' OK\n")
    cfg = tcp_proxy_config(upstream_port=1)
    cfg["static_resources"]["clusters"][0]["name"] = ""
    bad = _write(tmp_path, cfg, "bad.yaml")
    r = _run("--mode", "validate", "-c", bad)
    assert r.returncode == 1
    assert "static_resources.clusters[0].name: value length must be at least 1" in r.stderr
    assert "OK" not in r.stdout


def test_json_config_and_config_yaml_merge(tmp_path):
    cfg = tcp_proxy_config(upstream_port=1)
    cluster = cfg["static_resources"].pop("clusters")[0]
    base = _write(tmp_path, cfg, "base.json")
    r = _run("--mode", "validate", "-c", base)
    assert r.returncode == 0  # an unknown cluster in tcp_proxy is a runtime miss, as in Envoy
    overlay = yaml.safe_dump(
        {"static_resources": {"clusters": [cluster]}, "node": {"id": "from-yaml"}}
    )
    r = _run("--mode", "validate", "-c", base, "--config-yaml", overlay)
    assert r.returncode == 0, r.stderr
    r = _run("--mode", "validate", "--config-yaml", yaml.safe_dump(cfg))
    assert r.returncode == 0, r.stderr
    r = _run("--mode", "validate")
    assert r.returncode == 1
    assert "--config-path or --config-yaml" in r.stderr


def test_unknown_field_rejected_unless_allowed(tmp_path):
    cfg = tcp_proxy_config(upstream_port=1)
    cfg["static_resources"]["clusters"][0]["bogus_field"] = 1
    path = _write(tmp_path, cfg)
    r = _run("--mode", "validate", "-c", path)
    assert r.returncode == 1
    assert "static_resources.clusters[0].bogus_field: unknown field 'bogus_field'" in r.stderr
    r = _run("--mode", "validate", "-c", path, "--allow-unknown-static-fields")
    assert r.returncode == 0, r.stderr


def test_unsupported_extension_names_path_and_type(tmp_path):
    cfg = tcp_proxy_config(upstream_port=1)
    f = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    f["name"] = "envoy.filters.network.mongo_proxy"
    f["typed_config"] = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.mongo_proxy.v3.MongoProxy",
        "stat_prefix": "m",
    }
    r = _run("--mode", "validate", "-c", _write(tmp_path, cfg))
    assert r.returncode == 1
    assert (
        "static_resources.listeners[0].filter_chains[0].filters[0].typed_config: unsupported "
        "extension type.googleapis.com/envoy.extensions.filters.network.mongo_proxy.v3."
        "MongoProxy"
    ) in r.stderr


def test_init_only_exits_0(tmp_path):
    r = _run("--mode", "init_only", "-c", _write(tmp_path, tcp_proxy_config(upstream_port=1)))
    assert r.returncode == 0, r.stderr


def test_port_in_use_fails_start_up(tmp_path):
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    try:
        port = holder.getsockname()[1]
        path = _write(tmp_path, tcp_proxy_config(upstream_port=1, listener_port=port))
        r = _run("-c", path, "--concurrency", "1")
        assert r.returncode == 1
        assert f"cannot bind '127.0.0.1:{port}'" in r.stderr
    finally:
        holder.close()


def test_unimplemented_flags_are_named_in_a_warning(tmp_path):
    echo = EchoServer()
    try:
        proxy = start_proxy(
            tcp_proxy_config(upstream_port=echo.port),
            tmp_path,
            args=["--concurrency", "1", "--parent-shutdown-time-s", "60", "--restart-epoch", "0"],
        )
        proxy.stop()
        log = proxy.log()
        assert "--parent-shutdown-time-s is accepted but has no effect" in log
        assert "--restart-epoch is accepted but has no effect" in log
    finally:
        echo.close()


def test_node_flags_and_unknown_fields_show_in_admin(tmp_path):
    echo = EchoServer()
    cfg = tcp_proxy_config(upstream_port=echo.port)
    cfg["static_resources"]["clusters"][0]["bogus_field"] = 1
    try:
        proxy = start_proxy(
            cfg,
            tmp_path,
            args=[
                "--concurrency",
                "1",
                "--allow-unknown-static-fields",
                "--service-node",
                "n1",
                "--service-cluster",
                "c1",
                "--service-zone",
                "z1",
            ],
        )
        try:
            _, body = proxy.admin("/server_info")
            info = json.loads(body)
            assert info["node"]["id"] == "n1"
            assert info["node"]["cluster"] == "c1"
            assert info["node"]["locality"]["zone"] == "z1"
            assert info["command_line_options"]["service_node"] == "n1"
            assert proxy.stats()["server.static_unknown_fields"] == 1
        finally:
            proxy.stop()
    finally:
        echo.close()


def test_log_path_and_sigusr1_reopen(tmp_path):
    echo = EchoServer()
    log_path = tmp_path / "legatus.log"
    try:
        proxy = start_proxy(
            tcp_proxy_config(upstream_port=echo.port),
            tmp_path,
            args=["--concurrency", "1", "--log-path", str(log_path)],
        )
        try:
            assert "starting main dispatch loop" in log_path.read_text()
            os.rename(log_path, tmp_path / "legatus.log.1")
            proxy.proc.send_signal(signal.SIGUSR1)
            wait_for(
                lambda: log_path.exists() and "Reopening" in log_path.read_text(),
                what="a reopened log file",
            )
        finally:
            proxy.stop()
        assert "exiting" in log_path.read_text()
        assert "exiting" not in (tmp_path / "legatus.log.1").read_text()
    finally:
        echo.close()


def test_component_log_level_and_format(tmp_path):
    echo = EchoServer()
    try:
        proxy = start_proxy(
            tcp_proxy_config(upstream_port=echo.port),
            tmp_path,
            args=[
                "--concurrency",
                "1",
                "--log-format",
                "%l|%n|%v",
                "--component-log-level",
                "main:debug",
            ],
        )
        time.sleep(0.2)
        proxy.stop()
        lines = proxy.log().splitlines()
        assert "info|main|starting main dispatch loop" in lines
        assert any(line.startswith("debug|main|worker 0") for line in lines)
        r = _run("-c", "x.yaml", "--component-log-level", "nope:debug")
        assert r.returncode == 1
        assert "invalid component specified 'nope'" in r.stderr
    finally:
        echo.close()


def test_admin_log_level_change_reaches_the_workers(tmp_path):
    from tests.support.upstreams import free_port

    proxy = start_proxy(
        tcp_proxy_config(upstream_port=free_port()), tmp_path, args=["--concurrency", "2"]
    )
    try:
        port = proxy.listener_port("tcp")

        def refused_connection():
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.settimeout(5)
                assert s.recv(1) == b""

        refused_connection()
        assert "tcp_proxy: connect to" not in proxy.log()
        status, body = proxy.admin("/logging?filter=debug", method="POST")
        assert status == 200
        assert "  filter: debug\n" in body
        wait_for(lambda: refused_connection() or "tcp_proxy: connect to" in proxy.log(),
                 what="a debug line from a worker")  # fmt: skip
    finally:
        proxy.stop()
