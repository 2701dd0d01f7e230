"""A cluster's load-balancing configuration, compiled once into an immutable ``LbConfig``.

Two forms, as in Envoy:

- the legacy fields: ``lb_policy`` with its ``*_lb_config`` (ring_hash, maglev,
  least_request, round_robin) and ``common_lb_config``;
- ``load_balancing_policy``: a list of typed extensions
  (``envoy.load_balancing_policies.round_robin`` / ``least_request`` / ``random`` /
  ``ring_hash`` / ``maglev``). The first one legatus knows wins; a type Envoy ships but
  legatus does not implement yet is refused, and a type neither knows is skipped (Envoy
  skips policies it has no factory for).

Whatever the form, ``common_lb_config.healthy_panic_threshold`` (default 50%) applies, and
the load assignment's ``policy`` gives the overprovisioning factor (default 140) and
``weighted_priority_health``. Zone-aware routing, slow start, subsets, bounded loads
(``hash_balance_factor``) and the other knobs are refused by field path.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field

from envoy.config.cluster.v3 import cluster_pb2

from legatus.config.errors import ConfigError, join_path
from legatus.config.supported import check_supported
from legatus.router.hash_policy import HashPolicy, compile_hash_policy

Cluster = cluster_pb2.Cluster

DEFAULT_MIN_RING_SIZE = 1024
DEFAULT_MAX_RING_SIZE = 8 * 1024 * 1024
DEFAULT_MAGLEV_TABLE_SIZE = 65537
DEFAULT_PANIC_THRESHOLD = 50
DEFAULT_OVERPROVISIONING_FACTOR = 140
_POLICY_PREFIX = "envoy.extensions.load_balancing_policies."


class LbPolicy(enum.Enum):
    ROUND_ROBIN = "round_robin"
    LEAST_REQUEST = "least_request"
    RANDOM = "random"
    RING_HASH = "ring_hash"
    MAGLEV = "maglev"


class HashFunction(enum.Enum):
    XX_HASH = 0
    MURMUR_HASH_2 = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class LbConfig:
    policy: LbPolicy = LbPolicy.ROUND_ROBIN
    healthy_panic_threshold: int = DEFAULT_PANIC_THRESHOLD  # percent, 0-100
    locality_weighted: bool = False  # locality_weighted_lb_config
    overprovisioning_factor: int = DEFAULT_OVERPROVISIONING_FACTOR  # percent
    weighted_priority_health: bool = False
    # An EDS assignment's policy.drop_overloads: the share of requests the router drops
    # (1.0: all of them, Envoy's "unconditional drop overload"); 0: none.
    drop_overload: float = 0.0
    # (priority, region, zone, sub_zone) -> the locality's load_balancing_weight (0 unset)
    locality_weights: tuple[tuple[tuple[int, str, str, str], int], ...] = ()
    # LEAST_REQUEST
    choice_count: int = 2
    active_request_bias: float | None = None  # None: not configured (1.0)
    full_scan: bool = False  # selection_method FULL_SCAN (or enable_full_scan)
    # RING_HASH
    min_ring_size: int = DEFAULT_MIN_RING_SIZE
    max_ring_size: int = DEFAULT_MAX_RING_SIZE
    hash_function: HashFunction = HashFunction.XX_HASH
    # MAGLEV
    table_size: int = DEFAULT_MAGLEV_TABLE_SIZE
    # RING_HASH and MAGLEV
    use_hostname_for_hashing: bool = False
    hash_policy: HashPolicy | None = field(default=None, compare=False)

    @property
    def hashing(self) -> bool:
        """Whether the balancer hashes requests (and so wants a HashContext)."""
        return self.policy in (LbPolicy.RING_HASH, LbPolicy.MAGLEV)


DEFAULT_LB = LbConfig()

_LEGACY = {
    Cluster.ROUND_ROBIN: LbPolicy.ROUND_ROBIN,
    Cluster.LEAST_REQUEST: LbPolicy.LEAST_REQUEST,
    Cluster.RANDOM: LbPolicy.RANDOM,
    Cluster.RING_HASH: LbPolicy.RING_HASH,
    Cluster.MAGLEV: LbPolicy.MAGLEV,
}
_COMMON_FIELDS = (
    "healthy_panic_threshold",
    "locality_weighted_lb_config",
    "consistent_hashing_lb_config",
)


def compile_lb_config(proto: Cluster, path: str) -> LbConfig:
    """The LbConfig of the cluster ``proto`` at ``path`` (ConfigError on what is refused)."""
    settings: dict = {}
    common = proto.common_lb_config
    cpath = join_path(path, "common_lb_config")
    check_supported(common, _COMMON_FIELDS, cpath, "CommonLbConfig")
    if common.HasField("healthy_panic_threshold"):
        value = common.healthy_panic_threshold.value
        if not 0.0 <= value <= 100.0:
            raise ConfigError(
                join_path(cpath, "healthy_panic_threshold.value"), "must be within [0, 100]"
            )
        settings["healthy_panic_threshold"] = math.floor(value + 0.5)
    settings.update(assignment_settings(proto.load_assignment, join_path(path, "load_assignment")))
    if proto.HasField("load_balancing_policy"):
        settings.update(_typed_policy(proto, path, common, cpath))
    else:
        settings.update(_legacy_policy(proto, path, common, cpath))
    return LbConfig(**settings)


_DENOMINATORS = {0: 100, 1: 10_000, 2: 1_000_000}  # FractionalPercent's HUNDRED, ...


def assignment_settings(la, path: str) -> dict:
    """The balancing settings a ClusterLoadAssignment carries (a cluster's ``load_assignment``
    or one from EDS): its policy's overprovisioning factor and weighted priority health, and
    the localities' weights. A dict of LbConfig fields (all picklable, so that the main
    process can send an EDS assignment's to the workers)."""
    out: dict = {}
    if la.HasField("policy"):
        ppath = join_path(path, "policy")
        check_supported(
            la.policy,
            ("overprovisioning_factor", "weighted_priority_health", "drop_overloads"),
            ppath,
            "Policy",
        )
        drops = la.policy.drop_overloads
        if len(drops) > 1:
            raise ConfigError(
                join_path(ppath, "drop_overloads"),
                f"Cluster drop_overloads config has {len(drops)} categories. Envoy only "
                "support one.",
            )
        if drops:
            share = drops[0].drop_percentage
            denominator = _DENOMINATORS[share.denominator]
            out["drop_overload"] = min(share.numerator, denominator) / denominator
        if la.policy.HasField("overprovisioning_factor"):
            factor = la.policy.overprovisioning_factor.value
            if factor == 0:
                raise ConfigError(join_path(ppath, "overprovisioning_factor"), "must be > 0")
            out["overprovisioning_factor"] = factor
        out["weighted_priority_health"] = la.policy.weighted_priority_health
    weights: dict[tuple[int, str, str, str], int] = {}
    for locality in la.endpoints:
        loc = locality.locality
        key = (locality.priority, loc.region, loc.zone, loc.sub_zone)
        weights[key] = locality.load_balancing_weight.value  # the last one wins, as in Envoy
    out["locality_weights"] = tuple(weights.items())
    return out


