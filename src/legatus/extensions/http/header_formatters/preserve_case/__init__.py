"""``envoy.http.stateful_header_formatters.preserve_case``: header names go out as they arrived.

A stateful HTTP/1 header formatter (see http/http1/header_formatter): the codec that decodes
a head records each name as it arrived; the encoder that writes the head writes a recorded
name that way, and any other name (one Envoy or a filter added) lower-case, or proper-cased
with ``formatter_type_on_envoy_headers: PROPER_CASE``. When a name arrived in several
spellings the first one is kept. ``forward_reason_phrase``: the status line sent downstream
carries the upstream's reason phrase (an empty one gives way to the standard phrase).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from legatus.config.supported import check_supported
from legatus.http.http1.header_formatter import proper_case
from legatus.registry import Category, Registry, extension

NAME = "envoy.http.stateful_header_formatters.preserve_case"
CONFIG_TYPE = "envoy.extensions.http.header_formatters.preserve_case.v3.PreserveCaseFormatterConfig"
_SUPPORTED = ("forward_reason_phrase", "formatter_type_on_envoy_headers")
_PROPER_CASE = 1  # FormatterTypeOnEnvoyHeaders.PROPER_CASE


class PreserveCaseFormatter:
    """The formatter of one message head."""

    __slots__ = ("_envoy_headers_proper", "_forward_reason", "_originals", "reason_phrase")

    def __init__(self, forward_reason_phrase: bool, envoy_headers_proper: bool) -> None:
        self._originals: dict[str, str] = {}
        self._forward_reason = forward_reason_phrase
        self._envoy_headers_proper = envoy_headers_proper
        self.reason_phrase = ""

    def process_keys(self, names: Iterable[str]) -> None:
        originals = self._originals
        for name in names:
            originals.setdefault(name.lower(), name)

    def set_reason_phrase(self, phrase: str) -> None:
        if self._forward_reason:
            self.reason_phrase = phrase

    def format(self, name: str) -> str:
        original = self._originals.get(name)
        if original is not None:
            return original
        return proper_case(name) if self._envoy_headers_proper else name


@dataclass(frozen=True, slots=True, kw_only=True)
class PreserveCaseConfig:
    """The compiled PreserveCaseFormatterConfig; ``create()`` makes one head's formatter."""

    forward_reason_phrase: bool = False
    envoy_headers_proper: bool = False  # formatter_type_on_envoy_headers: PROPER_CASE

    def create(self) -> PreserveCaseFormatter:
        return PreserveCaseFormatter(self.forward_reason_phrase, self.envoy_headers_proper)


def _factory(proto, context, path: str) -> PreserveCaseConfig:
    check_supported(proto, _SUPPORTED, path, "PreserveCaseFormatterConfig")
    return PreserveCaseConfig(
        forward_reason_phrase=proto.forward_reason_phrase,
        envoy_headers_proper=proto.formatter_type_on_envoy_headers == _PROPER_CASE,
    )


def register(registry: Registry) -> None:
    registry.register(extension(Category.STATEFUL_HEADER_FORMATTER, NAME, CONFIG_TYPE, _factory))
