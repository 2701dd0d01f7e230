#!/usr/bin/env python3
"""HTTP/1.1 benchmark: legatus vs Envoy, side by side, one worker each.

Run by hand (never from the test suite)::

    python benchmarks/http1.py                  # direct + legatus + Envoy, ~3-5 minutes
    python benchmarks/http1.py --rounds 1 --duration 5 --skip-bulk   # a quick look
    python benchmarks/http1.py --help           # every option

The issue's benchmark: wrk against legatus and Envoy, one worker each, the same bootstrap
and upstream, interleaved rounds, the proxy pinned to its own core, 64 B and 16 KiB responses
over keep-alive, with access logging off and with one file access log in the default format;
then a 1 GiB upload and a 1 GiB download through one stream, with the proxy's RSS growth.

- Load generator: ``wrk --latency`` (Debian package ``wrk``), one thread, ``--connections``
  keep-alive connections, pinned with the upstream and this script to ``--load-cpu`` (0).
- Upstream: a uvloop + httptools HTTP/1.1 server that is part of this script (role
  ``_upstream``): ``GET /64`` and ``GET /16384`` return fixed bodies, ``/bulk/upload`` reads
  and discards a request body of any size and answers with the byte count,
  ``/bulk/download/<n>`` streams n bytes under flow control. Neither direction is buffered.
  ``--upstream nginx`` serves the fixed bodies with nginx instead (files, one worker).
- Proxies: ``taskset -c <proxy-cpu> python -m legatus -c <bootstrap> --concurrency 1`` and
  ``taskset -c <proxy-cpu> envoy -c <bootstrap> --concurrency 1 --use-dynamic-base-id``, one
  at a time, with the very same bootstrap: an HTTP connection manager (codec AUTO,
  stat_prefix ingress_http, one virtual host ``*`` routing ``/`` to cluster ``upstream``,
  router filter) and one STATIC cluster; a second bootstrap adds one file access log in the
  default format.
- Rounds: for each round, "direct" (wrk straight to the upstream: the ceiling of the load
  core), then for each bootstrap legatus and Envoy (the order swaps every round), each
  started fresh, warmed up, then one wrk run per body size. The table shows medians.

While legatus refuses the HTTP connection manager at start-up, it is reported as "not
supported yet (<its first error line>)" and Envoy and direct are still measured.

Results are printed as a markdown table and written as JSON to
``benchmarks/results/http1-<timestamp>.json``. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

# Shared helpers of the tcp_proxy benchmark (this directory is on sys.path when a script in
# it is run as ``python benchmarks/<name>.py``).
from tcp_proxy import (
    HOST,
    Bench,
    CpuWindow,
    Proc,
    cpu_model,
    envoy_version,
    free_ports,
    legatus_workers,
    mem_of,
    pinning_problem,
    run_bench,
    say,
)

SIZES = (64, 16384)
BULK_CHUNK = 256 * 1024  # one write of a streamed download
UPSTREAM_WRITE_HIGH = 1024 * 1024  # write buffer high-water mark of the upstream
RSS_TARGET_MIB = 32
RPS_TARGET = 1.5
READY_TIMEOUT_S = 30.0
VARIANTS = ("nolog", "accesslog", "traffic")
VARIANT_LABEL = {
    "nolog": "no access log",
    "accesslog": "file access log",
    "traffic": "3 hosts, health checks, retries, local rate limit",
}
TRAFFIC_TARGET = 0.9  # the traffic-management variant keeps 90% of the plain route's req/s
WRK_INSTALL = (
    "wrk not found. Install it with `sudo apt-get install -y wrk` (Debian/Ubuntu package "
    "`wrk`, 4.1.0 in bookworm), or pass --wrk-bin /path/to/wrk."
)


# --------------------------------------------------------------------------------------------
# Helper role: the upstream HTTP/1.1 server (a subprocess on the load CPU)
# --------------------------------------------------------------------------------------------


def _response(body: bytes, content_length: int | None = None) -> bytes:
    n = len(body) if content_length is None else content_length
    head = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
        b"Content-Length: %d\r\n\r\n" % n
    )
    return head + body


def role_upstream(argv: list[str]) -> None:
    """uvloop + httptools keep-alive server on ``--ports`` free ports (one process: the
    hosts of a cluster); prints ``{"port": <the first>, "ports": [...]}``.

    ``/<n>`` for n in --sizes: a fixed body of n bytes; ``/bulk/upload``: reads and discards
    the request body, answers its length; ``/bulk/download/<n>``: streams n bytes, writing
    only while the transport is below its high-water mark.
    """
    p = argparse.ArgumentParser(prog="_upstream")
    p.add_argument("--sizes", default=",".join(map(str, SIZES)))
    p.add_argument("--ports", type=int, default=1)
    a = p.parse_args(argv)

    import httptools
    import uvloop

    fixed = {f"/{n}".encode(): _response(b"x" * n) for n in map(int, a.sizes.split(","))}
    not_found = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
    chunk = memoryview(b"z" * BULK_CHUNK)

    class Upstream(asyncio.Protocol):
        __slots__ = ("keep_alive", "parser", "paused", "received", "to_send", "transport", "url")

        def connection_made(self, transport) -> None:
            self.transport = transport
            self.parser = httptools.HttpRequestParser(self)
            self.url = b""
            self.received = 0
            self.to_send = 0
            self.paused = False
            self.keep_alive = True
            transport.set_write_buffer_limits(high=UPSTREAM_WRITE_HIGH)

        def data_received(self, data: bytes) -> None:
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserError:
                self.transport.close()

        def on_message_begin(self) -> None:
            self.url = b""
            self.received = 0

        def on_url(self, url: bytes) -> None:
            self.url += url

        def on_body(self, body: bytes) -> None:
            self.received += len(body)  # counted, never kept

        def on_message_complete(self) -> None:
            url = self.url
            self.keep_alive = self.parser.should_keep_alive()
            resp = fixed.get(url)
            if resp is not None:
                self.transport.write(resp)
            elif url == b"/bulk/upload":
                self.transport.write(_response(b"%d\n" % self.received))
            elif url.startswith(b"/bulk/download/"):
                n = int(url.rpartition(b"/")[2])
                self.transport.write(_response(b"", n))
                self.to_send = n
                self.pump()
                return
            else:
                self.transport.write(not_found)
            if not self.keep_alive:
                self.transport.close()

        def pump(self) -> None:
            while self.to_send and not self.paused:
                n = min(self.to_send, BULK_CHUNK)
                self.transport.write(chunk if n == BULK_CHUNK else chunk[:n])
                self.to_send -= n
            if not self.to_send and not self.keep_alive:
                self.transport.close()

        def pause_writing(self) -> None:
            self.paused = True

        def resume_writing(self) -> None:
            self.paused = False
            if self.to_send:
                self.pump()

        def connection_lost(self, exc) -> None:
            self.to_send = 0

    async def main() -> None:
        loop = asyncio.get_running_loop()
        servers = [
            await loop.create_server(Upstream, HOST, 0, backlog=4096, reuse_address=True)
            for _ in range(a.ports)
        ]
        ports = [s.sockets[0].getsockname()[1] for s in servers]
        print(json.dumps({"port": ports[0], "ports": ports}), flush=True)
        await asyncio.gather(*(s.serve_forever() for s in servers))

    uvloop.run(main())


ROLES = {"_upstream": role_upstream}


# --------------------------------------------------------------------------------------------
# Bootstraps
# --------------------------------------------------------------------------------------------

HCM_TYPE = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
    "HttpConnectionManager"
)
BOOTSTRAP = """\
# HTTP/1.1 benchmark bootstrap ({variant}): run unchanged by legatus and Envoy. No admin.
# The route has no timeout (timeout: 0s) so that the 1 GiB streams are not cut at Envoy's
# default 15 s route timeout.
static_resources:
  listeners:
  - name: ingress_http
    address:
      socket_address: {{ address: 127.0.0.1, port_value: {listen_port} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": {hcm_type}
          codec_type: AUTO
          stat_prefix: ingress_http
{access_log}          route_config:
            name: local_route
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
{route}          http_filters:
{filters}          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: upstream
    type: STATIC
    connect_timeout: 1s
{health}    load_assignment:
      cluster_name: upstream
      endpoints:
      - lb_endpoints:
{endpoints}"""

# The traffic-management variant: a 3-host round-robin cluster with active HTTP health
# checks, a retry policy on the route and a local rate limit filter that never limits.
TRAFFIC_ROUTE = """\
                route:
                  cluster: upstream
                  timeout: 0s
                  retry_policy: {{ retry_on: "5xx,reset,connect-failure", num_retries: 2 }}
"""
TRAFFIC_FILTER = """\
          - name: envoy.filters.http.local_ratelimit
            typed_config:
              "@type": {rl_type}
              stat_prefix: bench_rl
              token_bucket:
                {{ max_tokens: 1000000000, tokens_per_fill: 1000000000, fill_interval: 1s }}
              filter_enabled: {{ default_value: {{ numerator: 100, denominator: HUNDRED }} }}
              filter_enforced: {{ default_value: {{ numerator: 100, denominator: HUNDRED }} }}
"""
TRAFFIC_HEALTH = """\
    health_checks:
    - timeout: 1s
      interval: 1s
      unhealthy_threshold: 2
      healthy_threshold: 1
      http_health_check: {{ path: /64 }}
"""
RL_TYPE = "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit"
ENDPOINT = """\
        - endpoint:
            address:
              socket_address: {{ address: 127.0.0.1, port_value: {port} }}
"""

ACCESS_LOG = """\
          access_log:
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: {path}
"""


def write_bootstrap(
    path: Path,
    variant: str,
    listen_port: int,
    upstream_port: int,
    log_path: Path | None,
    more_upstreams: tuple[int, ...] = (),
) -> None:
    """``more_upstreams``: the other hosts of the traffic variant's cluster."""
    access_log = ACCESS_LOG.format(path=log_path) if log_path else ""
    traffic = variant == "traffic"
    ports = (upstream_port, *more_upstreams) if traffic else (upstream_port,)
    path.write_text(
        BOOTSTRAP.format(
            variant=variant,
            hcm_type=HCM_TYPE,
            listen_port=listen_port,
            access_log=access_log,
            route=TRAFFIC_ROUTE.format()
            if traffic
            else "                route: { cluster: upstream, timeout: 0s }\n",
            filters=TRAFFIC_FILTER.format(rl_type=RL_TYPE) if traffic else "",
            health=TRAFFIC_HEALTH.format() if traffic else "",
            endpoints="".join(ENDPOINT.format(port=p) for p in ports),
        )
    )


NGINX_CONF = """\
daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  keepalive_requests 1000000000;
  keepalive_timeout 300s;
  sendfile on;
  tcp_nodelay on;
  open_file_cache max=16;
  default_type application/octet-stream;
  server {{
{listen}    root {d}/www;
    location / {{ }}
  }}
}}
"""


# --------------------------------------------------------------------------------------------
# wrk, curl and /proc
# --------------------------------------------------------------------------------------------

_UNITS_S = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def _seconds(value: str, unit: str) -> float:
    return float(value) * _UNITS_S[unit]


def parse_wrk(out: str) -> dict:
    """requests/s, request count, latency percentiles (ms) and errors from ``wrk --latency``."""
    r: dict = {"errors": {}}
    if m := re.search(r"Requests/sec:\s+([\d.]+)", out):
        r["rps"] = float(m.group(1))
    if m := re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m|h)", out):
        r["requests"] = int(m.group(1))
        r["seconds"] = _seconds(m.group(2), m.group(3))
    dist = out.partition("Latency Distribution")[2]
    for pct, value, unit in re.findall(r"^\s+(\d+)%\s+([\d.]+)(us|ms|s|m|h)\s*$", dist, re.M):
        r[f"latency_ms_p{pct}"] = _seconds(value, unit) * 1e3
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out):
        for name, n in zip(("connect", "read", "write", "timeout"), m.groups(), strict=True):
            if int(n):
                r["errors"][f"socket {name}"] = int(n)
    if m := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        r["errors"]["non-2xx/3xx responses"] = int(m.group(1))
    if "rps" not in r or "latency_ms_p99" not in r:
        r["errors"]["unparsed wrk output"] = 1
    return r


