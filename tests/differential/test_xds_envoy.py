"""CDS and EDS over ADS, differential: the real Envoy 1.40 and legatus against the same control
plane behaviour (tests/support/xds_server.py), each with its own control plane and the same
bootstrap (xds_scenario.py), in state of the world (``GRPC``) and delta (``DELTA_GRPC``).

Two scenarios, each run once per mode through both proxies at once:

- ``ads``: CDS with one EDS cluster and its ClusterLoadAssignment, up to the ACKs (the requests
  the control plane receives); then CDS updates with invalid clusters, each followed by the
  good set again: the NACKs (version, code, key phrase of the message), what moved in the
  cluster manager's counters, then the stats.
- ``warming``: CDS starts with a placeholder cluster only (the route's cluster does not exist:
  503, ``NC``); the cluster arrives with its ClusterLoadAssignment withheld (it warms: not
  served, not in /clusters), then the assignment (active, served); a change of the cluster
  (warms again behind the old one, until endpoints come), an assignment naming one address
  twice, and the removal.

Every comparison shows both sides' values. A known difference is an ``xfail(strict=True)``
test whose reason says what each side does; the suite stays green and the difference visible.

Counts compared exactly: every step waits for the proxy's reply to the control plane and then
for the stats to settle (two equal snapshots), each side holds a single ADS stream
(``streams_opened`` is compared), so the update counters do not depend on timing; the one
exception is named where it is handled (``TIMING_DEPENDENT``). Timestamps (``update_time``,
``config_reload_time_ms``) are left out.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from envoy.config.cluster.v3 import cluster_pb2

from legatus.config_subscription.decode import CLUSTER, ENDPOINT
from tests.differential.xds_scenario import (
    XdsSide,
    assignment,
    eds_cluster,
    reply_view,
    run_both,
    side_by_side,
    static_cluster,
)
from tests.support.http_upstream import HttpUpstream
from tests.support.process import wait_for
from tests.support.xds_server import Received
from tests.support.xds_thread import XdsThread

MODES = ("sotw", "delta")

CDS_STATS = tuple(
    f"cluster_manager.cds.{s}"
    for s in ("update_attempt", "update_success", "update_rejected", "update_failure",
              "init_fetch_timeout", "config_reload", "version_text", "version")
)  # fmt: skip
CDS_COUNTERS = CDS_STATS[:6]
CM_GAUGES = ("cluster_manager.active_clusters", "cluster_manager.warming_clusters")
CM_COUNTERS = tuple(
    f"cluster_manager.{s}" for s in ("cluster_added", "cluster_modified", "cluster_removed")
)
BACKEND_STATS = tuple(
    f"cluster.backend.{s}"
    for s in ("update_attempt", "update_success", "update_empty", "membership_total",
              "membership_healthy")
)  # fmt: skip
CONTROL_PLANE = ("control_plane.connected_state", "control_plane.pending_requests")
CHOSEN = (*CDS_STATS, *CM_GAUGES, *CM_COUNTERS, *BACKEND_STATS, *CONTROL_PLANE)
ABSENT = "<absent>"


def chosen(values: dict[str, Any], names: tuple[str, ...] = CHOSEN) -> dict[str, Any]:
    return {n: values.get(n, ABSENT) for n in names}


def _is_chosen(name: str) -> bool:
    return name in CHOSEN


def _manager_stat(name: str) -> bool:
    return name.startswith(("cluster_manager.", "control_plane."))


def assert_same(envoy: Any, legatus: Any, what: str) -> None:
    assert envoy == legatus, f"{what} differ:" + side_by_side(envoy, legatus)


@dataclass(frozen=True)
class Runs:
    mode: str
    envoy: dict[str, Any]
    legatus: dict[str, Any]


# The ads scenario ---------------------------------------------------------------------------


@dataclass(frozen=True)
class NackCase:
    """A CDS update with an invalid cluster, and the phrase that says why in Envoy's NACK."""

    label: str
    clusters: Callable[[list[HttpUpstream]], list[cluster_pb2.Cluster]]
    phrase: str
    legatus_accepts: str = ""  # a known difference: what Envoy says where legatus ACKs


def _without_eds_config(ups: list[HttpUpstream]) -> list[cluster_pb2.Cluster]:
    bad = eds_cluster("backend")
    bad.ClearField("eds_cluster_config")
    return [bad]


