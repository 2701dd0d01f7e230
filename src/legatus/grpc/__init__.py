"""gRPC clients for extensions that call services (``envoy.config.core.v3.GrpcService``).

Why grpcio's ``grpc.aio`` and not legatus's own upstream stack (HTTP/2 pools now exist, but
an async gRPC client on them — message framing, deadlines, status, streaming calls — does
not yet): grpcio is a complete, interoperable HTTP/2 gRPC client (deadlines, status codes,
flow control) whose ``aio`` API runs on the running asyncio loop, uvloop included, so a call
never blocks the worker. What legatus keeps from Envoy is the choice of the peer: an
``envoy_grpc`` service names a cluster, and each call picks a host of that cluster on this
worker (its load balancer, its health), then uses a channel to that host's address, made on
first use inside the worker's running loop (a channel belongs to the loop it was made on,
and a process that forks must not have made one before). ``google_grpc`` uses ``target_uri``
directly, as Envoy's Google gRPC client does. The cost of this choice: the calls do not go
through the cluster's connection pools, circuit breakers or ``cluster.<name>.upstream_*``
stats (see docs/ratelimit-service.md).
"""