def proc_status_kib(pid: int, key: str) -> int | None:
    """``VmRSS`` / ``VmHWM`` (KiB) from /proc/<pid>/status."""
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return None


class RssSampler:
    """Peak RSS of one process over a window: samples of VmRSS every ``interval`` s, and
    VmHWM after resetting it (``echo 5 > /proc/<pid>/clear_refs``) when the kernel lets us."""

    def __init__(self, pid: int, interval: float = 0.01) -> None:
        self.pid = pid
        self.interval = interval
        self.stop_evt = threading.Event()
        self.peak = 0

    def __enter__(self) -> RssSampler:
        self.before = proc_status_kib(self.pid, "VmRSS") or 0
        self.hwm_reset = False
        with contextlib.suppress(OSError), open(f"/proc/{self.pid}/clear_refs", "w") as f:
            f.write("5")
            self.hwm_reset = True
        self.peak = self.before
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def _run(self) -> None:
        while not self.stop_evt.wait(self.interval):
            rss = proc_status_kib(self.pid, "VmRSS")
            if rss is not None:
                self.peak = max(self.peak, rss)

    def __exit__(self, *exc) -> None:
        self.stop_evt.set()
        self.thread.join()
        self.after = proc_status_kib(self.pid, "VmRSS") or 0
        if self.hwm_reset:
            self.peak = max(self.peak, proc_status_kib(self.pid, "VmHWM") or 0)

    def result(self) -> dict:
        return {
            "rss_before_kib": self.before,
            "rss_peak_kib": self.peak,
            "rss_after_kib": self.after,
            "rss_growth_kib": self.peak - self.before,
            "peak_from_vmhwm": self.hwm_reset,
        }


