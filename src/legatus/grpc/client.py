"""A unary gRPC call to a ``GrpcService`` (see the package docstring for the design).

``compile_grpc_service(proto, context, path)`` checks an ``envoy.config.core.v3.GrpcService``
at config time; ``UnaryClient(service, method, response_type, cluster_manager)`` makes calls:
``await client.call(request, timeout)`` returns the response message or raises
``GrpcCallError`` (no such cluster, no host, a gRPC status other than OK, the deadline).
"""

from __future__ import annotations

import asyncio
import weakref
from dataclasses import dataclass
from typing import Any

import grpc

from legatus.config.errors import ConfigError, join_path
from legatus.config.supported import check_supported

__all__ = ["GrpcCallError", "GrpcServiceConfig", "UnaryClient", "compile_grpc_service"]


class GrpcCallError(Exception):
    """A call that did not produce a response (the caller counts a service error)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class GrpcServiceConfig:
    cluster_name: str = ""  # envoy_grpc
    authority: str = ""  # the :authority of the calls (envoy_grpc: the cluster name)
    target_uri: str = ""  # google_grpc
    timeout: float | None = None  # GrpcService.timeout (the caller's own timeout also applies)
    initial_metadata: tuple[tuple[str, str], ...] = ()


def compile_grpc_service(proto, context, path: str) -> GrpcServiceConfig:
    check_supported(proto, ("envoy_grpc", "google_grpc", "timeout", "initial_metadata"), path,
                    "GrpcService")  # fmt: skip
    which = proto.WhichOneof("target_specifier")
    timeout = None
    if proto.HasField("timeout"):
        timeout = proto.timeout.seconds + proto.timeout.nanos / 1e9 or None
    metadata = tuple((m.key.lower(), m.value) for m in proto.initial_metadata)
    if which == "envoy_grpc":
        epath = join_path(path, "envoy_grpc")
        check_supported(proto.envoy_grpc, ("cluster_name", "authority"), epath, "EnvoyGrpc")
        name = proto.envoy_grpc.cluster_name
        if not name:
            raise ConfigError(
                join_path(epath, "cluster_name"), "value length must be at least 1 characters"
            )
        names = context.cluster_names
        if names and name not in names:
            raise ConfigError(
                join_path(epath, "cluster_name"), f"Unknown gRPC client cluster '{name}'"
            )
        return GrpcServiceConfig(
            cluster_name=name,
            authority=proto.envoy_grpc.authority or name,
            timeout=timeout,
            initial_metadata=metadata,
        )
    if which == "google_grpc":
        gpath = join_path(path, "google_grpc")
        check_supported(proto.google_grpc, ("target_uri", "stat_prefix"), gpath, "GoogleGrpc")
        if not proto.google_grpc.target_uri:
            raise ConfigError(
                join_path(gpath, "target_uri"), "value length must be at least 1 characters"
            )
        return GrpcServiceConfig(
            target_uri=proto.google_grpc.target_uri, timeout=timeout, initial_metadata=metadata
        )
    raise ConfigError(path, "GrpcService needs envoy_grpc or google_grpc")


# One set of channels per event loop (a grpc.aio channel is bound to the loop it was made on):
# loop -> {(target, authority): channel}.
_channels: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _channel(target: str, authority: str):
    loop = asyncio.get_running_loop()
    per_loop = _channels.get(loop)
    if per_loop is None:
        per_loop = _channels[loop] = {}
    key = (target, authority)
    channel = per_loop.get(key)
    if channel is None:
        options = [("grpc.default_authority", authority)] if authority else []
        channel = per_loop[key] = grpc.aio.insecure_channel(target, options=options)
    return channel


async def close_channels() -> None:
    """Close this loop's channels (at shutdown, and between tests)."""
    per_loop = _channels.pop(asyncio.get_running_loop(), None)
    for channel in (per_loop or {}).values():
        await channel.close()


class UnaryClient:
    """Calls one unary method (``/package.Service/Method``) of a GrpcService."""

    __slots__ = ("_cluster_manager", "_method", "_response_type", "service")

    def __init__(
        self, service: GrpcServiceConfig, method: str, response_type, cluster_manager: Any
    ) -> None:
        self.service = service
        self._method = method
        self._response_type = response_type
        self._cluster_manager = cluster_manager

    def _target(self) -> str:
        service = self.service
        if service.target_uri:
            return service.target_uri
        cm = self._cluster_manager
        cluster = cm.get(service.cluster_name) if cm is not None else None
        if cluster is None:
            raise GrpcCallError(f"cluster '{service.cluster_name}' not found")
        host = cluster.choose_host()
        if host is None:
            raise GrpcCallError(f"no healthy host in cluster '{service.cluster_name}'")
        address = host.config.address
        return f"[{address.host}]:{address.port}" if ":" in address.host else str(address)

    async def call(self, request, timeout: float | None):
        service = self.service
        target = self._target()
        if service.timeout is not None:
            timeout = service.timeout if timeout is None else min(timeout, service.timeout)
        channel = _channel(target, service.authority)
        method = channel.unary_unary(
            self._method,
            request_serializer=type(request).SerializeToString,
            response_deserializer=self._response_type.FromString,
        )
        try:
            return await method(request, timeout=timeout, metadata=service.initial_metadata or None)
        except grpc.aio.AioRpcError as e:
            raise GrpcCallError(f"{e.code().name}: {e.details()}") from None