def _unknown_lb_policy(ups: list[HttpUpstream]) -> list[cluster_pb2.Cluster]:
    bad = eds_cluster("backend")
    bad.lb_policy = 99  # no such LbPolicy
    return [bad]


def _good_and_bad(ups: list[HttpUpstream]) -> list[cluster_pb2.Cluster]:
    bad = eds_cluster("other")
    bad.ClearField("eds_cluster_config")
    return [eds_cluster("backend"), static_cluster("good", ups[1].port), bad]


def _negative_connect_timeout(ups: list[HttpUpstream]) -> list[cluster_pb2.Cluster]:
    bad = static_cluster("bad", ups[1].port)
    bad.connect_timeout.FromSeconds(-1)
    return [eds_cluster("backend"), bad]


def _empty_name(ups: list[HttpUpstream]) -> list[cluster_pb2.Cluster]:
    return [eds_cluster("backend"), static_cluster("", ups[1].port)]


def _health_check_without_timeout(ups: list[HttpUpstream]) -> list[cluster_pb2.Cluster]:
    bad = static_cluster("bad", ups[1].port)
    check = bad.health_checks.add(tcp_health_check={})
    check.interval.FromSeconds(1)
    check.healthy_threshold.value = check.unhealthy_threshold.value = 1
    return [eds_cluster("backend"), bad]


def _ring_sizes_crossed(ups: list[HttpUpstream]) -> list[cluster_pb2.Cluster]:
    bad = static_cluster("bad", ups[1].port)
    bad.lb_policy = cluster_pb2.Cluster.RING_HASH
    bad.ring_hash_lb_config.minimum_ring_size.value = 100
    bad.ring_hash_lb_config.maximum_ring_size.value = 10
    return [eds_cluster("backend"), bad]


def _logical_dns_two_endpoints(ups: list[HttpUpstream]) -> list[cluster_pb2.Cluster]:
    bad = static_cluster("bad", ups[0].port, ups[1].port)
    bad.type = cluster_pb2.Cluster.LOGICAL_DNS
    return [eds_cluster("backend"), bad]


def _static_hostname(ups: list[HttpUpstream]) -> list[cluster_pb2.Cluster]:
    bad = static_cluster("bad", ups[1].port)
    endpoint = bad.load_assignment.endpoints[0].lb_endpoints[0].endpoint
    endpoint.address.socket_address.address = "localhost"
    return [eds_cluster("backend"), bad]


# Both proxies NACK these; the stats after them are compared.
SHARED_NACKS = (
    NackCase("missing_eds_config", _without_eds_config,
             "cannot create an EDS cluster without an EDS config"),
    NackCase("unknown_lb_policy", _unknown_lb_policy,
             "value must be one of the defined enum values"),
    # The valid new cluster "good" is added, the update NACKed for "other".
    NackCase("good_and_bad", _good_and_bad, "Error adding/updating cluster(s) other"),
)  # fmt: skip
# Envoy NACKs these (legatus too, unless legatus_accepts says otherwise): last, so that the
# stats above are unaffected.
ENVOY_ONLY_NACKS = (
    NackCase("negative_connect_timeout", _negative_connect_timeout,
             "Expected positive duration"),
    NackCase("empty_name", _empty_name, "value length must be at least 1"),
    NackCase("health_check_without_timeout", _health_check_without_timeout,
             "value is required"),
    NackCase("ring_sizes_crossed", _ring_sizes_crossed,
             "minimum_ring_size (100) > maximum_ring_size (10)"),
    NackCase("logical_dns_two_endpoints", _logical_dns_two_endpoints,
             "LOGICAL_DNS clusters must have a single locality_lb_endpoint and a single "
             "lb_endpoint"),
    NackCase("static_hostname", _static_hostname, "malformed IP address: localhost"),
)  # fmt: skip
NACK_CASES = {c.label: c for c in (*SHARED_NACKS, *ENVOY_ONLY_NACKS)}


def _backend_with_endpoints(xds: XdsThread, ups: list[HttpUpstream]) -> None:
    xds.set_resources(CLUSTER, [eds_cluster("backend")])
    xds.set_resources(ENDPOINT, [assignment("backend", ups[0].port)])


def _index(side: XdsSide, request: Received) -> int:
    return next(i for i, r in enumerate(side.requests()) if r is request)


