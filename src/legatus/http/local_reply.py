"""Local replies: the responses legatus itself sends, byte for byte as Envoy 1.40 does.

A ``LocalReply`` says what to answer (status, body, response code details, the response flag
the caller sets on the stream info, extra headers such as ``x-envoy-overloaded``).
``ENVOY_LOCAL_REPLIES`` is the table of the replies Envoy sends, each one recorded from the
real Envoy (tests/differential/test_local_replies_envoy.py replays them); the functions below
build the parameterized ones (upstream resets, direct responses, redirects...).

``render_local_reply`` is Envoy's ``Utility::sendLocalReply``: ``:status``, the extra headers,
the ``local_reply_config`` rewrite (mappers, body format), then either a gRPC trailers-only
response (``:status 200``, ``grpc-status``, percent-encoded ``grpc-message``) or
``content-length`` and ``content-type: text/plain`` with the body (headers only for HEAD, and
no body headers when the body is empty).

Whether the request is gRPC is decided as Envoy's filter manager decides it: from the request
headers as they arrived, before any filter ran (a gRPC-Web request that the grpc_web filter
turned into gRPC still gets a plain HTTP reply, which that filter then translates). The
answer is latched on the stream info (``latch_grpc_request``) by whatever sees the headers
first and may change them; without a latch the request headers at reply time decide. The
gRPC status is the reply's own (``LocalReply.grpc_status``: the HCM's stream duration timeout
answers DEADLINE_EXCEEDED), else Envoy's httpToGrpcStatus of the HTTP status.

The connection manager then adds ``date``, ``server`` and ``via``
(conn_manager_utility.mutate_response_headers) and the HTTP/1 codec ``content-length: 0`` to a
bodiless response and ``connection: close`` when it closes.

Flags: the caller sets the reply's flag on the stream info before rendering (as Envoy's
router does, so ``%RESPONSE_FLAGS%`` in a body format shows it), except for codec errors
(DPE), which Envoy flags only after the reply is formatted.

``local_reply_config`` is compiled by ``compile_local_reply_config``: mappers (an access-log
filter, then ``status_code``, ``body``, ``headers_to_add`` and ``body_format_override``; the
first match wins) and ``body_format`` (text or JSON, ``%LOCAL_REPLY_BODY%`` for the body).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from types import MappingProxyType

from legatus.access_log.access_log import compile_filter
from legatus.access_log.formatter import compile_format, compile_substitution_format, json_string
from legatus.config.datasource import read_data_source
from legatus.config.errors import ConfigError, join_path
from legatus.config.supported import check_supported
from legatus.grpc.common import Status, http_to_grpc_status, is_grpc_request_headers
from legatus.http.codes import reason_phrase
from legatus.http.headers import HeaderMap
from legatus.stream_info import ResponseFlag as F
from legatus.stream_info import StreamInfo


@dataclass(frozen=True, slots=True, kw_only=True)
class LocalReply:
    """One local reply. ``close_connection``: Envoy closed the HTTP/1 connection after it."""

    status: int
    body: str = ""
    details: str
    flags: int = 0
    headers: tuple[tuple[str, str], ...] = ()
    grpc_status: int | None = None
    close_connection: bool = False


def _reply(status: int, body: str, details: str, flags: int = 0, **kw) -> LocalReply:
    return LocalReply(status=status, body=body, details=details, flags=flags, **kw)


UPSTREAM_RESET_BODY = "upstream connect error or disconnect/reset before headers. "


def upstream_reset(
    reason: str,
    *,
    flags: int,
    status: int = 503,
    retried: bool = False,
    transport_failure_reason: str = "",
    headers: tuple[tuple[str, str], ...] = (),
    response_started: bool = False,
) -> LocalReply:
    """The router's reply to an upstream reset (``response_started``: after the response's
    headers, which only a filter that holds them lets out; the body says "before headers"
    all the same, as Envoy's does).

    ``reason`` is Envoy's reset reason text (``remote connection failure``, ``connection
    termination``, ``overflow``, ``protocol error``, ``connection timeout``, ``local reset``,
    ``remote reset``...). Envoy 1.40 puts the transport failure reason (``delayed connect
    error: Connection refused``, TLS errors) in the details, not in the body.
    """
    body = UPSTREAM_RESET_BODY + ("retried and the latest " if retried else "")
    detail = reason + ("|" + transport_failure_reason if transport_failure_reason else "")
    return LocalReply(
        status=status,
        body=f"{body}reset reason: {reason}",
        details=_no_spaces(
            f"upstream_reset_{'after' if response_started else 'before'}_response_started"
            f"{{{detail}}}"
        ),
        flags=flags,
        headers=headers,
    )


def direct_response(status: int, body: str = "") -> LocalReply:
    """A route's ``direct_response`` (``rq_direct_response``)."""
    return _reply(status, body, "direct_response")


