"""The HTTP-only command operators: headers, path, query, gRPC status, header sizes.

Envoy's http_specific_formatter.cc, checked against Envoy 1.40. A missing header map (a
TCP connection, or a stream that ended before its request headers) reads as an empty
one, so these render ``-`` (or ``0`` for the byte sizes) there.

- ``REQ``/``RESP``/``TRAILER`` (and their 1.40 spellings ``REQUEST_HEADER``,
  ``RESPONSE_HEADER``, ``RESPONSE_TRAILER``): ``(main?alternative):max_length``, the first
  value of the main header, else of the alternative.
- ``PATH(WQ|NQ:ORIG|PATH|ORIG_OR_PATH):Z``: ``x-envoy-original-path`` or ``:path`` (by
  default the first that is set), with or without the query; an empty path is unset.
- ``QUERY_PARAM(name):Z``: the first value of a query parameter, percent-decoded (``+``
  stays ``+``, a bad escape stays as it is); ``?a`` and ``?a=`` give an empty string.
- ``GRPC_STATUS(CAMEL_STRING|SNAKE_STRING|NUMBER)``, ``GRPC_STATUS_NUMBER``: only for a
  gRPC request (``content-type: application/grpc[+...]``): ``grpc-status`` of the
  trailers, else of the headers, else mapped from the HTTP status.
- ``REQUEST_HEADERS_BYTES``, ``RESPONSE_HEADERS_BYTES``, ``RESPONSE_TRAILERS_BYTES``:
  Envoy's HeaderMap::byteSize, the lengths of every name and value (pseudo-headers too).
- ``STREAM_ID``: Envoy's stream id provider on an HTTP stream is the request's
  ``x-request-id`` (``-`` without one, as Envoy 1.40 logs it).
- ``LOCAL_REPLY_BODY``: always empty in access logs (Envoy 1.40 writes an empty string);
  local reply body formats substitute the body themselves (http/local_reply.py).
"""

from __future__ import annotations

from legatus.access_log.providers import Provider, Syntax, simple, truncate
from legatus.config.errors import ConfigError

_HEADER_TOKEN = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz")
_MAPS = ("req", "resp", "trl")


def _valid_header_name(name: str) -> bool:
    """Envoy's HeaderUtility::headerNameIsValid on the lower-cased name."""
    if name.startswith(":"):
        return len(name) > 1 and all(c in _HEADER_TOKEN for c in name[1:])
    return all(c in _HEADER_TOKEN for c in name)


def header(which: int):
    """REQ / RESP / TRAILER: ``(main?alternative):max_length``, first value found."""
    var = _MAPS[which]

    def factory(sub: str, max_length: int | None, path: str) -> Provider:
        names = sub.split("?")
        if len(names) > 2:
            raise ConfigError(path, "More than 1 alternative header specified in token: " + sub)
        main = names[0].lower()
        alternative = names[1].lower() if len(names) == 2 else ""
        if not _valid_header_name(main) or not _valid_header_name(alternative):
            raise ConfigError(
                path, "Invalid header configuration. Format string contains invalid characters."
            )

        def text(_info, req, resp, trl):
            headers = (req, resp, trl)[which]
            if headers is None:
                return None
            value = headers.get(main)
            if value is None and alternative:
                value = headers.get(alternative)
            if value is None:
                return None
            return value if max_length is None else value[:max_length]

        if alternative:
            lookup = f"({{t}}a if ({{t}}a := {var}.get({{0}})) is not None else {var}.get({{1}}))"
            consts: tuple = (main, alternative)
        else:
            lookup, consts = f"{var}.get({{0}})", (main,)
        expr = f"(None if {var} is None else {lookup})"
        if max_length is not None:
            expr = f"(None if ({{t}} := {expr}) is None else {{t}}[:{{{len(consts)}}}])"
            consts += (max_length,)
        return Provider(text, text, (expr, consts))

    return factory


# PATH ---------------------------------------------------------------------------------

_ORIG_OR_PATH, _PATH_ONLY, _ORIG_ONLY = range(3)