def _nack_case(side: XdsSide, case: NackCase) -> dict[str, Any]:
    before = side.settled_stats(_manager_stat)
    since = side.mark()
    side.push(CLUSTER, case.clusters(side.upstreams))
    reply = side.reply(CLUSTER, since)
    after = side.settled_stats(_manager_stat)

    def moved(names: tuple[str, ...]) -> dict[str, int]:
        return {
            name: after.get(name, 0) - before.get(name, 0)
            for name in names
            if after.get(name, 0) != before.get(name, 0)
        }

    restore_since = side.mark()
    side.push(CLUSTER, [eds_cluster("backend")])
    restored = side.reply(CLUSTER, restore_since)
    return {
        "reply": reply_view(reply),
        "requests": side.request_views(since, _index(side, restored) + 1),
        "counters_moved": moved(CM_COUNTERS),
        "cds_moved": moved(CDS_COUNTERS),
        "gauges": chosen(after, CM_GAUGES),
        "restored": reply_view(restored),
    }


def ads_scenario(side: XdsSide) -> dict[str, Any]:
    out: dict[str, Any] = {"nacks": {}}
    side.reply(CLUSTER, 0)
    side.reply(ENDPOINT, 0)
    out["traffic"] = side.normalize(side.get())
    out["stats_handshake"] = side.settled_stats(_is_chosen)
    out["handshake"] = side.request_views()
    for case in SHARED_NACKS:
        out["nacks"][case.label] = _nack_case(side, case)
    out["stats_after_nacks"] = side.settled_stats(_is_chosen)
    out["manager_stat_names"] = sorted(side.stats(_manager_stat))
    out["traffic_after_nacks"] = side.normalize(side.get())
    for case in ENVOY_ONLY_NACKS:
        out["nacks"][case.label] = _nack_case(side, case)
    return out


@pytest.fixture(scope="module", params=MODES)
def ads(request, tmp_path_factory) -> Runs:
    mode = request.param
    runs = run_both(
        tmp_path_factory.mktemp(f"xds-ads-{mode}"),
        delta=mode == "delta",
        before_start=_backend_with_endpoints,
        scenario=ads_scenario,
    )
    return Runs(mode, runs["envoy"], runs["legatus"])


def test_ads_handshake_requests(ads: Runs):
    """The requests up to the ACKs of CDS and EDS: types, names (subscriptions in delta),
    versions, echoed nonces, node on each request; one stream."""
    envoy = ads.envoy["handshake"]
    assert [r["type"] for r in envoy if r["answers"]] == ["Cluster", "ClusterLoadAssignment"]
    assert_same(envoy, ads.legatus["handshake"], "the requests up to the ACKs")
    assert_same(ads.envoy["streams_opened"], ads.legatus["streams_opened"], "the streams opened")


def test_ads_served_after_handshake(ads: Runs):
    assert ads.envoy["traffic"]["status"] == 200
    assert_same(ads.envoy["traffic"], ads.legatus["traffic"], "the responses")


def test_ads_stats_after_handshake(ads: Runs):
    envoy, legatus = chosen(ads.envoy["stats_handshake"]), chosen(ads.legatus["stats_handshake"])
    assert envoy["cluster_manager.cds.update_success"] == 1
    assert_same(envoy, legatus, "the stats after the handshake")


def _nack_params() -> list:
    return [
        pytest.param(c.label, marks=pytest.mark.xfail(strict=True, reason=c.legatus_accepts))
        if c.legatus_accepts
        else c.label
        for c in NACK_CASES.values()
    ]


@pytest.mark.parametrize("label", _nack_params())
def test_ads_nack(ads: Runs, label: str):
    """The reply to an invalid cluster: a NACK naming the last accepted version (SotW), code
    INTERNAL, a message with Envoy's key phrase; then the good set is ACKed again."""
    case = NACK_CASES[label]
    envoy, legatus = ads.envoy["nacks"][label], ads.legatus["nacks"][label]
    assert envoy["reply"]["nack"], envoy
    shown = side_by_side(envoy["reply"], legatus["reply"])
    assert legatus["reply"]["nack"], "legatus did not NACK:" + shown
    for key in ("version_info", "code"):
        assert envoy["reply"][key] == legatus["reply"][key], f"{key} differs:" + shown
    assert case.phrase in envoy["reply"]["message"], shown
    assert case.phrase in legatus["reply"]["message"], f"no {case.phrase!r}:" + shown
    assert_same(envoy["restored"], legatus["restored"], "the replies to the good set again")
    assert_same(envoy["requests"], legatus["requests"], "the requests of this step")
    assert_same(envoy["gauges"], legatus["gauges"], "the cluster gauges after the NACK")


