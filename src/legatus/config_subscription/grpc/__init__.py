"""xDS over gRPC: state of the world and incremental (delta), aggregated (ADS) or per type.

Usage (in the main process, inside its running event loop)::

    mux = GrpcMux(
        channel_factory("127.0.0.1:18000"),   # or any () -> new grpc.aio.Channel
        node,                                 # envoy.config.core.v3.Node
        ads=True,                             # one stream for every type
        delta=False,                          # api_type GRPC (False) or DELTA_GRPC (True)
        scope=store.scope(""),                # control_plane.* stats go under it
        set_node_on_first_message_only=api_config_source.set_node_on_first_message_only,
        backoff=backoff_settings(api_config_source, path),
        rate_limit=rate_limit_settings(api_config_source, path),
    )
    stats = SubscriptionStats(store.scope("cluster_manager.cds."))
    cds = mux.subscribe(decode.CLUSTER, owner, stats, initial_fetch_timeout=15.0)
    cds.start([])          # the wildcard
    mux.start()            # ADS: once the first subscriptions are started
    ...
    with mux.paused(decode.ENDPOINT):   # Envoy's ADS ordering: EDS waits while CDS applies
        apply_clusters()
    ...
    cds.close(); await mux.close()

- ``GrpcMux`` (``grpc_mux``): one stream, its reconnection (jittered exponential back-off,
  Envoy's 500 ms / 30 s unless the gRPC service's ``retry_policy`` says otherwise), ACK and
  NACK, ``pause``/``resume``, the ``control_plane.*`` stats. An ADS mux carries any types
  (``StreamAggregatedResources`` / ``DeltaAggregatedResources``); a per-type mux
  (``ads=False``) carries the type of its first subscription over that type's own service
  (``ClusterDiscoveryService/StreamClusters``, ``DeltaClusters``, ...) and starts with its
  first subscription. Envoy gives every non-aggregated subscription its own stream; make
  one mux per subscription to do the same, or share one between subscriptions of one type.
- ``GrpcSubscription`` (``grpc_subscription``): the ``Subscription`` an owner gets from
  ``mux.subscribe``; it keeps the owner's ``SubscriptionStats`` and its initial fetch timer.
  Subscriptions of one type on one mux share that type's protocol state: the stream asks
  for the union of their names and each gets what it asked for (``watch_map``). No names
  means the wildcard, at ``start`` as in ``update_resource_interest``.
- ``SotwState`` / ``DeltaState``: the sans-I/O protocol state of one type (what the next
  request says: version, nonce, names or their differences, error_detail, the initial
  resource versions of a new delta stream).
- ``resources``: a response's resources, decoded and validated (SotW and delta);
  ``pausable_ack_queue``: the answers a delta stream owes.
- ``channel_factory`` (``channel``): fresh channels with their own subchannel pool, so the
  mux's back-off, not grpcio's, paces reconnection.
- ``backoff_settings`` / ``rate_limit_settings`` (``api_config``): from an
  ``ApiConfigSource``.

What owners see: ``on_config_update`` for each response that holds something for them (it
raises to reject: the response is NACKed with the error's text),
``on_config_update_failed(UPDATE_REJECTED, error)`` for each response of their type that is
NACKed (whoever refused it: a resource that breaks its proto's constraints is refused as it is
decoded, before any owner sees it), and ``on_config_update_failed(FETCH_TIMEDOUT, None)``
once if nothing arrived in time. A lost control plane is counted (``update_failure``) but not
reported to owners, as in Envoy: their config stays, and they are called again when the new
stream brings responses.

NACKs carry ``error_detail`` with code INTERNAL (13) and the error text, as Envoy's. Not
supported (the response is NACKed, naming the field): resource TTLs (``Resource.ttl``) and
``removed_resource_names`` with dynamic parameters.
"""

from __future__ import annotations

from legatus.config_subscription.grpc.api_config import (
    RateLimitSettings,
    backoff_settings,
    rate_limit_settings,
)
from legatus.config_subscription.grpc.backoff import BackOffSettings, JitteredBackOff
from legatus.config_subscription.grpc.channel import channel_factory
from legatus.config_subscription.grpc.delta_state import DeltaState
from legatus.config_subscription.grpc.grpc_mux import ControlPlaneStats, GrpcMux
from legatus.config_subscription.grpc.grpc_subscription import GrpcSubscription
from legatus.config_subscription.grpc.services import method_path
from legatus.config_subscription.grpc.sotw_state import SotwState

__all__ = [
    "BackOffSettings",
    "ControlPlaneStats",
    "DeltaState",
    "GrpcMux",
    "GrpcSubscription",
    "JitteredBackOff",
    "RateLimitSettings",
    "SotwState",
    "backoff_settings",
    "channel_factory",
    "method_path",
    "rate_limit_settings",
]