def first_error_line(log: str, rc: int | None) -> str:
    """The first line of a failed start-up that says what went wrong, without its log
    prefix (``[time][pid][level][component] [file:line] ``)."""
    lines = [ln.strip() for ln in log.splitlines() if ln.strip()]
    pick = next((ln for ln in lines if re.search(r"critical|error", ln, re.I)), None)
    pick = pick or (lines[0] if lines else f"exited with code {rc} and no output")
    return re.sub(r"^(\[[^\]]*\]\s*)+", "", pick)


class NotSupported(Exception):
    """The proxy refused the bootstrap at start-up."""


# --------------------------------------------------------------------------------------------
# Orchestrator
# --------------------------------------------------------------------------------------------


class Http1Bench(Bench):
    """The process plumbing of the tcp_proxy benchmark (pinning, start/stop, readiness,
    waiting for a quiet machine), with its own helper role and measurements."""

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args)
        self.script = str(Path(__file__).resolve())  # helper roles live in this file
        self.runs: list[dict] = []
        self.unsupported: dict[str, str] = {}  # variant -> legatus's first error line
        self.errors: list[str] = []

    # processes ------------------------------------------------------------------------------

    def start_upstreams(self, hosts: int) -> tuple[tuple[int, ...], int]:
        """(the ports of the ``hosts`` upstream hosts measured with wrk, the port of the
        streaming upstream). The plain route uses the first host; the traffic variant's
        cluster all of them. With ``--host-processes shared`` (the default) one upstream
        process listens on every host's port, so that the load CPU runs the same processes
        whichever variant is measured; ``own`` starts one process per host."""
        shared = self.args.host_processes == "shared"
        first = self.start_upstream("--ports", str(hosts if shared else 1))
        stream = first["port"]
        if self.args.upstream == "python":
            ports = first["ports"] if shared else [stream]
            ports += [self.start_upstream()["port"] for _ in range(hosts - len(ports))]
            return tuple(ports), stream
        n = 1 if not shared else hosts
        ports = [self.start_nginx(free_ports(n)) for _ in range(hosts // n)]
        return tuple(p for group in ports for p in group), stream

    def start_nginx(self, ports: list[int]) -> list[int]:
        """An nginx (one worker) serving the fixed bodies on ``ports``."""
        d = Path(tempfile.mkdtemp(prefix="nginx-", dir=self.tmp))
        (d / "www").mkdir(parents=True)
        for n in SIZES:
            (d / "www" / str(n)).write_bytes(b"x" * n)
        listen = "".join(f"    listen 127.0.0.1:{port} backlog=4096;\n" for port in ports)
        (d / "nginx.conf").write_text(NGINX_CONF.format(d=d, listen=listen))
        self.tmp.chmod(0o755)  # nginx may read its files as another user
        d.chmod(0o755)
        cmd = [self.args.nginx_bin, "-p", str(d), "-c", str(d / "nginx.conf"),
               "-e", str(d / "error.log")]  # fmt: skip
        log_path = d / "nginx.log"
        with open(log_path, "wb") as log:
            popen = subprocess.Popen(
                self.pin(self.args.load_cpu, cmd),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        proc = Proc("nginx", popen, log_path)
        self.procs.append(proc)
        try:
            for port in ports:
                self.wait_http(proc, port)
        except NotSupported as e:
            raise RuntimeError(f"nginx did not start: {e}") from None
        return ports

    def command(self, name: str, cfg: Path) -> list[str]:
        a = self.args
        if name == "legatus":
            base = (
                shlex.split(a.legatus_cmd) if a.legatus_cmd else [sys.executable, "-m", "legatus"]
            )
            return [*base, "-c", str(cfg), "--concurrency", "1", "-l", a.log_level]
        return [self.envoy, "-c", str(cfg), "--concurrency", "1", "--use-dynamic-base-id",
                "-l", a.log_level]  # fmt: skip

    def wait_http(self, proc, port: int) -> float:
        """Until ``GET /64`` through ``port`` answers 200; NotSupported if the process exits
        first."""
        t0 = time.monotonic()
        deadline = t0 + READY_TIMEOUT_S
        last = ""
        while True:
            if proc.popen.poll() is not None:
                raise NotSupported(first_error_line(proc.tail(200), proc.popen.returncode))
            try:
                c = http.client.HTTPConnection(HOST, port, timeout=2)
                c.request("GET", f"/{SIZES[0]}")
                resp = c.getresponse()
                resp.read()
                c.close()
                if resp.status == 200:
                    return time.monotonic() - t0
                last = f"HTTP {resp.status}"
            except (OSError, http.client.HTTPException) as e:
                last = repr(e)
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{proc.name}: no 200 on port {port} after {READY_TIMEOUT_S}s ({last}):\n"
                    f"{proc.tail()}"
                )
            time.sleep(0.05)

    def start_ready(self, name: str, cfg: Path, port: int, log_name: str | None = None) -> tuple:
        """Start a proxy; (Proc, pids for CPU, pid whose RSS counts, ready seconds)."""
        proc = self.start_proxy(name, self.command(name, cfg), log_name)
        try:
            ready_s = self.wait_http(proc, port)
            pids = [proc.popen.pid]
            mem_pid = proc.popen.pid
            if name == "legatus":
                deadline = time.monotonic() + 10
                while not legatus_workers(proc.popen.pid) and time.monotonic() < deadline:
                    time.sleep(0.05)
                workers = legatus_workers(proc.popen.pid)
                if len(workers) != 1:
                    raise RuntimeError(f"expected 1 legatus worker, found {workers}")
                pids.append(workers[0])
                mem_pid = workers[0]
        except BaseException:
            self.stop(proc)
            raise
        return proc, pids, mem_pid, ready_s

    def stop(self, proc) -> None:
        proc.stop()
        if proc in self.procs:
            self.procs.remove(proc)

    # wrk ------------------------------------------------------------------------------------

    def wrk(self, port: int, size: int, duration: int, pids: list[int]) -> dict:
        a = self.args
        url = f"http://{HOST}:{port}/{size}"
        cmd = self.pin(a.load_cpu, [a.wrk_bin, "-t", str(a.threads), "-c", str(a.connections),
                                    "-d", f"{duration}s", "--latency", url])  # fmt: skip
        with CpuWindow(pids) as w:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60)
        if r.returncode != 0:
            raise RuntimeError(f"wrk failed ({r.returncode}): {r.stderr.strip()[-2000:]}")
        out = parse_wrk(r.stdout)
        out.update(w.result())
        if out.get("proxy_cpu_s") is not None and out.get("requests"):
            out["proxy_cpu_us_per_req"] = out["proxy_cpu_s"] * 1e6 / out["requests"]
        out["wrk_stdout"] = r.stdout
        return out

    def series(self, rnd: int, name: str, variant: str) -> None:
        """One proxy, started fresh with one bootstrap: warm-up, then one wrk run per size."""
        a = self.args
        label = f"round {rnd}, {name}, {VARIANT_LABEL[variant]}"
        background = self.wait_quiet(label)
        log_path = self.access_log
        with contextlib.suppress(FileNotFoundError):
            log_path.unlink()
        proc = None
        try:
            proc, pids, _, ready_s = self.start_ready(name, self.cfg[variant], self.listen)
        except NotSupported as e:
            if name != "legatus":
                raise RuntimeError(f"{name} refused the {variant} bootstrap: {e}") from None
            self.unsupported[variant] = str(e)
            say(f"[{label}] legatus: not supported yet ({e})")
            return
        try:
            time.sleep(a.settle)
            if a.warmup:
                self.wrk(self.listen, SIZES[0], a.warmup, pids)
            for size in SIZES:
                r = self.wrk(self.listen, size, a.duration, pids)
                r.update(round=rnd, who=name, variant=variant, size=size, ready_s=ready_s,
                         background_busy_pct=background)  # fmt: skip
                self.runs.append(r)
                say(f"[{label}] {size} B: {_run_line(r)}")
            mem = {str(pid): mem_of(pid) for pid in pids}
            if proc.popen.poll() is not None:
                raise RuntimeError(f"{name} died during the run:\n{proc.tail()}")
        finally:
            if proc is not None:
                self.stop(proc)
        for r in self.runs[-len(SIZES) :]:
            r["mem_after_series"] = mem
        if variant == "accesslog":
            lines, size = _count_lines(log_path)
            for r in self.runs[-len(SIZES) :]:
                r["access_log_lines"] = lines
                r["access_log_bytes"] = size
            requests = sum(r.get("requests", 0) for r in self.runs[-len(SIZES) :])
            if lines < requests:
                self.errors.append(
                    f"round {rnd}, {name}: the access log has {lines} lines for at least "
                    f"{requests} requests"
                )
            with contextlib.suppress(FileNotFoundError):
                log_path.unlink()  # can be hundreds of MB

    def paired(self, more: tuple[int, ...]) -> dict:
        """Issue 4's ratio without the drift between series: legatus on the plain route and
        on the traffic variant run side by side (both pinned to the proxy CPU, one loaded at a
        time), and short wrk slices alternate between them, in turn first; each pair gives a
        ratio, the median counts. (On a shared VM the plain route moves by several % from one
        series to the next, more than the difference measured.)"""
        a = self.args
        size = SIZES[0]
        ports = free_ports(2)
        started = []
        try:
            for variant, port in zip(("nolog", "traffic"), ports, strict=True):
                cfg = self.tmp / f"bootstrap-paired-{variant}.yaml"
                write_bootstrap(cfg, variant, port, self.upstream_port, None, more)
                proc, pids, _, _ = self.start_ready("legatus", cfg, port, f"legatus-{variant}")
                started.append((variant, proc, pids, port))
            time.sleep(a.settle)
            for _, _, pids, port in started:
                if a.warmup:
                    self.wrk(port, size, a.warmup, pids)
            pairs = []
            for i in range(a.paired_slices):
                got = {}
                for variant, proc, pids, port in started if i % 2 == 0 else started[::-1]:
                    r = self.wrk(port, size, a.slice, pids)
                    got[variant] = {k: r.get(k) for k in ("rps", "proxy_cpu_us_per_req")}
                    if proc.popen.poll() is not None:
                        raise RuntimeError(f"legatus ({variant}) died:\n{proc.tail()}")
                got["ratio"] = got["traffic"]["rps"] / got["nolog"]["rps"]
                pairs.append(got)
                say(f"[paired slice {i + 1}] plain {got['nolog']['rps']:.0f} req/s, traffic "
                    f"{got['traffic']['rps']:.0f} req/s: {got['ratio']:.3f}")  # fmt: skip
        finally:
            for _, proc, _, _ in started:
                self.stop(proc)
        ratios = [p["ratio"] for p in pairs]
        return {"size": size, "slice_s": a.slice, "pairs": pairs,
                "median_ratio": statistics.median(ratios)}  # fmt: skip

    def direct(self, rnd: int) -> None:
        background = self.wait_quiet(f"round {rnd}, direct")
        for size in SIZES:
            r = self.wrk(self.upstream_port, size, self.args.duration, [])
            r.update(round=rnd, who="direct", variant="nolog", size=size,
                     background_busy_pct=background)  # fmt: skip
            self.runs.append(r)
            say(f"[round {rnd}, direct] {size} B: {_run_line(r)}")

    # bulk -----------------------------------------------------------------------------------

    def curl(self, kind: str, port: int) -> dict:
        a = self.args
        n = a.bulk_size
        fmt = "%{http_code} %{size_upload} %{size_download} %{time_total}"
        resp = self.tmp / "bulk-response"
        if kind == "upload":
            cmd = [a.curl_bin, "-sS", "-o", str(resp), "-w", fmt, "-H", "Expect:",
                   "-H", "Content-Type: application/octet-stream", "-T", str(self.bulk_file),
                   "--max-time", str(a.bulk_timeout),
                   f"http://{HOST}:{port}/bulk/upload"]  # fmt: skip
        else:
            cmd = [a.curl_bin, "-sS", "-o", "/dev/null", "-w", fmt, "--max-time",
                   str(a.bulk_timeout), f"http://{HOST}:{port}/bulk/download/{n}"]  # fmt: skip
        r = subprocess.run(
            self.pin(a.load_cpu, cmd), capture_output=True, text=True, timeout=a.bulk_timeout + 30
        )
        code, up, down, total = (r.stdout.split() + ["0"] * 4)[:4]
        out = {
            "http_code": int(code),
            "bytes": int(float(up if kind == "upload" else down)),
            "seconds": float(total),
            "errors": [],
        }
        if r.returncode != 0:
            out["errors"].append(f"curl exit {r.returncode}: {r.stderr.strip()[-500:]}")
        if out["http_code"] != 200:
            out["errors"].append(f"HTTP {out['http_code']}")
        if out["bytes"] != n:
            out["errors"].append(f"{out['bytes']} bytes moved, expected {n}")
        if kind == "upload" and resp.exists():
            got = resp.read_text().strip()
            resp.unlink()
            if got != str(n):
                out["errors"].append(f"the upstream received {got!r} bytes, expected {n}")
        out["mb_per_s"] = out["bytes"] / out["seconds"] / 1e6 if out["seconds"] else None
        return out

    def bulk(self, name: str) -> dict | None:
        label = f"bulk, {name}"
        background = self.wait_quiet(label)
        if name == "direct":
            res: dict = {"background_busy_pct": background}
            for kind in ("upload", "download"):
                res[kind] = self.curl(kind, self.stream_port)
                say(f"[{label}] {kind}: {_bulk_line(res[kind])}")
            return res
        try:
            proc, pids, mem_pid, _ = self.start_ready(name, self.cfg["bulk"], self.bulk_listen)
        except NotSupported as e:
            if name != "legatus":
                raise RuntimeError(f"{name} refused the bulk bootstrap: {e}") from None
            self.unsupported.setdefault("nolog", str(e))
            say(f"[{label}] legatus: not supported yet ({e})")
            return None
        try:
            time.sleep(self.args.settle)
            res = {"rss_pid": mem_pid, "background_busy_pct": background}
            for kind in ("upload", "download"):
                with RssSampler(mem_pid) as s, CpuWindow(pids) as w:
                    r = self.curl(kind, self.bulk_listen)
                r.update(s.result())
                r.update(w.result())
                res[kind] = r
                say(f"[{label}] {kind}: {_bulk_line(r)}")
            if proc.popen.poll() is not None:
                raise RuntimeError(f"{name} died during the bulk run:\n{proc.tail()}")
            return res
        finally:
            self.stop(proc)

    # main -----------------------------------------------------------------------------------

    def run(self) -> dict:
        a = self.args
        os.sched_setaffinity(0, {a.load_cpu})
        hosts = 3 if "traffic" in (a.variants.split(",")) else 1
        ports, self.stream_port = self.start_upstreams(hosts)
        self.upstream_port, more = ports[0], ports[1:]
        self.listen, self.bulk_listen = free_ports(2)
        self.access_log = self.tmp / "access.log"  # one proxy runs at a time
        self.cfg: dict[str, Path] = {}
        variants = [v for v in a.variants.split(",") if v]
        unknown = sorted(set(variants) - set(VARIANTS))
        if unknown:
            raise RuntimeError(f"unknown --variants {unknown}: choose from {list(VARIANTS)}")
        if a.skip_access_log:
            variants = [v for v in variants if v != "accesslog"]
        for variant in variants:
            log = self.access_log if variant == "accesslog" else None
            self.cfg[variant] = self.tmp / f"bootstrap-{variant}.yaml"
            write_bootstrap(self.cfg[variant], variant, self.listen, self.upstream_port, log, more)
        self.cfg["bulk"] = self.tmp / "bootstrap-bulk.yaml"
        write_bootstrap(self.cfg["bulk"], "bulk", self.bulk_listen, self.stream_port, None)
        who = [w for w in ("legatus", "envoy") if not getattr(a, f"skip_{w}")]
        if "envoy" in who:
            self.envoy = a.envoy_bin or shutil.which("envoy") or ""
            if not self.envoy:
                raise RuntimeError("envoy not found on PATH (or use --envoy-bin / --skip-envoy)")
        results: dict = {"meta": self.meta(variants)}
        say(f"temp dir {self.tmp}; upstream port {self.upstream_port} ({a.upstream}); "
            f"listener port {self.listen}")  # fmt: skip
        if not a.skip_rps:
            for rnd in range(1, a.rounds + 1):
                if not a.skip_direct:
                    self.direct(rnd)
                order = who if rnd % 2 else who[::-1]
                for variant in variants:
                    for name in order:
                        if name == "legatus" and variant in self.unsupported:
                            continue
                        self.series(rnd, name, variant)
        if a.paired_slices and {"nolog", "traffic"} <= set(variants) and "legatus" in who:
            results["paired"] = self.paired(more)
        if not a.skip_bulk:
            self.bulk_file = self.tmp / "bulk-upload.bin"
            with open(self.bulk_file, "wb") as f:
                f.truncate(a.bulk_size)  # sparse: reads as zeros, costs no disk
            results["bulk"] = {}
            for name in ["direct", *who] if not a.skip_direct else who:
                if name == "legatus" and "nolog" in self.unsupported:
                    continue
                results["bulk"][name] = self.bulk(name)
            self.bulk_file.unlink()
        results["runs"] = self.runs
        results["summary"] = summarize(self.runs)
        results["legatus_unsupported"] = self.unsupported
        results["errors"] = self.errors
        return results

    def meta(self, variants: list[str]) -> dict:
        a = self.args
        m = {
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "host": platform.node(),
            "kernel": platform.release(),
            "cpus": os.cpu_count(),
            "cpu_model": cpu_model(),
            "python": sys.version.split()[0],
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(a).items()},
            "wrk": _first_line([a.wrk_bin, "--version"]).partition(" [")[0]
            if not a.skip_rps
            else None,
            "variants": variants,
            "bootstraps": {k: p.read_text() for k, p in self.cfg.items()},
        }
        if not a.skip_envoy:
            m["envoy_version"] = envoy_version(self.envoy)
        return m