def _legacy_policy(proto: Cluster, path: str, common, cpath: str) -> dict:
    policy = _LEGACY.get(proto.lb_policy)
    if policy is None:
        raise ConfigError(
            join_path(path, "lb_policy"),
            f"lb_policy {Cluster.LbPolicy.Name(proto.lb_policy)} is not supported by legatus yet",
        )
    out: dict = {"policy": policy}
    if common.HasField("locality_weighted_lb_config"):
        out["locality_weighted"] = True
    if common.HasField("consistent_hashing_lb_config"):
        chpath = join_path(cpath, "consistent_hashing_lb_config")
        chl = common.consistent_hashing_lb_config
        check_supported(chl, ("use_hostname_for_hashing",), chpath, "ConsistentHashingLbConfig")
        out["use_hostname_for_hashing"] = chl.use_hostname_for_hashing
    which = proto.WhichOneof("lb_config")
    if which is None:
        return out
    lpath = join_path(path, which)
    config = getattr(proto, which)
    if which == "round_robin_lb_config":
        check_supported(config, (), lpath, "RoundRobinLbConfig")
    elif which == "least_request_lb_config":
        check_supported(
            config, ("choice_count", "active_request_bias"), lpath, "LeastRequestLbConfig"
        )
        out.update(_least_request(config, lpath))
    elif which == "ring_hash_lb_config":
        check_supported(
            config,
            ("minimum_ring_size", "maximum_ring_size", "hash_function"),
            lpath,
            "RingHashLbConfig",
        )
        out.update(_ring_sizes(config, lpath))
        if config.hash_function == Cluster.RingHashLbConfig.MURMUR_HASH_2:
            out["hash_function"] = HashFunction.MURMUR_HASH_2
    elif which == "maglev_lb_config":
        check_supported(config, ("table_size",), lpath, "MaglevLbConfig")
        out.update(_table_size(config, lpath))
    else:
        raise ConfigError(lpath, f"field '{which}' of Cluster is not supported by legatus yet")
    # Envoy ignores an lb config that belongs to another policy; so does legatus.
    if _LEGACY_CONFIG[which] is not policy:
        return {k: v for k, v in out.items() if k not in _POLICY_KEYS}
    return out