@pytest.mark.xfail(
    strict=True,
    reason="NACK texts: legatus puts the field path before the reason ('Error adding/updating "
    "cluster(s) backend: resources[0].eds_cluster_config.eds_config: cannot create...'), "
    "Envoy does not ('... backend: cannot create an EDS cluster without an EDS config'); for "
    "lb_policy 99 Envoy prints the resource then 'Proto constraint validation failed "
    "(ClusterValidationError.LbPolicy: value must be one of the defined enum values)', "
    "legatus says 'resources[0].lb_policy: value must be one of the defined enum values "
    "(Cluster 'backend')' (the path: the issue asks NACKs to name the field)",
)
@pytest.mark.parametrize("label", [c.label for c in SHARED_NACKS])
def test_ads_nack_message_text(ads: Runs, label: str):
    envoy = ads.envoy["nacks"][label]["reply"]["message"]
    legatus = ads.legatus["nacks"][label]["reply"]["message"]
    assert_same(envoy, legatus, "the NACK messages")


@pytest.mark.parametrize("label", [c.label for c in NACK_CASES.values()])
def test_ads_nack_counters(ads: Runs, label: str):
    """What an invalid update moved in cluster_added / cluster_modified / cluster_removed:
    Envoy counts a cluster of the update before building it, so also one that fails to
    build (missing_eds_config, good_and_bad); not one refused as it is decoded (its proto's
    constraints: unknown_lb_policy, empty_name)."""
    envoy = ads.envoy["nacks"][label]["counters_moved"]
    legatus = ads.legatus["nacks"][label]["counters_moved"]
    if label == "missing_eds_config":
        assert envoy == {"cluster_manager.cluster_modified": 1}, envoy
    assert_same(envoy, legatus, "the counters the NACKed update moved")


@pytest.mark.parametrize("label", [c.label for c in NACK_CASES.values()])
def test_ads_nack_cds_counters(ads: Runs, label: str):
    """What an invalid update moved in cluster_manager.cds.*: in delta, an update refused
    as it is decoded (unknown_lb_policy) counts update_attempt once, one its owner refuses
    (missing_eds_config) twice (the update, then its rejection), in Envoy as in legatus."""
    envoy = ads.envoy["nacks"][label]["cds_moved"]
    legatus = ads.legatus["nacks"][label]["cds_moved"]
    if ads.mode == "delta" and label in ("unknown_lb_policy", "missing_eds_config"):
        attempts = 1 if label == "unknown_lb_policy" else 2
        assert envoy["cluster_manager.cds.update_attempt"] == attempts, envoy
    assert_same(envoy, legatus, "the CDS counters the NACKed update moved")


def test_ads_stats_after_nacks(ads: Runs):
    """The chosen stats after the NACKs."""
    envoy = chosen(ads.envoy["stats_after_nacks"])
    legatus = chosen(ads.legatus["stats_after_nacks"])
    assert envoy["cluster_manager.cds.update_rejected"] == len(SHARED_NACKS)
    assert envoy["cluster_manager.cds.config_reload"] == 1  # the handshake's only
    assert_same(envoy, legatus, "the stats after the NACKs")


def test_ads_served_after_nacks(ads: Runs):
    assert ads.envoy["traffic_after_nacks"]["status"] == 200
    assert_same(ads.envoy["traffic_after_nacks"], ads.legatus["traffic_after_nacks"], "responses")


def test_ads_manager_stat_names(ads: Runs):
    """The names of every cluster_manager.* and control_plane.* stat (CDS: config_reload and
    config_reload_time_ms, no update_empty)."""
    envoy, legatus = set(ads.envoy["manager_stat_names"]), set(ads.legatus["manager_stat_names"])
    only = {"envoy only": sorted(envoy - legatus), "legatus only": sorted(legatus - envoy)}
    assert envoy == legatus, f"stat names differ: {only}"


# The warming scenario ------------------------------------------------------------------------