def _count_lines(path: Path) -> tuple[int, int]:
    if not path.exists():
        return 0, 0
    lines = 0
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            lines += block.count(b"\n")
    return lines, path.stat().st_size


def _first_line(cmd: list[str]) -> str:
    with contextlib.suppress(Exception):
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        return (r.stdout + r.stderr).strip().splitlines()[0]
    return "?"


def _run_line(r: dict) -> str:
    s = f"{r.get('rps', 0):.0f} req/s, p50 {r.get('latency_ms_p50', 0):.2f} ms, "
    s += f"p99 {r.get('latency_ms_p99', 0):.2f} ms"
    if r.get("proxy_user_pct") is not None:
        s += f", proxy CPU {r['proxy_user_pct'] + r['proxy_sys_pct']:.0f}%"
    cores = " ".join(f"{k} {v:.0f}%" for k, v in sorted(r["core_busy_pct"].items()))
    s += f", {cores}"
    if r["errors"]:
        s += f", ERRORS {r['errors']}"
    return s


def _bulk_line(r: dict) -> str:
    s = f"{r['bytes'] / 2**20:.0f} MiB in {r['seconds']:.2f} s ({r['mb_per_s'] or 0:.0f} MB/s)"
    if "rss_growth_kib" in r:
        s += f", RSS +{r['rss_growth_kib'] / 1024:.1f} MiB (peak {r['rss_peak_kib'] / 1024:.1f})"
    if r["errors"]:
        s += f", ERRORS {r['errors']}"
    return s


