"""xDS subscriptions: how resources reach legatus (Envoy's source/extensions/config_subscription).

- ``grpc/``: state-of-the-world and incremental (delta) xDS over a gRPC stream, aggregated
  (ADS) or one stream per type.
- ``rest/``: state-of-the-world xDS polled over HTTP/1.1 (``api_type: REST``).
- ``filesystem/``: a DiscoveryResponse read from a file (``path_config_source``), reloaded
  when the file or its watched directory changes.

Each hands its owner ``legatus.config.subscription.ConfigUpdate`` objects and counts Envoy's
subscription stats (``stats.SubscriptionStats``). ``decode`` unpacks resources.
"""
