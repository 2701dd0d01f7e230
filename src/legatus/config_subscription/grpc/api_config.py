"""The parts of an ``ApiConfigSource`` the mux honours, read once at config time.

- The reconnection back-off: the first gRPC service's ``envoy_grpc.retry_policy
  .retry_back_off`` (``max_interval`` defaults to ten times ``base_interval``), else 500 ms
  and 30 s, as Envoy's ``prepareJitteredExponentialBackOffStrategy``.
- ``rate_limit_settings``: a token bucket on the requests sent (100 tokens, 10 a second
  unless set).

The rest (``api_type``, ``set_node_on_first_message_only``, the gRPC service itself) maps
directly onto ``GrpcMux``'s arguments.
"""

from __future__ import annotations

from dataclasses import dataclass

from legatus.config.errors import ConfigError, join_path
from legatus.config_subscription.grpc.backoff import BackOffSettings

__all__ = ["RateLimitSettings", "backoff_settings", "rate_limit_settings"]


@dataclass(frozen=True, slots=True, kw_only=True)
class RateLimitSettings:
    max_tokens: int = 100
    fill_rate: float = 10.0  # tokens a second

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError("max_tokens must be at least 1")
        if self.fill_rate <= 0:
            raise ValueError("fill_rate must be greater than 0")


def _seconds(duration) -> float:
    return duration.seconds + duration.nanos / 1e9


def backoff_settings(api_config_source, path: str = "") -> BackOffSettings:
    services = api_config_source.grpc_services
    if not services or not services[0].HasField("envoy_grpc"):
        return BackOffSettings()
    policy = services[0].envoy_grpc.retry_policy
    if not policy.HasField("retry_back_off"):
        return BackOffSettings()
    backoff = policy.retry_back_off
    bpath = join_path(path, "grpc_services[0].envoy_grpc.retry_policy.retry_back_off")
    base = _seconds(backoff.base_interval)
    if base < 0.001:
        raise ConfigError(join_path(bpath, "base_interval"), "value must be at least 1ms")
    top = _seconds(backoff.max_interval) if backoff.HasField("max_interval") else base * 10
    if top < base:
        raise ConfigError(
            join_path(bpath, "max_interval"),
            "max_interval must be greater than or equal to the base_interval",
        )
    return BackOffSettings(base_interval=base, max_interval=top)


def rate_limit_settings(api_config_source, path: str = "") -> RateLimitSettings | None:
    if not api_config_source.HasField("rate_limit_settings"):
        return None
    settings = api_config_source.rate_limit_settings
    rpath = join_path(path, "rate_limit_settings")
    max_tokens = settings.max_tokens.value if settings.HasField("max_tokens") else 100
    fill_rate = settings.fill_rate.value if settings.HasField("fill_rate") else 10.0
    if max_tokens < 1:
        raise ConfigError(join_path(rpath, "max_tokens"), "value must be at least 1")
    if fill_rate <= 0:
        raise ConfigError(join_path(rpath, "fill_rate"), "value must be greater than 0")
    # Envoy's floor: one token a year.
    return RateLimitSettings(max_tokens=max_tokens, fill_rate=max(fill_rate, 1 / 31_536_000))