# --------------------------------------------------------------------------------------------
# Summary and report
# --------------------------------------------------------------------------------------------

MEDIAN_KEYS = ("rps", "latency_ms_p50", "latency_ms_p99", "proxy_cpu_us_per_req")


def summarize(runs: list[dict]) -> dict:
    """``who/variant/size`` -> medians over rounds of each key, plus every round's values."""
    groups: dict[str, list[dict]] = {}
    for r in runs:
        groups.setdefault(f"{r['who']}/{r['variant']}/{r['size']}", []).append(r)
    out = {}
    for key, rs in groups.items():
        s: dict = {"rounds": len(rs)}
        for k in MEDIAN_KEYS:
            vals = [r[k] for r in rs if r.get(k) is not None]
            s[k] = statistics.median(vals) if vals else None
            s["all_" + k] = [round(v, 3) for v in vals]
        for k in ("proxy_user_pct", "proxy_sys_pct"):
            vals = [r[k] for r in rs if r.get(k) is not None]
            s[k] = statistics.median(vals) if vals else None
        cores = sorted({c for r in rs for c in r["core_busy_pct"]})
        s["core_busy_pct"] = {
            c: statistics.median(r["core_busy_pct"].get(c, 0.0) for r in rs) for c in cores
        }
        errors: dict[str, int] = {}
        for r in rs:
            for k, v in r["errors"].items():
                errors[k] = errors.get(k, 0) + v
        s["errors"] = errors
        out[key] = s
    return out


