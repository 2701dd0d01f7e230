"""``/stats`` (text, JSON, Prometheus) and ``/stats/prometheus``.

Output shapes are Envoy 1.40's, checked against the real binary:

- text: text readouts (``name: "value"``), then counters and gauges together
  (``name: 12``), then histograms, each part sorted by name as plain strings;
  a histogram never written prints ``name: No recorded values``, others
  ``P0(interval,cumulative) P25(...) ... P100(...)`` or, with
  ``?histogram_buckets=cumulative|disjoint``, ``B0.5(interval,cumulative) ...``;
- JSON: ``{"stats":[{"name":..,"value":..},...,{"histograms":{...}}]}`` on one
  line, quantiles as ``{"cumulative":9.05,"interval":null}``;
- errors are 400 with Envoy's usage texts; an invalid regex answers
  ``Invalid re2 regex: ...`` (the tail is Python's message, not RE2's);
- ``hidden=include|only|exclude`` as Envoy 1.40 parses it (it refuses the
  ``showonly`` its docs name; legatus accepts both).

legatus keeps cumulative histograms only (no per-flush interval), so every
*interval* figure prints as Envoy prints an empty interval: ``nan`` / ``null``
for quantiles and 0 for bucket counts. ``detailed`` buckets are the histogram's
configured buckets, not circllhist's fine bins.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from legatus.server.admin.response import HTML, AdminResponse, Query, json_body, respond, text
from legatus.stats import prometheus
from legatus.stats.store import Counter, Gauge, Histogram, Stat, TextReadout
from legatus.stats.tag_extractor import TagExtractor

QUANTILES = (0.0, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 1.0)
_QUANTILE_LABELS = tuple(format(q * 100, "g") for q in QUANTILES)
_TYPES = {
    "All": None,
    "Counters": Counter,
    "Gauges": Gauge,
    "Histograms": Histogram,
    "TextReadouts": TextReadout,
}
_HIDDEN = {"include": "include", "exclude": "exclude", "only": "only", "showonly": "only"}
_FORMATS = ("text", "json", "prometheus", "html")
_BUCKET_MODES = ("", "summary", "cumulative", "disjoint", "detailed")

FORMAT_USAGE = "usage: /stats?format=(html|active-html|json|prometheus|text)\n\n"
HIDDEN_USAGE = "usage: /stats?hidden=(include|only|exclude)\n\n"
BUCKETS_USAGE = (
    "usage: /stats?histogram_buckets=(cumulative|disjoint|detailed|summary|prometheusnative)\n"
)


@dataclass(frozen=True, slots=True, kw_only=True)
class StatsParams:
    """The query of /stats or /stats/prometheus, validated once."""

    used_only: bool = False
    filter: re.Pattern[str] | None = None
    invert_filter: bool = False
    format: str = "text"
    type: type | None = None
    hidden: str = "exclude"
    buckets: str = ""  # "" (unset) is "summary" for text and JSON, "cumulative" for Prometheus
    text_readouts: bool = False

    @classmethod
    def parse(cls, query: Query, *, prometheus: bool = False) -> StatsParams | AdminResponse:
        """The params, or the 400 Envoy answers for a bad one."""
        pattern = None
        filter_text = query.get("filter")
        if filter_text:
            try:
                pattern = re.compile(filter_text)
            except re.error as exc:
                return text(f"Invalid re2 regex: {exc}", 400)
        fmt = "prometheus" if prometheus else query.get("format", "text")
        if fmt not in _FORMATS:
            return text(FORMAT_USAGE, 400)
        type_name = query.get("type", "All")
        if type_name not in _TYPES:
            return text("invalid &type= param", 400)
        hidden = _HIDDEN.get(query.get("hidden") or "exclude")
        if hidden is None:
            return text(HIDDEN_USAGE, 400)
        buckets = query.get("histogram_buckets", "")
        if fmt == "prometheus" and buckets == "prometheusnative":
            return text(
                "unsupported prometheusnative histogram type when not using protobuf "
                "exposition format",
                400,
            )
        if buckets not in _BUCKET_MODES:
            return text(BUCKETS_USAGE, 400)
        if fmt == "prometheus" and buckets not in ("", "summary", "cumulative"):
            return text("unsupported prometheus histogram bucket mode", 400)
        return cls(
            used_only="usedonly" in query,
            filter=pattern,
            invert_filter="invert_filter" in query,
            format=fmt,
            type=_TYPES[type_name],
            hidden=hidden,
            buckets=buckets,
            text_readouts="text_readouts" in query,
        )

    def predicate(self) -> Callable[[Stat], bool]:
        used_only, pattern, invert = self.used_only, self.filter, self.invert_filter
        hidden, wanted = self.hidden, self.type

        def include(stat: Stat) -> bool:
            if hidden != "include" and stat.hidden != (hidden == "only"):
                return False  # exclude: drop hidden stats; only: drop visible ones
            if wanted is not None and type(stat) is not wanted:
                return False
            if used_only and not stat.used:
                return False
            return pattern is None or (pattern.search(stat.name) is not None) != invert

        return include


def tag_extractor(context: Any) -> TagExtractor:
    """The server's extractor (built once at start-up from ``stats_config`` and
    ``--stats-tag``); contexts without one (test fakes) get a fresh default one."""
    own = getattr(context, "tag_extractor", None)
    if own is not None:
        return own
    bootstrap = context.bootstrap
    config = None
    if bootstrap is not None and bootstrap.HasField("stats_config"):
        config = bootstrap.stats_config
    return TagExtractor.from_stats_config(config, tuple(getattr(context.options, "stats_tags", ())))


# Number formatting ----------------------------------------------------------------


def format_number(value: float) -> str:
    """fmt's ``{}`` for a double: shortest round trip, no trailing ``.0`` (``9.05``, ``0``)."""
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    r = repr(float(value))
    return r[:-2] if r.endswith(".0") else r


