"""Envoy's AccessLogType: why an access-log entry is written.

The names are ``envoy.data.accesslog.v3.AccessLogType``'s, as ``%ACCESS_LOG_TYPE%`` prints
them and ``log_type_filter`` selects them. Each place that writes entries has its default
(checked against Envoy 1.40): an HTTP connection manager's streams (and the admin's)
``DownstreamEnd``, ``tcp_proxy`` ``TcpConnectionEnd``, a listener's own access log
``NotSet``; the connection manager's ``access_log_options`` add ``DownstreamStart``,
``DownstreamPeriodic`` and ``DownstreamTunnelSuccessfullyEstablished`` entries.

Formatting contexts that are no access log (a local reply's body format, a header value)
see ``NotSet``, as in Envoy: ``AccessLog.log`` sets the type on the stream info only for
the time of its entry (the ``access_log_type`` attribute, read by ``current``).
"""

from __future__ import annotations

from envoy.data.accesslog.v3 import accesslog_pb2

NOT_SET = "NotSet"
TCP_CONNECTION_END = "TcpConnectionEnd"
DOWNSTREAM_START = "DownstreamStart"
DOWNSTREAM_PERIODIC = "DownstreamPeriodic"
DOWNSTREAM_END = "DownstreamEnd"
DOWNSTREAM_TUNNEL_SUCCESSFULLY_ESTABLISHED = "DownstreamTunnelSuccessfullyEstablished"


def name_of(value: int) -> str:
    """The name of an ``AccessLogType`` enum value (``log_type_filter.types``)."""
    return accesslog_pb2.AccessLogType.Name(value)


def current(info) -> str:
    """The type of the entry being written from ``info``; ``NotSet`` outside an entry."""
    return getattr(info, "access_log_type", NOT_SET)