def _fmt(v: float | None, fmt: str) -> str:
    return fmt.format(v) if v is not None else "-"


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "-"


def _size_label(n: int) -> str:
    return f"{n // 1024} KiB" if n >= 1024 and n % 1024 == 0 else f"{n} B"


def report(res: dict, args: argparse.Namespace) -> str:
    m, summ = res["meta"], res.get("summary", {})
    unsupported = res.get("legatus_unsupported", {})
    ns = "not supported yet"
    lines = [
        f"HTTP/1.1 benchmark, {m['timestamp']}: {m['cpu_model']}, {m['cpus']} CPUs; proxy on "
        f"cpu {args.proxy_cpu}, wrk -t{args.threads} -c{args.connections} + upstream "
        f"({args.upstream}) on cpu {args.load_cpu}; Python {m['python']}; "
        f"Envoy {m.get('envoy_version', 'skipped')}; {m.get('wrk') or ''}",
        f"{args.rounds} interleaved rounds x {args.duration} s per run; medians over rounds.",
        "",
    ]
    # One line per distinct reason (the bootstraps differ only by name in the messages).
    reasons: dict[str, list[str]] = {}
    for variant, why in unsupported.items():
        key = re.sub(r"'[^']*bootstrap-\w+\.yaml'", "'<bootstrap>'", why)
        reasons.setdefault(key, []).append(variant)
    for why, which in reasons.items():
        if len(which) < len(m["variants"]):
            why += f"; bootstrap: {', '.join(VARIANT_LABEL.get(v, v) for v in which)}"
        lines += [f"legatus: {ns} ({why})", ""]
    lines += [
        "| metric | direct | legatus | Envoy | legatus/Envoy |",
        "|---|---:|---:|---:|---:|",
    ]

    def cell(who: str, variant: str, size: int, key: str, fmt: str) -> tuple[str, float | None]:
        if who == "legatus" and variant in unsupported:
            return ns, None
        if (who == "legatus" and args.skip_legatus) or (who == "envoy" and args.skip_envoy):
            return "skipped", None
        s = summ.get(f"{who}/{'nolog' if who == 'direct' else variant}/{size}")
        v = s.get(key) if s else None
        return _fmt(v, fmt), v

    rows = (
        ("requests/s", "rps", "{:.0f}"),
        ("  latency p50 (ms)", "latency_ms_p50", "{:.2f}"),
        ("  latency p99 (ms)", "latency_ms_p99", "{:.2f}"),
        ("  proxy CPU per request (µs)", "proxy_cpu_us_per_req", "{:.1f}"),
    )
    if not args.skip_rps:
        for variant in m["variants"]:
            for size in SIZES:
                for i, (name, key, fmt) in enumerate(rows):
                    cells = [
                        cell(w, variant, size, key, fmt) for w in ("direct", "legatus", "envoy")
                    ]
                    title = (
                        f"{_size_label(size)}, {VARIANT_LABEL[variant]}: {name}" if i == 0 else name
                    )
                    if key == "proxy_cpu_us_per_req":
                        cells[0] = ("-", None)
                    lines.append(
                        f"| {title} | {' | '.join(c[0] for c in cells)} | "
                        f"{_ratio(cells[1][1], cells[2][1])} |"
                    )
    bulk = res.get("bulk") or {}
    if not args.skip_bulk:
        size = _bulk_label(args.bulk_size)

        def bcell(who: str, kind: str, key: str, fmt: str, scale: float = 1.0):
            if who == "legatus" and "nolog" in unsupported:
                return ns, None
            if getattr(args, f"skip_{who}"):
                return "skipped", None
            r = (bulk.get(who) or {}).get(kind)
            v = r.get(key) if r else None
            v = v / scale if v is not None else None
            return _fmt(v, fmt), v

        for kind in ("upload", "download"):
            for i, (name, key, fmt, scale) in enumerate(
                (
                    ("time (s)", "seconds", "{:.2f}", 1.0),
                    ("  MB/s", "mb_per_s", "{:.0f}", 1.0),
                    ("  proxy RSS growth, peak (MiB)", "rss_growth_kib", "{:.1f}", 1024.0),
                )
            ):
                cells = [bcell(w, kind, key, fmt, scale) for w in ("direct", "legatus", "envoy")]
                title = f"{size} {kind}, one stream: {name}" if i == 0 else name
                lines.append(
                    f"| {title} | {' | '.join(c[0] for c in cells)} | "
                    f"{_ratio(cells[1][1], cells[2][1])} |"
                )
    if not args.skip_rps:
        lines += [
            "",
            "CPU during the runs (medians; proxy = user + system CPU of its processes, 100% = "
            "one core; cpuN = how busy each core was, softirq included):",
            "",
            "| run | direct | legatus | Envoy |",
            "|---|---|---|---|",
        ]
        for variant in m["variants"]:
            for size in SIZES:
                cells = []
                for who in ("direct", "legatus", "envoy"):
                    s = summ.get(f"{who}/{'nolog' if who == 'direct' else variant}/{size}")
                    cells.append(_cpu_cell(s))
                lines.append(
                    f"| {_size_label(size)}, {VARIANT_LABEL[variant]} | {' | '.join(cells)} |"
                )
    lines += ["", "Targets (from the issue):", *targets(res, args)]
    notes = load_bound_notes(summ, args)
    if notes:
        lines += ["", *notes]
    errs = []
    for key, s in summ.items():
        if s["errors"]:
            errs.append(f"- {key}: {s['errors']}")
    for who, r in bulk.items():
        for kind in ("upload", "download"):
            if r and r[kind]["errors"]:
                errs.append(f"- bulk {kind}, {who}: {r[kind]['errors']}")
    errs += [f"- {e}" for e in res.get("errors", [])]
    if errs:
        lines += ["", "Errors:", *errs]
    return "\n".join(lines)