# While a cluster warms: its warming_state, and (delta) the CDS ACK held in the ACK queue.
WARMING_GAUGES = (*CM_GAUGES, "cluster.backend.warming_state", "control_plane.pending_requests")
WARMING_STATS = (
    *WARMING_GAUGES,
    "cluster.backend.membership_total",
    "cluster.backend.update_success",
)


def _placeholder(ups: list[HttpUpstream]) -> cluster_pb2.Cluster:
    """A CDS cluster besides the route's: a CDS set is never empty (in delta, the test
    control plane says nothing about an empty set, so the first fetch would never end)."""
    return static_cluster("placeholder", ups[1].port)


def _only_placeholder(xds: XdsThread, ups: list[HttpUpstream]) -> None:
    xds.set_resources(CLUSTER, [_placeholder(ups)])  # ENDPOINT never set: EDS goes unanswered


def _clusters_view(side: XdsSide) -> dict[str, Any]:
    """/clusters?format=json, by cluster: added via API, host addresses."""
    body = side.admin_json("/clusters?format=json")["body"]
    out = {}
    for status in body.get("cluster_statuses", []):
        hosts = [
            h["address"]["socket_address"]["port_value"] for h in status.get("host_statuses", [])
        ]
        out[status["name"]] = {
            "added_via_api": status.get("added_via_api", False),
            "host_ports": side.normalize([f"127.0.0.1:{p}" for p in hosts]),
        }
    return out


def _dump_view(side: XdsSide) -> dict[str, Any]:
    """The dynamic clusters of /config_dump: (name, version_info) of each, by kind."""
    out: dict[str, Any] = {}
    for kind in ("dynamic_active_clusters", "dynamic_warming_clusters"):
        got = side.admin_json(f"/config_dump?resource={kind}")
        if got["status"] != 200:
            out[kind] = got
            continue
        out[kind] = sorted(
            (c["cluster"]["name"], c.get("version_info", ABSENT))
            for c in got["body"].get("configs", [])
        )
    return out


def _step(side: XdsSide, *, traffic: bool = True) -> dict[str, Any]:
    stats = side.settled_stats(
        lambda n: n.startswith(("cluster_manager.", "cluster.backend.", "control_plane."))
    )
    out = {
        "gauges": chosen(stats, WARMING_STATS),
        "counters": chosen(stats, CM_COUNTERS),
        "clusters": _clusters_view(side),
        "config_dump": _dump_view(side),
    }
    if traffic:
        out["traffic"] = side.normalize(side.get())
    return out


def _warming_clusters(side: XdsSide) -> int:
    return side.proxy.stats().get("cluster_manager.warming_clusters", 0)


def _until_warm(side: XdsSide) -> None:
    wait_for(lambda: _warming_clusters(side) == 0, timeout=10, what=f"{side.name}: warm")


def _cds_successes(side: XdsSide) -> int:
    return side.proxy.stats().get("cluster_manager.cds.update_success", 0)


def _push_clusters(side: XdsSide, clusters: list[cluster_pb2.Cluster]) -> None:
    """Push a CDS update and wait until the proxy applied it (its ACK may wait for warming)."""
    before = _cds_successes(side)
    side.push(CLUSTER, clusters)
    wait_for(lambda: _cds_successes(side) > before, timeout=10, what=f"{side.name}: CDS update")


def _acked(side: XdsSide, type_url: str, since: int) -> bool:
    return any(r.type_url == type_url and r.response_nonce for r in side.requests()[since:])


def _eds_request_naming_backend(side: XdsSide, since: int) -> None:
    def names_backend(r: Received) -> bool:
        names = r.subscribe if r.delta else r.resource_names
        return r.type_url == ENDPOINT and "backend" in names

    side.xds.run(side.xds.server.wait_for(names_backend, since=since, timeout=10), 30)


# How long a withheld ClusterLoadAssignment is shown to hold the cluster in warming (Envoy's
# own limit is the initial_fetch_timeout, 15 s).
HOLD = 0.3


