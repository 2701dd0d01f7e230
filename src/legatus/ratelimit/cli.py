"""``legatus ratelimit``: run the rate limit service (see docs/ratelimit-service.md).

    legatus ratelimit --config DIR_OR_FILE --port N [--address HOST]
                      (--redis-url redis://HOST:PORT/DB | --backend memory)

The service loads envoyproxy/ratelimit's YAML, serves ``envoy.service.ratelimit.v3.
RateLimitService`` over gRPC (HTTP/2, plaintext), prints ``listening on HOST:PORT`` once it
accepts calls, and stops on SIGINT/SIGTERM. ``--port 0`` binds an ephemeral port.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from legatus.ratelimit.backends import BackendError, MemoryBackend
from legatus.ratelimit.config import RateLimitConfigError, load_config


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="legatus ratelimit",
        description="Serve envoy.service.ratelimit.v3.RateLimitService with "
        "envoyproxy/ratelimit's configuration format.",
    )
    p.add_argument("--config", required=True, help="a YAML file, or a directory of them")
    p.add_argument("--address", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    p.add_argument("--port", type=int, default=8081, help="gRPC port (8081; 0: any free port)")
    p.add_argument("--backend", choices=("redis", "memory"), default=None,
                   help="where the counters live (redis when --redis-url is given)")  # fmt: skip
    p.add_argument("--redis-url", default=None, help="redis://host:port/db")
    return p


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    backend_name = args.backend or ("redis" if args.redis_url else None)
    if backend_name is None:
        sys.stderr.write("legatus ratelimit: give --redis-url URL or --backend memory\n")
        return 2
    if backend_name == "redis" and not args.redis_url:
        sys.stderr.write("legatus ratelimit: --backend redis needs --redis-url\n")
        return 2
    try:
        config = load_config(args.config)
    except RateLimitConfigError as e:
        sys.stderr.write(f"legatus ratelimit: {e}\n")
        return 1
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover
        runner = asyncio.run
    try:
        return runner(_serve(config, backend_name, args))
    except BackendError as e:
        sys.stderr.write(f"legatus ratelimit: {e}\n")
        return 1
    except OSError as e:
        sys.stderr.write(f"legatus ratelimit: {e}\n")
        return 1


async def _serve(config, backend_name: str, args) -> int:
    from legatus.ratelimit.service import RateLimitService, start_server

    if backend_name == "redis":
        from legatus.ratelimit.backends import RedisBackend

        backend = RedisBackend(args.redis_url)
        await backend.ping()
    else:
        backend = MemoryBackend()
    server, port = await start_server(
        RateLimitService(config, backend), f"{args.address}:{args.port}"
    )
    host = f"[{args.address}]" if ":" in args.address else args.address
    sys.stdout.write(f"listening on {host}:{port}\n")
    sys.stdout.flush()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(grace=1.0)
    await backend.close()
    return 0