def _bulk_label(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift} {unit}"
    return f"{n} B"


def _cpu_cell(s: dict | None) -> str:
    if not s:
        return "-"
    parts = []
    if s.get("proxy_user_pct") is not None:
        parts.append(f"proxy {s['proxy_user_pct'] + s['proxy_sys_pct']:.0f}%")
    parts.append(" ".join(f"{k} {v:.0f}%" for k, v in sorted(s["core_busy_pct"].items())))
    return ", ".join(parts)


def targets(res: dict, args: argparse.Namespace) -> list[str]:
    summ, unsupported = res.get("summary", {}), res.get("legatus_unsupported", {})
    out = []

    def na(variant: str) -> str | None:
        if args.skip_legatus:
            return "n/a (legatus skipped)"
        if variant in unsupported:
            return "n/a (legatus: not supported yet)"
        if args.skip_envoy:
            return "n/a (Envoy skipped)"
        return None

    if not args.skip_rps and "traffic" in res["meta"]["variants"]:
        for size in SIZES:
            what = f"{_size_label(size)}, {VARIANT_LABEL['traffic']}"
            lg = summ.get(f"legatus/traffic/{size}")
            plain = summ.get(f"legatus/nolog/{size}")
            if args.skip_legatus or "traffic" in unsupported or not lg or not plain:
                out.append(f"- requests/s >= {TRAFFIC_TARGET}x the plain route, {what}: n/a")
                continue
            ratio = lg["rps"] / plain["rps"]
            ok = "PASS" if ratio >= TRAFFIC_TARGET and not lg["errors"] else "FAIL"
            out.append(
                f"- requests/s >= {TRAFFIC_TARGET}x the plain route (legatus), {what}: "
                f"{lg['rps']:.0f} vs {plain['rps']:.0f} = {ratio:.2f}x, {ok}"
            )
    paired = res.get("paired")
    if paired:
        ratios = sorted(p["ratio"] for p in paired["pairs"])
        ok = "PASS" if paired["median_ratio"] >= TRAFFIC_TARGET else "FAIL"
        out.append(
            f"- requests/s >= {TRAFFIC_TARGET}x the plain route (legatus), "
            f"{_size_label(paired['size'])}, {VARIANT_LABEL['traffic']}, paired "
            f"{paired['slice_s']} s slices: median {paired['median_ratio']:.3f}x over "
            f"{len(ratios)} pairs ({ratios[0]:.3f}-{ratios[-1]:.3f}), {ok}"
        )
    if not args.skip_rps:
        for variant in res["meta"]["variants"]:
            if variant == "traffic":
                continue  # judged against the plain route above
            for size in SIZES:
                what = f"{_size_label(size)}, {VARIANT_LABEL[variant]}"
                lg = summ.get(f"legatus/{variant}/{size}")
                ev = summ.get(f"envoy/{variant}/{size}")
                skip = na(variant) or (None if lg and ev else "n/a (no data)")
                ev_rps = ev["rps"] if ev else None
                ev_p99 = ev["latency_ms_p99"] if ev else None
                if skip:
                    base = f" (Envoy {ev_rps:.0f} req/s, p99 {ev_p99:.2f} ms)" if ev_rps else ""
                    out.append(f"- requests/s >= {RPS_TARGET}x Envoy, {what}: {skip}{base}")
                    out.append(f"- p99 latency <= Envoy's, {what}: {skip}")
                    continue
                bad = " (legatus had errors)" if lg["errors"] else ""
                ratio = lg["rps"] / ev["rps"]
                ok = "PASS" if ratio >= RPS_TARGET and not bad else "FAIL"
                out.append(
                    f"- requests/s >= {RPS_TARGET}x Envoy, {what}: {lg['rps']:.0f} vs "
                    f"{ev['rps']:.0f} = {ratio:.2f}x, {ok}{bad}"
                )
                ok = "PASS" if lg["latency_ms_p99"] <= ev["latency_ms_p99"] and not bad else "FAIL"
                out.append(
                    f"- p99 latency <= Envoy's, {what}: {lg['latency_ms_p99']:.2f} ms vs "
                    f"{ev['latency_ms_p99']:.2f} ms, {ok}{bad}"
                )
    if not args.skip_bulk:
        bulk = res.get("bulk") or {}
        for kind in ("upload", "download"):
            what = f"{_bulk_label(args.bulk_size)} {kind} through one stream"
            ev = (bulk.get("envoy") or {}).get(kind)
            ref = f" (Envoy: +{ev['rss_growth_kib'] / 1024:.1f} MiB)" if ev else ""
            lg = (bulk.get("legatus") or {}).get(kind)
            if args.skip_legatus or "nolog" in unsupported or not lg:
                skip = na("nolog") if args.skip_legatus or "nolog" in unsupported else "n/a"
                out.append(f"- {what}, legatus RSS growth < {RSS_TARGET_MIB} MiB: {skip}{ref}")
                continue
            growth = lg["rss_growth_kib"] / 1024
            ok = "PASS" if growth < RSS_TARGET_MIB and not lg["errors"] else "FAIL"
            bad = " (errors)" if lg["errors"] else ""
            out.append(
                f"- {what}, legatus RSS growth < {RSS_TARGET_MIB} MiB: +{growth:.1f} MiB in "
                f"{lg['seconds']:.2f} s, {ok}{bad}{ref}"
            )
    return out


