"""The RFC 9209 ``Proxy-Status`` response header: ``proxy_status_config`` of the HTTP
connection manager (Envoy's ProxyStatusUtils), checked against Envoy 1.40 in
tests/differential/test_hcm_proxy_status_envoy.py.

With the config set, a response whose stream carries a response flag that names a proxy
error gets one Proxy-Status entry, ``<proxy name>; error=<type>; details="<details>"``,
appended with ``, `` to a Proxy-Status the upstream sent. Upstream responses get it too
(a 5xx after the last retry carries URX: ``destination_unavailable``), as in Envoy; a
response without such a flag gets none. The entry goes after ``date``, ``server`` and
``via`` (conn_manager_utility.mutate_response_headers writes it).

- The error: the first flag, in Envoy's flag order, that ``_ERROR_BY_FLAG`` maps (UF before
  URX: a refused connection retried is ``connection_refused``). Flags without a proxy
  error (DI, DC, UAEX, UDO...) add nothing. DPE is not there: Envoy sets it only after its
  codec-error reply is sent, so it never reaches a Proxy-Status.
- details: the response code details, then the connection termination details and the short
  response flags (``UH``, ``URX,UF``), joined with ``; `` and escaped as Envoy's
  StringUtil::escape; ``remove_details`` drops the whole parameter, the other two options
  their part.
- The proxy name: ``literal_proxy_name``, the node id under ``use_node_id`` (the bootstrap's
  ``node.id``, or ``--service-node``), or the connection manager's ``server_name``
  (``envoy``).
- ``set_recommended_response_code``: the status RFC 9209 recommends for the error (504 for
  timeouts, 502 for connection and protocol errors, 503 for unavailable destinations and
  limits, 500 for a missing destination); ``http_request_error`` has none and keeps its
  status. The access log shows the rewritten status, as Envoy's does.
"""

from __future__ import annotations

from dataclasses import dataclass

from legatus.config.supported import check_supported
from legatus.stream_info import ResponseFlag as F
from legatus.stream_info import response_flags_string

_SUPPORTED = (
    "remove_details", "remove_connection_termination_details", "remove_response_flags",
    "set_recommended_response_code", "literal_proxy_name", "use_node_id",
)  # fmt: skip

# (flag, error), in Envoy's flag order: the first flag set decides. FI is mapped by Envoy 1.40
# (a fault filter abort is http_request_error), checked like the others.
_ERROR_BY_FLAG: tuple[tuple[F, str], ...] = (
    (F.FAILED_LOCAL_HEALTH_CHECK, "destination_unavailable"),
    (F.NO_HEALTHY_UPSTREAM, "destination_unavailable"),
    (F.UPSTREAM_REQUEST_TIMEOUT, "http_response_timeout"),
    (F.LOCAL_RESET, "connection_timeout"),
    (F.UPSTREAM_REMOTE_RESET, "connection_terminated"),
    (F.UPSTREAM_CONNECTION_FAILURE, "connection_refused"),
    (F.UPSTREAM_CONNECTION_TERMINATION, "connection_terminated"),
    (F.UPSTREAM_OVERFLOW, "connection_limit_reached"),
    (F.NO_ROUTE_FOUND, "destination_not_found"),
    (F.FAULT_INJECTED, "http_request_error"),
    (F.RATE_LIMITED, "connection_limit_reached"),
    (F.RATE_LIMIT_SERVICE_ERROR, "connection_limit_reached"),
    (F.UPSTREAM_RETRY_LIMIT_EXCEEDED, "destination_unavailable"),
    (F.STREAM_IDLE_TIMEOUT, "http_response_timeout"),
    (F.INVALID_ENVOY_REQUEST_HEADERS, "http_request_error"),
    (F.UPSTREAM_MAX_STREAM_DURATION_REACHED, "http_response_timeout"),
    (F.NO_FILTER_CONFIG_FOUND, "proxy_configuration_error"),
    (F.UPSTREAM_PROTOCOL_ERROR, "http_protocol_error"),
    (F.NO_CLUSTER_FOUND, "destination_unavailable"),
    (F.DNS_RESOLUTION_FAILURE, "dns_error"),
)
_MAPPED = 0
for _flag, _ in _ERROR_BY_FLAG:
    _MAPPED |= _flag

# RFC 9209's recommended status per error (those Envoy recommends one for).
_RECOMMENDED_STATUS = {
    "http_response_timeout": "504", "connection_timeout": "504",
    "connection_refused": "502", "connection_terminated": "502", "http_protocol_error": "502",
    "dns_error": "502",
    "destination_not_found": "500", "proxy_configuration_error": "500",
    "destination_unavailable": "503", "connection_limit_reached": "503",
}  # fmt: skip

_ESCAPES = str.maketrans({"\r": "\\r", "\n": "\\n", "\t": "\\t", '"': '\\"'})


def proxy_status_error(flags: int) -> str | None:
    """The Proxy-Status error type the response flags name, if any."""
    if not flags & _MAPPED:
        return None
    for flag, error in _ERROR_BY_FLAG:
        if flags & flag:
            return error
    return None


@dataclass(frozen=True, slots=True, kw_only=True)
class ProxyStatusConfig:
    """A compiled ``HttpConnectionManager.ProxyStatusConfig``."""

    proxy_name: str
    remove_details: bool = False
    remove_connection_termination_details: bool = False
    remove_response_flags: bool = False
    set_recommended_response_code: bool = False

    def header_value(self, info) -> str | None:
        """The Proxy-Status entry for the stream, or None when its flags name no error."""
        error = proxy_status_error(info.response_flags)
        if error is None:
            return None
        value = f"{self.proxy_name}; error={error}"
        details = info.response_code_details
        if self.remove_details or details is None:
            return value
        parts = [details]
        termination = info.connection_termination_details
        if termination is not None and not self.remove_connection_termination_details:
            parts.append(termination)
        if not self.remove_response_flags:
            parts.append(response_flags_string(info.flag_order))
        return f'{value}; details="{"; ".join(parts).translate(_ESCAPES)}"'

    def recommended_status(self, info) -> str | None:
        """``set_recommended_response_code``: the status to answer with instead, if any."""
        if not self.set_recommended_response_code:
            return None
        error = proxy_status_error(info.response_flags)
        return None if error is None else _RECOMMENDED_STATUS.get(error)


def compile_proxy_status_config(
    proto, path: str, *, server_name: str, node_id: str = ""
) -> ProxyStatusConfig:
    """``proxy_status_config`` at ``path``; the proxy name is the literal one, ``node_id``
    under ``use_node_id: true``, else ``server_name``."""
    check_supported(proto, _SUPPORTED, path, "ProxyStatusConfig")
    which = proto.WhichOneof("proxy_name")
    if which == "literal_proxy_name":
        name = proto.literal_proxy_name
    elif which == "use_node_id" and proto.use_node_id:
        name = node_id
    else:
        name = server_name
    return ProxyStatusConfig(
        proxy_name=name,
        remove_details=proto.remove_details,
        remove_connection_termination_details=proto.remove_connection_termination_details,
        remove_response_flags=proto.remove_response_flags,
        set_recommended_response_code=proto.set_recommended_response_code,
    )
