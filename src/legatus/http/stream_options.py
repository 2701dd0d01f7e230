"""What the streams of a connection manager do besides the plain path, for its
``access_log_options`` and ``proxy_status_config.set_recommended_response_code``.

Decided once, when the configuration is compiled: a connection manager without these options
gives its streams none of this (no timer, no hook, no check on the request path). With them
(checked against Envoy 1.40 in tests/differential/test_hcm_access_log_options_envoy.py):

- ``flush_access_log_on_new_request``: a ``DownstreamStart`` entry once the request headers
  have been evaluated (header rules, route), before the HTTP filters run; the connection
  manager's filter chain writes it as it makes the stream's filters (``StartLogFilterChain``),
  so a request answered before that (no host, rejected by original IP detection, a codec
  error) has none, while an upgrade refused by its route's rules has one.
- ``access_log_flush_interval``: a ``DownstreamPeriodic`` entry every interval from the
  stream's start until it ends.
- ``flush_log_on_tunnel_successfully_established``: a
  ``DownstreamTunnelSuccessfullyEstablished`` entry when an upgrade's 101 or a CONNECT's 2xx
  goes out.
- ``set_recommended_response_code``: the response's status becomes the one Proxy-Status
  recommends for its error (http/proxy_status.py) before it is written.

An entry written before the stream ends shows ``%DURATION%`` so far (Envoy's
currentDuration: 0 at the start) and what the stream has recorded by then: no response code
(``0``) before the response, no upstream host before one is picked. The last entry is the
usual ``DownstreamEnd``. The deprecated ``access_log_flush_interval`` and
``flush_access_log_on_new_request`` of the connection manager itself are honoured as Envoy
does; either one with ``access_log_options`` is Envoy's error.

The stream side: ``StreamOptions.attach`` (from ``ActiveStream``, through the same gate as the
request and duration timers) arms the flush timer and, for the tunnel entry or the
recommended code, gives the stream its own ``write_headers``; ``detach`` (when the stream is
destroyed, before its last entry) undoes both.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from legatus.access_log.log_type import (
    DOWNSTREAM_PERIODIC,
    DOWNSTREAM_START,
    DOWNSTREAM_TUNNEL_SUCCESSFULLY_ESTABLISHED,
)
from legatus.config.errors import ConfigError, join_path
from legatus.config.supported import check_supported
from legatus.http.filter_chain import HttpFilterChain
from legatus.upstream.cluster import duration

_SUPPORTED = (
    "access_log_flush_interval", "flush_access_log_on_new_request",
    "flush_log_on_tunnel_successfully_established",
)  # fmt: skip


@dataclass(frozen=True, slots=True, kw_only=True)
class AccessLogOptions:
    """A compiled ``HcmAccessLogOptions`` (or the deprecated fields that stand for it)."""

    flush_interval: float | None = None  # seconds
    on_new_request: bool = False
    on_tunnel_established: bool = False


def compile_access_log_options(hcm, path: str) -> AccessLogOptions | None:
    """The access-log options of an ``HttpConnectionManager``; None when none is set."""
    deprecated_interval = hcm.HasField("access_log_flush_interval")
    deprecated_start = hcm.flush_access_log_on_new_request
    if hcm.HasField("access_log_options"):
        if deprecated_interval:
            raise ConfigError(
                join_path(path, "access_log_flush_interval"),
                "Only one of access_log_flush_interval or access_log_options can be specified.",
            )
        if deprecated_start:
            raise ConfigError(
                join_path(path, "flush_access_log_on_new_request"),
                "Only one of flush_access_log_on_new_request or access_log_options can be "
                "specified.",
            )
        options = hcm.access_log_options
        check_supported(options, _SUPPORTED, join_path(path, "access_log_options"))
        interval = options.HasField("access_log_flush_interval")
        return AccessLogOptions(
            flush_interval=duration(options.access_log_flush_interval) if interval else None,
            on_new_request=options.flush_access_log_on_new_request,
            on_tunnel_established=options.flush_log_on_tunnel_successfully_established,
        )
    if not (deprecated_interval or deprecated_start):
        return None
    return AccessLogOptions(
        flush_interval=duration(hcm.access_log_flush_interval) if deprecated_interval else None,
        on_new_request=deprecated_start,
    )


def log_so_far(stream, log_type: str) -> None:
    """An entry for ``stream`` before it ends: ``%DURATION%`` runs to now."""
    info = stream.info
    access_logs = stream.manager.config.access_logs
    if not access_logs or info.end_monotonic is not None:
        return
    info.end_monotonic = stream.manager.loop.time()
    try:
        for access_log in access_logs:
            access_log.log(
                info,
                stream.request_headers,
                stream.response_headers,
                stream.response_trailers,
                log_type,
            )
    finally:
        info.end_monotonic = None


class StartLogFilterChain(HttpFilterChain):
    """The connection manager's filter chain when it logs each new request: making a
    stream's filters writes its ``DownstreamStart`` entry first."""

    __slots__ = ()

    def create_filter_manager(self, sink, stream_info, *args, **kwargs):
        log_so_far(sink, DOWNSTREAM_START)
        return HttpFilterChain.create_filter_manager(self, sink, stream_info, *args, **kwargs)


