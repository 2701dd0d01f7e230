"""``RouteAction.weighted_clusters``: pick one cluster per request by weight.

Envoy 1.40's WeightedClusterSpecifierPlugin, minus what needs a runtime or a hash policy:

- each ``ClusterWeight`` names a cluster (``name``) or a request header holding the cluster
  name (``cluster_header``), exactly one of them; ``weight`` is required;
- the total is the sum of the weights (it must be above 0 and fit in 32 bits); the
  deprecated ``total_weight`` is ignored, as Envoy 1.40 ignores it (a config whose weights
  do not add up to it loads there too);
- the request's ``random_value`` (or, with ``header_name``, the value of that header when
  it occurs once and is an unsigned decimal) modulo the total falls into one cluster's
  interval ``[sum of the weights before it, that sum + its weight)``;
- a weighted cluster has its own request/response header mutations, applied before the
  route's, its own ``host_rewrite_literal`` and ``typed_per_filter_config``.

With ``runtime_key_prefix`` each cluster's weight is read per request from the runtime key
``<prefix>.<cluster name>`` (the configured weight when the key is absent), so a canary's
share moves with ``/runtime_modify`` or a runtime layer; the total is the sum of those
weights, and a total of 0 routes nowhere (404 NR), as in Envoy.

``use_hash_policy`` and ``metadata_match`` are refused: no hash policies or subset load
balancing here yet.
"""

from __future__ import annotations

import bisect
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from legatus.common.matchers import ascii_lower, header_values
from legatus.config.errors import ConfigError, join_path
from legatus.config.supported import check_supported
from legatus.router.header_mutations import EMPTY, HeaderMutations, compile_header_mutations

__all__ = ["ClusterWeight", "WeightedClusters", "compile_weighted_clusters"]

_UINT32_MAX = 2**32 - 1
_UINT64_MAX = 2**64 - 1
_CLUSTER_WEIGHT_FIELDS = (
    "name",
    "cluster_header",
    "weight",
    "request_headers_to_add",
    "request_headers_to_remove",
    "response_headers_to_add",
    "response_headers_to_remove",
    "typed_per_filter_config",
    "host_rewrite_literal",
)


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterWeight:
    name: str  # "" when the cluster comes from cluster_header
    cluster_header: str  # lower-case header name, "" when name is set
    weight: int
    request_headers: HeaderMutations = EMPTY
    response_headers: HeaderMutations = EMPTY
    host_rewrite_literal: str = ""
    typed_per_filter_config: Mapping[str, Any] = field(
        default_factory=lambda: types.MappingProxyType({})
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class WeightedClusters:
    clusters: tuple[ClusterWeight, ...]
    total_weight: int
    header_name: str = ""  # lower-case; "" to use the request's random value
    ends: tuple[int, ...] = ()  # cumulative weights: cluster i covers [ends[i-1], ends[i])
    runtime_keys: tuple[str, ...] = ()  # with runtime_key_prefix: each cluster's weight key
    runtime: Any = None  # legatus.runtime.Runtime the keys are read from

    def pick(self, headers, random_value: int) -> ClusterWeight | None:
        index = self.pick_index(headers, random_value)
        return None if index is None else self.clusters[index]

    def pick_index(self, headers, random_value: int) -> int | None:
        """The index of the picked cluster; None when runtime weights add up to 0."""
        value = random_value
        if self.header_name:
            values = header_values(headers, self.header_name)
            if len(values) == 1:
                from_header = _simple_atou64(values[0])
                if from_header is not None:
                    value = from_header
        if self.runtime_keys:
            return self._pick_by_runtime(value)
        return bisect.bisect_right(self.ends, value % self.total_weight)

    def _pick_by_runtime(self, value: int) -> int | None:
        get = self.runtime.get_integer if self.runtime is not None else None
        ends = []
        total = 0
        for key, cluster in zip(self.runtime_keys, self.clusters, strict=True):
            total += get(key, cluster.weight) if get is not None else cluster.weight
            ends.append(total)
        if total == 0:
            return None
        return bisect.bisect_right(ends, value % total)

    def cluster_name(self, cluster: ClusterWeight, headers) -> str:
        """The cluster a picked entry names (first value of its header, "" if absent)."""
        if cluster.name:
            return cluster.name
        values = header_values(headers, cluster.cluster_header)
        return values[0] if values else ""


def compile_weighted_clusters(proto, path: str, route_name: str, runtime=None) -> WeightedClusters:
    check_supported(
        proto,
        ("clusters", "total_weight", "header_name", "runtime_key_prefix"),
        path,
        "WeightedCluster",
    )
    clusters = []
    total = 0
    for i, entry in enumerate(proto.clusters):
        entry_path = f"{join_path(path, 'clusters')}[{i}]"
        cluster = _cluster_weight(entry, entry_path)
        clusters.append(cluster)
        total += cluster.weight
        if total > _UINT32_MAX:
            raise ConfigError(
                entry_path,
                f"The sum of weights of all weighted clusters of route {route_name} exceeds "
                f"{_UINT32_MAX}",
            )
    if total == 0:
        raise ConfigError(
            join_path(path, "clusters"),
            "Sum of weights in the weighted_cluster must be greater than 0.",
        )
    ends = []
    running = 0
    for cluster in clusters:
        running += cluster.weight
        ends.append(running)
    return WeightedClusters(
        clusters=tuple(clusters),
        total_weight=total,
        header_name=ascii_lower(proto.header_name),
        ends=tuple(ends),
        runtime_keys=tuple(f"{proto.runtime_key_prefix}.{c.name}" for c in clusters)
        if proto.runtime_key_prefix
        else (),
        runtime=runtime,
    )


def _cluster_weight(proto, path: str) -> ClusterWeight:
    check_supported(proto, _CLUSTER_WEIGHT_FIELDS, path, "ClusterWeight")
    if bool(proto.name) == bool(proto.cluster_header):
        raise ConfigError(
            path,
            "Only one of name or cluster_header can be specified"
            if proto.name
            else "At least one of name or cluster_header need to be specified",
        )
    if not proto.HasField("weight"):
        raise ConfigError(join_path(path, "weight"), "Field 'weight' is missing")
    return ClusterWeight(
        name=proto.name,
        cluster_header=ascii_lower(proto.cluster_header),
        weight=proto.weight.value,
        request_headers=compile_header_mutations(
            proto.request_headers_to_add, proto.request_headers_to_remove, path, prefix="request"
        ),
        response_headers=compile_header_mutations(
            proto.response_headers_to_add,
            proto.response_headers_to_remove,
            path,
            prefix="response",
        ),
        host_rewrite_literal=proto.host_rewrite_literal,
        # compiled by the route table (legatus.router.per_filter_config)
    )


def _simple_atou64(text: str) -> int | None:
    """absl::SimpleAtoi into uint64: optional ``+``, ASCII whitespace around."""
    text = text.strip(" \t\n\v\f\r")
    digits = text[1:] if text[:1] == "+" else text
    if not digits or not digits.isascii() or not digits.isdigit():
        return None
    number = int(digits)
    return number if number <= _UINT64_MAX else None