def redirect(status: int, location: str) -> LocalReply:
    """A route's ``redirect`` (``rq_redirect``): a ``location`` header, no body."""
    return _reply(status, "", "direct_response", headers=(("location", location),))


def strict_check_failed(name: str, value: str) -> LocalReply:
    """The router's ``strict_check_headers`` rejecting an ``x-envoy-*`` header value."""
    return _reply(
        400,
        f"invalid header '{name}' with value '{value}'",
        f"request_headers_failed_strict_check{{{name}}}",
        F.INVALID_ENVOY_REQUEST_HEADERS,
        close_connection=True,
    )


def codec_error(status: int, details: str) -> LocalReply:
    """A downstream protocol error: the body is the reason phrase (``Bad Request``)."""
    return _reply(
        status, reason_phrase(status), details, F.DOWNSTREAM_PROTOCOL_ERROR, close_connection=True
    )


def path_normalization_redirect(location: str) -> LocalReply:
    """``path_with_escaped_slashes_action: UNESCAPE_AND_REDIRECT``: a 307 to the path with
    its escaped slashes undone (then normalized and merged as configured), the connection
    kept; the details say ``path_normalization_failed`` too, as in Envoy."""
    return _reply(307, "", "path_normalization_failed", headers=(("location", location),))


def original_ip_detection_rejection(status: int) -> LocalReply:
    """An original IP detection extension's ``reject_with_status``: the status, no body, no
    flag; the connection stays open (Envoy 1.40)."""
    return _reply(status, "", "rejecting_because_detection_failed")


def _no_spaces(details: str) -> str:
    return "_".join(details.split(" "))


_CONNECT_REFUSED = "delayed connect error: Connection refused"

# Every local reply Envoy 1.40 sends that legatus reproduces, recorded one by one from the
# real Envoy (curl -v / raw sockets, response flags and details from the access log).
ENVOY_LOCAL_REPLIES: MappingProxyType[str, LocalReply] = MappingProxyType(
    {
        # Routing.
        "route_not_found": _reply(404, "", "route_not_found", F.NO_ROUTE_FOUND),
        "cluster_not_found": _reply(503, "", "cluster_not_found", F.NO_CLUSTER_FOUND),
        "direct_response": direct_response(200, "hello"),
        "direct_response_no_body": direct_response(503),
        "redirect": redirect(301, "http://example.org/redirect"),
        "upgrade_failed": _reply(403, "", "upgrade_failed", close_connection=True),
        "connect_not_routed": _reply(
            404, "", "route_not_found", F.NO_ROUTE_FOUND, close_connection=True
        ),
        "strict_check_failed": strict_check_failed("x-envoy-max-retries", "abc"),
        # Upstream.
        "no_healthy_upstream": _reply(
            503, "no healthy upstream", "no_healthy_upstream", F.NO_HEALTHY_UPSTREAM
        ),
        "upstream_connection_failure": upstream_reset(
            "remote connection failure",
            flags=F.UPSTREAM_CONNECTION_FAILURE,
            transport_failure_reason=_CONNECT_REFUSED,
        ),
        "upstream_retry_limit_exceeded": upstream_reset(
            "remote connection failure",
            flags=F.UPSTREAM_RETRY_LIMIT_EXCEEDED | F.UPSTREAM_CONNECTION_FAILURE,
            retried=True,
            transport_failure_reason=_CONNECT_REFUSED,
        ),
        "upstream_overflow": upstream_reset(
            "overflow", flags=F.UPSTREAM_OVERFLOW, headers=(("x-envoy-overloaded", "true"),)
        ),
        "upstream_connection_termination": upstream_reset(
            "connection termination", flags=F.UPSTREAM_CONNECTION_TERMINATION
        ),
        "upstream_protocol_error": upstream_reset(
            "protocol error", status=502, flags=F.UPSTREAM_PROTOCOL_ERROR
        ),
        "upstream_request_timeout": _reply(
            504, "upstream request timeout", "response_timeout", F.UPSTREAM_REQUEST_TIMEOUT
        ),
        # x-envoy-upstream-rq-timeout-alt-response on an internal request.
        "upstream_request_timeout_alt": _reply(
            204, "", "response_timeout", F.UPSTREAM_REQUEST_TIMEOUT
        ),
        "upstream_max_stream_duration": _reply(
            504,
            "upstream max stream duration reached",
            "upstream_max_stream_duration_reached",
            F.UPSTREAM_MAX_STREAM_DURATION_REACHED,
        ),
        # HCM timeouts (Envoy 1.40 sets no flag on max_duration_timeout; to a gRPC request
        # it answers DEADLINE_EXCEEDED, not the 504's UNAVAILABLE).
        "max_duration_timeout": _reply(
            504,
            "downstream duration timeout",
            "max_duration_timeout",
            grpc_status=Status.DEADLINE_EXCEEDED,
        ),
        "stream_idle_timeout": _reply(
            504, "stream timeout", "stream_idle_timeout", F.STREAM_IDLE_TIMEOUT
        ),
        "stream_idle_timeout_request_incomplete": _reply(
            408,
            "stream timeout",
            "stream_idle_timeout",
            F.STREAM_IDLE_TIMEOUT,
            close_connection=True,
        ),
        "request_timeout": _reply(
            408, "request timeout", "request_overall_timeout", close_connection=True
        ),
        "request_header_timeout": _reply(
            408, "request header timeout", "request_header_timeout", close_connection=True
        ),
        # The HTTP/1 codec and the HCM's request checks.
        "codec_error": codec_error(400, "http1.codec_error"),
        "content_length_and_chunked": codec_error(
            400, "http1.content_length_and_chunked_not_allowed"
        ),
        "headers_too_large": codec_error(431, "http1.headers_too_large"),
        "low_version": codec_error(426, "low_version"),
        "missing_host_header": _reply(400, "", "missing_host_header", close_connection=True),
        # A path with a fragment, or one the HCM's path options reject (http/path_utility.py);
        # it closes as every 400 does. Its details also go with the 307 of
        # path_normalization_redirect, which keeps the connection.
        "path_normalization_failed": _reply(400, "", "path_normalization_failed"),
        # A request body past a buffering filter's limit (buffer filter, decoder buffer limit).
        "request_payload_too_large": _reply(
            413, "Payload Too Large", "request_payload_too_large", close_connection=True
        ),
    }
)