def json_number(value: float) -> str:
    """std::to_chars shortest form (Envoy's JSON streamer): the shorter of fixed and
    scientific, fixed on a tie, so 300000 is ``3e+05`` and 1800000 ``1800000``."""
    if math.isnan(value) or math.isinf(value):
        return "null"
    d = Decimal(repr(float(value))).normalize()
    sign, digits, exponent = d.as_tuple()
    if digits == (0,):
        return "0"
    mantissa = "".join(map(str, digits))
    exp10 = int(exponent) + len(digits) - 1
    sci = (
        ("-" if sign else "")
        + mantissa[0]
        + ("." + mantissa[1:] if len(mantissa) > 1 else "")
        + ("e-" if exp10 < 0 else "e+")
        + f"{abs(exp10):02d}"
    )
    fixed = format(d, "f")
    return fixed if len(fixed) <= len(sci) else sci


# Handlers ---------------------------------------------------------------------------


def handle_stats(context: Any, query: Query) -> AdminResponse:
    params = StatsParams.parse(query)
    if isinstance(params, AdminResponse):
        return params
    if params.format == "prometheus":
        return _prometheus(context, params)
    include = params.predicate()
    readouts: list[TextReadout] = []
    numbers: list[Counter | Gauge] = []
    histograms: list[Histogram] = []
    for stat in context.stats:
        if not include(stat):
            continue
        if isinstance(stat, Histogram):
            histograms.append(stat)
        elif isinstance(stat, TextReadout):
            readouts.append(stat)
        else:
            numbers.append(stat)
    for group in (readouts, numbers, histograms):
        group.sort(key=_name)
    if params.format == "json":
        return json_body(_render_json(readouts, numbers, histograms, params.buckets))
    body = _render_text(readouts, numbers, histograms, params.buckets)
    if params.format == "html":
        escaped = body.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        return respond(
            f"<!DOCTYPE html>\n<html><body><pre>{escaped}</pre></body></html>\n", content_type=HTML
        )
    return text(body)


def handle_prometheus(context: Any, query: Query) -> AdminResponse:
    params = StatsParams.parse(query, prometheus=True)
    if isinstance(params, AdminResponse):
        return params
    return _prometheus(context, params)


def _prometheus(context: Any, params: StatsParams) -> AdminResponse:
    body = prometheus.render(
        context.stats,
        tag_extractor(context),
        include=params.predicate(),
        text_readouts=params.text_readouts,
        summary=params.buckets == "summary",
    )
    return text(body)


