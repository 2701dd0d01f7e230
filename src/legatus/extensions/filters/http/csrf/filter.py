"""The CSRF filter (Envoy's ``envoy.filters.http.csrf``): origin verification.

The policy of a request is the most specific ``CsrfPolicy`` under this filter's name in its
route's ``typed_per_filter_config`` levels (route, virtual host, route configuration), else
the filter's own. When the policy is enabled (``filter_enabled``, a runtime fractional
percent) or shadow-enabled (``shadow_enabled``, 0 % when unset), a request whose method
changes state (``POST``, ``PUT``, ``DELETE``, ``PATCH``) is checked:

- its source origin is the host and port of ``origin`` (as a URL; the value itself when it
  does not parse as one), else of ``referer``; an ``origin`` of exactly ``null`` (an opaque
  origin) or neither header counts ``missing_source_origin`` (``additional_origins`` do not
  apply, ``referer`` is not read);
- otherwise it is valid when it equals the target origin (the host and port of
  ``<:scheme>://<host>``) or matches one of ``additional_origins``; else ``request_invalid``
  counts;
- a valid request counts ``request_valid`` and goes on; so does any request in shadow mode
  (shadow-enabled, not enabled); any other is answered 403 ``Invalid origin``, details
  ``csrf_origin_mismatch``.

Stats: ``http.<stat_prefix>.csrf.*``. The flags are drawn where Envoy draws them (enabled,
then shadow-enabled; again after an invalid request), so fractional percents behave alike.
"""

from __future__ import annotations

from dataclasses import dataclass

from legatus.common.matchers import StringMatcher
from legatus.common.runtime_fraction import FractionalPercentFlag
from legatus.config.errors import join_path
from legatus.config.supported import check_supported
from legatus.http.filter import FilterHeadersStatus, StreamDecoderFilter
from legatus.http.http1.request_head import parse_absolute_url
from legatus.stats.store import StatSet, counter

_POLICY_FIELDS = ("filter_enabled", "shadow_enabled", "additional_origins")
_MODIFY_METHODS = frozenset(("POST", "PUT", "DELETE", "PATCH"))
_BODY = b"Invalid origin"
_DETAILS = "csrf_origin_mismatch"
_OPAQUE_ORIGIN = "null"  # a browser's origin for privacy-sensitive contexts: no origin
_CONTINUE = FilterHeadersStatus.CONTINUE


class CsrfStats(StatSet):
    """``http.<stat_prefix>.csrf.*``."""

    missing_source_origin = counter()
    request_invalid = counter()
    request_valid = counter()


@dataclass(frozen=True, slots=True, kw_only=True)
class CsrfPolicy:
    filter_enabled: FractionalPercentFlag
    shadow_enabled: FractionalPercentFlag
    additional_origins: tuple[StringMatcher, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class CsrfConfig:
    stats: CsrfStats
    policy: CsrfPolicy  # the filter's own
    name: str  # the HttpFilter name: the key of the per-route policies


def compile_policy(proto, context, path: str) -> CsrfPolicy:
    check_supported(proto, _POLICY_FIELDS, path, "CsrfPolicy")
    runtime, rng = context.runtime, context.random
    origins_path = join_path(path, "additional_origins")
    return CsrfPolicy(
        filter_enabled=FractionalPercentFlag(
            proto.filter_enabled if proto.HasField("filter_enabled") else None,
            runtime=runtime,
            rng=rng,
            unset=True,  # (required: never unset once validated)
        ),
        shadow_enabled=FractionalPercentFlag(
            proto.shadow_enabled if proto.HasField("shadow_enabled") else None,
            runtime=runtime,
            rng=rng,
            unset=False,
        ),
        additional_origins=tuple(
            StringMatcher(m, f"{origins_path}[{i}]") for i, m in enumerate(proto.additional_origins)
        ),
    )


def compile_config(proto, context, path: str) -> CsrfConfig:
    prefix = context.http_stat_prefix or ""
    return CsrfConfig(
        stats=CsrfStats(context.store.scope(f"http.{prefix}.csrf.")),
        policy=compile_policy(proto, context, path),
        name=context.http_filter_name,
    )


def host_and_port(url: str | None) -> str:
    """Envoy's hostAndPort for the CSRF filter: the URL's host and port, the value itself when
    it does not parse as an absolute URL, "" for none."""
    if not url:
        return ""
    parsed = parse_absolute_url(url, False)
    return parsed[1] if parsed is not None else url


class CsrfFilter(StreamDecoderFilter):
    __slots__ = ("config", "decoder_callbacks")

    def __init__(self, config: CsrfConfig) -> None:
        self.config = config

    def decode_headers(self, headers, end_stream: bool) -> FilterHeadersStatus:
        config = self.config
        policy = config.policy
        route = self.decoder_callbacks.route
        if route is not None:
            policy = route.most_specific_per_filter_config(config.name) or policy
        if not policy.filter_enabled.enabled() and not policy.shadow_enabled.enabled():
            return _CONTINUE
        if headers.get(":method") not in _MODIFY_METHODS:
            return _CONTINUE
        stats = config.stats
        origin = headers.get("origin")
        if origin == _OPAQUE_ORIGIN:
            source = ""
        else:
            source = host_and_port(origin) or host_and_port(headers.get("referer"))
        if not source:
            stats.missing_source_origin.inc()
        elif not self._origin_allowed(policy, source, headers):
            stats.request_invalid.inc()
        else:
            stats.request_valid.inc()
            return _CONTINUE
        if policy.shadow_enabled.enabled() and not policy.filter_enabled.enabled():
            return _CONTINUE
        self.decoder_callbacks.send_local_reply(403, _BODY, details=_DETAILS)
        return FilterHeadersStatus.STOP_ITERATION

    @staticmethod
    def _origin_allowed(policy: CsrfPolicy, source: str, headers) -> bool:
        host = headers.get(":authority")
        target = host_and_port(f"{headers.get(':scheme') or 'http'}://{host}") if host else ""
        if source == target:
            return True
        return any(m.matches(source) for m in policy.additional_origins)