def warming_scenario(side: XdsSide) -> dict[str, Any]:
    out: dict[str, Any] = {}
    ups = side.upstreams
    side.reply(CLUSTER, 0)
    out["no_cluster"] = _step(side)

    # The CDS ACK waits for the cluster to warm (Envoy resumes CDS once no cluster warms).
    since = side.mark()
    _push_clusters(side, [_placeholder(ups), eds_cluster("backend")])
    _eds_request_naming_backend(side, since)
    time.sleep(HOLD)
    out["warming"] = {**_step(side), "cds_acked": _acked(side, CLUSTER, since)}

    side.push(ENDPOINT, [assignment("backend", ups[0].port)])
    _until_warm(side)
    out["active"] = _step(side)

    since = side.mark()
    _push_clusters(side, [_placeholder(ups), eds_cluster("backend", connect_timeout="2s")])
    time.sleep(HOLD)
    out["modified_warming"] = {**_step(side), "cds_acked": _acked(side, CLUSTER, since)}

    side.push(ENDPOINT, [assignment("backend", ups[1].port)])
    _until_warm(side)
    out["modified_active"] = _step(side)

    side.push(ENDPOINT, [assignment("backend", ups[0].port, ups[0].port)])
    wait_for(
        lambda: side.proxy.stats().get("cluster.backend.update_success", 0) >= 3,
        timeout=10,
        what=f"{side.name}: the third assignment",
    )
    out["duplicate_address"] = _step(side, traffic=False)

    removal = side.mark()
    side.push(CLUSTER, [_placeholder(ups)])
    side.reply(CLUSTER, removal)
    time.sleep(HOLD)  # whatever else the removal makes the proxy ask
    out["removed"] = _step(side)

    out["requests_before_removal"] = side.request_views(0, removal)
    out["removal_requests"] = side.request_views(removal)
    out["upstream_requests"] = [len(u.requests) for u in ups]
    out["access_log"] = side.access_log_lines(6)
    return out


@pytest.fixture(scope="module", params=MODES)
def warming(request, tmp_path_factory) -> Runs:
    mode = request.param
    runs = run_both(
        tmp_path_factory.mktemp(f"xds-warming-{mode}"),
        delta=mode == "delta",
        before_start=_only_placeholder,
        scenario=warming_scenario,
    )
    return Runs(mode, runs["envoy"], runs["legatus"])


def test_warming_no_cluster_yet(warming: Runs):
    """Before CDS names the route's cluster: 503, empty body (Envoy's NC)."""
    envoy, legatus = warming.envoy["no_cluster"], warming.legatus["no_cluster"]
    assert envoy["traffic"]["status"] == 503
    for part in ("traffic", "gauges", "counters", "clusters"):
        assert_same(envoy[part], legatus[part], part)


@pytest.mark.parametrize("step", ["warming", "modified_warming"])
def test_warming_holds_cluster(warming: Runs, step: str):
    """With its ClusterLoadAssignment withheld, a new cluster warms (not served, not in
    /clusters); a changed one warms behind the one in place, which keeps serving. In delta,
    a changed cluster does not subscribe to its assignment again (the name stays of interest
    to the version in place): it warms until the next assignment, as in Envoy."""
    envoy, legatus = warming.envoy[step], warming.legatus[step]
    assert envoy["gauges"]["cluster_manager.warming_clusters"] == 1, envoy
    assert envoy["gauges"]["cluster.backend.warming_state"] == 1, envoy
    for part in ("traffic", "clusters"):
        assert_same(envoy[part], legatus[part], part)
    gauges = WARMING_GAUGES  # the warming cluster's own stats: test_warming_cluster_stats
    assert_same(chosen(envoy["gauges"], gauges), chosen(legatus["gauges"], gauges), "gauges")


@pytest.mark.parametrize("step", ["warming", "modified_warming"])
def test_warming_holds_cds_ack(warming: Runs, step: str):
    """Both hold the CDS ACK while a cluster warms (CDS is paused until none warms); in
    delta the held ACK shows in control_plane.pending_requests (test_warming_holds_cluster)."""
    envoy, legatus = warming.envoy[step]["cds_acked"], warming.legatus[step]["cds_acked"]
    assert not envoy
    assert_same(envoy, legatus, "whether the CDS update was ACKed while the cluster warms")


def test_warming_cluster_stats(warming: Runs):
    """A new cluster's stats exist while it warms (membership_total 0)."""
    envoy, legatus = warming.envoy["warming"]["gauges"], warming.legatus["warming"]["gauges"]
    assert_same(envoy, legatus, "the stats while the cluster warms")


@pytest.mark.parametrize("step", ["warming", "modified_warming"])
def test_warming_counters(warming: Runs, step: str):
    """cluster_added / cluster_modified while the cluster warms (counted when it starts)."""
    envoy, legatus = warming.envoy[step]["counters"], warming.legatus[step]["counters"]
    assert_same(envoy, legatus, "the cluster manager's counters")


