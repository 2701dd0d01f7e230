"""HTTP/1 codec settings: Envoy's ``Http1Settings``, compiled once from the HCM config.

The fields are the knobs of ``Http1ProtocolOptions`` and of the HCM / common protocol options
that the HTTP/1 codec reads, with Envoy's defaults. ``from_protos`` builds them from the
config protos; it refuses what legatus does not implement (``header_key_format`` other than
the default lower-case, ``send_fully_qualified_url``...) with the field path.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from legatus.config.errors import ConfigError


class HeadersWithUnderscoresAction(enum.Enum):
    """``HttpProtocolOptions.HeadersWithUnderscoresAction`` (same names and numbers)."""

    ALLOW = 0
    """Keep such headers (Envoy's default)."""
    REJECT_REQUEST = 1
    """400 with details ``http1.unexpected_underscore``."""
    DROP_HEADER = 2
    """Drop the header and carry on."""


class HeaderKeyFormat(enum.Enum):
    """How header names go out. Only Envoy's default (lower-case) is implemented."""

    DEFAULT = "default"
    PROPER_CASE = "proper_case_words"
    STATEFUL = "stateful_formatter"


@dataclass(frozen=True, slots=True, kw_only=True)
class Http1Settings:
    """Everything the HTTP/1 server codec needs to know about its configuration."""

    max_request_headers_kb: int = 60
    max_request_headers_count: int = 100
    accept_http_10: bool = False
    default_host_for_http_10: str = ""
    allow_absolute_url: bool = True
    header_key_format: HeaderKeyFormat = HeaderKeyFormat.DEFAULT
    allow_chunked_length: bool = False
    enable_trailers: bool = False
    headers_with_underscores_action: HeadersWithUnderscoresAction = (
        HeadersWithUnderscoresAction.ALLOW
    )

    def __post_init__(self) -> None:
        if not 1 <= self.max_request_headers_kb <= 8192:
            raise ValueError("max_request_headers_kb must be in [1, 8192]")
        if self.max_request_headers_count < 1:
            raise ValueError("max_request_headers_count must be at least 1")
        if self.header_key_format is not HeaderKeyFormat.DEFAULT:
            raise ValueError(
                f"header_key_format {self.header_key_format.value} is not implemented by "
                "legatus: header names are sent lower-case"
            )

    @classmethod
    def from_protos(
        cls,
        http_protocol_options=None,
        common_http_protocol_options=None,
        *,
        max_request_headers_kb: int = 0,
        path: str = "",
    ) -> Http1Settings:
        """From an HCM's ``http_protocol_options`` (Http1ProtocolOptions),
        ``common_http_protocol_options`` and ``max_request_headers_kb`` (0: the default)."""
        kwargs: dict = {}
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
            if opts.HasField("header_key_format"):
                raise ConfigError(f"{where}.header_key_format", "not implemented by legatus")
            if opts.send_fully_qualified_url:
                raise ConfigError(f"{where}.send_fully_qualified_url", "not implemented by legatus")
            if opts.HasField("allow_absolute_url"):
                kwargs["allow_absolute_url"] = opts.allow_absolute_url.value
            kwargs["accept_http_10"] = opts.accept_http_10
            kwargs["default_host_for_http_10"] = opts.default_host_for_http_10
            kwargs["enable_trailers"] = opts.enable_trailers
            kwargs["allow_chunked_length"] = opts.allow_chunked_length
        try:
            return cls(**kwargs)
        except ValueError as e:
            raise ConfigError(path, str(e)) from None


DEFAULT_SETTINGS = Http1Settings()