def _path(sub: str, max_length: int | None, path: str) -> Provider:
    query, _, option = sub.partition(":")
    option = option.split(":", 1)[0]
    if query not in ("", "WQ", "NQ"):
        raise ConfigError(path, f"Invalid PATH option: '{query}', only 'WQ'/'NQ' are allowed")
    options = {"": _ORIG_OR_PATH, "ORIG_OR_PATH": _ORIG_OR_PATH, "PATH": _PATH_ONLY}
    options["ORIG"] = _ORIG_ONLY
    which = options.get(option)
    if which is None:
        raise ConfigError(
            path,
            f"Invalid PATH option: '{option}', only 'ORIG'/'PATH'/'ORIG_OR_PATH' are allowed",
        )
    with_query = query != "NQ"

    def text(_info, req, _resp, _trl):
        if req is None:
            return None
        if which == _PATH_ONLY:
            value = req.get(":path")
        else:
            value = req.get("x-envoy-original-path")
            if not value and which == _ORIG_OR_PATH:
                value = req.get(":path")
        if not value:
            return None
        if not with_query:
            value = value.partition("?")[0]
        return value if max_length is None else value[:max_length]

    return Provider(text, text)


# QUERY_PARAM -----------------------------------------------------------------------------


def percent_decode(text: str) -> str:
    """Envoy's PercentEncoding::decode: ``%XX`` to its byte; anything else kept as it is."""
    if "%" not in text:
        return text
    raw = text.encode("utf-8", "surrogateescape")
    out = bytearray()
    i, n = 0, len(raw)
    while i < n:
        b = raw[i]
        if b == 0x25 and i + 2 < n and _is_hex(raw[i + 1]) and _is_hex(raw[i + 2]):
            out.append(int(raw[i + 1 : i + 3], 16))
            i += 3
            continue
        out.append(b)
        i += 1
    return out.decode("utf-8", "surrogateescape")


def _is_hex(b: int) -> bool:
    return 0x30 <= b <= 0x39 or 0x41 <= b <= 0x46 or 0x61 <= b <= 0x66


def first_query_value(path: str, name: str) -> str | None:
    """Envoy's QueryParamsMulti::parseAndDecodeQueryString(path).getFirstValue(name)."""
    start = path.find("?")
    if start < 0:
        return None
    for param in path[start + 1 :].split("&"):
        if not param:
            continue
        key, sep, value = param.partition("=")
        if percent_decode(key) == name:
            return percent_decode(value) if sep else ""
    return None


def _query_param(sub: str, max_length: int | None, _path: str) -> Provider:
    def text(_info, req, _resp, _trl):
        if req is None:
            return None
        path = req.get(":path")
        if not path:
            return None
        return truncate(first_query_value(path, sub), max_length)

    return Provider(text, text)


# gRPC status ------------------------------------------------------------------------------

# Grpc::Utility::grpcStatusToString and absl::StatusCodeToString, by status number.
_CAMEL = (
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
)
_SNAKE = (
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
)
GRPC_MAX_KNOWN = 16
GRPC_INVALID = -1
GRPC_UNKNOWN = 2
# Grpc::Utility::httpToGrpcStatus
_HTTP_TO_GRPC = {400: 13, 401: 16, 403: 7, 404: 12, 429: 14, 502: 14, 503: 14, 504: 14}
_DIGITS = frozenset("0123456789")
_UINT64_MAX = 2**64 - 1


def grpc_status_of(headers, *, allow_user_defined: bool) -> int | None:
    """Grpc::Common::getGrpcStatus(headers): None without the header, -1 when it is invalid."""
    if headers is None:
        return None
    value = headers.get("grpc-status")
    if value is None:
        return None
    digits = value[1:] if value.startswith("+") else value
    if not digits or not _DIGITS.issuperset(digits) or int(digits) > _UINT64_MAX:
        return GRPC_INVALID
    status = int(digits)
    if status > GRPC_MAX_KNOWN and not allow_user_defined:
        return GRPC_INVALID
    return status


def grpc_status(info, response_headers, response_trailers, *, allow_user_defined: bool):
    """Trailers, else headers, else the HTTP status mapped (None: no response at all)."""
    status = grpc_status_of(response_trailers, allow_user_defined=allow_user_defined)
    if status is None:
        status = grpc_status_of(response_headers, allow_user_defined=allow_user_defined)
    if status is None and info.response_code:
        status = _HTTP_TO_GRPC.get(info.response_code, GRPC_UNKNOWN)
    return status


