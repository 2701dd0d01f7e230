#!/usr/bin/env python3
"""HTTP/2 benchmark: legatus vs Envoy, side by side, one worker each.

Run by hand (never from the test suite)::

    python benchmarks/http2.py                        # 3 interleaved rounds, ~2 minutes
    python benchmarks/http2.py --rounds 1 --duration 2 --no-pin   # a quick look
    python benchmarks/http2.py --help                 # every option

The issue's benchmark: h2load (h2c, prior knowledge) against legatus and Envoy, one worker
each, the same bootstrap and upstream, interleaved rounds, the proxy pinned to its own core:
``--connections`` (16) connections x ``--streams`` (4) concurrent streams each, 64 B
responses from an HTTP/1.1 upstream. Target: legatus >= 0.75x Envoy's requests/s.

- Load generator: ``h2load -t1 -c16 -m4 -D <duration>`` (Debian package ``nghttp2-client``),
  pinned with the upstream and this script to ``--load-cpu`` (0).
- Upstream: the HTTP/1.1 uvloop + httptools server of benchmarks/http1.py (role
  ``_upstream``): ``GET /64`` answers 64 bytes over keep-alive.
- Proxies: the very same bootstrap as http1.py's "no access log" variant (an HTTP connection
  manager with codec_type AUTO, which picks HTTP/2 on the client preface; one route to one
  STATIC cluster), ``taskset -c <proxy-cpu>``, one at a time, each started fresh, warmed up
  (``--warmup`` s of h2load, unmeasured), then measured for ``--duration`` s. The order of
  the two swaps every round; the table shows medians, with the proxy's CPU per request
  (its user + system time over the run, over the requests done).

``--no-pin`` runs everything unpinned (a machine with fewer than two free cores, or a quick
check that the script works): the numbers are then indicative only.

Results are printed as a markdown table and written as JSON to
``benchmarks/results/http2-<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import http.client
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

# Shared helpers of the other benchmarks (this directory is on sys.path when a script in it
# is run as ``python benchmarks/<name>.py``).
from http1 import NotSupported, first_error_line, role_upstream, write_bootstrap
from tcp_proxy import (
    HOST,
    READY_TIMEOUT_S,
    Bench,
    CpuWindow,
    cpu_model,
    envoy_version,
    free_ports,
    legatus_workers,
    mem_of,
    pinning_problem,
    run_bench,
    say,
)

SIZE = 64
TARGET = 0.75
ROLES = {"_upstream": role_upstream}
_FINISHED = re.compile(r"finished in ([\d.]+)s, ([\d.]+) req/s")
_REQUESTS = re.compile(
    r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
    r"(\d+) errored, (\d+) timeout"
)
_REQUEST_TIME = re.compile(r"time for request:\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)")


def _ms(text: str) -> float:
    """An h2load duration (``812us``, ``1.23ms``, ``2.01s``) in ms."""
    for unit, scale in (("us", 0.001), ("ms", 1.0), ("s", 1000.0)):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * scale
    return float(text)


def parse_h2load(out: str) -> dict:
    finished = _FINISHED.search(out)
    requests = _REQUESTS.search(out)
    if finished is None or requests is None:
        raise RuntimeError(f"h2load output not understood:\n{out[-2000:]}")
    _, _, done, ok, failed, errored, timeout = map(int, requests.groups())
    result = {
        "seconds": float(finished.group(1)),
        "rps": float(finished.group(2)),
        "requests": done,
        "succeeded": ok,
        "errors": {
            k: v for k, v in (("failed", failed), ("errored", errored), ("timeout", timeout)) if v
        },
    }
    request_time = _REQUEST_TIME.search(out)
    if request_time is not None:
        low, high, mean, _ = request_time.groups()
        result.update(latency_ms_min=_ms(low), latency_ms_max=_ms(high),
                      latency_ms_mean=_ms(mean))  # fmt: skip
    return result


class Http2Bench(Bench):
    """The process plumbing of the tcp_proxy benchmark, with h2load as the load."""

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args)
        self.script = str(Path(__file__).resolve())  # the upstream role lives here too
        self.runs: list[dict] = []
        self.unsupported: str | None = None

    def pin(self, cpu: int, cmd: list[str]) -> list[str]:
        return cmd if self.args.no_pin else super().pin(cpu, cmd)

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
        """Until ``GET /64`` through ``port`` answers 200 (over HTTP/1.1: codec AUTO serves
        both); NotSupported if the process exits first."""
        t0 = time.monotonic()
        while True:
            if proc.popen.poll() is not None:
                raise NotSupported(first_error_line(proc.tail(200), proc.popen.returncode))
            try:
                c = http.client.HTTPConnection(HOST, port, timeout=2)
                c.request("GET", f"/{SIZE}")
                resp = c.getresponse()
                resp.read()
                c.close()
                if resp.status == 200:
                    return time.monotonic() - t0
            except (OSError, http.client.HTTPException):
                pass
            if time.monotonic() - t0 > READY_TIMEOUT_S:
                raise RuntimeError(f"{proc.name}: no 200 on port {port}:\n{proc.tail()}")
            time.sleep(0.05)

    def h2load(self, port: int, duration: float, pids: list[int]) -> dict:
        a = self.args
        cmd = self.pin(a.load_cpu, [a.h2load_bin, "-t", "1", "-c", str(a.connections),
                                    "-m", str(a.streams), "-D", str(int(duration)),
                                    f"http://{HOST}:{port}/{SIZE}"])  # fmt: skip
        with CpuWindow(pids) as w:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60)
        if r.returncode != 0:
            raise RuntimeError(f"h2load failed ({r.returncode}): {r.stderr.strip()[-2000:]}")
        out = parse_h2load(r.stdout)
        out.update(w.result())
        if out.get("proxy_cpu_s") is not None and out.get("requests"):
            out["proxy_cpu_us_per_req"] = out["proxy_cpu_s"] * 1e6 / out["requests"]
        out["h2load_stdout"] = r.stdout
        return out

    def measure(self, rnd: int, name: str) -> None:
        a = self.args
        label = f"round {rnd}, {name}"
        background = self.wait_quiet(label)
        proc = self.start_proxy(name, self.command(name, self.cfg))
        try:
            try:
                ready_s = self.wait_http(proc, self.listen)
            except NotSupported as e:
                if name != "legatus":
                    raise RuntimeError(f"{name} refused the bootstrap: {e}") from None
                self.unsupported = str(e)
                say(f"[{label}] legatus: not supported ({e})")
                return
            pids = [proc.popen.pid]
            if name == "legatus":
                deadline = time.monotonic() + 10
                while not legatus_workers(proc.popen.pid) and time.monotonic() < deadline:
                    time.sleep(0.05)
                pids += legatus_workers(proc.popen.pid)
            time.sleep(a.settle)
            if a.warmup:
                self.h2load(self.listen, a.warmup, pids)
            r = self.h2load(self.listen, a.duration, pids)
            r.update(round=rnd, who=name, ready_s=ready_s, background_busy_pct=background,
                     mem={str(pid): mem_of(pid) for pid in pids})  # fmt: skip
            self.runs.append(r)
            say(f"[{label}] {_run_line(r)}")
            if proc.popen.poll() is not None:
                raise RuntimeError(f"{name} died during the run:\n{proc.tail()}")
        finally:
            proc.stop()
            if proc in self.procs:
                self.procs.remove(proc)

    def run(self) -> dict:
        a = self.args
        if not a.no_pin:
            os.sched_setaffinity(0, {a.load_cpu})
        self.upstream_port = self.start_upstream()["port"]
        (self.listen,) = free_ports(1)
        self.cfg = self.tmp / "bootstrap.yaml"
        write_bootstrap(self.cfg, "nolog", self.listen, self.upstream_port, None)
        who = [w for w in ("legatus", "envoy") if not getattr(a, f"skip_{w}")]
        if "envoy" in who:
            self.envoy = a.envoy_bin or shutil.which("envoy") or ""
            if not self.envoy:
                raise RuntimeError("envoy not found on PATH (or use --envoy-bin / --skip-envoy)")
        say(f"temp dir {self.tmp}; upstream port {self.upstream_port}; "
            f"listener port {self.listen}")  # fmt: skip
        for rnd in range(1, a.rounds + 1):
            for name in who if rnd % 2 else who[::-1]:
                if name == "legatus" and self.unsupported:
                    continue
                self.measure(rnd, name)
        return {
            "meta": self.meta(),
            "runs": self.runs,
            "summary": summarize(self.runs),
            "legatus_unsupported": self.unsupported,
        }

    def meta(self) -> dict:
        a = self.args
        m = {
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "host": platform.node(),
            "kernel": platform.release(),
            "cpus": os.cpu_count(),
            "cpu_model": cpu_model(),
            "python": sys.version.split()[0],
            "args": vars(a),
            "h2load": _first_line([a.h2load_bin, "--version"]),
            "bootstrap": self.cfg.read_text(),
        }
        if not a.skip_envoy:
            m["envoy_version"] = envoy_version(self.envoy)
        return m


def _first_line(cmd: list[str]) -> str:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "?"
    lines = (r.stdout + r.stderr).strip().splitlines()
    return lines[0] if lines else "?"


def _run_line(r: dict) -> str:
    s = f"{r['rps']:.0f} req/s, mean {r.get('latency_ms_mean', 0):.2f} ms"
    if r.get("proxy_cpu_us_per_req") is not None:
        s += f", proxy {r['proxy_cpu_us_per_req']:.1f} us CPU/request"
    cores = " ".join(f"{k} {v:.0f}%" for k, v in sorted(r["core_busy_pct"].items()))
    s += f", {cores}"
    if r["errors"]:
        s += f", ERRORS {r['errors']}"
    return s


def summarize(runs: list[dict]) -> dict:
    out = {}
    for who in sorted({r["who"] for r in runs}):
        rs = [r for r in runs if r["who"] == who]
        entry: dict = {"rounds": len(rs)}
        for key in ("rps", "latency_ms_mean", "proxy_cpu_us_per_req"):
            values = [r[key] for r in rs if r.get(key) is not None]
            entry[key] = statistics.median(values) if values else None
            entry["all_" + key] = [round(v, 3) for v in values]
        entry["errors"] = sum(sum(r["errors"].values()) for r in rs)
        out[who] = entry
    return out


def report(res: dict, args: argparse.Namespace) -> str:
    s = res["summary"]
    legatus, envoy = s.get("legatus", {}), s.get("envoy", {})

    def fmt(v, spec: str) -> str:
        return spec.format(v) if v is not None else "-"

    ratio = (legatus.get("rps") or 0) / envoy["rps"] if envoy.get("rps") else None
    pinned = "unpinned (indicative only)" if args.no_pin else (
        f"proxy on CPU {args.proxy_cpu}, load on CPU {args.load_cpu}")  # fmt: skip
    lines = [
        f"HTTP/2 (h2c) {SIZE} B responses, h2load -c{args.connections} -m{args.streams}, "
        f"{args.rounds} round(s) x {args.duration} s, {pinned}; medians.",
        "",
        "| case | legatus req/s | Envoy req/s | ratio (target >= "
        f"{TARGET}x) | CPU us/request legatus / Envoy | mean latency legatus / Envoy |",
        "|---|---:|---:|---:|---:|---:|",
        f"| {SIZE} B | {fmt(legatus.get('rps'), '{:,.0f}')} | {fmt(envoy.get('rps'), '{:,.0f}')}"
        f" | {fmt(ratio, '{:.2f}x')} | {fmt(legatus.get('proxy_cpu_us_per_req'), '{:.1f}')} / "
        f"{fmt(envoy.get('proxy_cpu_us_per_req'), '{:.1f}')} | "
        f"{fmt(legatus.get('latency_ms_mean'), '{:.2f} ms')} / "
        f"{fmt(envoy.get('latency_ms_mean'), '{:.2f} ms')} |",
    ]
    if res.get("legatus_unsupported"):
        lines.append(f"\nlegatus refused the bootstrap: {res['legatus_unsupported']}")
    if legatus.get("errors") or envoy.get("errors"):
        lines.append(f"\nh2load errors: legatus {legatus.get('errors')}, "
                     f"Envoy {envoy.get('errors')}")  # fmt: skip
    return "\n".join(lines)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="HTTP/2 benchmark: legatus vs Envoy with h2load, one worker each",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians reported")
    p.add_argument("--duration", type=int, default=8, help="seconds of each measured run")
    p.add_argument("--warmup", type=int, default=1, help="seconds of unmeasured h2load")
    p.add_argument("--connections", type=int, default=16, help="h2load -c")
    p.add_argument("--streams", type=int, default=4, help="h2load -m: streams per connection")
    p.add_argument("--skip-legatus", action="store_true")
    p.add_argument("--skip-envoy", action="store_true")
    p.add_argument("--envoy-bin", default=None, help="Envoy binary (default: envoy on PATH)")
    p.add_argument("--h2load-bin", default="h2load")
    p.add_argument("--legatus-cmd", default=None, help="command that runs legatus (shlex)")
    p.add_argument("--proxy-cpu", type=int, default=1, help="CPU the proxy is pinned to")
    p.add_argument("--load-cpu", type=int, default=0, help="CPU of h2load and the upstream")
    p.add_argument("--no-pin", action="store_true", help="no CPU pinning (indicative numbers)")
    p.add_argument("--settle", type=float, default=0.5, help="seconds after a proxy is ready")
    p.add_argument("--wait-quiet", type=float, default=20.0,
                   help="seconds to wait for an idle machine before each run")  # fmt: skip
    p.add_argument("--log-level", default="warning", help="-l of both proxies")
    p.add_argument("--output", type=Path, default=None, help="JSON path (default: results/)")
    return p.parse_args(argv)


def check_tools(args: argparse.Namespace) -> str | None:
    if shutil.which(args.h2load_bin) is None:
        return "h2load not found: `sudo apt-get install -y nghttp2-client`, or --h2load-bin"
    if args.no_pin:
        return None
    if problem := pinning_problem(args):
        return problem + ", or --no-pin"
    return None


def main(argv: list[str]) -> int:
    return run_bench(
        argv,
        roles=ROLES,
        parse_args=parse_args,
        check_tools=check_tools,
        bench_class=Http2Bench,
        report=report,
        name="http2",
    )


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
