"""The global rate limit service (``legatus ratelimit``): envoyproxy/ratelimit's config
format and fixed-window counters (config.py, backends.py), served over gRPC (service.py)."""