def is_grpc_request(request_headers) -> bool:
    """Envoy's isGrpcRequestHeaders: ``content-type: application/grpc`` or ``.../grpc+...``."""
    if request_headers is None:
        return False
    content_type = request_headers.get("content-type")
    if not content_type:
        return False
    return content_type == "application/grpc" or content_type.startswith("application/grpc+")


_CAMEL_STRING, _SNAKE_STRING, _NUMBER = range(3)


def _grpc(form: int) -> Provider:
    def status(info, req, resp, trl):
        if not is_grpc_request(req):
            return None
        return grpc_status(info, resp, trl, allow_user_defined=True)

    def text(info, req, resp, trl):
        code = status(info, req, resp, trl)
        if code is None:
            return None
        if form != _NUMBER and 0 <= code <= GRPC_MAX_KNOWN:
            return (_CAMEL if form == _CAMEL_STRING else _SNAKE)[code]
        return str(code)

    def value(info, req, resp, trl):
        if form != _NUMBER:
            return text(info, req, resp, trl)
        return status(info, req, resp, trl)

    return Provider(text, value)


_GRPC_FORMS = {"": _CAMEL_STRING, "CAMEL_STRING": _CAMEL_STRING, "SNAKE_STRING": _SNAKE_STRING}
_GRPC_FORMS["NUMBER"] = _NUMBER


def _grpc_status(sub: str, _max_length, path: str) -> Provider:
    form = _GRPC_FORMS.get(sub)
    if form is None:
        raise ConfigError(
            path,
            f"GrpcStatusFormatter only supports CAMEL_STRING, SNAKE_STRING or NUMBER. Got: {sub}",
        )
    return _grpc(form)


# Header sizes, stream id, local reply body ------------------------------------------------


def _byte_size(headers) -> int:
    if not headers:
        return 0
    byte_size = getattr(headers, "byte_size", None)
    if byte_size is not None:
        return byte_size()
    return sum(len(name) + len(value) for name, value in headers.items())


def _headers_bytes(which: int) -> Provider:
    def value(_info, req, resp, trl):
        return _byte_size((req, resp, trl)[which])

    def text(info, req, resp, trl):
        return str(value(info, req, resp, trl))

    return Provider(text, value, never_none=True)


def _stream_id(_info, req, _resp, _trl):
    return None if req is None else req.get("x-request-id")


def _local_reply_body(_info, _req, _resp, _trl):
    return ""


HTTP_OPERATORS = {
    "REQ": (Syntax.PARAMS_REQUIRED | Syntax.LENGTH_ALLOWED, header(0)),
    "RESP": (Syntax.PARAMS_REQUIRED | Syntax.LENGTH_ALLOWED, header(1)),
    "TRAILER": (Syntax.PARAMS_REQUIRED | Syntax.LENGTH_ALLOWED, header(2)),
    "REQUEST_HEADER": (Syntax.PARAMS_REQUIRED | Syntax.LENGTH_ALLOWED, header(0)),
    "RESPONSE_HEADER": (Syntax.PARAMS_REQUIRED | Syntax.LENGTH_ALLOWED, header(1)),
    "RESPONSE_TRAILER": (Syntax.PARAMS_REQUIRED | Syntax.LENGTH_ALLOWED, header(2)),
    "PATH": (Syntax.PARAMS_OPTIONAL | Syntax.LENGTH_ALLOWED, _path),
    "QUERY_PARAM": (Syntax.PARAMS_REQUIRED | Syntax.LENGTH_ALLOWED, _query_param),
    "GRPC_STATUS": (Syntax.PARAMS_OPTIONAL, _grpc_status),
    "GRPC_STATUS_NUMBER": (Syntax.COMMAND_ONLY, simple(_grpc(_NUMBER))),
    "REQUEST_HEADERS_BYTES": (Syntax.COMMAND_ONLY, simple(_headers_bytes(0))),
    "RESPONSE_HEADERS_BYTES": (Syntax.COMMAND_ONLY, simple(_headers_bytes(1))),
    "RESPONSE_TRAILERS_BYTES": (Syntax.COMMAND_ONLY, simple(_headers_bytes(2))),
    "STREAM_ID": (Syntax.COMMAND_ONLY, simple(Provider(_stream_id, _stream_id))),
    "LOCAL_REPLY_BODY": (
        Syntax.COMMAND_ONLY,
        simple(Provider(_local_reply_body, _local_reply_body, never_none=True)),
    ),
}