# Rendering ------------------------------------------------------------------------------


is_grpc_request = is_grpc_request_headers  # Envoy's isGrpcRequestHeaders

# The replies whose gRPC status is their own, not mapped from the HTTP status, by details:
# callers that pass only (status, body, details) still get it.
_GRPC_STATUS_BY_DETAILS: MappingProxyType[str, int] = MappingProxyType(
    {r.details: r.grpc_status for r in ENVOY_LOCAL_REPLIES.values() if r.grpc_status is not None}
)


def latch_grpc_request(info, request_headers: HeaderMap) -> None:
    """Record on ``info`` whether the request is gRPC as it is now, unless already recorded:
    called as the request headers arrive, and by a filter before it changes the content type.
    """
    if info.is_grpc_request is None:
        info.is_grpc_request = is_grpc_request_headers(request_headers)


def render_local_reply(
    reply: LocalReply,
    *,
    request_headers: HeaderMap | None,
    info=None,
    config: LocalReplyConfig | None = None,
    modify_headers=None,
    grpc: bool | None = None,
) -> tuple[HeaderMap, bytes]:
    """The response headers and body of ``reply`` (Envoy's sendLocalReply).

    Records the status and ``reply.details`` on ``info`` (a StreamInfo) before the
    ``local_reply_config`` rewrite runs, as Envoy does. An empty body means headers only
    (end of stream); so does a HEAD request or a gRPC request (trailers-only). ``grpc``: whether
    the request is gRPC, when the caller knows; else the latch on ``info``, else the headers.
    """
    if grpc is None:
        latched = info.is_grpc_request if info is not None else None
        grpc = is_grpc_request_headers(request_headers) if latched is None else latched
    if info is not None:
        info.response_code_details = reply.details
    headers = HeaderMap([(":status", str(reply.status))])
    explicit_grpc_status = reply.grpc_status
    for name, value in reply.headers:
        if name == "grpc-status":
            # A filter's gRPC status for its reply (the fault filter's abort): Envoy takes it
            # as the reply's status, used only if the request is gRPC.
            if value.isdigit():
                explicit_grpc_status = int(value)
            continue
        headers.set(name, value)
    if modify_headers is not None:
        modify_headers(headers)
    original_content_type = headers.get("content-type")
    code, body, content_type, json_body = (config or DEFAULT_LOCAL_REPLY_CONFIG).rewrite(
        request_headers, headers, info, reply.status, reply.body
    )
    custom_content_type = headers.get("content-type") != original_content_type
    is_head = request_headers is not None and request_headers.get(":method") == "HEAD"

    if grpc:
        headers.set(":status", "200")
        headers.set("content-type", "application/grpc")
        if "grpc-status" not in headers:
            status = explicit_grpc_status
            if status is None:
                status = _GRPC_STATUS_BY_DETAILS.get(reply.details)
                if status is None:
                    status = http_to_grpc_status(code)
            headers.set("grpc-status", str(int(status)))
        if body and not is_head:
            if json_body and body.endswith("\n"):
                body = body[:-1]
            headers.set("grpc-message", percent_encode(body))
        headers.remove("content-length")
        return headers, b""

    data = body.encode("utf-8", "surrogateescape")
    if data:
        headers.set("content-length", str(len(data)))
        if "content-type" not in headers or (body != reply.body and not custom_content_type):
            headers.set("content-type", content_type)
    else:
        headers.remove("content-length")
        headers.remove("content-type")
    return headers, b"" if is_head else data


