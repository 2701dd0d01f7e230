"""Envoy's tag extraction: ``cluster.foo.upstream_rq_503`` -> ``cluster.upstream_rq`` plus
``[("envoy.response_code", "503"), ("envoy.cluster_name", "foo")]``.

Theory of operation. An extractor looks at the *full* stat name and, when it
matches, yields one tag and a character range to cut out of the name; the
tag-extracted name is the full name minus the union of all cut ranges. Three
kinds exist, as in Envoy (source/common/stats/tag_extractor_impl.cc):

- regex: group 1 is what to cut, group 2 (when non-empty) is the value;
  Envoy's defaults are RE2 and may carry a *negative value* ("admin" is never a
  listener address). Custom ``stats_tags`` regexes are std::regex in Envoy:
  group 1 may be empty and the value is group 2 whenever the regex has one.
- tokens: a dotted pattern where ``*`` is one segment, ``**`` any number of
  segments and ``$`` the captured segment (``cluster.$.**``); the segment and
  one neighbouring dot are cut.
- fixed: ``stats_tags[].fixed_value`` / ``--stats-tag``; always applies, cuts
  nothing.

Order matters for the label order Prometheus shows, so it follows Envoy's
TagProducerImpl: extractors whose pattern has no literal first segment run
first (default regexes, then default token patterns, then CLI and config
tags, each in declaration order), then those keyed by the stat's first
segment, in the same order. When two extractors share a tag name (the two
``envoy.http_conn_manager_prefix`` patterns), only the first match counts.

The default table is Envoy 1.40's (source/common/config/well_known_names.cc),
checked against the regex strings in the 1.40 binary and against its
/stats/prometheus output. Results are cached per name: stat names are a
bounded set and the admin endpoints ask for the same ones on every scrape.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

Tags = tuple[tuple[str, str], ...]

# Regex building blocks of well_known_names.cc, written in Python's dialect.
_EXPANSIONS = {
    "<ADDRESS>": r"(?:(?:\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}|\[[a-fA-F_\d]+\])_\d+)",
    "<CIPHER>": r"[\w-]+",
    "<TLS_VERSION>": r"TLSv\d\.\d",
    "<TAG_VALUE>": r"[^\.]+",
    "<ROUTE_CONFIG_NAME>": r"[\w\-\./]+",
    "<SCOPED_ROUTE_CONFIG_NAME>": r"[\w\-\.]+",
    "<LISTENER_OR_CLUSTER_WITH_NAME>": r"(?:listener|cluster)\..*?",
    "<PROXY_PROTOCOL_VERSION>": r"\d",
}

# (tag name, regex, required substring, negative value), in Envoy's order.
_DEFAULT_REGEXES: tuple[tuple[str, str, str, str], ...] = (
    ("envoy.response_code", r"_rq(_(\d{3}))$", "_rq_", ""),
    ("envoy.response_code_class", r"_rq_((\d))xx$", "_rq_", ""),
    (
        "envoy.dynamo_partition_id",
        r"^http\.<TAG_VALUE>\.dynamodb\.table\.<TAG_VALUE>\.capacity\.<TAG_VALUE>"
        r"(\.__partition_id=(\w{7}))$",
        ".dynamodb.table.",
        "",
    ),
    (
        "envoy.dynamo_operation",
        r"^http\.<TAG_VALUE>\.dynamodb.(?:operation|table\.<TAG_VALUE>\.capacity)"
        r"(\.(<TAG_VALUE>))(?:\.|$)",
        ".dynamodb.",
        "",
    ),
    (
        "envoy.dynamo_table",
        r"^http\.<TAG_VALUE>\.dynamodb.(?:table|error)\.((<TAG_VALUE>)\.)",
        ".dynamodb.",
        "",
    ),
    ("envoy.ssl_cipher", r"^listener\..*?\.ssl\.ciphers(\.(<CIPHER>))$", ".ssl.ciphers.", ""),
    (
        "envoy.ssl_curve",
        r"^<LISTENER_OR_CLUSTER_WITH_NAME>\.ssl\.curves(\.(<CIPHER>))$",
        ".ssl.curves.",
        "",
    ),
    (
        "envoy.ssl_sigalg",
        r"^<LISTENER_OR_CLUSTER_WITH_NAME>\.ssl\.sigalgs(\.(<CIPHER>))$",
        ".ssl.sigalgs.",
        "",
    ),
    (
        "envoy.ssl_version",
        r"^<LISTENER_OR_CLUSTER_WITH_NAME>\.ssl\.versions(\.(<TLS_VERSION>))$",
        ".ssl.versions.",
        "",
    ),
    ("cipher_suite", r"^cluster\.<TAG_VALUE>\.ssl\.ciphers(\.(<CIPHER>))$", ".ssl.ciphers.", ""),
    ("envoy.http_conn_manager_prefix", r"^listener\..*?\.http\.((<TAG_VALUE>)\.)", ".http.", ""),
    (
        "envoy.worker_id",
        r"^(?:listener\.(?:<ADDRESS>|<TAG_VALUE>)|server|listener_manager"
        r"|thread_local_cluster_manager)\.worker_((\d+)\.)",
        "",
        "",
    ),
    ("envoy.listener_address", r"^listener\.((<ADDRESS>|<TAG_VALUE>)\.)", "", "admin"),
    (
        "envoy.rds_route_config",
        r"^http\.<TAG_VALUE>\.rds\.((<ROUTE_CONFIG_NAME>)\.)\w+?$",
        ".rds.",
        "",
    ),
    (
        "envoy.scoped_rds_config",
        r"^http\.<TAG_VALUE>\.scoped_rds\.((<SCOPED_ROUTE_CONFIG_NAME>)\.)\w+?$",
        ".scoped_rds.",
        "",
    ),
    (
        "envoy.rbac_policy_name",
        r"^http\.<TAG_VALUE>\.rbac\.(?:<TAG_VALUE>\.)?policy\.((<TAG_VALUE>)\.)"
        r"(allowed|shadow_allowed|denied|shadow_denied)$",
        "",
        "",
    ),
    ("envoy.rbac_http_prefix", r"^http\.<TAG_VALUE>\.rbac\.((<TAG_VALUE>)\.).*?", "", "policy"),
    ("envoy.proxy_protocol_prefix", r"^proxy_proto\.((<TAG_VALUE>)\.).+$", "", "versions"),
    (
        "envoy.proxy_protocol_version",
        r"^proxy_proto\.((?:<TAG_VALUE>\.)?versions\.v(<PROXY_PROTOCOL_VERSION>)\.)\w+$",
        "",
        "",
    ),
    (
        "envoy.tls_certificate",
        r"^<LISTENER_OR_CLUSTER_WITH_NAME>\.ssl\.certificate\.((<TAG_VALUE>)\.).*$",
        ".ssl.certificate",
        "",
    ),
    ("envoy.xds_resource_name", r"^sds\.((<TAG_VALUE>)\.).+", "", ""),
    (
        "envoy.health_check_name",
        r"^cluster\.<TAG_VALUE>\.health_check(\.name\.(<TAG_VALUE>))\..+",
        ".health_check.name.",
        "",
    ),
)

_DEFAULT_TOKENS: tuple[tuple[str, str], ...] = (
    ("envoy.mongo_callsite", "mongo.*.collection.*.callsite.$.query.**"),
    ("envoy.mongo_collection", "mongo.*.collection.$.**.query.*"),
    ("envoy.mongo_cmd", "mongo.*.cmd.$.**"),
    ("envoy.grpc_bridge_method", "cluster.*.grpc.*.$.**"),
    ("envoy.http_user_agent", "http.*.user_agent.$.**"),
    ("envoy.virtual_cluster", "vhost.*.vcluster.$.**"),
    ("envoy.fault_downstream_cluster", "http.*.fault.$.**"),
    ("envoy.grpc_bridge_service", "cluster.*.grpc.$.**"),
    ("envoy.tcp_prefix", "tcp.$.**"),
    ("envoy.udp_prefix", "udp.$.**"),
    ("envoy.clientssl_prefix", "auth.clientssl.$.**"),
    ("envoy.ratelimit_prefix", "ratelimit.$.**"),
    ("envoy.cluster_name", "cluster.$.**"),
    ("envoy.ext_authz_prefix", "cluster.*.ext_authz.$.**"),
    ("envoy.ext_authz_prefix", "http.*.ext_authz.$.**"),
    ("envoy.http_conn_manager_prefix", "http.$.**"),
    ("envoy.virtual_host", "vhost.$.**"),
    ("envoy.mongo_prefix", "mongo.$.**"),
    ("envoy.route", "vhost.*.route.$.**"),
    ("envoy.thrift_prefix", "thrift.$.**"),
    ("envoy.redis_prefix", "redis.$.**"),
    ("envoy.local_http_ratelimit_prefix", "$.http_local_rate_limit.**"),
    ("envoy.local_network_ratelimit_prefix", "local_rate_limit.$.**"),
    ("envoy.local_listener_ratelimit_prefix", "listener_local_ratelimit.$.**"),
    ("envoy.dns_filter_prefix", "dns_filter.$.**"),
    ("envoy.connection_limit_prefix", "connection_limit.$.**"),
    ("envoy.rbac_prefix", "$.rbac.**"),
    ("envoy.google_grpc_client_prefix", "grpc.$.**"),
)

# std::regex (ECMAScript) accepts POSIX classes inside brackets; Python does not.
_POSIX_CLASSES = {
    "[:digit:]": r"\d",
    "[:alpha:]": "a-zA-Z",
    "[:alnum:]": "a-zA-Z0-9",
    "[:upper:]": "A-Z",
    "[:lower:]": "a-z",
    "[:space:]": r"\s",
    "[:xdigit:]": "0-9a-fA-F",
    "[:w:]": r"\w",
    "[:punct:]": r"!-/:-@\[-`{-~",
}
_REGEX_WORD = re.compile(r"\\\.|\(\?=\\\.\)")


class TagConfigError(ValueError):
    """A ``stats_tags`` entry Envoy would reject at start-up; the text is Envoy's."""


