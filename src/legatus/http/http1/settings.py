"""HTTP/1 codec settings: Envoy's ``Http1Settings``, compiled once from the config protos.

The fields are the knobs of ``Http1ProtocolOptions`` and of the HCM / common protocol options
that the HTTP/1 codecs read, with Envoy's defaults. Envoy parses one ``Http1ProtocolOptions``
for either side; each side reads its own fields. ``from_protos`` compiles an HCM's (the
downstream codec), ``from_upstream_proto`` a cluster's (the upstream codec). Every field of
Http1ProtocolOptions is either honoured on a side or refused there by name, with its path:

============================================== ============ ==============================
field                                          HCM          cluster
============================================== ============ ==============================
allow_absolute_url, accept_http_10,            honoured     refused
default_host_for_http_10
header_key_format                              honoured     honoured
enable_trailers, allow_chunked_length          honoured     honoured
send_fully_qualified_url                       no effect    honoured
                                               (as Envoy)
use_balsa_parser                               no effect    refused
                                               (Envoy 1.40
                                               parses with
                                               Balsa)
override_stream_error_on_invalid_http_message  honoured     refused
ignore_http_11_upgrade                         honoured     refused
allow_custom_methods                           refused      refused
============================================== ============ ==============================

``stream_error_on_invalid_http_message`` is Envoy's codec setting of that name: the override
when set, else the HCM's own ``stream_error_on_invalid_http_message`` (false unless set). With
it, the connection manager's 400 local replies leave the connection open; codec errors close
it whatever it says (``build_local_reply`` in http/conn_manager.py).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from functools import cache
from typing import Any

from legatus.config.errors import ConfigError
from legatus.config.supported import check_supported
from legatus.http.http1.header_formatter import KeyFormat, proper_case

_DOWNSTREAM_FIELDS = (
    "allow_absolute_url", "accept_http_10", "default_host_for_http_10", "header_key_format",
    "enable_trailers", "allow_chunked_length", "send_fully_qualified_url", "use_balsa_parser",
    "override_stream_error_on_invalid_http_message", "ignore_http_11_upgrade",
)  # fmt: skip
_UPSTREAM_FIELDS = (
    "header_key_format", "enable_trailers", "allow_chunked_length", "send_fully_qualified_url",
)  # fmt: skip


class HeadersWithUnderscoresAction(enum.Enum):
    """``HttpProtocolOptions.HeadersWithUnderscoresAction`` (same names and numbers)."""

    ALLOW = 0
    """Keep such headers (Envoy's default)."""
    REJECT_REQUEST = 1
    """400 with details ``http1.unexpected_underscore``."""
    DROP_HEADER = 2
    """Drop the header and carry on."""


class HeaderKeyFormat(enum.Enum):
    """How header names go out (see header_formatter)."""

    DEFAULT = "default"
    """Lower-case, as the maps hold them."""
    PROPER_CASE = "proper_case_words"
    """Proper-Case-Words, for every head the connection writes without a stateful formatter."""
    STATEFUL = "stateful_formatter"
    """The codec gives each head it decodes a formatter (``stateful_formatter``)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Http1Settings:
    """Everything an HTTP/1 codec needs to know about its configuration."""

    max_request_headers_kb: int = 60
    max_request_headers_count: int = 100
    accept_http_10: bool = False
    default_host_for_http_10: str = ""
    allow_absolute_url: bool = True
    header_key_format: HeaderKeyFormat = HeaderKeyFormat.DEFAULT
    # With HeaderKeyFormat.STATEFUL: the compiled formatter extension (``create()`` makes the
    # formatter of one head).
    stateful_formatter: Any = None
    allow_chunked_length: bool = False
    enable_trailers: bool = False
    send_fully_qualified_url: bool = False  # the upstream codec's: absolute-form targets
    headers_with_underscores_action: HeadersWithUnderscoresAction = (
        HeadersWithUnderscoresAction.ALLOW
    )
    # A 400 local reply of the connection manager keeps the connection open.
    stream_error_on_invalid_http_message: bool = False
    # ignore_http_11_upgrade: a StringMatcher list, or None when unset (see
    # server_codec: a request whose Upgrade value matches is served as a plain request).
    ignore_upgrade: Any = None

    def __post_init__(self) -> None:
        if not 1 <= self.max_request_headers_kb <= 8192:
            raise ValueError("max_request_headers_kb must be in [1, 8192]")
        if self.max_request_headers_count < 1:
            raise ValueError("max_request_headers_count must be at least 1")
        stateful = self.header_key_format is HeaderKeyFormat.STATEFUL
        if stateful == (self.stateful_formatter is None):
            raise ValueError("a stateful_formatter goes with header_key_format STATEFUL only")

    @property
    def key_format(self) -> KeyFormat | None:
        """The connection's stateless key format (None: names go out as the map holds them)."""
        return proper_case if self.header_key_format is HeaderKeyFormat.PROPER_CASE else None

    @property
    def new_formatter(self) -> Any:
        """Makes the stateful formatter of one decoded head (None: heads get none)."""
        stateful = self.stateful_formatter
        return None if stateful is None else stateful.create

    @classmethod
    def from_protos(
        cls,
        http_protocol_options=None,
        common_http_protocol_options=None,
        *,
        max_request_headers_kb: int = 0,
        hcm_stream_error: bool = False,
        path: str = "",
    ) -> Http1Settings:
        """From an HCM's ``http_protocol_options`` (Http1ProtocolOptions),
        ``common_http_protocol_options``, ``max_request_headers_kb`` (0: the default) and
        ``stream_error_on_invalid_http_message`` (``hcm_stream_error``)."""
        kwargs: dict = {}
        if hcm_stream_error:
            kwargs["stream_error_on_invalid_http_message"] = True
        if max_request_headers_kb:
            kwargs["max_request_headers_kb"] = max_request_headers_kb
        common = common_http_protocol_options
        if common is not None:
            if common.HasField("max_headers_count"):
                kwargs["max_request_headers_count"] = common.max_headers_count.value
            kwargs["headers_with_underscores_action"] = HeadersWithUnderscoresAction(
                common.headers_with_underscores_action
            )
        opts = http_protocol_options
        if opts is not None:
            where = f"{path}.http_protocol_options" if path else "http_protocol_options"
            check_supported(opts, _DOWNSTREAM_FIELDS, where, "Http1ProtocolOptions")
            if opts.HasField("allow_absolute_url"):
                kwargs["allow_absolute_url"] = opts.allow_absolute_url.value
            kwargs["accept_http_10"] = opts.accept_http_10
            kwargs["default_host_for_http_10"] = opts.default_host_for_http_10
            kwargs["enable_trailers"] = opts.enable_trailers
            kwargs["allow_chunked_length"] = opts.allow_chunked_length
            if opts.HasField("override_stream_error_on_invalid_http_message"):
                override = opts.override_stream_error_on_invalid_http_message.value
                kwargs["stream_error_on_invalid_http_message"] = override
            if opts.ignore_http_11_upgrade:
                kwargs["ignore_upgrade"] = _ignore_upgrade(opts.ignore_http_11_upgrade, where)
            # send_fully_qualified_url and use_balsa_parser change nothing downstream in Envoy
            # 1.40 (the server codec never reads the first; the parser is Balsa either way).
            kwargs.update(_header_key_format(opts, where))
        try:
            return cls(**kwargs)
        except ValueError as e:
            raise ConfigError(path, str(e)) from None

    @classmethod
    def from_upstream_proto(cls, http_protocol_options, *, path: str) -> Http1Settings:
        """From a cluster's Http1ProtocolOptions (``path`` is where it sits)."""
        opts = http_protocol_options
        check_supported(opts, _UPSTREAM_FIELDS, path, "Http1ProtocolOptions")
        if not opts.ListFields():
            return DEFAULT_SETTINGS
        return cls(
            enable_trailers=opts.enable_trailers,
            allow_chunked_length=opts.allow_chunked_length,
            send_fully_qualified_url=opts.send_fully_qualified_url,
            **_header_key_format(opts, path),
        )


def _ignore_upgrade(matchers, path: str) -> tuple:
    """``ignore_http_11_upgrade``: the matchers an Upgrade value is tried against, whole and
    case-sensitively (as Envoy 1.40 does, ``ignore_case`` aside)."""
    from legatus.common.matchers import StringMatcher

    where = f"{path}.ignore_http_11_upgrade"
    return tuple(StringMatcher(m, f"{where}[{i}]") for i, m in enumerate(matchers))


def _header_key_format(opts, path: str) -> dict[str, Any]:
    """The ``header_key_format`` fields of Http1Settings (none when unset)."""
    if not opts.HasField("header_key_format"):
        return {}
    hkf = opts.header_key_format
    hpath = f"{path}.header_key_format"
    which = hkf.WhichOneof("header_format")
    if which == "proper_case_words":
        return {"header_key_format": HeaderKeyFormat.PROPER_CASE}
    if which == "stateful_formatter":
        from legatus.registry import Category

        formatter = _formatters().create(
            Category.STATEFUL_HEADER_FORMATTER, hkf.stateful_formatter, None,
            f"{hpath}.stateful_formatter",
        )  # fmt: skip
        return {"header_key_format": HeaderKeyFormat.STATEFUL, "stateful_formatter": formatter}
    raise ConfigError(f"{hpath}.header_format", "is required")


@cache
def _formatters():
    """The stateful header formatters: the codec settings of an HCM and of a cluster are both
    compiled without a factory context (as cluster transport sockets are)."""
    from legatus.extensions.http.header_formatters import preserve_case
    from legatus.registry import Registry

    registry = Registry()
    preserve_case.register(registry)
    return registry


DEFAULT_SETTINGS = Http1Settings()