@pytest.mark.parametrize("step", ["warming", "active"])
def test_warming_config_dump(warming: Runs, step: str):
    envoy, legatus = warming.envoy[step]["config_dump"], warming.legatus[step]["config_dump"]
    assert_same(envoy, legatus, "the dynamic clusters of /config_dump")


# Delta, after a change of the cluster: the first assignment moves Envoy's
# cluster.backend.update_success by 1 in some runs and by 2 in others (the old and the new
# cluster both subscribe to "backend" and count under the same name), so there it is compared
# as "moved", not by value.
TIMING_DEPENDENT = "cluster.backend.update_success"


@pytest.mark.parametrize("step", ["active", "modified_active"])
def test_warming_then_active(warming: Runs, step: str):
    """Once its ClusterLoadAssignment is sent, the cluster is active and served."""
    envoy, legatus = warming.envoy[step], warming.legatus[step]
    assert envoy["gauges"]["cluster_manager.warming_clusters"] == 0, envoy
    assert envoy["traffic"]["status"] == 200
    for part in ("traffic", "clusters", "counters"):
        assert_same(envoy[part], legatus[part], part)
    envoy_gauges, legatus_gauges = dict(envoy["gauges"]), dict(legatus["gauges"])
    if warming.mode == "delta" and step == "modified_active":
        before = warming.envoy["active"]["gauges"][TIMING_DEPENDENT]
        for gauges in (envoy_gauges, legatus_gauges):
            gauges[TIMING_DEPENDENT] = "moved" if gauges[TIMING_DEPENDENT] > before else "not"
    assert_same(envoy_gauges, legatus_gauges, "gauges")


def test_warming_duplicate_address(warming: Runs):
    """An assignment naming one address twice: one host. (update_success is left out: in
    delta it carries Envoy's TIMING_DEPENDENT count.)"""
    envoy = warming.envoy["duplicate_address"]
    legatus = warming.legatus["duplicate_address"]

    def hosts(gauges: dict) -> dict:
        return {k: v for k, v in gauges.items() if k != TIMING_DEPENDENT}

    assert_same(hosts(envoy["gauges"]), hosts(legatus["gauges"]), "the stats")
    assert_same(envoy["clusters"], legatus["clusters"], "/clusters")


def test_warming_removed(warming: Runs):
    """Removed by CDS: 503 again, the cluster gone from /clusters."""
    envoy, legatus = warming.envoy["removed"], warming.legatus["removed"]
    assert envoy["traffic"]["status"] == 503
    assert envoy["counters"]["cluster_manager.cluster_removed"] == 1
    for part in ("traffic", "clusters", "counters"):
        assert_same(envoy[part], legatus[part], part)
    gauges = CM_GAUGES  # the removed cluster's own stats: test_warming_removed_cluster_stats
    assert_same(chosen(envoy["gauges"], gauges), chosen(legatus["gauges"], gauges), "gauges")


def test_warming_removed_cluster_stats(warming: Runs):
    """A cluster removed by CDS takes its cluster.<name>.* stats with it."""
    envoy, legatus = warming.envoy["removed"]["gauges"], warming.legatus["removed"]["gauges"]
    assert_same(envoy, legatus, "the stats after the removal")


def test_warming_requests(warming: Runs):
    """Every request up to the removal (subscriptions, ACKs, the unanswered EDS request)."""
    envoy = warming.envoy["requests_before_removal"]
    assert_same(envoy, warming.legatus["requests_before_removal"], "the requests")
    assert_same(warming.envoy["streams_opened"], warming.legatus["streams_opened"], "streams")


def test_warming_removal_requests(warming: Runs):
    """After the removal: the EDS request that drops the cluster's name goes before the CDS
    ACK (delta); SotW: the control plane answers it with an empty response, which Envoy,
    watching no ClusterLoadAssignment any more, takes without a request."""
    envoy, legatus = warming.envoy["removal_requests"], warming.legatus["removal_requests"]
    assert_same(envoy, legatus, "the requests after the removal")


def test_warming_traffic(warming: Runs):
    """The responses' access log lines (code and flags) and what reached the upstreams."""
    assert warming.envoy["access_log"][0] == "503 NC"
    for part in ("access_log", "upstream_requests"):
        assert_same(warming.envoy[part], warming.legatus[part], part)
