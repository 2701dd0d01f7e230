"""Envoy's ``/stats/prometheus`` text exposition (format 0.0.4), byte for byte.

Theory of operation. Every stat's name goes through tag extraction; stats with
the same tag-extracted name form one metric family, named ``envoy_`` + the
sanitized extracted name, with one ``# TYPE`` line and one series per stat whose
labels are its tags in extraction order. Families come out counters first, then
gauges, then text readouts (only with ``?text_readouts``), then histograms, as
Envoy 1.40 emits them.

Ordering and number formatting were compared with the real Envoy's output:

- families sort by their tag-extracted name and series by their full name,
  both compared segment by segment (Envoy's symbol-table order), so
  ``cluster.foo.x`` sorts before ``cluster.foo-bar.x`` although '-' < '.';
- a stat without tags still prints braces: ``envoy_server_live{} 1``;
- histogram bounds and sums print like C's ``%.32g`` (``le="0.5"``,
  ``le="0.10000000000000000555111512312578"``), the ``+Inf`` bucket and
  ``_count`` carry the sample count.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

from legatus.stats.store import Counter, Gauge, Histogram, Stat, TextReadout
from legatus.stats.tag_extractor import TagExtractor, Tags

_INVALID = re.compile(r"[^a-zA-Z0-9_]")
_VALUE_ESCAPES = str.maketrans({"\\": "\\\\", "\n": "\\n", '"': '\\"'})


def sanitize_name(name: str) -> str:
    """A Prometheus metric or label name: every character outside [a-zA-Z0-9_] becomes '_'."""
    return _INVALID.sub("_", name)


def metric_name(tag_extracted_name: str) -> str:
    return "envoy_" + sanitize_name(tag_extracted_name)


def format_tags(tags: Tags) -> str:
    """``a_b="v",c="w"``: names sanitized, values escaped as Prometheus' text format wants."""
    return ",".join(f'{sanitize_name(k)}="{v.translate(_VALUE_ESCAPES)}"' for k, v in tags)


def format_double(value: float) -> str:
    """C's ``%.32g``, which Envoy uses for bucket bounds and sums."""
    return format(value, ".32g")


def _segments(name: str) -> list[str]:
    return name.split(".")


def render(
    stats: Iterable[Stat],
    extractor: TagExtractor,
    *,
    include: Callable[[Stat], bool] | None = None,
    text_readouts: bool = False,
    summary: bool = False,
) -> str:
    """The whole exposition for ``stats`` (hidden stats are the caller's filter's job).

    ``summary`` renders histograms as Prometheus summaries (``?histogram_buckets=summary``).
    Envoy's summaries hold the last flush interval; legatus has no intervals, so its
    quantiles, sum and count are cumulative.
    """
    kinds: dict[type, list[Stat]] = {Counter: [], Gauge: [], TextReadout: [], Histogram: []}
    for stat in stats:
        if include is None or include(stat):
            kinds[type(stat)].append(stat)
    out: list[str] = []
    _families(out, kinds[Counter], extractor, "counter", _render_number)
    _families(out, kinds[Gauge], extractor, "gauge", _render_number)
    if text_readouts:
        _families(out, kinds[TextReadout], extractor, "gauge", _render_text_readout)
    if summary:
        _families(out, kinds[Histogram], extractor, "summary", _render_summary)
    else:
        _families(out, kinds[Histogram], extractor, "histogram", _render_histogram)
    return "".join(out)


_Renderer = Callable[[list[str], str, Stat, Tags], None]


def _families(
    out: list[str], stats: list[Stat], extractor: TagExtractor, kind: str, renderer: _Renderer
) -> None:
    groups: dict[str, list[tuple[Stat, Tags]]] = {}
    for stat in stats:
        extracted, tags = extractor.extract(stat.name)
        groups.setdefault(extracted, []).append((stat, tags))
    for extracted in sorted(groups, key=_segments):
        name = metric_name(extracted)
        out.append(f"# TYPE {name} {kind}\n")
        for stat, tags in sorted(groups[extracted], key=lambda st: _segments(st[0].name)):
            renderer(out, name, stat, tags)


def _render_number(out: list[str], name: str, stat: Stat, tags: Tags) -> None:
    value = stat.total() if isinstance(stat, Gauge) else stat.value  # type: ignore[union-attr]
    out.append(f"{name}{{{format_tags(tags)}}} {value}\n")


def _render_text_readout(out: list[str], name: str, stat: Stat, tags: Tags) -> None:
    labels = format_tags((*tags, ("text_value", stat.value)))  # type: ignore[union-attr]
    out.append(f"{name}{{{labels}}} 0\n")


def _render_histogram(out: list[str], name: str, stat: Stat, tags: Tags) -> None:
    assert isinstance(stat, Histogram)
    labels = format_tags(tags)
    bucket_labels = labels + "," if labels else ""
    count = stat.sample_count
    for bound, cumulative in zip(stat.bounds, stat.cumulative(), strict=True):
        out.append(f'{name}_bucket{{{bucket_labels}le="{format_double(bound)}"}} {cumulative}\n')
    out.append(f'{name}_bucket{{{bucket_labels}le="+Inf"}} {count}\n')
    out.append(f"{name}_sum{{{labels}}} {format_double(stat.sample_sum)}\n")
    out.append(f"{name}_count{{{labels}}} {count}\n")


_SUMMARY_QUANTILES = (0.0, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 1.0)


def _render_summary(out: list[str], name: str, stat: Stat, tags: Tags) -> None:
    assert isinstance(stat, Histogram)
    labels = format_tags(tags)
    quantile_labels = labels + "," if labels else ""
    for q in _SUMMARY_QUANTILES:
        value = format_double(stat.quantile(q))
        out.append(f'{name}{{{quantile_labels}quantile="{q:g}"}} {value}\n')
    out.append(f"{name}_sum{{{labels}}} {format_double(stat.sample_sum)}\n")
    out.append(f"{name}_count{{{labels}}} {stat.sample_count}\n")