def load_bound_notes(summ: dict, args: argparse.Namespace) -> list[str]:
    """Runs where the load core, not the proxy's, was the limit: their rate is a floor."""
    notes = []
    load, proxy = f"cpu{args.load_cpu}", f"cpu{args.proxy_cpu}"
    for key, s in summ.items():
        who = key.split("/")[0]
        if who == "direct":
            continue
        c = s["core_busy_pct"]
        if c.get(load, 0) >= 95 and c.get(proxy, 0) < 90:
            notes.append(
                f"- NOTE {key}: the load core was saturated ({load} {c[load]:.0f}%, {proxy} "
                f"{c.get(proxy, 0):.0f}%): this proxy could go faster than shown"
            )
    return notes


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def _size(s: str) -> int:
    s = s.strip().upper().removesuffix("B").removesuffix("I")
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(s[-1:], 1)
    return int(float(s.rstrip("KMG")) * mult)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="HTTP/1.1 benchmark: legatus vs Envoy with wrk, one pinned worker each",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians reported")
    p.add_argument("--duration", type=int, default=8, help="seconds of each measured wrk run")
    p.add_argument("--warmup", type=int, default=1, help="seconds of unmeasured wrk per start")
    p.add_argument("--connections", type=int, default=64, help="wrk keep-alive connections")
    p.add_argument("--threads", type=int, default=1, help="wrk threads")
    p.add_argument("--bulk-size", type=_size, default=1 << 30, help="bytes of the bulk runs")
    p.add_argument("--bulk-timeout", type=int, default=120, help="cap (s) of one bulk transfer")
    p.add_argument("--skip-legatus", action="store_true")
    p.add_argument("--skip-envoy", action="store_true")
    p.add_argument("--skip-direct", action="store_true", help="skip the no-proxy ceiling runs")
    p.add_argument("--skip-access-log", action="store_true", help="only the no-access-log case")
    p.add_argument(
        "--variants",
        default="nolog,accesslog",
        help="bootstraps to measure: nolog, accesslog, traffic (3 hosts, health checks, "
        "retries, a local rate limit that never limits)",
    )
    p.add_argument("--skip-rps", action="store_true", help="skip the wrk rounds")
    p.add_argument(
        "--paired-slices",
        type=int,
        default=0,
        help="with the nolog and traffic variants: that many pairs of alternating --slice s "
        "wrk runs on two legatus started side by side (plain route, traffic variant), for "
        "the traffic target's ratio without the drift between series",
    )
    p.add_argument("--slice", type=int, default=2, help="seconds of one paired slice")
    p.add_argument("--skip-bulk", action="store_true", help="skip the 1 GiB upload/download")
    p.add_argument(
        "--upstream",
        choices=("python", "nginx"),
        default="python",
        help="server of the fixed bodies (bulk runs always use the Python upstream)",
    )
    p.add_argument(
        "--host-processes",
        choices=("shared", "own"),
        default="shared",
        help="the traffic variant's 3 upstream hosts: ports of one upstream process, as the "
        "plain route's host (the load CPU runs the same processes for both), or one process "
        "each",
    )
    p.add_argument(
        "--legatus-cmd",
        default=None,
        help="command that starts legatus (default: this python -m legatus)",
    )
    p.add_argument("--envoy-bin", default=None, help="Envoy binary (default: envoy on PATH)")
    p.add_argument("--wrk-bin", default="wrk")
    p.add_argument("--curl-bin", default="curl")
    p.add_argument("--nginx-bin", default="nginx")
    p.add_argument("--proxy-cpu", type=int, default=1, help="CPU the proxy is pinned to")
    p.add_argument(
        "--load-cpu", type=int, default=0, help="CPU of wrk, the upstream and this script"
    )
    p.add_argument("--settle", type=float, default=0.5, help="seconds after a proxy is ready")
    p.add_argument(
        "--wait-quiet",
        type=float,
        default=5.0,
        help="before each series, wait up to this long for the other processes to go quiet",
    )
    p.add_argument("--log-level", default="warning", help="-l of both proxies")
    p.add_argument(
        "--output",
        type=Path,
        default=None,
        help="JSON path (default: benchmarks/results/http1-<timestamp>.json)",
    )
    return p.parse_args(argv)


def check_tools(args: argparse.Namespace) -> str | None:
    if problem := pinning_problem(args):
        return problem
    if not args.skip_rps and shutil.which(args.wrk_bin) is None:
        return WRK_INSTALL
    if not args.skip_bulk and shutil.which(args.curl_bin) is None:
        return "curl not found: `sudo apt-get install -y curl`, or --curl-bin, or --skip-bulk"
    if args.upstream == "nginx" and shutil.which(args.nginx_bin) is None:
        return "nginx not found: `sudo apt-get install -y nginx-light`, or --upstream python"
    return None


def main(argv: list[str]) -> int:
    return run_bench(
        argv,
        roles=ROLES,
        parse_args=parse_args,
        check_tools=check_tools,
        bench_class=Http1Bench,
        report=report,
        name="http1",
    )


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