def _regex_prefix(regex: str) -> str:
    """The literal first segment of an anchored regex (``^cluster\\.`` -> ``cluster``).

    Envoy files extractors under it so a stat only meets the ones that can match
    its first segment; that also decides the order of the tags.
    """
    if not regex.startswith("^"):
        return ""
    for i in range(1, len(regex)):
        c = regex[i]
        if not (c.isascii() and (c.isalnum() or c == "_")):
            if i > 1:
                last = i == len(regex) - 1
                if (not last and _REGEX_WORD.match(regex, i)) or (last and c == "$"):
                    return regex[1:i]
            return ""
    return ""


class _RegexExtractor:
    __slots__ = ("_negative", "_regex", "_std", "_substr", "name", "prefix", "shared")

    def __init__(
        self, name: str, regex: str, *, substr: str = "", negative: str = "", std: bool = False
    ) -> None:
        self.name = name
        self.prefix = _regex_prefix(regex)
        if std:
            for posix, python in _POSIX_CLASSES.items():
                regex = regex.replace(posix, python)
        try:
            self._regex = re.compile(regex, re.ASCII)
        except re.error as exc:
            raise TagConfigError(f"Invalid regex '{regex}': {exc}") from None
        if self._regex.groups < 1:
            raise TagConfigError(f"Invalid regex '{regex}': the tag value needs a group")
        self._substr = substr
        self._negative = negative
        self._std = std
        self.shared = False

    def extract(self, stat_name: str, tokens: Sequence[str]) -> tuple[str, int, int] | None:
        if self._substr and self._substr not in stat_name:
            return None
        m = self._regex.search(stat_name)
        if m is None:
            return None
        start, end = m.span(1)
        if self._std:  # std::regex: value is group 2 if the regex has one, even if empty
            value = (m.group(2) if self._regex.groups >= 2 else m.group(1)) or ""
            return value, max(start, 0), max(end, 0)
        removed = m.group(1)
        if not removed:
            return None
        value = (m.group(2) if self._regex.groups >= 2 else None) or removed
        if self._negative and value == self._negative:
            return None
        return value, start, end


