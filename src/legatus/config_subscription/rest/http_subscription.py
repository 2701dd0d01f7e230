"""State-of-the-world xDS polled over HTTP/1.1: Envoy's ``HttpSubscriptionImpl``
(``api_config_source: {api_type: REST}``).

Theory of operation. ``start`` launches one task that POSTs a JSON ``DiscoveryRequest`` to
the type's ``/v3/discovery:<type>`` path (``endpoints.rest_path``) on the control plane
cluster, waits ``refresh_delay`` plus a random jitter of up to one more ``refresh_delay``
(Envoy's), and polls again, forever. Every request carries the node, the sorted resource
names (none: the wildcard), ``version_info`` = the last accepted version, and goes out with
Envoy's headers (``host`` = the cluster name, ``content-type: application/json``,
``x-envoy-internal``, ``x-envoy-expected-rq-timeout-ms``). Each exchange is bounded by
``request_timeout``.

What an answer does:

- 200 with a DiscoveryResponse: its resources (all of them: filtering by name is the
  server's job over REST, as in Envoy) go to the owner as a state-of-the-world update.
  Accepted: ``update_success`` and the version stats; the next request carries the new
  ``version_info``. Rejected (the body is not a DiscoveryResponse, a resource cannot be
  decoded, or the owner raises): ``update_rejected``, the version stays, and the owner is
  told (``on_config_update_failed(UPDATE_REJECTED, error)``), as Envoy tells it.
- 304: nothing changed; no stat but the attempt.
- connection refused or broken, timeout, any other status: ``update_failure``. As in Envoy,
  the owner is not told (``on_config_update_failed`` is not called): its config stays, the
  next poll follows, and an owner waiting for its first update is released by
  ``initial_fetch_timeout`` (``FETCH_TIMEDOUT``, ``init_fetch_timeout``), which any 200
  answer disarms.

Beyond Envoy, which sends only ``version_info``, requests also carry ``response_nonce`` (the
nonce of the last response handled) and, once after a rejection, ``error_detail``
(``google.rpc.Status`` INTERNAL with the reason, cut at 4 KiB), as gRPC SotW does, so a
control plane can see a NACK. A server that ignores them sees Envoy's requests.

``last_failure`` keeps the last rejected update for ``/config_dump`` until one is accepted;
a connection failure is no config error and leaves it as it is.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Collection
from dataclasses import dataclass

from envoy.config.core.v3 import base_pb2, config_source_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import json_format
from google.rpc import code_pb2, status_pb2

from legatus.config.errors import ConfigError
from legatus.config.subscription import ConfigUpdate, SubscriptionCallbacks, UpdateFailureReason
from legatus.config_subscription.rest.endpoints import rest_path
from legatus.config_subscription.rest.http_client import HostPortFactory, RestClient
from legatus.config_subscription.rest.response import (
    WARN_UNKNOWN_FIELDS,
    UnknownFieldPolicy,
    UpdateFailureState,
    decode_resources,
    parse_response,
)
from legatus.config_subscription.stats import SubscriptionStats
from legatus.http.headers import HeaderMap

__all__ = ["HttpSubscription", "RestSettings", "rest_settings"]

log = logging.getLogger("legatus.config")
_MAX_ERROR_DETAIL_BYTES = 4096
_DEFAULT_REQUEST_TIMEOUT = 1.0
_DEFAULT_INITIAL_FETCH_TIMEOUT = 15.0
ApiConfigSource = config_source_pb2.ApiConfigSource


@dataclass(frozen=True, slots=True, kw_only=True)
class RestSettings:
    """What a ConfigSource says about polling over REST (see ``rest_settings``)."""

    cluster_name: str
    refresh_delay: float
    request_timeout: float = _DEFAULT_REQUEST_TIMEOUT
    initial_fetch_timeout: float = _DEFAULT_INITIAL_FETCH_TIMEOUT

    def __post_init__(self) -> None:
        _check_timing(self.refresh_delay, self.request_timeout, self.initial_fetch_timeout)


def rest_settings(config_source: config_source_pb2.ConfigSource, path: str = "") -> RestSettings:
    """Check a REST ``ConfigSource`` as Envoy does and read its settings.

    Raises ConfigError with Envoy's messages: the source must name exactly one cluster and no
    gRPC service, and must have a ``refresh_delay``. Whether the cluster is statically
    defined is the caller's check (it needs the cluster manager). ``refresh_delay: 0s``,
    which Envoy accepts and then divides by when it adds the jitter, is rejected here.
    """
    api = config_source.api_config_source
    where = f"{path}.api_config_source" if path else "api_config_source"
    if api.api_type != ApiConfigSource.REST:
        raise ConfigError(f"{where}.api_type", "the REST subscription needs api_type REST")
    if api.grpc_services:
        raise ConfigError(
            f"{where}.grpc_services",
            "envoy.config.core.v3.ApiConfigSource, if not a gRPC type, must not have a gRPC "
            "service specified",
        )
    if not api.cluster_names:
        raise ConfigError(
            f"{where}.cluster_names",
            "API configs must have either a gRPC service or a cluster name defined",
        )
    if len(api.cluster_names) != 1:
        raise ConfigError(
            f"{where}.cluster_names",
            "envoy.config.core.v3.ApiConfigSource must have a singleton cluster name specified",
        )
    if not api.HasField("refresh_delay"):
        raise ConfigError(
            f"{where}.refresh_delay", "refresh_delay is required for REST API configuration sources"
        )
    refresh_delay = api.refresh_delay.ToMilliseconds() / 1000.0
    if refresh_delay <= 0:
        raise ConfigError(f"{where}.refresh_delay", "refresh_delay must be at least 1ms")
    request_timeout = (
        api.request_timeout.ToMilliseconds() / 1000.0
        if api.HasField("request_timeout")
        else _DEFAULT_REQUEST_TIMEOUT
    )
    initial_fetch_timeout = (
        config_source.initial_fetch_timeout.ToMilliseconds() / 1000.0
        if config_source.HasField("initial_fetch_timeout")
        else _DEFAULT_INITIAL_FETCH_TIMEOUT
    )
    return RestSettings(
        cluster_name=api.cluster_names[0],
        refresh_delay=refresh_delay,
        request_timeout=request_timeout,
        initial_fetch_timeout=initial_fetch_timeout,
    )


def _check_timing(refresh_delay: float, request_timeout: float, initial_fetch_timeout: float):
    if refresh_delay <= 0:
        raise ValueError("refresh_delay must be positive")
    if request_timeout <= 0:
        raise ValueError("request_timeout must be positive")
    if initial_fetch_timeout < 0:
        raise ValueError("initial_fetch_timeout must not be negative")


class HttpSubscription:
    """A ``Subscription`` polled over REST (see module doc)."""

    __slots__ = (
        "_callbacks",
        "_client",
        "_closed",
        "_cluster_name",
        "_error_detail",
        "_init_timer",
        "_initial_fetch_timeout",
        "_names",
        "_node",
        "_nonce",
        "_path",
        "_refresh_delay",
        "_request_timeout",
        "_rng",
        "_stats",
        "_task",
        "_unknown_fields",
        "_version_info",
        "last_failure",
        "type_url",
    )

    def __init__(
        self,
        type_url: str,
        *,
        host_port_factory: HostPortFactory,
        cluster_name: str,
        node: base_pb2.Node,
        callbacks: SubscriptionCallbacks,
        stats: SubscriptionStats,
        refresh_delay: float = 1.0,
        request_timeout: float = _DEFAULT_REQUEST_TIMEOUT,
        initial_fetch_timeout: float = 0.0,
        unknown_fields: UnknownFieldPolicy = WARN_UNKNOWN_FIELDS,
        rng: random.Random | None = None,
    ) -> None:
        """``initial_fetch_timeout``: seconds, 0 for none. ``rng`` draws the poll jitter."""
        _check_timing(refresh_delay, request_timeout, initial_fetch_timeout)
        self.type_url = type_url
        self._path = rest_path(type_url)
        self._cluster_name = cluster_name
        self._node = node
        self._callbacks = callbacks
        self._stats = stats
        self._refresh_delay = refresh_delay
        self._request_timeout = request_timeout
        self._initial_fetch_timeout = initial_fetch_timeout
        self._unknown_fields = unknown_fields
        self._rng = rng if rng is not None else random.Random()
        self._client = RestClient(host_port_factory)
        self._names: tuple[str, ...] = ()
        self._version_info = ""
        self._nonce = ""
        self._error_detail: status_pb2.Status | None = None
        self._task: asyncio.Task | None = None
        self._init_timer: asyncio.TimerHandle | None = None
        self._closed = False
        self.last_failure: UpdateFailureState | None = None

    # Subscription ----------------------------------------------------------------------

    def start(self, resource_names: Collection[str]) -> None:
        """Begin polling (inside the running event loop); the first request goes at once."""
        if self._task is not None or self._closed:
            raise RuntimeError("a subscription is started once")
        self._names = tuple(sorted(set(resource_names)))
        loop = asyncio.get_running_loop()
        if self._initial_fetch_timeout > 0:
            self._init_timer = loop.call_later(self._initial_fetch_timeout, self._fetch_timed_out)
        self._task = loop.create_task(self._poll(), name=f"rest xDS {self._path}")

    def update_resource_interest(self, resource_names: Collection[str]) -> None:
        """The next poll asks for these names (Envoy does not poll early for them)."""
        self._names = tuple(sorted(set(resource_names)))

    def close(self) -> None:
        self._closed = True
        self._disarm_init_timer()
        if self._task is not None:
            self._task.cancel()
        self._client.close()

    # Polling ---------------------------------------------------------------------------

    async def _poll(self) -> None:
        while not self._closed:
            await self._fetch()
            await asyncio.sleep(self._refresh_delay * (1.0 + self._rng.random()))

    def request(self) -> discovery_pb2.DiscoveryRequest:
        """The DiscoveryRequest the next poll sends."""
        request = discovery_pb2.DiscoveryRequest(
            version_info=self._version_info,
            node=self._node,
            resource_names=self._names,
            type_url=self.type_url,
            response_nonce=self._nonce,
        )
        if self._error_detail is not None:
            request.error_detail.CopyFrom(self._error_detail)
        return request

    async def _fetch(self) -> None:
        self._stats.stats.update_attempt.inc()
        body = json_format.MessageToJson(
            self.request(), preserving_proto_field_name=True, indent=None
        ).encode()
        headers = HeaderMap(
            [
                (":method", "POST"),
                (":path", self._path),
                (":authority", self._cluster_name),
                ("content-type", "application/json"),
                ("content-length", str(len(body))),
                ("x-envoy-internal", "true"),
                ("x-envoy-expected-rq-timeout-ms", str(round(self._request_timeout * 1000))),
            ]
        )
        try:
            async with asyncio.timeout(self._request_timeout):
                response = await self._client.request(headers, body)
        except TimeoutError:
            self._connection_failed(f"REST request timed out after {self._request_timeout}s")
            return
        except Exception as e:  # refused, reset, no host: the control plane is unreachable
            self._connection_failed(f"REST request failed: {str(e) or type(e).__name__}")
            return
        self._error_detail = None  # the NACK was heard: it is said once, as on a gRPC stream
        if self._closed or response.status == 304:
            return
        if response.status != 200:
            self._connection_failed(f"REST request answered with status {response.status}")
            return
        self._on_response_body(response.body)

    def _on_response_body(self, body: bytes) -> None:
        self._disarm_init_timer()
        started = time.monotonic()
        try:
            response = parse_response(json.loads(body), self._unknown_fields)
        except (ValueError, ConfigError) as e:  # JSONDecodeError and UnicodeDecodeError too
            self._rejected("", "", f"Unable to parse JSON as proto: {e}", e)
            return
        try:
            resources = decode_resources(response, self.type_url)
            self._callbacks.on_config_update(
                ConfigUpdate(
                    type_url=self.type_url,
                    added=resources,
                    removed=(),
                    version_info=response.version_info,
                    state_of_the_world=True,
                )
            )
        except Exception as e:  # ConfigError or ValueError; anything else is the owner's bug
            _log_unexpected(e, self._path)
            self._rejected(response.nonce, response.version_info, str(e) or type(e).__name__, e)
            return
        self._version_info = response.version_info
        self._nonce = response.nonce
        self.last_failure = None
        self._stats.accepted(response.version_info, started)

    # Failures --------------------------------------------------------------------------

    def _connection_failed(self, details: str) -> None:
        # Not a config error: ``last_failure`` (what /config_dump shows) is left as it is.
        log.warning("REST update for %s failed: %s", self._path, details)
        self._stats.stats.update_failure.inc()

    def _rejected(self, nonce: str, version_info: str, details: str, error: Exception) -> None:
        log.warning("REST config for %s rejected: %s", self._path, details)
        self._stats.rejected()
        self._nonce = nonce
        self._error_detail = _error_detail(details)
        self.last_failure = UpdateFailureState(
            details=details, last_update_attempt=time.time(), version_info=version_info
        )
        self._callbacks.on_config_update_failed(UpdateFailureReason.UPDATE_REJECTED, error)

    def _fetch_timed_out(self) -> None:
        self._init_timer = None
        if self._closed:
            return
        log.warning("REST config: initial fetch timeout for %s", self._path)
        self._stats.stats.init_fetch_timeout.inc()
        self._callbacks.on_config_update_failed(UpdateFailureReason.FETCH_TIMEDOUT, None)

    def _disarm_init_timer(self) -> None:
        if self._init_timer is not None:
            self._init_timer.cancel()
            self._init_timer = None


def _log_unexpected(error: Exception, where: str) -> None:
    if not isinstance(error, ConfigError | ValueError):
        log.error("config for %s rejected by an unexpected error", where, exc_info=error)


def _error_detail(message: str) -> status_pb2.Status:
    """A NACK's status as a gRPC SotW stream carries it (INTERNAL, message cut at 4 KiB)."""
    raw = message.encode()
    if len(raw) > _MAX_ERROR_DETAIL_BYTES:
        message = raw[:_MAX_ERROR_DETAIL_BYTES].decode(errors="ignore") + "...(truncated)"
    return status_pb2.Status(code=code_pb2.INTERNAL, message=message)