_LEGACY_CONFIG = {
    "round_robin_lb_config": LbPolicy.ROUND_ROBIN,
    "least_request_lb_config": LbPolicy.LEAST_REQUEST,
    "ring_hash_lb_config": LbPolicy.RING_HASH,
    "maglev_lb_config": LbPolicy.MAGLEV,
}
_POLICY_KEYS = frozenset(
    {
        "choice_count",
        "active_request_bias",
        "min_ring_size",
        "max_ring_size",
        "hash_function",
        "table_size",
    }
)


def _least_request(config, lpath: str) -> dict:
    out: dict = {}
    if config.HasField("choice_count"):
        if config.choice_count.value < 2:
            raise ConfigError(join_path(lpath, "choice_count"), "value must be >= 2")
        out["choice_count"] = config.choice_count.value
    if config.HasField("active_request_bias"):
        bias = config.active_request_bias.default_value
        out["active_request_bias"] = bias if bias >= 0.0 and not math.isnan(bias) else 1.0
    return out


def _ring_sizes(config, lpath: str) -> dict:
    out: dict = {}
    for name, key in (
        ("minimum_ring_size", "min_ring_size"),
        ("maximum_ring_size", "max_ring_size"),
    ):
        if config.HasField(name):
            value = getattr(config, name).value
            if not 0 < value <= DEFAULT_MAX_RING_SIZE:
                raise ConfigError(
                    join_path(lpath, name), f"value must be in (0, {DEFAULT_MAX_RING_SIZE}]"
                )
            out[key] = value
    low = out.get("min_ring_size", DEFAULT_MIN_RING_SIZE)
    high = out.get("max_ring_size", DEFAULT_MAX_RING_SIZE)
    if low > high:
        raise ConfigError(
            lpath, f"ring hash: minimum_ring_size ({low}) > maximum_ring_size ({high})"
        )
    return out


def _table_size(config, lpath: str) -> dict:
    if not config.HasField("table_size"):
        return {}
    size = config.table_size.value
    if size > 5000011:
        raise ConfigError(join_path(lpath, "table_size"), "value must be <= 5000011")
    if not _is_prime(size):
        raise ConfigError(
            join_path(lpath, "table_size"), "The table size of maglev must be prime number"
        )
    return {"table_size": size}


def _is_prime(n: int) -> bool:
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    i = 3
    while i * i <= n:
        if n % i == 0:
            return False
        i += 2
    return True


# load_balancing_policy ------------------------------------------------------------------


def _typed_policy(proto: Cluster, path: str, common, cpath: str) -> dict:
    ppath = join_path(path, "load_balancing_policy")
    check_supported(proto.load_balancing_policy, ("policies",), ppath, "LoadBalancingPolicy")
    for name in ("locality_weighted_lb_config", "consistent_hashing_lb_config"):
        if common.HasField(name):
            raise ConfigError(
                join_path(cpath, name),
                f"field '{name}' of CommonLbConfig is not supported by legatus yet with "
                "load_balancing_policy (set it in the policy)",
            )
    for i, entry in enumerate(proto.load_balancing_policy.policies):
        epath = f"{ppath}.policies[{i}].typed_extension_config"
        any_proto = entry.typed_extension_config.typed_config
        type_name = any_proto.type_url.rsplit("/", 1)[-1]
        compile_one = _TYPED.get(type_name)
        if compile_one is not None:
            message = _MESSAGES[type_name]()
            any_proto.Unpack(message)
            return compile_one(message, join_path(epath, "typed_config"))
        if type_name.startswith(_POLICY_PREFIX):
            raise ConfigError(
                join_path(epath, "typed_config"),
                f"load balancing policy {type_name} is not supported by legatus yet",
            )
    raise ConfigError(
        ppath,
        f"cluster: didn't find a registered load balancer factory implementation for cluster: "
        f"'{proto.name}'",
    )