class _TokenExtractor:
    __slots__ = ("_capture", "_pattern", "name", "prefix", "shared")

    def __init__(self, name: str, pattern: str) -> None:
        self.name = name
        self._pattern = tuple(pattern.split("."))
        self._capture = self._pattern.index("$")
        first = self._pattern[0]
        self.prefix = "" if first in ("$", "*", "**") else first
        self.shared = False

    def extract(self, stat_name: str, tokens: Sequence[str]) -> tuple[str, int, int] | None:
        found = self._search(tokens, 0, 0, 0, None)
        if found is None:
            return None
        index, start = found
        value = tokens[index]
        end = start + len(value)
        if index < len(tokens) - 1:
            end += 1  # cut the dot that follows: "ab." / "cd."
        elif start > 0:
            start -= 1  # last segment: cut the dot before it: ".ef"
        return value, start, end

    def _search(
        self, tokens: Sequence[str], ti: int, pi: int, char: int, found: tuple[int, int] | None
    ) -> tuple[int, int] | None:
        """Match pattern[pi:] against tokens[ti:] (token ti starts at ``char``).

        ``found`` is the capture made so far. Returns (index of the captured
        token, its first character) on a full match, else None; every pattern
        has exactly one ``$``, so a full match always has a capture.
        """
        pattern = self._pattern
        while ti < len(tokens) and pi < len(pattern):
            expected = pattern[pi]
            if pi == self._capture:
                found = (ti, char)
            elif expected == "**":
                if pi == len(pattern) - 1:
                    return found
                for start in range(ti, len(tokens)):  # the rest must match somewhere
                    rest = self._search(tokens, start, pi + 1, char, found)
                    if rest is not None:
                        return rest
                    char += len(tokens[start]) + 1
                return None
            elif expected != "*" and expected != tokens[ti]:
                return None
            char += len(tokens[ti]) + 1
            ti += 1
            pi += 1
        if pi == len(pattern) and ti == len(tokens):
            return found
        return None


