"""The balancers, driven directly: hosts in, a host out (seeded randomness)."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from legatus.network.address import SocketAddress
from legatus.stats.store import Store
from legatus.upstream.cluster import HostConfig
from legatus.upstream.host import HealthFlag, Host
from legatus.upstream.lb_config import HashFunction, LbConfig, LbPolicy
from legatus.upstream.load_balancer import LbStats, build_balancer, build_priority_set
from legatus.upstream.load_balancer.edf import EdfScheduler
from legatus.upstream.load_balancer.maglev import build_table
from legatus.upstream.load_balancer.murmur import murmur_hash2_64
from legatus.upstream.load_balancer.ring_hash import build_ring_data


def make_hosts(n=4, *, weights=None, priorities=None, zones=None, flags=None, port=8000):
    store = Store()
    out = []
    for i in range(n):
        config = HostConfig(
            address=SocketAddress("10.0.0.1", port + i),
            hostname=f"h{i}",
            weight=weights[i] if weights else 1,
            priority=priorities[i] if priorities else 0,
            zone=zones[i] if zones else "",
        )
        host = Host(config, store.scope(f"h{i}."))
        if flags and i < len(flags):
            host.health_flags = flags[i]
        out.append(host)
    return out


def balancer(hosts, seed=1, **config):
    stats = LbStats(Store().scope("cluster.c."))
    lb = build_balancer(hosts, LbConfig(**config), random.Random(seed), stats)
    return lb, stats


def picks(lb, n, context=None):
    return Counter(lb.choose(context) for _ in range(n))


UNHEALTHY = HealthFlag.FAILED_ACTIVE_HC
DEGRADED = HealthFlag.DEGRADED_ACTIVE_HC


# Round robin ------------------------------------------------------------------------------


def test_round_robin_rotates_through_every_host():
    hosts = make_hosts(4)
    lb, _ = balancer(hosts)
    seq = [lb.choose() for _ in range(8)]
    assert set(seq[:4]) == set(hosts)
    assert seq[:4] == seq[4:]


def test_round_robin_no_hosts_is_none():
    lb, _ = balancer([])
    assert lb.choose() is None


def test_weighted_round_robin_keeps_edf_proportions_spread_out():
    hosts = make_hosts(3, weights=[1, 2, 3])
    lb, _ = balancer(hosts)
    seq = [lb.choose() for _ in range(600)]
    counts = Counter(seq)  # (the schedule starts at a random point of its cycle)
    assert [abs(counts[h] - 100 * w) <= 1 for h, w in zip(hosts, [1, 2, 3], strict=True)] == [
        True
    ] * 3
    # every window of one cycle (6 picks) has each host in proportion, give or take one
    for start in range(0, 594):
        window = Counter(seq[start : start + 6])
        assert abs(window[hosts[2]] - 3) <= 1 and window[hosts[0]] <= 2


def test_edf_scheduler_breaks_ties_in_insertion_order():
    edf = EdfScheduler(["a", "b", "c"], lambda e: 1.0)
    assert [edf.pick() for _ in range(6)] == ["a", "b", "c", "a", "b", "c"]


def test_round_robin_index_survives_a_health_refresh():
    hosts = make_hosts(4)
    lb, stats = balancer(hosts)
    first = [lb.choose() for _ in range(2)]
    again = build_balancer(hosts, LbConfig(), random.Random(99), stats, previous=lb)
    nxt = again.choose()
    order = [lb.choose() for _ in range(4)]  # the old balancer's continuation
    assert nxt == order[0] and nxt not in first


@pytest.mark.parametrize(
    ("config", "flags"),
    [
        ({}, None),  # one source: the picker itself
        ({"policy": LbPolicy.LEAST_REQUEST}, None),
        ({"policy": LbPolicy.RANDOM}, None),
        ({}, [UNHEALTHY, UNHEALTHY, UNHEALTHY]),  # panic: ``choose`` picks the source
        ({"policy": LbPolicy.RING_HASH, "hash_function": HashFunction.XX_HASH}, None),
    ],
)
def test_chooser_picks_as_choose_does(config, flags):
    hosts = make_hosts(4, flags=flags)
    lb, _ = balancer(hosts, seed=7, **config)
    twin, _ = balancer(hosts, seed=7, **config)
    chooser = lb.chooser
    assert [chooser() for _ in range(12)] == [twin.choose() for _ in range(12)]


# Least request ----------------------------------------------------------------------------


def test_least_request_two_choices_avoid_the_busy_host():
    hosts = make_hosts(2)
    hosts[0].stats.rq_active.set(10)
    lb, _ = balancer(hosts, policy=LbPolicy.LEAST_REQUEST)
    counts = picks(lb, 4000)
    # the busy host only wins when both random choices are it: 1/4
    assert 0.20 < counts[hosts[0]] / 4000 < 0.30


def test_least_request_choice_count_and_full_scan():
    hosts = make_hosts(5)
    for i, h in enumerate(hosts):
        h.stats.rq_active.set(5 - i)
    lb, _ = balancer(hosts, policy=LbPolicy.LEAST_REQUEST, full_scan=True)
    assert picks(lb, 50) == {hosts[4]: 50}
    many, _ = balancer(hosts, policy=LbPolicy.LEAST_REQUEST, choice_count=10)
    assert picks(many, 1000)[hosts[4]] > 850  # 1 - (4/5)**10 of the picks


def test_least_request_full_scan_breaks_ties_at_random():
    hosts = make_hosts(4)
    lb, _ = balancer(hosts, policy=LbPolicy.LEAST_REQUEST, full_scan=True)
    counts = picks(lb, 4000)
    assert all(800 < counts[h] < 1200 for h in hosts)


def test_weighted_least_request_scales_weights_by_active_requests():
    hosts = make_hosts(2, weights=[1, 2])
    hosts[1].stats.rq_active.set(3)  # effective weight 2 / (3 + 1) = 0.5 against 1
    lb, _ = balancer(hosts, policy=LbPolicy.LEAST_REQUEST)
    counts = picks(lb, 3000)
    assert 1900 < counts[hosts[0]] < 2100
    biased, _ = balancer(hosts, policy=LbPolicy.LEAST_REQUEST, active_request_bias=0.0)
    counts = picks(biased, 3000)
    assert counts[hosts[1]] == 2000  # bias 0: plain weights


# Random -----------------------------------------------------------------------------------


def test_random_ignores_weights():
    hosts = make_hosts(3, weights=[1, 1, 10])
    lb, _ = balancer(hosts, policy=LbPolicy.RANDOM)
    counts = picks(lb, 3000)
    assert all(850 < counts[h] < 1150 for h in hosts)


# Priorities, panic, degraded, localities --------------------------------------------------


def priority_set(hosts, **kwargs):
    kwargs.setdefault("panic_threshold", 50)
    kwargs.setdefault("overprovisioning_factor", 140)
    kwargs.setdefault("weighted_priority_health", False)
    return build_priority_set(hosts, locality_weights=kwargs.pop("locality_weights", {}), **kwargs)


def test_spill_over_follows_health_times_overprovisioning():
    hosts = make_hosts(5, priorities=[0, 0, 1, 1, 1], flags=[UNHEALTHY])
    ps = priority_set(hosts)
    assert ps.healthy_load == [70, 30]
    assert ps.panic == [False, False]
    lb, _ = balancer(hosts)
    counts = picks(lb, 4000)
    assert counts[hosts[0]] == 0
    assert 0.65 < counts[hosts[1]] / 4000 < 0.75


def test_overprovisioning_factor_and_weighted_priority_health():
    hosts = make_hosts(4, weights=[3, 1, 1, 1], priorities=[0, 0, 1, 1], flags=[0, UNHEALTHY])
    assert priority_set(hosts, overprovisioning_factor=100).healthy_load == [50, 50]
    weighted = priority_set(hosts, overprovisioning_factor=100, weighted_priority_health=True)
    assert weighted.healthy_load == [75, 25]


def test_degraded_hosts_take_what_healthy_ones_cannot():
    hosts = make_hosts(
        5, priorities=[0, 0, 1, 1, 1], flags=[DEGRADED, DEGRADED, UNHEALTHY, UNHEALTHY]
    )
    ps = priority_set(hosts)
    assert (ps.healthy_load, ps.degraded_load) == ([0, 46], [54, 0])
    assert ps.choose_priority(45) == (1, False)  # 45 % 100 + 1 = 46
    assert ps.choose_priority(46) == (0, True)


def test_panic_balances_over_every_host_and_counts():
    hosts = make_hosts(4, flags=[UNHEALTHY, UNHEALTHY, UNHEALTHY])
    lb, stats = balancer(hosts)
    counts = picks(lb, 400)
    assert counts == dict.fromkeys(hosts, 100)
    assert stats.lb_healthy_panic.value == 400
    calm, calm_stats = balancer(hosts, healthy_panic_threshold=0)
    assert picks(calm, 40) == {hosts[3]: 40}
    assert calm_stats.lb_healthy_panic.value == 0


def test_no_panic_when_the_levels_together_are_fully_available():
    hosts = make_hosts(6, priorities=[0, 0, 0, 1, 1, 1], flags=[UNHEALTHY] * 3)
    ps = priority_set(hosts)
    assert ps.panic == [False, False]
    assert ps.healthy_load == [0, 100]


def test_total_panic_shares_load_by_host_count():
    hosts = make_hosts(4, priorities=[0, 1, 1, 1], flags=[UNHEALTHY] * 4)
    ps = priority_set(hosts)
    assert ps.panic == [True, True]
    assert ps.healthy_load == [25, 75]


def test_excluded_hosts_do_not_count_for_health():
    hosts = make_hosts(3, flags=[HealthFlag.PENDING_ACTIVE_HC | UNHEALTHY, UNHEALTHY])
    ps = priority_set(hosts)
    # 1 healthy of 2 non-excluded: 50% is not below the threshold (and 70% available)
    assert ps.panic == [False]
    assert ps.healthy_load == [100]


def test_all_unhealthy_without_panic_gives_no_host():
    hosts = make_hosts(2, flags=[UNHEALTHY, UNHEALTHY])
    lb, _ = balancer(hosts, healthy_panic_threshold=0)
    assert lb.choose() is None


def test_locality_weighted_round_robin():
    hosts = make_hosts(4, zones=["a", "a", "b", "b"])
    weights = {(0, "", "a", ""): 1, (0, "", "b", ""): 3}
    lb, _ = balancer(hosts, locality_weighted=True, locality_weights=tuple(weights.items()))
    counts = picks(lb, 800)
    assert counts[hosts[0]] + counts[hosts[1]] == 200
    assert counts[hosts[2]] == counts[hosts[3]] == 300


def test_locality_weight_scales_with_availability():
    # zone b: 1 of 2 healthy, 50% * 1.4 = 70% of its weight
    hosts = make_hosts(4, zones=["a", "a", "b", "b"], flags=[0, 0, UNHEALTHY])
    weights = {(0, "", "a", ""): 1, (0, "", "b", ""): 1}
    lb, _ = balancer(hosts, locality_weighted=True, locality_weights=tuple(weights.items()))
    counts = picks(lb, 1700)
    assert counts[hosts[3]] == 700
    assert counts[hosts[2]] == 0


def test_locality_without_weight_gets_nothing():
    hosts = make_hosts(2, zones=["a", "b"])
    weights = {(0, "", "a", ""): 5}
    lb, _ = balancer(hosts, locality_weighted=True, locality_weights=tuple(weights.items()))
    assert picks(lb, 20) == {hosts[0]: 20}


# Ring hash and Maglev ---------------------------------------------------------------------


class Ctx:
    def __init__(self, h):
        self.h = h

    def compute_hash_key(self, override=None):
        return self.h


def test_ring_is_built_from_address_keys():
    hashes, _, size, low, high = build_ring_data(
        ("10.0.0.1:80", "10.0.0.2:80"), (0.5, 0.5), 0.5, 1024, 8 << 20, False
    )
    import xxhash

    assert size == 1024 and low == high == 512
    assert hashes == sorted(hashes)
    assert xxhash.xxh64_intdigest(b"10.0.0.1:80_0") in hashes
    assert xxhash.xxh64_intdigest(b"10.0.0.2:80_511") in hashes


def test_ring_size_gives_the_lightest_host_whole_entries():
    _, owners, size, _, _ = build_ring_data(
        ("a", "b", "c"), (1 / 6, 2 / 6, 3 / 6), 1 / 6, 1024, 8 << 20, False
    )
    assert size == 1026  # ceil(1024 / 6) * 6
    assert Counter(owners) == {0: 171, 1: 342, 2: 513}
    _, _, small, _, _ = build_ring_data(("a", "b"), (0.5, 0.5), 0.5, 1024, 100, False)
    assert small == 100


def test_ring_lookup_takes_the_next_entry_and_wraps():
    hosts = make_hosts(3)
    lb, _ = balancer(hosts, policy=LbPolicy.RING_HASH, min_ring_size=3)
    ring = lb._levels[0]
    first, last = ring._hashes[0], ring._hashes[-1]
    assert lb.choose(Ctx(first)) is lb.choose(Ctx(0)) is lb.choose(Ctx(last + 1))
    owner = ring._hosts[ring._owners[1]]
    assert lb.choose(Ctx(first + 1)) is owner
    assert lb.choose(Ctx(first), attempt=1) is owner


def test_ring_hash_is_stable_and_falls_back_to_random():
    hosts = make_hosts(4)
    lb, _ = balancer(hosts, policy=LbPolicy.RING_HASH)
    assert len({lb.choose(Ctx(12345)) for _ in range(10)}) == 1
    assert len(picks(lb, 200)) == 4  # no context: a random hash per pick


def test_ring_drops_unhealthy_hosts_and_keeps_others_in_place():
    hosts = make_hosts(4)
    lb, _ = balancer(hosts, policy=LbPolicy.RING_HASH)
    before = {h: lb.choose(Ctx(h)) for h in range(0, 1 << 64, 1 << 54)}
    hosts[1].health_flags = UNHEALTHY
    after_lb, _ = balancer(hosts, policy=LbPolicy.RING_HASH)
    after = {h: after_lb.choose(Ctx(h)) for h in before}
    assert hosts[1] not in after.values()
    kept = [after[h] is host for h, host in before.items() if host is not hosts[1]]
    # consistent: the others keep most keys (their new ring entries take a few)
    assert sum(kept) / len(kept) > 0.8


def test_murmur_ring_uses_murmur_hash2():
    hashes, _, _, _, _ = build_ring_data(("a",), (1.0,), 1.0, 4, 4, True)
    assert hashes == sorted(murmur_hash2_64(f"a_{i}".encode()) for i in range(4))
    assert murmur_hash2_64(b"") != murmur_hash2_64(b"a")


def test_ring_degraded_hosts_are_not_in_the_table():
    hosts = make_hosts(2, flags=[DEGRADED, DEGRADED])
    lb, _ = balancer(hosts, policy=LbPolicy.RING_HASH)
    assert lb.choose(Ctx(1)) is None  # Envoy: hashing balancers skip degraded hosts


def test_maglev_table_follows_weights():
    table, low, high = build_table(("a", "b", "c"), (0.2, 0.2, 0.6), 0.6, 1021)
    counts = Counter(table)
    assert sum(counts.values()) == 1021
    assert abs(counts[2] - 3 * counts[0]) <= 6 and (low, high) == (
        min(counts.values()),
        max(counts.values()),
    )


def test_maglev_does_not_depend_on_host_order():
    hosts = make_hosts(5)
    lb, _ = balancer(hosts, policy=LbPolicy.MAGLEV, table_size=1021)
    shuffled = list(hosts)
    random.Random(3).shuffle(shuffled)
    other, _ = balancer(shuffled, policy=LbPolicy.MAGLEV, table_size=1021)
    for h in range(0, 5000, 7):
        assert lb.choose(Ctx(h)) is other.choose(Ctx(h))


def test_maglev_retry_attempt_changes_the_slot():
    hosts = make_hosts(5)
    lb, _ = balancer(hosts, policy=LbPolicy.MAGLEV, table_size=1021)
    table = lb._levels[0]
    h = 77
    expected = table._hosts[table._table[(h ^ ((1 << 64) - 2)) % 1021]]
    assert lb.choose(Ctx(h), attempt=2) is expected


def test_hashing_panic_counts_and_uses_all_hosts():
    hosts = make_hosts(4, flags=[UNHEALTHY] * 3)
    lb, stats = balancer(hosts, policy=LbPolicy.MAGLEV, table_size=1021)
    assert len(picks(lb, 200)) == 4
    assert stats.lb_healthy_panic.value == 200


def test_hash_key_metadata_and_hostname():
    from legatus.upstream.load_balancer.hashing import hash_key

    host = make_hosts(1)[0]
    assert hash_key(host, False) == "10.0.0.1:8000"
    assert hash_key(host, True) == "h0"


@pytest.mark.parametrize("policy", [LbPolicy.RING_HASH, LbPolicy.MAGLEV])
def test_hashing_balancers_without_hosts(policy):
    lb, _ = balancer([], policy=policy, hash_function=HashFunction.XX_HASH)
    assert lb.choose(Ctx(5)) is None
