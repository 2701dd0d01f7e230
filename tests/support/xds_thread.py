"""The test control plane (``xds_server.XdsServer``) on an event loop of its own thread.

Integration tests drive a legatus process with blocking calls (``start_proxy``, httpx); the
control plane must keep answering meanwhile, so it runs in a thread::

    with XdsThread() as xds:
        xds.call(xds.server.set_resources, CLUSTER, [cluster])
        proxy = start_proxy(bootstrap_with(xds.port), tmp_path)
        xds.wait_for(lambda r: r.type_url == CLUSTER and r.response_nonce)
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

from tests.support.xds_server import Received, XdsServer

__all__ = ["XdsThread", "ads_bootstrap"]


class XdsThread:
    def __init__(self, *, delta: bool = False) -> None:
        self.delta = delta
        self.loop = asyncio.new_event_loop()
        self.server: XdsServer | None = None
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> XdsThread:
        self._thread.start()
        self.server = self.run(self._make())
        return self

    async def _make(self) -> XdsServer:
        server = XdsServer()
        await server.start()
        return server

    def __exit__(self, *exc) -> None:
        self.run(self.server.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()

    @property
    def port(self) -> int:
        return self.server.port

    def run(self, coro, timeout: float = 15.0):
        """Run a coroutine on the control plane's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, fn: Callable, *args, **kwargs) -> Any:
        """Call ``fn`` on the control plane's loop (its methods are not thread-safe)."""

        async def do():
            return fn(*args, **kwargs)

        return self.run(do())

    def set_resources(self, type_url: str, resources, **kwargs) -> str:
        return self.call(self.server.set_resources, type_url, list(resources), **kwargs)

    def requests(self, type_url: str) -> list[Received]:
        return self.call(self.server.requests_of, type_url)

    def wait_for(self, predicate: Callable[[Received], bool], timeout: float = 10.0) -> Received:
        return self.run(self.server.wait_for(predicate, timeout=timeout), timeout + 5)


def ads_bootstrap(xds_port: int, *, delta: bool = False, **extra) -> dict:
    """Admin, a node, ADS to the control plane on ``xds_port`` (cluster ``xds``, HTTP/2) and
    ``cds_config`` over ADS; ``extra`` is merged in (static_resources.listeners, ...)."""
    config = {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "node": {"id": "test-node", "cluster": "test-cluster"},
        "dynamic_resources": {
            "ads_config": {
                "api_type": "DELTA_GRPC" if delta else "GRPC",
                "transport_api_version": "V3",
                "grpc_services": [{"envoy_grpc": {"cluster_name": "xds"}}],
            },
            "cds_config": {"ads": {}, "resource_api_version": "V3"},
        },
        "static_resources": {
            "clusters": [
                {
                    "name": "xds",
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "typed_extension_protocol_options": {
                        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3."
                            "HttpProtocolOptions",
                            "explicit_http_config": {"http2_protocol_options": {}},
                        }
                    },
                    "load_assignment": {
                        "cluster_name": "xds",
                        "endpoints": [
                            {
                                "lb_endpoints": [
                                    {
                                        "endpoint": {
                                            "address": {
                                                "socket_address": {
                                                    "address": "127.0.0.1",
                                                    "port_value": xds_port,
                                                }
                                            }
                                        }
                                    }
                                ]
                            }
                        ],
                    },
                }
            ],
        },
    }
    for key, value in extra.items():
        if key == "static_resources":
            for k, v in value.items():
                config["static_resources"].setdefault(k, []).extend(v)
        elif key == "dynamic_resources":
            config["dynamic_resources"].update(value)
        else:
            config[key] = value
    return config