def _name(stat: Stat) -> str:
    return stat.name


def _render_text(
    readouts: list[TextReadout],
    numbers: list[Counter | Gauge],
    histograms: list[Histogram],
    buckets: str,
) -> str:
    out = [f'{s.name}: "{s.value}"\n' for s in readouts]
    out.extend(f"{s.name}: {s.total() if isinstance(s, Gauge) else s.value}\n" for s in numbers)
    for h in histograms:
        if not h.used:
            out.append(f"{h.name}: No recorded values\n")
        elif buckets in ("", "summary"):
            out.append(f"{h.name}: {_quantile_summary(h)}\n")
        elif buckets == "detailed":
            totals = ", ".join(f"{lo:g},{width:g}:{n}" for lo, width, n in _detail(h))
            out.append(
                f"{h.name}:\n  totals={totals}\n  intervals=\n  summary={_quantile_summary(h)}\n"
            )
        else:
            counts = h.cumulative() if buckets == "cumulative" else h.counts[:-1]
            cells = " ".join(f"B{b:g}(0,{n})" for b, n in zip(h.bounds, counts, strict=True))
            out.append(f"{h.name}: {cells}\n")
    return "".join(out)


def _quantile_summary(h: Histogram) -> str:
    return " ".join(
        f"P{label}(nan,{format_number(h.quantile(q))})"
        for label, q in zip(_QUANTILE_LABELS, QUANTILES, strict=True)
    )


def _detail(h: Histogram) -> list[tuple[float, float, int]]:
    """(lower bound, width, count) of each non-empty bucket; the overflow bucket is given
    the width of its lower bound, as Histogram.quantile() assumes."""
    out, lower = [], 0.0
    for i, n in enumerate(h.counts):
        upper = h.bounds[i] if i < len(h.bounds) else lower * 2 or 1.0
        if n:
            out.append((lower, upper - lower, n))
        lower = upper
    return out


def _render_json(
    readouts: list[TextReadout],
    numbers: list[Counter | Gauge],
    histograms: list[Histogram],
    buckets: str,
) -> str:
    entries = [f'{{"name":{_js(s.name)},"value":{_js(s.value)}}}' for s in readouts]
    entries.extend(
        f'{{"name":{_js(s.name)},"value":{s.total() if isinstance(s, Gauge) else s.value}}}'
        for s in numbers
    )
    if histograms:
        entries.append(f'{{"histograms":{_json_histograms(histograms, buckets)}}}')
    return '{"stats":[' + ",".join(entries) + "]}"


def _js(text_value: str) -> str:
    return json.dumps(text_value, ensure_ascii=False)


def _json_quantiles(h: Histogram) -> str:
    return ",".join(
        f'{{"cumulative":{json_number(h.quantile(q))},"interval":null}}' for q in QUANTILES
    )


def _json_histograms(histograms: list[Histogram], buckets: str) -> str:
    supported = "[" + ",".join(_QUANTILE_LABELS) + "]"
    if buckets in ("", "summary"):
        computed = ",".join(
            f'{{"name":{_js(h.name)},"values":[{_json_quantiles(h)}]}}' for h in histograms
        )
        return f'{{"supported_quantiles":{supported},"computed_quantiles":[{computed}]}}'
    if buckets == "detailed":
        details = ",".join(
            f'{{"name":{_js(h.name)},"totals":['
            + ",".join(
                f'{{"lower_bound":{json_number(lo)},"width":{json_number(w)},"count":{n}}}'
                for lo, w, n in _detail(h)
            )
            + f'],"intervals":[],"percentiles":[{_json_quantiles(h)}]}}'
            for h in histograms
        )
        return f'{{"supported_percentiles":{supported},"details":[{details}]}}'
    items = []
    for h in histograms:
        counts = h.cumulative() if buckets == "cumulative" else h.counts[:-1]
        cells = ",".join(
            f'{{"upper_bound":{json_number(b)},"interval":0,"cumulative":{n}}}'
            for b, n in zip(h.bounds, counts, strict=True)
        )
        items.append(f'{{"name":{_js(h.name)},"buckets":[{cells}]}}')
    return "[" + ",".join(items) + "]"