def percent_encode(value: str) -> str:
    """Envoy's PercentEncoding::encode for grpc-message: bytes outside ' '..'}' and '%'."""
    raw = value.encode("utf-8", "surrogateescape")
    if all(0x20 <= b < 0x7E and b != 0x25 for b in raw):
        return value
    return "".join(chr(b) if 0x20 <= b < 0x7E and b != 0x25 else f"%{b:02X}" for b in raw)


# local_reply_config ---------------------------------------------------------------------

_BODY_OPERATOR = "%LOCAL_REPLY_BODY%"
# What %LOCAL_REPLY_BODY% becomes before the access-log formatter compiles a body format
# (plain text it passes through), replaced with the body in the formatted output.
_BODY_MARK = "LEGATUS-LOCAL-REPLY-BODY-c0d3"
_APPEND, _ADD_IF_ABSENT, _OVERWRITE_OR_ADD, _OVERWRITE_IF_EXISTS = range(4)


class BodyFormatter:
    """A ``SubstitutionFormatString`` for local reply bodies (also a direct response's
    ``body_format``, router/action.py); None: the body as it is."""

    __slots__ = ("content_type", "formatter", "json")

    def __init__(self, proto=None, path: str = "") -> None:
        self.formatter = None
        self.json = False
        self.content_type = "text/plain"
        if proto is None:
            return
        proto = copy.deepcopy(proto)
        which = proto.WhichOneof("format")
        if which == "text_format_source":
            source_path = join_path(path, "text_format_source")
            data = read_data_source(proto.text_format_source, source_path)
            try:
                proto.text_format = data.decode()
            except UnicodeDecodeError:
                raise ConfigError(source_path, "format string is not valid UTF-8") from None
            which = "text_format"
        if which == "text_format":
            proto.text_format = proto.text_format.replace(_BODY_OPERATOR, _BODY_MARK)
        elif which == "json_format":
            _mark_struct(proto.json_format)
            self.json = True
        self.formatter = compile_substitution_format(proto, path)
        self.content_type = proto.content_type or (
            "application/json" if self.json else "text/plain"
        )

    def format(self, info, request_headers, response_headers, body: str) -> str:
        if self.formatter is None:
            return body
        text = self.formatter.format(info, request_headers, response_headers, None)
        return text.replace(_BODY_MARK, json_string(body)[1:-1] if self.json else body)


def _mark_struct(struct) -> None:
    for value in struct.fields.values():
        _mark_value(value)


def _mark_value(value) -> None:
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        value.string_value = value.string_value.replace(_BODY_OPERATOR, _BODY_MARK)
    elif kind == "struct_value":
        _mark_struct(value.struct_value)
    elif kind == "list_value":
        for item in value.list_value.values:
            _mark_value(item)


@dataclass(frozen=True, slots=True)
class _HeaderToAdd:
    name: str
    value: object  # a compiled access-log Formatter (empty values omitted)
    action: int
    keep_empty: bool

    def apply(self, headers: HeaderMap, info, request_headers) -> None:
        value = self.value.format(info, request_headers, headers)
        if not value and not self.keep_empty:
            return
        action = self.action
        if action == _APPEND or (action == _ADD_IF_ABSENT and self.name not in headers):
            headers.add(self.name, value)
        elif action == _OVERWRITE_OR_ADD or (
            action == _OVERWRITE_IF_EXISTS and self.name in headers
        ):
            headers.set(self.name, value)


