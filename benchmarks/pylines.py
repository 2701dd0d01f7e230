"""Python lines and calls a legatus worker runs per proxied request: a repeatable cost measure.

Requests/s on a shared VM move by several percent between runs; the number of Python lines
the worker executes per request does not. On the HTTP path a line costs about 45 ns, so this
count tracks the Python share of a request's CPU closely enough to judge a change in minutes,
before a pinned benchmark confirms it in time (some rewrites cut lines and still cost more:
time both).

One run: the upstream of ``http1.py`` (64 B answers) and legatus with one worker on the
``http1.py`` bootstrap of ``--variant``; a warm-up of ``--warmup`` requests, then a line
tracer is switched on in the worker (SIGUSR2) for exactly ``--requests`` requests
(``h2load``, ``--connections`` keep-alive connections, HTTP/1.1 or with ``--h2`` prior-
knowledge h2c and ``--streams`` concurrent streams), then the worker writes its counts on
SIGTERM. The report: lines and calls per request in all, by file and by function.

    python benchmarks/pylines.py                      # HTTP/1.1, router only
    python benchmarks/pylines.py --variant traffic    # 3 hosts, retries, local rate limit
    python benchmarks/pylines.py --h2 --top 60
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from http1 import VARIANTS, write_bootstrap  # noqa: E402
from tcp_proxy import HOST, free_ports, say  # noqa: E402

TRACE_SIGNAL = signal.SIGUSR2


def role_legatus(argv: list[str]) -> None:
    """legatus itself (``argv``: its command line), with the line tracer in each worker: off
    until TRACE_SIGNAL, counts written to $PYLINES_OUT (a JSON list) when the worker ends."""
    # This directory's xds.py would shadow the xds protos package legatus imports.
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
    import legatus.server.worker as worker

    lines: collections.Counter = collections.Counter()
    calls: collections.Counter = collections.Counter()

    def local(frame, event, arg):
        if event == "line":
            code = frame.f_code
            lines[code.co_filename, code.co_name] += 1
        return local

    def tracer(frame, event, arg):
        code = frame.f_code
        calls[code.co_filename, code.co_name] += 1
        return local

    run = worker.Worker.run

    async def traced_run(self, sock):
        import asyncio

        asyncio.get_running_loop().add_signal_handler(TRACE_SIGNAL, sys.settrace, tracer)
        try:
            await run(self, sock)
        finally:
            sys.settrace(None)
            rows = [[f, n, lines[f, n], calls[f, n]] for f, n in lines.keys() | calls.keys()]
            Path(os.environ["PYLINES_OUT"]).write_text(json.dumps(rows))

    worker.Worker.run = traced_run
    from legatus.server.main import main

    sys.argv = ["legatus", *argv]
    main()


def grandchildren(pid: int) -> list[int]:
    """The worker is the child of the zygote, itself the child of the main process."""
    out = []
    for child in _children(pid):
        out += _children(child)
    return out


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def h2load(args: argparse.Namespace, port: int, n: int) -> None:
    cmd = [args.h2load_bin, "-n", str(n), "-c", str(args.connections)]
    cmd += ["-m", str(args.streams)] if args.h2 else ["--h1"]
    out = subprocess.run(
        [*cmd, f"http://{HOST}:{port}/64"], capture_output=True, text=True, timeout=120
    ).stdout
    if f"{n} succeeded" not in out:
        raise RuntimeError(f"h2load did not complete {n} requests:\n{out}")


def measure(args: argparse.Namespace, tmp: Path) -> list[list]:
    ports = free_ports(4)
    # One upstream process holds the 3 hosts of the traffic variant (as in http1.py).
    upstreams = [
        subprocess.Popen(
            [sys.executable, str(HERE / "http1.py"), "_upstream", "--ports", "3"],
            stdout=subprocess.PIPE,
            text=True,
        )
    ]
    legatus = None
    try:
        upstream_ports = json.loads(upstreams[0].stdout.readline())["ports"]
        config = tmp / "bootstrap.yaml"
        log = tmp / "access.log" if args.variant == "accesslog" else None
        write_bootstrap(
            config, args.variant, ports[0], upstream_ports[0], log, tuple(upstream_ports[1:])
        )
        out = tmp / "counts.json"
        env = {**os.environ, "PYLINES_OUT": str(out)}
        command = ["-c", str(config), "--concurrency", "1", "-l", "warning"]
        legatus = subprocess.Popen(
            [sys.executable, str(HERE / "pylines.py"), "_legatus", *command], env=env
        )
        deadline = time.monotonic() + 30
        while not grandchildren(legatus.pid):
            if time.monotonic() > deadline or legatus.poll() is not None:
                raise RuntimeError("legatus did not start a worker")
            time.sleep(0.1)
        h2load(args, ports[0], args.warmup)
        for pid in grandchildren(legatus.pid):
            os.kill(pid, TRACE_SIGNAL)
        time.sleep(0.3)
        h2load(args, ports[0], args.requests)
        legatus.send_signal(signal.SIGTERM)
        legatus.wait(timeout=30)
        return json.loads(out.read_text())
    finally:
        for p in [*upstreams, legatus]:
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()


def report(rows: list[list], n: int, top: int) -> str:
    def short(filename: str) -> str:
        return filename.split("/src/", 1)[-1]

    total_lines = sum(r[2] for r in rows)
    total_calls = sum(r[3] for r in rows)
    by_file: collections.Counter = collections.Counter()
    for f, _, lines, _ in rows:
        by_file[short(f)] += lines
    out = [f"per request: {total_lines / n:.1f} Python lines, {total_calls / n:.1f} calls", ""]
    out.append("lines/request by file:")
    out += [f"{lines / n:8.1f}  {f}" for f, lines in by_file.most_common(top)]
    out += ["", "lines/request  calls/request  function:"]
    for f, name, lines, calls in sorted(rows, key=lambda r: -r[2])[:top]:
        out.append(f"{lines / n:8.1f}  {calls / n:8.1f}  {short(f)} {name}")
    return "\n".join(out)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variant", choices=VARIANTS, default="nolog")
    p.add_argument("--h2", action="store_true", help="prior-knowledge h2c instead of HTTP/1.1")
    p.add_argument("--requests", type=int, default=2000, help="requests counted")
    p.add_argument("--warmup", type=int, default=500, help="requests before counting")
    p.add_argument("--connections", type=int, default=4)
    p.add_argument("--streams", type=int, default=4, help="concurrent streams per h2c connection")
    p.add_argument("--top", type=int, default=40, help="rows of each table")
    p.add_argument("--h2load-bin", default="h2load")
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    if argv and argv[0] == "_legatus":
        role_legatus(argv[1:])
        return 0
    args = parse_args(argv)
    if shutil.which(args.h2load_bin) is None:
        say("h2load not found: `sudo apt-get install -y nghttp2-client`, or --h2load-bin")
        return 2
    with tempfile.TemporaryDirectory(prefix="legatus-pylines-") as tmp:
        try:
            rows = measure(args, Path(tmp))
        except (RuntimeError, subprocess.TimeoutExpired) as e:
            say(f"measurement failed: {e}")
            return 1
    print(report(rows, args.requests, args.top))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
