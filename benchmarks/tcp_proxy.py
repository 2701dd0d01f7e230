#!/usr/bin/env python3
"""tcp_proxy benchmark: legatus vs Envoy, side by side, one worker each.

Run by hand (never from the test suite)::

    python benchmarks/tcp_proxy.py                 # legatus + Envoy + direct, ~2 minutes
    python benchmarks/tcp_proxy.py --skip-envoy    # legatus + direct only
    python benchmarks/tcp_proxy.py --profile       # also py-spy the legatus worker

One bootstrap (three tcp_proxy listeners -> three STATIC clusters, no admin, no
access log) is run by each proxy in turn with ``--concurrency 1``, pinned with
``taskset -c <proxy-cpu>`` (default 1). The upstream servers, the load
generators and this orchestrator are pinned to ``<load-cpu>`` (default 0).

Measured, for "direct" (client -> upstream, the ceiling of the load generator),
legatus and Envoy:

- throughput, sink: N connections push ``--bytes`` in total (or for at most
  ``--duration`` s) to an upstream that discards; MB/s = 10^6 bytes/s, counted
  from the first byte until every connection saw the upstream's FIN come back
  through the proxy (so every byte was delivered);
- throughput, echo: the same through an upstream that echoes; MB/s of payload
  each way (the proxy moves twice as many bytes);
- connection rate: C client loops for ``--cr-duration`` s, each doing
  connect, send 64 B, read the 64 B echo, close; completed connections/s;
- memory: RSS and PSS (``/proc/<pid>/smaps_rollup``) of legatus main + worker
  and of Envoy, idle after start-up, after the throughput runs and after the
  connection-rate run;
- CPU: the proxy's CPU time over each run (100% = one core), and how busy each
  core was, to tell whether the proxy or the load generator was the limit.

Results are printed as a markdown table and written as JSON to
``benchmarks/results/<timestamp>.json``. See benchmarks/README.md.

The script also holds the helper roles it starts as subprocesses (``_upstream``,
``_push``, ``_connrate``); they are not meant to be called by hand.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
CHUNK = 256 * 1024  # one sendall
RECV_BUF = 1024 * 1024  # one recv_into
SOCK_BUF = 4 * 1024 * 1024  # SO_SNDBUF / SO_RCVBUF of the load generator and upstreams
CR_PAYLOAD = b"x" * 64
CR_TIMEOUT_S = 2.0  # one short connection, connect to echo
CR_MAX_CONNECTIONS = 1_000_000  # hard cap on connections per connection-rate run
READY_TIMEOUT_S = 30.0
RESULTS_DIR = Path(__file__).resolve().parent / "results"


# --------------------------------------------------------------------------------------------
# Helper roles (subprocesses)
# --------------------------------------------------------------------------------------------


def _tune(sock: socket.socket) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCK_BUF)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCK_BUF)


def _serve_sink(conn: socket.socket) -> None:
    buf = bytearray(RECV_BUF)
    with conn, contextlib.suppress(OSError):
        while conn.recv_into(buf):
            pass


def _serve_echo(conn: socket.socket) -> None:
    buf = bytearray(RECV_BUF)
    view = memoryview(buf)
    with conn, contextlib.suppress(OSError):
        while n := conn.recv_into(buf):
            conn.sendall(view[:n])
        conn.shutdown(socket.SHUT_WR)


def role_upstream(argv: list[str]) -> None:
    """Upstream servers on free ports: threaded sink, threaded echo, uvloop echo.

    Prints one JSON line ``{"sink": port, "echo": port, "aecho": port}`` when listening.
    """
    p = argparse.ArgumentParser(prog="_upstream")
    p.parse_args(argv)

    def threaded(handler) -> socket.socket:
        ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCK_BUF)
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCK_BUF)
        ls.bind((HOST, 0))
        ls.listen(1024)

        def accept_loop() -> None:
            while True:
                conn, _ = ls.accept()
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                threading.Thread(target=handler, args=(conn,), daemon=True).start()

        threading.Thread(target=accept_loop, daemon=True).start()
        return ls

    sink = threaded(_serve_sink)
    echo = threaded(_serve_echo)

    class Echo(asyncio.Protocol):
        def connection_made(self, transport) -> None:
            self.transport = transport

        def data_received(self, data: bytes) -> None:
            self.transport.write(data)

        def eof_received(self) -> bool:
            return False  # close

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Echo, HOST, 0, backlog=4096, reuse_address=True)
        ports = {
            "sink": sink.getsockname()[1],
            "echo": echo.getsockname()[1],
            "aecho": server.sockets[0].getsockname()[1],
        }
        print(json.dumps(ports), flush=True)
        await server.serve_forever()

    _run_async(main())


def role_push(argv: list[str]) -> None:
    """Bulk throughput client. Prints a JSON result line."""
    p = argparse.ArgumentParser(prog="_push")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--connections", type=int, required=True)
    p.add_argument("--bytes", type=int, required=True, help="total, split over connections")
    p.add_argument("--duration", type=float, required=True)
    p.add_argument("--echo", action="store_true")
    p.add_argument("--watch-pids", default="", help="comma-separated pids to measure CPU of")
    a = p.parse_args(argv)

    per_conn = a.bytes // a.connections
    payload = memoryview(os.urandom(CHUNK))
    socks = []
    for _ in range(a.connections):
        s = socket.create_connection((HOST, a.port), timeout=10)
        _tune(s)
        s.settimeout(a.duration + 30)  # bounded: never hang on a stuck proxy
        socks.append(s)
    sent = [0] * a.connections
    received = [0] * a.connections
    ended = [0.0] * a.connections
    errors: list[str] = []
    go = threading.Event()
    start = 0.0

    def sender(i: int, s: socket.socket) -> None:
        go.wait()
        deadline = start + a.duration
        n = 0
        try:
            while n < per_conn and time.monotonic() < deadline:
                chunk = payload if per_conn - n >= CHUNK else payload[: per_conn - n]
                s.sendall(chunk)
                n += len(chunk)
            s.shutdown(socket.SHUT_WR)
        except OSError as e:
            errors.append(f"send[{i}]: {e!r}")
        sent[i] = n

    def receiver(i: int, s: socket.socket) -> None:
        buf = bytearray(RECV_BUF)
        go.wait()
        n = 0
        try:
            while r := s.recv_into(buf):
                n += r
        except OSError as e:
            errors.append(f"recv[{i}]: {e!r}")
        received[i] = n
        ended[i] = time.monotonic()

    threads = []
    for i, s in enumerate(socks):
        threads.append(threading.Thread(target=sender, args=(i, s)))
        threads.append(threading.Thread(target=receiver, args=(i, s)))
    for t in threads:
        t.start()
    time.sleep(0.2)  # let the proxy finish its upstream connects
    with CpuWindow(_pids(a.watch_pids)) as w:
        start = time.monotonic()
        go.set()
        for t in threads:
            t.join()
    for s in socks:
        s.close()
    elapsed = max(ended) - start
    moved = sum(received) if a.echo else sum(sent)
    if a.echo and sum(received) != sum(sent):
        errors.append(f"echo: sent {sum(sent)} bytes, received {sum(received)}")
    out = {"bytes": moved, "seconds": elapsed, "errors": errors, **w.result()}
    print(json.dumps(out), flush=True)


def role_connrate(argv: list[str]) -> None:
    """Short-connection client: C loops of connect, send 64 B, read 64 B, close."""
    p = argparse.ArgumentParser(prog="_connrate")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--concurrency", type=int, required=True)
    p.add_argument("--duration", type=float, required=True)
    p.add_argument("--watch-pids", default="", help="comma-separated pids to measure CPU of")
    a = p.parse_args(argv)

    class Client(asyncio.Protocol):
        __slots__ = ("done", "got", "transport")

        def __init__(self, done: asyncio.Future) -> None:
            self.done = done
            self.got = 0

        def connection_made(self, transport) -> None:
            self.transport = transport
            transport.write(CR_PAYLOAD)

        def data_received(self, data: bytes) -> None:
            self.got += len(data)
            if self.got >= len(CR_PAYLOAD) and not self.done.done():
                self.done.set_result(None)
                self.transport.close()

        def connection_lost(self, exc) -> None:
            if not self.done.done():
                self.done.set_exception(exc or ConnectionError("closed before the echo"))

    async def main() -> dict:
        loop = asyncio.get_running_loop()
        errors: Counter[str] = Counter()
        count = 0
        latencies: list[float] = []
        deadline = loop.time() + a.duration

        async def one_loop() -> None:
            nonlocal count
            while loop.time() < deadline and count < CR_MAX_CONNECTIONS:
                t0 = time.perf_counter()
                done = loop.create_future()
                transport = None
                try:
                    async with asyncio.timeout(CR_TIMEOUT_S):
                        transport, _ = await loop.create_connection(
                            lambda done=done: Client(done), HOST, a.port
                        )
                        await done
                except (OSError, TimeoutError) as e:
                    errors[type(e).__name__] += 1
                    if transport is not None:
                        transport.abort()
                    await asyncio.sleep(0.01)
                    continue
                count += 1
                if count % 16 == 0:
                    latencies.append(time.perf_counter() - t0)

        with CpuWindow(_pids(a.watch_pids)) as w:
            t_start = time.perf_counter()
            await asyncio.gather(*(one_loop() for _ in range(a.concurrency)))
            elapsed = time.perf_counter() - t_start
        latencies.sort()

        def pct(q: float) -> float | None:
            return latencies[int(q * (len(latencies) - 1))] * 1000 if latencies else None

        return {
            "connections": count,
            "seconds": elapsed,
            "errors": dict(errors),
            "latency_ms_p50": pct(0.5),
            "latency_ms_p99": pct(0.99),
            **w.result(),
        }

    print(json.dumps(_run_async(main())), flush=True)


def _run_async(coro):
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


ROLES = {"_upstream": role_upstream, "_push": role_push, "_connrate": role_connrate}


# --------------------------------------------------------------------------------------------
# Orchestrator
# --------------------------------------------------------------------------------------------

BOOTSTRAP = """\
# tcp_proxy benchmark bootstrap: no admin, no access log; run unchanged by legatus and Envoy.
static_resources:
  listeners:
{listeners}
  clusters:
{clusters}
"""

LISTENER = """\
  - name: {name}
    address:
      socket_address: {{ address: 127.0.0.1, port_value: {port} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: {name}
          cluster: {name}
"""

CLUSTER = """\
  - name: {name}
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: {name}
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {{ address: 127.0.0.1, port_value: {port} }}
"""


def free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((HOST, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def write_bootstrap(path: Path, listen: dict[str, int], upstream: dict[str, int]) -> None:
    listeners = "".join(LISTENER.format(name=k, port=listen[k]) for k in upstream)
    clusters = "".join(CLUSTER.format(name=k, port=upstream[k]) for k in upstream)
    path.write_text(BOOTSTRAP.format(listeners=listeners.rstrip("\n"), clusters=clusters))


# /proc helpers -----------------------------------------------------------------------------


def mem_of(pid: int) -> dict[str, int]:
    """RSS and PSS in KiB, from smaps_rollup."""
    out = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("Rss", "Pss"):
                out[key.lower() + "_kib"] = int(rest.split()[0])
    return out


def children_of(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def legatus_workers(main_pid: int) -> list[int]:
    """legatus's worker processes: the children of its worker zygote, the main process's one
    child (see src/legatus/server/zygote.py)."""
    return [w for zygote in children_of(main_pid) for w in children_of(zygote)]


def cpu_ticks(pids: list[int]) -> tuple[int, int]:
    """(utime, stime) clock ticks, summed over ``pids``."""
    user = system = 0
    for pid in pids:
        with contextlib.suppress(OSError), open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
            user += int(fields[11])
            system += int(fields[12])
    return user, system


def core_times() -> dict[str, tuple[int, int]]:
    """cpuN -> (busy, total) jiffies."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3].isdigit():
                name, *vals = line.split()
                v = [int(x) for x in vals]
                idle = v[3] + v[4]
                out[name] = (sum(v[:8]) - idle, sum(v[:8]))
    return out


class CpuWindow:
    """CPU use of some processes and of each core over a window."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.hz = os.sysconf("SC_CLK_TCK")

    def __enter__(self) -> CpuWindow:
        self.t0 = time.monotonic()
        self.ticks0 = cpu_ticks(self.pids)
        self.cores0 = core_times()
        return self

    def __exit__(self, *exc) -> None:
        wall = time.monotonic() - self.t0
        user, system = cpu_ticks(self.pids)
        scale = 100.0 / self.hz / wall
        self.proxy_user_pct = (user - self.ticks0[0]) * scale if self.pids else None
        self.proxy_sys_pct = (system - self.ticks0[1]) * scale if self.pids else None
        used = user + system - sum(self.ticks0)
        self.proxy_cpu_s = used / self.hz if self.pids else None
        cores = core_times()
        self.core_busy_pct = {}
        for name, (busy, total) in cores.items():
            b0, t0 = self.cores0.get(name, (0, 0))
            self.core_busy_pct[name] = round(100.0 * (busy - b0) / max(1, total - t0), 1)

    def result(self) -> dict:
        return {
            "proxy_user_pct": self.proxy_user_pct,
            "proxy_sys_pct": self.proxy_sys_pct,
            "proxy_cpu_s": self.proxy_cpu_s,
            "core_busy_pct": self.core_busy_pct,
        }


def _pids(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x]


# Process management --------------------------------------------------------------------------


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log_path: Path | None = None
    extra: dict = field(default_factory=dict)

    def tail(self, n: int = 30) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def stop(self, timeout: float = 10.0) -> None:
        p = self.popen
        if p.poll() is not None:
            return
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="legatus-bench-"))
        self.procs: list[Proc] = []
        self.script = str(Path(__file__).resolve())
        self.stamp = time.strftime("%Y%m%d-%H%M%S")

    # helpers --------------------------------------------------------------------------------

    def pin(self, cpu: int, cmd: list[str]) -> list[str]:
        return ["taskset", "-c", str(cpu), *cmd]

    def helper(self, role: str, *argv: str) -> list[str]:
        return self.pin(self.args.load_cpu, [sys.executable, self.script, role, *argv])

    def run_helper(self, role: str, *argv: str, timeout: float) -> dict:
        cmd = self.helper(role, *argv)
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        if r.returncode != 0:
            raise RuntimeError(f"{role} failed ({r.returncode}): {r.stderr.strip()[-2000:]}")
        return json.loads(r.stdout.strip().splitlines()[-1])

    def start_upstream(self, *argv: str) -> dict:
        p = subprocess.Popen(self.helper("_upstream", *argv), stdout=subprocess.PIPE, text=True)
        self.procs.append(Proc("upstream", p))
        line = p.stdout.readline()  # type: ignore[union-attr]
        if not line:
            raise RuntimeError("the upstream servers did not start")
        return json.loads(line)

    def start_proxy(self, name: str, cmd: list[str], log_name: str | None = None) -> Proc:
        log_path = self.tmp / f"{log_name or name}.log"
        with open(log_path, "wb") as log:
            p = subprocess.Popen(
                self.pin(self.args.proxy_cpu, cmd),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        proc = Proc(name, p, log_path)
        self.procs.append(proc)
        return proc

    def wait_ready(self, proc: Proc, ports: list[int]) -> float:
        t0 = time.monotonic()
        deadline = t0 + READY_TIMEOUT_S
        for port in ports:
            while True:
                if proc.popen.poll() is not None:
                    raise RuntimeError(
                        f"{proc.name} exited with {proc.popen.returncode}:\n{proc.tail()}"
                    )
                try:
                    with socket.create_connection((HOST, port), timeout=1):
                        break
                except OSError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(
                            f"{proc.name} not listening on {port} after "
                            f"{READY_TIMEOUT_S}s:\n{proc.tail()}"
                        ) from None
                    time.sleep(0.05)
        return time.monotonic() - t0

    def cleanup(self) -> None:
        for p in reversed(self.procs):
            with contextlib.suppress(Exception):
                p.stop()
        self.procs.clear()

    # measurements ---------------------------------------------------------------------------

    def throughput(self, port: int, echo: bool, pids: list[int]) -> dict:
        a = self.args
        argv = [
            "--port",
            str(port),
            "--connections",
            str(a.connections),
            "--bytes",
            str(a.bytes),
            "--duration",
            str(a.duration),
        ]
        if echo:
            argv.append("--echo")
        argv += ["--watch-pids", ",".join(map(str, pids))]
        if a.warmup:  # fresh connections start with small TCP windows: warm up, unmeasured
            warm = list(argv)
            warm[warm.index("--bytes") + 1] = str(a.warmup)
            self.run_helper("_push", *warm, timeout=a.duration + 60)
        runs = []
        for _ in range(a.repeat):
            r = self.run_helper("_push", *argv, timeout=a.duration + 60)
            r["mb_per_s"] = r["bytes"] / r["seconds"] / 1e6
            if r.get("proxy_cpu_s") is not None:
                r["proxy_cpu_ms_per_gb"] = r["proxy_cpu_s"] * 1e3 / (r["bytes"] / 1e9)
            runs.append(r)
        return median_run(runs, "mb_per_s")

    def connrate(self, port: int, pids: list[int]) -> dict:
        a = self.args
        argv = [
            "--port",
            str(port),
            "--concurrency",
            str(a.cr_concurrency),
            "--duration",
            str(a.cr_duration),
            "--watch-pids",
            ",".join(map(str, pids)),
        ]
        runs = []
        for _ in range(a.repeat):
            r = self.run_helper("_connrate", *argv, timeout=a.cr_duration + 60)
            r["per_s"] = r["connections"] / r["seconds"]
            if r.get("proxy_cpu_s") is not None and r["connections"]:
                r["proxy_cpu_us_per_conn"] = r["proxy_cpu_s"] * 1e6 / r["connections"]
            runs.append(r)
        return median_run(runs, "per_s")

    def suite(self, label: str, ports: dict[str, int], pids_fn) -> dict:
        out: dict = {}
        say(f"[{label}] throughput, sink ...")
        out["throughput_sink"] = self.throughput(ports["sink"], False, pids_fn())
        say(f"    {out['throughput_sink']['mb_per_s']:.0f} MB/s")
        if not self.args.skip_echo:
            say(f"[{label}] throughput, echo ...")
            out["throughput_echo"] = self.throughput(ports["echo"], True, pids_fn())
            say(f"    {out['throughput_echo']['mb_per_s']:.0f} MB/s each way")
        out["mem_after_throughput"] = self.mem(label, pids_fn)
        say(f"[{label}] connection rate ...")
        out["connrate"] = self.connrate(ports["aecho"], pids_fn())
        say(f"    {out['connrate']['per_s']:.0f} conn/s")
        out["mem_after_connrate"] = self.mem(label, pids_fn)
        return out

    def mem(self, label: str, pids_fn) -> dict | None:
        if label == "direct":
            return None
        pids = pids_fn()
        per = {str(pid): mem_of(pid) for pid in pids}
        return {
            "processes": per,
            "rss_kib": sum(m["rss_kib"] for m in per.values()),
            "pss_kib": sum(m["pss_kib"] for m in per.values()),
        }

    def wait_quiet(self, label: str) -> dict[str, float]:
        """Wait (up to --wait-quiet s) until no core is busier than 10% without us."""
        deadline = time.monotonic() + self.args.wait_quiet
        while True:
            c0 = core_times()
            time.sleep(0.5)
            c1 = core_times()
            busy = {
                k: round(100.0 * (c1[k][0] - c0[k][0]) / max(1, c1[k][1] - c0[k][1]), 1) for k in c1
            }
            if max(busy.values()) <= 10.0:
                return busy
            if time.monotonic() > deadline:
                say(f"[{label}] WARNING: the machine is busy without the benchmark ({busy}); "
                    "numbers will be noisy")  # fmt: skip
                return busy
            time.sleep(1.0)

    def run_proxy(self, name: str, cmd: list[str], listen: dict[str, int]) -> dict:
        background = self.wait_quiet(name)
        proc = self.start_proxy(name, cmd)
        try:
            ready_s = self.wait_ready(proc, list(listen.values()))
            main_pid = proc.popen.pid
            if name == "legatus":
                deadline = time.monotonic() + 10
                while not legatus_workers(main_pid) and time.monotonic() < deadline:
                    time.sleep(0.05)
                workers = legatus_workers(main_pid)
                if len(workers) != 1:
                    raise RuntimeError(f"expected 1 legatus worker, found {workers}")

                def pids_fn() -> list[int]:
                    return [main_pid, *workers]

                roles = {str(main_pid): "main", str(workers[0]): "worker"}
            else:

                def pids_fn() -> list[int]:
                    return [main_pid]

                roles = {str(main_pid): "envoy"}
            time.sleep(self.args.settle)
            res: dict = {
                "ready_s": ready_s,
                "roles": roles,
                "command": cmd,
                "background_busy_pct": background,
            }
            res["mem_idle"] = self.mem(name, pids_fn)
            res.update(self.suite(name, listen, pids_fn))
            if self.args.profile and name == "legatus":
                res["profile"] = self.profile(workers[0], listen)
            if proc.popen.poll() is not None:
                raise RuntimeError(f"{name} died during the run:\n{proc.tail()}")
            return res
        finally:
            proc.stop()
            self.procs.remove(proc)

    def profile(self, worker: int, listen: dict[str, int]) -> dict:
        """py-spy the legatus worker under each load (extra runs, not in the table).

        Two modes per load: ``native`` (``--native``: C frames too, so syscalls, uvloop and the
        GC show; py-spy stops the worker for each sample) and ``python`` (``--nonblocking``:
        Python frames only, the worker is not stopped; time in C is charged to the calling
        Python line, and time in the event loop itself to ``run_worker``).
        """
        pyspy = shutil.which("py-spy")
        if pyspy is None:
            say("py-spy not found (pip install py-spy): skipping --profile")
            return {}
        a = self.args
        d = a.profile_duration
        outdir = RESULTS_DIR / f"{self.stamp}-pyspy"
        outdir.mkdir(parents=True, exist_ok=True)
        tests = ["throughput_sink", "connrate"]
        if not a.skip_echo:
            tests.insert(1, "throughput_echo")
        out = {}
        for test in tests:
            for mode in a.profile_modes.split(","):
                raw = outdir / f"{test}-{mode}.txt"
                cmd = [pyspy, "record", "--pid", str(worker), "--duration", str(int(d)),
                       "--rate", str(a.profile_rate), "--format", "raw", "--output", str(raw),
                       "--native" if mode == "native" else "--nonblocking"]  # fmt: skip
                say(f"[legatus] py-spy ({mode}) during {test} ({d:.0f}s) -> {raw}")
                spy = subprocess.Popen(
                    self.pin(a.load_cpu, cmd),
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    text=True,
                )
                time.sleep(1.0)  # attach
                if test == "connrate":
                    argv = ["--port", str(listen["aecho"]), "--concurrency",
                            str(a.cr_concurrency), "--duration", str(d + 1)]  # fmt: skip
                    self.run_helper("_connrate", *argv, timeout=d + 60)
                else:
                    argv = ["--port", str(listen["sink" if test == "throughput_sink" else "echo"]),
                            "--connections", str(a.connections), "--bytes", str(1 << 50),
                            "--duration", str(d + 1)]  # fmt: skip
                    if test == "throughput_echo":
                        argv.append("--echo")
                    self.run_helper("_push", *argv, timeout=d + 60)
                try:
                    _, err = spy.communicate(timeout=d + 30)
                except subprocess.TimeoutExpired:
                    spy.kill()
                    _, err = spy.communicate()
                if not raw.exists():
                    say(f"    py-spy failed: {err.strip()[-500:]}")
                    continue
                out[f"{test}/{mode}"] = summarize_profile(raw, a.profile_top)
                out[f"{test}/{mode}"]["raw"] = str(raw)
        return out

    # main -----------------------------------------------------------------------------------

    def run(self) -> dict:
        a = self.args
        os.sched_setaffinity(0, {a.load_cpu})
        upstream = self.start_upstream()
        listen = dict(zip(upstream, free_ports(len(upstream)), strict=True))
        cfg = self.tmp / "bootstrap.yaml"
        write_bootstrap(cfg, listen, upstream)
        say(f"bootstrap: {cfg}; upstream ports {upstream}; listener ports {listen}")
        results: dict = {
            "meta": {
                "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "host": platform.node(),
                "kernel": platform.release(),
                "cpus": os.cpu_count(),
                "cpu_model": cpu_model(),
                "python": sys.version.split()[0],
                "proxy_cpu": a.proxy_cpu,
                "load_cpu": a.load_cpu,
                "connections": a.connections,
                "bytes": a.bytes,
                "duration_s": a.duration,
                "cr_concurrency": a.cr_concurrency,
                "cr_duration_s": a.cr_duration,
                "repeat": a.repeat,
                "bootstrap": cfg.read_text(),
            }
        }
        if not a.skip_direct:
            background = self.wait_quiet("direct")
            results["direct"] = self.suite("direct", upstream, list)
            results["direct"]["background_busy_pct"] = background
        legatus_cmd = (
            shlex.split(a.legatus_cmd) if a.legatus_cmd else [sys.executable, "-m", "legatus"]
        )
        results["legatus"] = self.run_proxy(
            "legatus",
            [*legatus_cmd, "-c", str(cfg), "--concurrency", "1", "-l", a.log_level],
            listen,
        )
        if not a.skip_envoy:
            envoy = a.envoy_bin or shutil.which("envoy")
            if envoy is None:
                raise RuntimeError("envoy not found on PATH (or use --skip-envoy)")
            results["meta"]["envoy_version"] = envoy_version(envoy)
            results["envoy"] = self.run_proxy(
                "envoy",
                [
                    envoy,
                    "-c",
                    str(cfg),
                    "--concurrency",
                    "1",
                    "--use-dynamic-base-id",
                    "-l",
                    a.log_level,
                ],
                listen,
            )
        return results


def median_run(runs: list[dict], key: str) -> dict:
    """The run with the median ``key`` (the lower middle one), plus every run's ``key``."""
    ordered = sorted(runs, key=lambda r: r[key])
    out = dict(ordered[(len(ordered) - 1) // 2])
    out["all_" + key] = [round(r[key], 1) for r in runs]
    return out


def envoy_version(envoy: str) -> str:
    with contextlib.suppress(Exception):
        r = subprocess.run([envoy, "--version"], capture_output=True, text=True, timeout=30)
        return r.stdout.strip().splitlines()[-1].partition("version:")[2].strip()
    return "?"


def cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return platform.processor()


_SYSCALL_NAMES = (
    "read readv recv recvfrom recvmsg write writev send sendto sendmsg epoll_wait epoll_pwait "
    "epoll_ctl close connect accept accept4 shutdown socket getsockname getpeername setsockopt "
    "getsockopt syscall brk mmap munmap madvise getpid ioctl fcntl"
)
SYSCALLS = frozenset(_SYSCALL_NAMES.split())
# Python frames that only run the loop: in --nonblocking (Python-only) stacks, a sample whose
# leaf is one of these was in C code called by the loop (uvloop, libuv, syscalls).
LOOP_RUNNERS = frozenset({"run_worker", "run_until_complete", "run_forever"})


def summarize_profile(raw: Path, top: int) -> dict:
    """Where the worker's samples went, from py-spy's collapsed stacks (``--format raw``).

    - ``categories``: the leaf frame is a syscall wrapper in libc / the cyclic GC / Python code
      (a ``.py`` frame) / other native code (uvloop, libuv, CPython, libc);
    - ``self``: the leaf frames (where the CPU was), top N;
    - ``inclusive``: legatus functions run by the event loop, with everything they call, top N.
    """
    self_c: Counter[str] = Counter()
    incl_c: Counter[str] = Counter()
    cats: Counter[str] = Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [f for f in stack.split(";") if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        n = int(count)
        total += n
        leaf = frames[-1]
        func = leaf.partition(" (")[0]
        if func in LOOP_RUNNERS:
            cats["event loop (C: uvloop, libuv, syscalls)"] += n
        elif ".py:" in leaf or ".py)" in leaf:
            cats["python code"] += n
        elif func.startswith("gc_collect") or func in ("collect", "gc_collect_main"):
            cats["cyclic GC"] += n
        elif func in SYSCALLS and "libc" in leaf:
            cats["syscalls"] += n
        else:
            cats["other native (uvloop, libuv, CPython, libc)"] += n
        names = [_frame_name(f) for f in frames]
        self_c[names[-1]] += n
        # Inclusive time counts what runs under the event loop: frames after the innermost
        # loop runner (a stack torn by --nonblocking without one counts its leaf only).
        runners = [i for i, f in enumerate(frames) if f.partition(" (")[0] in LOOP_RUNNERS]
        below = names[runners[-1] + 1 :] if runners else names[-1:]
        for name in set(below):
            incl_c[name] += n
    total = total or 1

    def pct(n: int) -> float:
        return round(100.0 * n / total, 1)

    inclusive = [[name, pct(c)] for name, c in incl_c.most_common() if "legatus/" in name][:top]
    return {
        "samples": total,
        "categories": {k: pct(v) for k, v in cats.most_common()},
        "self": [[name, pct(c)] for name, c in self_c.most_common(top)],
        "inclusive": inclusive,
    }


def _frame_name(frame: str) -> str:
    """``func (path/to/file.py:123)`` -> ``func (dir/file.py)``; C frames keep their file."""
    name, _, where = frame.strip().partition(" (")
    file = where.rstrip(")").rpartition(":")[0] or where.rstrip(")")
    parts = file.split("/")
    if "legatus" in parts:
        file = "legatus/" + "/".join(parts[parts.index("legatus") + 1 :][-2:])
    else:
        file = parts[-1]
    return f"{name} ({file})" if file else name


# Report --------------------------------------------------------------------------------------


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "-"


def _mib(kib: int | None) -> str:
    return f"{kib / 1024:.1f}" if kib is not None else "-"


def _cpu(r: dict | None) -> str:
    if not r:
        return "-"
    parts = []
    if r.get("proxy_user_pct") is not None:
        parts.append(f"proxy user {r['proxy_user_pct']:.0f}% + sys {r['proxy_sys_pct']:.0f}%")
    cores = r.get("core_busy_pct", {})
    parts.append(" ".join(f"{k} {v:.0f}%" for k, v in sorted(cores.items())))
    return ", ".join(parts)


def report(res: dict, args: argparse.Namespace | None = None) -> str:
    m = res["meta"]
    d, lg, ev = res.get("direct", {}), res.get("legatus", {}), res.get("envoy", {})
    lines = [
        f"tcp_proxy benchmark, {m['timestamp']}: {m['cpu_model']}, {m['cpus']} CPUs, "
        f"proxy on cpu {m['proxy_cpu']}, load on cpu {m['load_cpu']}; Python {m['python']}; "
        f"Envoy {m.get('envoy_version', 'skipped')}",
        "",
        "| metric | direct | legatus | Envoy | legatus/Envoy |",
        "|---|---:|---:|---:|---:|",
    ]

    def row(name: str, key: str, fld: str, fmt: str) -> None:
        vals = [x.get(key, {}).get(fld) if x.get(key) else None for x in (d, lg, ev)]
        cells = [fmt.format(v) if v is not None else "-" for v in vals]
        lines.append(f"| {name} | {' | '.join(cells)} | {_ratio(vals[1], vals[2])} |")

    n, c = m["connections"], m["cr_concurrency"]
    row(f"throughput, sink, {n} conns (MB/s)", "throughput_sink", "mb_per_s", "{:.0f}")
    row(f"throughput, echo, {n} conns (MB/s each way)", "throughput_echo", "mb_per_s", "{:.0f}")
    row(f"new connections, {c} loops (conn/s)", "connrate", "per_s", "{:.0f}")
    row("  connect→echo latency p50 (ms)", "connrate", "latency_ms_p50", "{:.2f}")
    row("  connect→echo latency p99 (ms)", "connrate", "latency_ms_p99", "{:.2f}")
    row("proxy CPU per GB, sink (ms)", "throughput_sink", "proxy_cpu_ms_per_gb", "{:.0f}")
    row("proxy CPU per GB each way, echo (ms)", "throughput_echo", "proxy_cpu_ms_per_gb", "{:.0f}")
    row("proxy CPU per connection (µs)", "connrate", "proxy_cpu_us_per_conn", "{:.0f}")

    def mem_cells(r: dict, key: str) -> tuple[str, str, str, str]:
        mem = r.get(key)
        if not mem:
            return ("-",) * 4  # type: ignore[return-value]
        roles = r["roles"]
        by = {roles[pid]: v for pid, v in mem["processes"].items()}
        return (
            _mib(mem["rss_kib"]),
            _mib(mem["pss_kib"]),
            " + ".join(f"{_mib(by[k]['rss_kib'])}" for k in ("main", "worker") if k in by),
            " + ".join(f"{_mib(by[k]['pss_kib'])}" for k in ("main", "worker") if k in by),
        )

    for key, label in (
        ("mem_idle", "idle"),
        ("mem_after_throughput", "after throughput"),
        ("mem_after_connrate", "after conn-rate"),
    ):
        lrss, lpss, lrss_parts, lpss_parts = mem_cells(lg, key)
        erss, epss, _, _ = mem_cells(ev, key)
        lines.append(
            f"| RSS {label} (MiB; legatus main + worker = {lrss_parts}) | - | {lrss} | "
            f"{erss} | {_ratio(_f(lrss), _f(erss))} |"
        )
        lines.append(
            f"| PSS {label} (MiB; legatus main + worker = {lpss_parts}) | - | {lpss} | "
            f"{epss} | {_ratio(_f(lpss), _f(epss))} |"
        )
    lines.append("")
    lines.append(
        "CPU during each run (proxy = user and system CPU time of its processes, 100% = one "
        "core; cpuN = how busy each core was, softirq included):"
    )
    lines.append("")
    lines.append("| run | direct | legatus | Envoy |")
    lines.append("|---|---|---|---|")
    for key in ("throughput_sink", "throughput_echo", "connrate"):
        lines.append(f"| {key} | {_cpu(d.get(key))} | {_cpu(lg.get(key))} | {_cpu(ev.get(key))} |")
    bg = [
        f"{who}: " + " ".join(f"{k} {v:.0f}%" for k, v in sorted(r["background_busy_pct"].items()))
        for who, r in (("direct", d), ("legatus", lg), ("Envoy", ev))
        if r.get("background_busy_pct")
    ]
    if bg:
        lines += ["", "Background load just before each series: " + "; ".join(bg)]
    lines.append("")
    lines.append("Targets:")
    lt, et = (
        lg.get("throughput_sink", {}).get("mb_per_s"),
        ev.get("throughput_sink", {}).get("mb_per_s"),
    )
    if lt and et:
        ok = "PASS" if lt >= et else "FAIL"
        lines.append(f"- tcp_proxy throughput per worker >= 1.0x Envoy: {lt / et:.2f}x, {ok}")
    for key, label in (("mem_idle", "idle"), ("mem_after_throughput", "after throughput")):
        lm, em = lg.get(key), ev.get(key)
        if lm and em:
            ok = "PASS" if lm["pss_kib"] <= em["rss_kib"] else "FAIL"
            lines.append(
                f"- legatus main + 1 worker PSS <= Envoy RSS ({label}): "
                f"{_mib(lm['pss_kib'])} MiB vs {_mib(em['rss_kib'])} MiB, {ok}"
            )
    errs = []
    for who, r in (("direct", d), ("legatus", lg), ("envoy", ev)):
        for key in ("throughput_sink", "throughput_echo", "connrate"):
            e = (r.get(key) or {}).get("errors")
            if e:
                errs.append(f"- {who} {key}: {e}")
    if errs:
        lines += ["", "Errors:", *errs]
    prof = lg.get("profile")
    for test, p in (prof or {}).items():
        cats = ", ".join(f"{k} {v}%" for k, v in p["categories"].items())
        lines += [
            "",
            f"py-spy, legatus worker, {test}: {p['samples']} samples ({cats}); "
            f"raw stacks: {p['raw']}",
            "",
            "| self % | where the CPU was (leaf frame) | incl. % | legatus function (inclusive) |",
            "|---:|---|---:|---|",
        ]
        rows = max(len(p["self"]), len(p["inclusive"]))
        for i in range(rows):
            sn, sp = p["self"][i] if i < len(p["self"]) else ("", "")
            iname, ip = p["inclusive"][i] if i < len(p["inclusive"]) else ("", "")
            lines.append(f"| {sp} | {sn} | {ip} | {iname} |")
    return "\n".join(lines)


def _f(s: str) -> float | None:
    try:
        return float(s)
    except ValueError:
        return None


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="tcp_proxy benchmark: legatus vs Envoy, one pinned worker each",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--duration", type=float, default=10.0, help="cap (s) of each throughput run")
    p.add_argument(
        "--bytes",
        type=_size,
        default=4 << 30,
        help="bytes per throughput run, over all connections (e.g. 2G, 512M)",
    )
    p.add_argument(
        "--connections", type=int, default=4, help="parallel connections of the throughput runs"
    )
    p.add_argument(
        "--cr-concurrency",
        type=int,
        default=32,
        help="concurrent client loops of the connection-rate run",
    )
    p.add_argument(
        "--cr-duration", type=float, default=5.0, help="duration (s) of the connection-rate run"
    )
    p.add_argument(
        "--warmup",
        type=_size,
        default=512 << 20,
        help="bytes of an unmeasured throughput run before each measured series (0: none)",
    )
    p.add_argument(
        "--repeat", type=int, default=3, help="runs of each measurement; the table shows the median"
    )
    p.add_argument("--skip-envoy", action="store_true", help="measure direct and legatus only")
    p.add_argument("--skip-direct", action="store_true", help="skip the no-proxy ceiling runs")
    p.add_argument("--skip-echo", action="store_true", help="skip the echo throughput run")
    p.add_argument(
        "--legatus-cmd",
        default=None,
        help="command that starts legatus (default: this python -m legatus)",
    )
    p.add_argument("--envoy-bin", default=None, help="Envoy binary (default: envoy on PATH)")
    p.add_argument("--proxy-cpu", type=int, default=1, help="CPU the proxy is pinned to")
    p.add_argument(
        "--load-cpu",
        type=int,
        default=0,
        help="CPU of the load generator, the upstreams and this script",
    )
    p.add_argument(
        "--settle",
        type=float,
        default=2.0,
        help="seconds between readiness and the idle memory reading",
    )
    p.add_argument(
        "--wait-quiet",
        type=float,
        default=30.0,
        help="before each series, wait up to this long for the other processes to go quiet",
    )
    p.add_argument("--log-level", default="warning", help="-l of both proxies")
    p.add_argument(
        "--profile",
        action="store_true",
        help="after the legatus runs, py-spy its worker under throughput and "
        "connection-rate load (extra runs, not counted in the table)",
    )
    p.add_argument("--profile-duration", type=float, default=5.0)
    p.add_argument("--profile-rate", type=int, default=250, help="py-spy samples/s")
    p.add_argument(
        "--profile-modes",
        default="native,python",
        help="py-spy modes: native (--native, C frames and syscalls), python (--nonblocking)",
    )
    p.add_argument("--profile-top", type=int, default=20)
    p.add_argument(
        "--output",
        type=Path,
        default=None,
        help="JSON path (default: benchmarks/results/<timestamp>.json)",
    )
    return p.parse_args(argv)


def _size(s: str) -> int:
    s = s.strip().upper().removesuffix("B").removesuffix("I")
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(s[-1:], 1)
    return int(float(s.rstrip("KMG")) * mult)


def pinning_problem(args: argparse.Namespace) -> str | None:
    """Why the proxy and the load cannot each have their own CPU, or None."""
    if shutil.which("taskset") is None:
        return "taskset not found (util-linux)"
    ncpu = os.cpu_count() or 1
    if max(args.proxy_cpu, args.load_cpu) >= ncpu or args.proxy_cpu == args.load_cpu:
        return f"need two distinct CPUs < {ncpu} (--proxy-cpu/--load-cpu)"
    return None


def run_bench(
    argv: list[str],
    *,
    roles: dict,
    parse_args: Callable[[list[str]], argparse.Namespace],
    check_tools: Callable[[argparse.Namespace], str | None],
    bench_class: Callable[[argparse.Namespace], Any],
    report: Callable[[dict, argparse.Namespace], str],
    name: str,
) -> int:
    """The ``main`` of every benchmark here: a role (a subprocess it starts), or the whole
    run; the report goes to stdout and, with the raw results, to ``results/<name>-<stamp>.json``
    (or ``--output``). Exit 2 when a tool or CPU is missing, 1 when the run failed."""
    if argv and argv[0] in roles:
        roles[argv[0]](argv[1:])
        return 0
    args = parse_args(argv)
    if problem := check_tools(args):
        say(problem)
        return 2
    bench = bench_class(args)
    t0 = time.monotonic()
    try:
        results = bench.run()
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        say(f"benchmark failed: {e}")
        return 1
    finally:
        bench.cleanup()
    results["meta"]["wall_s"] = round(time.monotonic() - t0, 1)
    text = report(results, args)
    print(text)
    out = args.output or RESULTS_DIR / f"{name}-{bench.stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    results["report_markdown"] = text
    out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    took = results["meta"]["wall_s"]
    say(f"\nJSON: {out}\nbootstraps and proxy logs: {bench.tmp} (took {took} s)")
    return 0


def main(argv: list[str]) -> int:
    return run_bench(
        argv,
        roles=ROLES,
        parse_args=parse_args,
        check_tools=pinning_problem,
        bench_class=Bench,
        report=report,
        name="tcp_proxy",
    )


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