def _compile_header(proto, path: str) -> _HeaderToAdd:
    check_supported(proto, ("header", "append", "append_action", "keep_empty_value"), path)
    check_supported(proto.header, ("key", "value"), join_path(path, "header"), "HeaderValue")
    name = proto.header.key.lower()
    if name.startswith(":") or name == "host":
        raise ConfigError(
            join_path(path, "header.key"), "':-prefixed' or host headers may not be modified"
        )
    action = proto.append_action
    if proto.HasField("append"):
        if action:
            raise ConfigError(path, "Both append and append_action are set and it's not allowed")
        action = _APPEND if proto.append.value else _OVERWRITE_OR_ADD
    value = compile_format(
        proto.header.value, join_path(path, "header.value"), omit_empty_values=True
    )
    return _HeaderToAdd(name, value, action, proto.keep_empty_value)


@dataclass(frozen=True, slots=True)
class _Mapper:
    filter: object  # a compiled AccessLogFilter
    status_code: int | None
    body: str | None
    headers: tuple[_HeaderToAdd, ...]
    body_format: BodyFormatter | None


_AS_IS = BodyFormatter()


@dataclass(frozen=True, slots=True)
class LocalReplyConfig:
    """A compiled ``LocalReplyConfig``; ``DEFAULT_LOCAL_REPLY_CONFIG`` when none is set."""

    mappers: tuple[_Mapper, ...] = ()
    body_format: BodyFormatter = _AS_IS

    def rewrite(self, request_headers, response_headers: HeaderMap, info, code: int, body: str):
        """Envoy's LocalReplyImpl::rewrite: (code, body, content type, JSON body?)."""
        if not self.mappers and self.body_format is _AS_IS:  # no local_reply_config
            if info is not None:
                info.response_code = code
            return code, body, "text/plain", False
        if info is None:
            info = StreamInfo(now_monotonic=0.0)
        response_headers.set(":status", str(code))
        info.response_code = code
        formatter = None
        for mapper in self.mappers:
            if not mapper.filter.evaluate(info, request_headers, response_headers, None):
                continue
            if mapper.body is not None:
                body = mapper.body
            for header in mapper.headers:
                header.apply(response_headers, info, request_headers)
            if mapper.status_code is not None and mapper.status_code != code:
                code = mapper.status_code
                response_headers.set(":status", str(code))
                info.response_code = code
            formatter = mapper.body_format
            break
        formatter = formatter or self.body_format
        body = formatter.format(info, request_headers, response_headers, body)
        return code, body, formatter.content_type, formatter.json


DEFAULT_LOCAL_REPLY_CONFIG = LocalReplyConfig()


def compile_local_reply_config(proto, path: str, context) -> LocalReplyConfig:
    """Compile an HCM's ``local_reply_config`` (``context``: for runtime filters)."""
    check_supported(proto, ("mappers", "body_format"), path, "LocalReplyConfig")
    mappers = []
    for i, mapper in enumerate(proto.mappers):
        mapper_path = f"{path}.mappers[{i}]"
        check_supported(
            mapper,
            ("filter", "status_code", "body", "body_format_override", "headers_to_add"),
            mapper_path,
            "ResponseMapper",
        )
        body = None
        if mapper.HasField("body"):
            data = read_data_source(mapper.body, join_path(mapper_path, "body"))
            body = data.decode("utf-8", "surrogateescape")
        mappers.append(
            _Mapper(
                filter=compile_filter(mapper.filter, join_path(mapper_path, "filter"), context),
                status_code=mapper.status_code.value if mapper.HasField("status_code") else None,
                body=body,
                headers=tuple(
                    _compile_header(h, f"{mapper_path}.headers_to_add[{j}]")
                    for j, h in enumerate(mapper.headers_to_add)
                ),
                body_format=(
                    BodyFormatter(
                        mapper.body_format_override,
                        join_path(mapper_path, "body_format_override"),
                    )
                    if mapper.HasField("body_format_override")
                    else None
                ),
            )
        )
    body_format = (
        BodyFormatter(proto.body_format, join_path(path, "body_format"))
        if proto.HasField("body_format")
        else _AS_IS
    )
    return LocalReplyConfig(mappers=tuple(mappers), body_format=body_format)
