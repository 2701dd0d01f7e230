"""Which gRPC method carries a resource type: the per-type services, or ADS.

The paths are the v3 services' (``envoy.service.<api>.v3.<Api>DiscoveryService``) as the
xDS protocol lists them; a type without its own service can only be fetched over ADS.
"""

from __future__ import annotations

from legatus.config_subscription import decode

__all__ = ["ADS_DELTA", "ADS_SOTW", "method_path"]

ADS_SOTW = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
ADS_DELTA = "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources"

# type URL -> (service, the suffix of its Stream<X> / Delta<X> methods)
_SERVICES = {
    decode.LISTENER: ("envoy.service.listener.v3.ListenerDiscoveryService", "Listeners"),
    decode.ROUTE: ("envoy.service.route.v3.RouteDiscoveryService", "Routes"),
    decode.CLUSTER: ("envoy.service.cluster.v3.ClusterDiscoveryService", "Clusters"),
    decode.ENDPOINT: ("envoy.service.endpoint.v3.EndpointDiscoveryService", "Endpoints"),
    decode.SECRET: ("envoy.service.secret.v3.SecretDiscoveryService", "Secrets"),
    decode.RUNTIME: ("envoy.service.runtime.v3.RuntimeDiscoveryService", "Runtime"),
}


def method_path(type_url: str | None, *, ads: bool, delta: bool) -> str:
    """``/package.Service/Method`` of the stream that carries ``type_url``."""
    if ads:
        return ADS_DELTA if delta else ADS_SOTW
    try:
        service, suffix = _SERVICES[type_url or ""]
    except KeyError:
        raise ValueError(f"no xDS gRPC service serves resource type {type_url!r}") from None
    return f"/{service}/{'Delta' if delta else 'Stream'}{suffix}"