class _FixedExtractor:
    __slots__ = ("_value", "name", "prefix", "shared")

    def __init__(self, name: str, value: str) -> None:
        self.name = name
        self._value = value
        self.prefix = ""
        self.shared = False

    def extract(self, stat_name: str, tokens: Sequence[str]) -> tuple[str, int, int] | None:
        return self._value, 0, 0


_Extractor = _RegexExtractor | _TokenExtractor | _FixedExtractor


def _defaults_named(name: str | None = None) -> list[_Extractor]:
    regexes = [
        _RegexExtractor(tag, _expand(regex), substr=substr, negative=negative)
        for tag, regex, substr, negative in _DEFAULT_REGEXES
        if name is None or tag == name
    ]
    tokens = [_TokenExtractor(tag, p) for tag, p in _DEFAULT_TOKENS if name is None or tag == name]
    return [*regexes, *tokens]


def _expand(regex: str) -> str:
    for key, value in _EXPANSIONS.items():
        regex = regex.replace(key, value)
    return regex


class TagExtractor:
    """Turns stat names into (tag-extracted name, tags); immutable once built."""

    def __init__(self, extractors: Iterable[_Extractor]) -> None:
        extractors = list(extractors)
        seen: dict[str, _Extractor] = {}
        for e in extractors:
            other = seen.setdefault(e.name, e)
            if other is not e:
                other.shared = e.shared = True
        self._unprefixed = tuple(e for e in extractors if not e.prefix)
        by_prefix: dict[str, list[_Extractor]] = {}
        for e in extractors:
            if e.prefix:
                by_prefix.setdefault(e.prefix, []).append(e)
        self._by_prefix = {k: tuple(v) for k, v in by_prefix.items()}
        self._cache: dict[str, tuple[str, Tags]] = {}

    @classmethod
    def default(cls) -> TagExtractor:
        """Envoy's default tags, as with no ``stats_config`` at all."""
        return cls(_defaults_named())

    @classmethod
    def from_stats_config(
        cls, stats_config: Any = None, cli_tags: Iterable[tuple[str, str]] = ()
    ) -> TagExtractor:
        """From ``envoy.config.metrics.v3.StatsConfig`` (None: defaults) and ``--stats-tag``.

        Raises TagConfigError with Envoy's text for a tag without a regex and no
        default of that name, or a regex that does not compile.
        """
        extractors: list[_Extractor] = []
        use_defaults = True
        if stats_config is not None and stats_config.HasField("use_all_default_tags"):
            use_defaults = stats_config.use_all_default_tags.value
        if use_defaults:
            extractors.extend(_defaults_named())
        for name, value in cli_tags:
            extractors.append(_FixedExtractor(name, value))
        for spec in stats_config.stats_tags if stats_config is not None else ():
            name = spec.tag_name
            if not name:
                raise TagConfigError("tag_name cannot be empty")
            if spec.WhichOneof("tag_value") == "fixed_value":
                extractors.append(_FixedExtractor(name, spec.fixed_value))
            elif spec.regex:
                extractors.append(_RegexExtractor(name, spec.regex, std=True))
            else:
                defaults = _defaults_named(name)
                if not defaults:
                    raise TagConfigError(
                        "No regex specified for tag specifier and no default regex for "
                        f"name: '{name}'"
                    )
                extractors.extend(defaults)
        return cls(extractors)

    def extract(self, name: str) -> tuple[str, Tags]:
        """``(tag_extracted_name, ((tag_name, value), ...))`` for a full stat name."""
        cached = self._cache.get(name)
        if cached is None:
            cached = self._cache[name] = self._extract(name)
        return cached

    def _extract(self, name: str) -> tuple[str, Tags]:
        tokens = name.split(".")
        dot = name.find(".")
        keyed = self._by_prefix.get(name[:dot], ()) if dot >= 0 else ()
        tags: list[tuple[str, str]] = []
        cuts: list[tuple[int, int]] = []
        done: set[str] = set()
        for extractor in (*self._unprefixed, *keyed):
            if extractor.shared and extractor.name in done:
                continue
            found = extractor.extract(name, tokens)
            if found is None:
                continue
            value, start, end = found
            tags.append((extractor.name, value))
            if end > start:
                cuts.append((start, end))
            if extractor.shared:
                done.add(extractor.name)
        return _cut(name, cuts), tuple(tags)


def _cut(name: str, cuts: list[tuple[int, int]]) -> str:
    """``name`` without the union of the half-open ranges in ``cuts``."""
    if not cuts:
        return name
    cuts.sort()
    parts, pos = [], 0
    for start, end in cuts:
        if start > pos:
            parts.append(name[pos:start])
        pos = max(pos, end)
    parts.append(name[pos:])
    return "".join(parts)