def _locality(message, mpath: str) -> dict:
    """``locality_lb_config`` of the round_robin / least_request / random policies."""
    if not message.HasField("locality_lb_config"):
        return {}
    lpath = join_path(mpath, "locality_lb_config")
    check_supported(
        message.locality_lb_config, ("locality_weighted_lb_config",), lpath, "LocalityLbConfig"
    )
    return {"locality_weighted": True}


def _consistent_hashing(message, mpath: str) -> dict:
    out: dict = {}
    if message.HasField("locality_weighted_lb_config"):
        out["locality_weighted"] = True
    if message.HasField("consistent_hashing_lb_config"):
        chpath = join_path(mpath, "consistent_hashing_lb_config")
        chl = message.consistent_hashing_lb_config
        check_supported(
            chl, ("use_hostname_for_hashing", "hash_policy"), chpath, "ConsistentHashingLbConfig"
        )
        out["use_hostname_for_hashing"] = chl.use_hostname_for_hashing
        if len(chl.hash_policy):
            out["hash_policy"] = compile_hash_policy(
                chl.hash_policy, join_path(chpath, "hash_policy")
            )
    return out


def _typed_round_robin(message, mpath: str) -> dict:
    check_supported(message, ("locality_lb_config",), mpath, "RoundRobin")
    return {"policy": LbPolicy.ROUND_ROBIN, **_locality(message, mpath)}


def _typed_random(message, mpath: str) -> dict:
    check_supported(message, ("locality_lb_config",), mpath, "Random")
    return {"policy": LbPolicy.RANDOM, **_locality(message, mpath)}


def _typed_least_request(message, mpath: str) -> dict:
    supported = (
        "choice_count",
        "active_request_bias",
        "locality_lb_config",
        "enable_full_scan",
        "selection_method",
    )
    check_supported(message, supported, mpath, "LeastRequest")
    out = {"policy": LbPolicy.LEAST_REQUEST, **_locality(message, mpath)}
    out.update(_least_request(message, mpath))
    out["full_scan"] = message.enable_full_scan.value or message.selection_method == 1
    return out


def _typed_ring_hash(message, mpath: str) -> dict:
    supported = (
        "hash_function",
        "minimum_ring_size",
        "maximum_ring_size",
        "use_hostname_for_hashing",
        "consistent_hashing_lb_config",
        "locality_weighted_lb_config",
    )
    check_supported(message, supported, mpath, "RingHash")
    out = {"policy": LbPolicy.RING_HASH, **_ring_sizes(message, mpath)}
    if message.hash_function == 2:  # MURMUR_HASH_2 (DEFAULT_HASH and XX_HASH: xxHash)
        out["hash_function"] = HashFunction.MURMUR_HASH_2
    out["use_hostname_for_hashing"] = message.use_hostname_for_hashing
    out.update(_consistent_hashing(message, mpath))
    return out


def _typed_maglev(message, mpath: str) -> dict:
    supported = ("table_size", "consistent_hashing_lb_config", "locality_weighted_lb_config")
    check_supported(message, supported, mpath, "Maglev")
    out = {"policy": LbPolicy.MAGLEV, **_table_size(message, mpath)}
    out.update(_consistent_hashing(message, mpath))
    return out


def _messages() -> dict:
    from envoy.extensions.load_balancing_policies.least_request.v3 import least_request_pb2
    from envoy.extensions.load_balancing_policies.maglev.v3 import maglev_pb2
    from envoy.extensions.load_balancing_policies.random.v3 import random_pb2
    from envoy.extensions.load_balancing_policies.ring_hash.v3 import ring_hash_pb2
    from envoy.extensions.load_balancing_policies.round_robin.v3 import round_robin_pb2

    return {
        m.DESCRIPTOR.full_name: m
        for m in (
            round_robin_pb2.RoundRobin,
            least_request_pb2.LeastRequest,
            random_pb2.Random,
            ring_hash_pb2.RingHash,
            maglev_pb2.Maglev,
        )
    }


_MESSAGES = _messages()
_TYPED = {
    _POLICY_PREFIX + "round_robin.v3.RoundRobin": _typed_round_robin,
    _POLICY_PREFIX + "least_request.v3.LeastRequest": _typed_least_request,
    _POLICY_PREFIX + "random.v3.Random": _typed_random,
    _POLICY_PREFIX + "ring_hash.v3.RingHash": _typed_ring_hash,
    _POLICY_PREFIX + "maglev.v3.Maglev": _typed_maglev,
}