def start_logging(chain: HttpFilterChain) -> StartLogFilterChain:
    """``chain``'s filters, writing the ``DownstreamStart`` entry of each new stream."""
    return StartLogFilterChain(chain.factories)


class StreamOptions:
    """What a stream of this connection manager sets up at its start (see module doc)."""

    __slots__ = ("flush_interval", "hooks_headers", "proxy_status", "tunnel_log")

    def __init__(self, access_log: AccessLogOptions | None, proxy_status: Any = None) -> None:
        self.flush_interval = access_log.flush_interval if access_log is not None else None
        self.tunnel_log = access_log is not None and access_log.on_tunnel_established
        recommends = proxy_status is not None and proxy_status.set_recommended_response_code
        self.proxy_status = proxy_status if recommends else None
        self.hooks_headers = self.tunnel_log or recommends

    @classmethod
    def of(cls, access_log: AccessLogOptions | None, proxy_status: Any) -> StreamOptions | None:
        """The options a stream needs, or None when it needs none."""
        options = cls(access_log, proxy_status)
        return options if options.flush_interval or options.hooks_headers else None

    def attach(self, stream, loop) -> None:
        stream.stream_options = self
        if self.flush_interval:
            stream.flush_timer = loop.call_later(self.flush_interval, self._on_flush, stream)
        if self.hooks_headers:
            stream.write_headers = functools.partial(self._write_headers, stream)

    def detach(self, stream) -> None:
        """The stream is destroyed: no more entries but its last (and no reference cycle)."""
        timer = stream.flush_timer
        if timer is not None:
            timer.cancel()
            stream.flush_timer = None
        if self.hooks_headers:
            del stream.write_headers

    def _on_flush(self, stream) -> None:
        if stream.destroyed:
            return
        log_so_far(stream, DOWNSTREAM_PERIODIC)
        loop = stream.manager.loop
        stream.flush_timer = loop.call_later(self.flush_interval, self._on_flush, stream)

    def _write_headers(self, stream, headers, end_stream: bool) -> None:
        proxy_status = self.proxy_status
        if (
            proxy_status is not None
            and stream.info.response_flags
            and headers.get(":status", "0")[0] != "1"  # (an interim response: not this one)
        ):
            status = proxy_status.recommended_status(stream.info)
            if status is not None:
                headers.set(":status", status)
        type(stream).write_headers(stream, headers, end_stream)
        if (
            self.tunnel_log
            and stream.upgraded
            and stream.response_headers is headers
            and not stream.destroyed
            and _opens_tunnel(stream, headers)
        ):
            log_so_far(stream, DOWNSTREAM_TUNNEL_SUCCESSFULLY_ESTABLISHED)


def _opens_tunnel(stream, headers) -> bool:
    """A 101 to an upgrade, or a 2xx to CONNECT."""
    status = headers.get(":status", "")
    if status == "101":
        return True
    request = stream.request_headers
    return status[:1] == "2" and request is not None and request.get(":method") == "CONNECT"
