"""DnsClusterResolver: STRICT_DNS and LOGICAL_DNS membership, refresh, stats.

Most tests script the answers with ``ScriptedResolver`` (same ``resolve``
signature as DnsResolver) and refresh every 50 ms; they wait for the Nth
resolution through an event, never by sleeping.
"""

from __future__ import annotations

import asyncio
import logging
import random

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from google.protobuf import json_format

from legatus.network.address import SocketAddress
from legatus.stats.store import Store
from legatus.upstream.cluster import HostConfig, LookupFamily, compile_cluster
from legatus.upstream.dns import DnsError, DnsNoRecords, DnsResolver
from legatus.upstream.dns_cluster import DnsClusterResolver, FailureBackoff

REFRESH = "0.05s"


def lb_endpoint(host: str, port: int) -> dict:
    return {"endpoint": {"address": {"socket_address": {"address": host, "port_value": port}}}}


def cluster(kind: str, localities: list[tuple[int, list[tuple[str, int]]]], **extra):
    """A compiled cluster ``backend``: localities are (priority, [(address, port)])."""
    proto = json_format.ParseDict(
        {
            "name": "backend",
            "type": kind,
            "connect_timeout": "1s",
            "dns_refresh_rate": REFRESH,
            "load_assignment": {
                "cluster_name": "backend",
                "endpoints": [
                    {
                        "priority": priority,
                        "locality": {"zone": f"z{priority}"},
                        "lb_endpoints": [lb_endpoint(host, port) for host, port in endpoints],
                    }
                    for priority, endpoints in localities
                ],
            },
            **extra,
        },
        cluster_pb2.Cluster(),
    )
    return compile_cluster(proto, "static_resources.clusters[0]")


class ScriptedResolver:
    """Answers per name from a script; the last entry repeats. Exceptions are raised."""

    def __init__(self, scripts: dict[str, list]) -> None:
        self.scripts = {name: list(s) for name, s in scripts.items()}
        self.calls: list[tuple[str, LookupFamily]] = []
        self._waiters: list[tuple[int, asyncio.Event]] = []

    async def resolve(self, name: str, family: LookupFamily) -> list[tuple[str, int]]:
        self.calls.append((name, family))
        for n, event in self._waiters:
            if len(self.calls) >= n:
                event.set()
        script = self.scripts[name]
        item = script.pop(0) if len(script) > 1 else script[0]
        if isinstance(item, BaseException):
            raise item
        return list(item)

    async def wait_calls(self, n: int, timeout: float = 5.0) -> None:
        event = asyncio.Event()
        if len(self.calls) >= n:
            return
        self._waiters.append((n, event))
        await asyncio.wait_for(event.wait(), timeout)


class Harness:
    def __init__(self, config, resolver) -> None:
        self.store = Store()
        self.published: list[tuple[HostConfig, ...]] = []
        self.dns = DnsClusterResolver(
            config,
            resolver=resolver,
            loop=asyncio.get_running_loop(),
            scope=self.store.scope("cluster.backend."),
            on_hosts=self.published.append,
            random=random.Random(7),
        )

    def stat(self, name: str) -> int:
        return self.store.value(f"cluster.backend.{name}")

    def stats(self) -> dict[str, int]:
        names = (
            "update_attempt",
            "update_success",
            "update_failure",
            "update_empty",
            "update_no_rebuild",
        )
        return {n: self.stat(n) for n in names}


def addrs(hosts) -> list[str]:
    return [str(h.address) for h in hosts]


# STRICT_DNS -----------------------------------------------------------------------


async def test_strict_dns_resolves_localhost_and_a_literal():
    config = cluster(
        "STRICT_DNS",
        [(0, [("localhost", 8080)]), (1, [("127.0.0.2", 8081)])],
        dns_lookup_family="V4_ONLY",
    )
    resolver = DnsResolver(asyncio.get_running_loop(), timeout=2.0, tries=1)
    try:
        h = Harness(config, resolver)
        await h.dns.initialize()
    finally:
        await resolver.close()
    assert h.published == [h.dns.hosts]
    assert h.dns.hosts == (
        HostConfig(
            address=SocketAddress("127.0.0.1", 8080),
            hostname="localhost",
            weight=1,
            priority=0,
            zone="z0",
        ),
        HostConfig(
            address=SocketAddress("127.0.0.2", 8081),
            hostname="127.0.0.2",
            weight=1,
            priority=1,
            zone="z1",
        ),
    )
    assert h.stats() == {
        "update_attempt": 2,
        "update_success": 2,
        "update_failure": 0,
        "update_empty": 0,
        "update_no_rebuild": 0,
    }


async def test_strict_dns_every_address_is_a_host_deduplicated():
    config = cluster("STRICT_DNS", [(0, [("svc", 80)])])
    resolver = ScriptedResolver({"svc": [[("10.0.0.1", 0), ("10.0.0.2", 0), ("10.0.0.1", 0)]]})
    h = Harness(config, resolver)
    await h.dns.initialize()
    assert addrs(h.dns.hosts) == ["10.0.0.1:80", "10.0.0.2:80"]
    assert resolver.calls == [("svc", LookupFamily.AUTO)]  # Envoy's default family


async def test_refresh_reports_only_real_changes():
    config = cluster("STRICT_DNS", [(0, [("svc", 80)])])
    resolver = ScriptedResolver(
        {
            "svc": [
                [("10.0.0.1", 0)],
                [("10.0.0.1", 0)],  # same: no rebuild
                [("10.0.0.1", 0), ("10.0.0.2", 0)],  # grows
                [("10.0.0.2", 0), ("10.0.0.1", 0)],  # reordered, same set: no rebuild
            ]
        }
    )
    h = Harness(config, resolver)
    await h.dns.initialize()
    h.dns.start()
    try:
        await resolver.wait_calls(6)
    finally:
        h.dns.stop()
    assert [addrs(p) for p in h.published] == [["10.0.0.1:80"], ["10.0.0.1:80", "10.0.0.2:80"]]
    assert h.stats() == {
        "update_attempt": 6,
        "update_success": 6,
        "update_failure": 0,
        "update_empty": 0,
        "update_no_rebuild": 4,
    }


async def test_failure_keeps_previous_hosts_and_counts_update_failure():
    config = cluster("STRICT_DNS", [(0, [("svc", 80)])])
    resolver = ScriptedResolver(
        {
            "svc": [
                [("10.0.0.1", 0)],
                DnsError("svc", "timeout"),
                DnsError("svc", "timeout"),
                [("10.0.0.9", 0)],
            ]
        }
    )
    h = Harness(config, resolver)
    await h.dns.initialize()
    h.dns.start()
    try:
        await resolver.wait_calls(3)
        assert addrs(h.dns.hosts) == ["10.0.0.1:80"]
        assert h.stat("update_failure") == 2
        assert len(h.published) == 1
        await resolver.wait_calls(4)
    finally:
        h.dns.stop()
    assert [addrs(p) for p in h.published] == [["10.0.0.1:80"], ["10.0.0.9:80"]]
    assert h.stats() == {
        "update_attempt": 4,
        "update_success": 2,
        "update_failure": 2,
        "update_empty": 0,
        "update_no_rebuild": 0,
    }


async def test_no_records_empties_the_endpoint():
    config = cluster("STRICT_DNS", [(0, [("svc", 80)]), (0, [("other", 81)])])
    resolver = ScriptedResolver(
        {
            "svc": [[("10.0.0.1", 0)], DnsNoRecords("svc", "NXDOMAIN")],
            "other": [[("10.0.1.1", 0)]],
        }
    )
    h = Harness(config, resolver)
    await h.dns.initialize()
    h.dns.start()
    try:
        await resolver.wait_calls(4)
    finally:
        h.dns.stop()
    assert [addrs(p) for p in h.published] == [["10.0.0.1:80", "10.0.1.1:81"], ["10.0.1.1:81"]]
    assert h.stat("update_failure") == 0  # Envoy: a successful resolution with zero hosts


async def test_failed_initialization_leaves_no_hosts_and_keeps_trying():
    config = cluster("STRICT_DNS", [(0, [("svc", 80)])])
    resolver = ScriptedResolver({"svc": [DnsError("svc", "SERVFAIL"), [("10.0.0.1", 0)]]})
    h = Harness(config, resolver)
    await h.dns.initialize()
    assert h.published == [()]
    assert h.stat("update_failure") == 1
    h.dns.start()
    try:
        await resolver.wait_calls(2)
    finally:
        h.dns.stop()
    assert [addrs(p) for p in h.published] == [[], ["10.0.0.1:80"]]


async def test_unexpected_resolver_error_is_logged_and_counted(caplog):
    config = cluster("STRICT_DNS", [(0, [("svc", 80)])])
    resolver = ScriptedResolver({"svc": [RuntimeError("bug"), [("10.0.0.1", 0)]]})
    h = Harness(config, resolver)
    with caplog.at_level(logging.DEBUG, logger="legatus.upstream"):
        await h.dns.initialize()
        h.dns.start()
        try:
            await resolver.wait_calls(2)
        finally:
            h.dns.stop()
    assert h.stat("update_failure") == 1
    assert addrs(h.dns.hosts) == ["10.0.0.1:80"]
    assert any(r.name == "legatus.upstream" and "svc" in r.getMessage() for r in caplog.records)


async def test_on_hosts_raising_does_not_stop_the_refresh():
    config = cluster("STRICT_DNS", [(0, [("svc", 80)])])
    resolver = ScriptedResolver({"svc": [[("10.0.0.1", 0)], [("10.0.0.2", 0)]]})
    h = Harness(config, resolver)
    seen = []

    def on_hosts(hosts):
        seen.append(hosts)
        raise ValueError("subscriber bug")

    h.dns._on_hosts = on_hosts
    await h.dns.initialize()
    h.dns.start()
    try:
        await resolver.wait_calls(3)
    finally:
        h.dns.stop()
    assert [addrs(s) for s in seen] == [["10.0.0.1:80"], ["10.0.0.2:80"]]


async def test_stop_ends_the_refresh():
    config = cluster("STRICT_DNS", [(0, [("svc", 80)])])
    resolver = ScriptedResolver({"svc": [[("10.0.0.1", 0)]]})
    h = Harness(config, resolver)
    await h.dns.initialize()
    h.dns.start()
    await resolver.wait_calls(2)
    h.dns.stop()
    calls = len(resolver.calls)
    await asyncio.sleep(0.15)  # three refresh periods
    assert len(resolver.calls) == calls


async def test_respect_dns_ttl_uses_the_record_ttl():
    config = cluster(
        "STRICT_DNS", [(0, [("svc", 80)])], dns_refresh_rate="60s", respect_dns_ttl=True
    )
    resolver = ScriptedResolver({"svc": [[("10.0.0.1", 1), ("10.0.0.2", 30)]]})
    h = Harness(config, resolver)
    await h.dns.initialize()
    h.dns.start()
    try:
        await resolver.wait_calls(2, timeout=3.0)  # the minimum TTL (1 s), not 60 s
    finally:
        h.dns.stop()


# LOGICAL_DNS ----------------------------------------------------------------------


async def test_logical_dns_has_one_host_following_the_first_address():
    config = cluster("LOGICAL_DNS", [(1, [("svc", 443)])])
    resolver = ScriptedResolver(
        {
            "svc": [
                [("10.0.0.1", 0), ("10.0.0.2", 0)],
                [("10.0.0.1", 0), ("10.0.0.3", 0)],  # first address unchanged: same host
                DnsNoRecords("svc", "NODATA"),  # empty: a failure, the host stays
                [("10.0.0.7", 0), ("10.0.0.1", 0)],  # first address changed
            ]
        }
    )
    h = Harness(config, resolver)
    await h.dns.initialize()
    assert h.dns.hosts == (
        HostConfig(
            address=SocketAddress("10.0.0.1", 443), hostname="svc", weight=1, priority=0, zone="z1"
        ),  # Envoy rewrites a logical host's priority to 0
    )
    h.dns.start()
    try:
        await resolver.wait_calls(5)
    finally:
        h.dns.stop()
    assert [addrs(p) for p in h.published] == [["10.0.0.1:443"], ["10.0.0.7:443"]]
    assert h.stats() == {
        "update_attempt": 5,
        "update_success": 4,
        "update_failure": 1,
        "update_empty": 0,
        "update_no_rebuild": 2,
    }


async def test_logical_dns_with_localhost():
    config = cluster("LOGICAL_DNS", [(0, [("localhost", 9000)])], dns_lookup_family="ALL")
    resolver = DnsResolver(asyncio.get_running_loop(), timeout=2.0, tries=1)
    try:
        h = Harness(config, resolver)
        await h.dns.initialize()
    finally:
        await resolver.close()
    assert len(h.dns.hosts) == 1
    assert h.dns.hosts[0].address.host in ("127.0.0.1", "::1")
    assert h.dns.hosts[0].address.port == 9000


def test_static_clusters_are_refused():
    config = cluster("STATIC", [(0, [("127.0.0.1", 80)])])
    with pytest.raises(ValueError):
        asyncio.run(_make(config))


async def _make(config):
    return Harness(config, ScriptedResolver({}))


# Failure backoff --------------------------------------------------------------------


class HighestDraw(random.Random):
    def randrange(self, stop, *args):  # always the top of [0, stop)
        return stop - 1


def test_failure_backoff_without_failure_rate_is_the_refresh_rate():
    backoff = FailureBackoff(cluster("STRICT_DNS", [(0, [("svc", 80)])]), HighestDraw())
    assert [backoff.next_delay() for _ in range(3)] == [0.05, 0.05, 0.05]


def test_failure_backoff_is_envoys_jittered_exponential():
    config = cluster(
        "STRICT_DNS",
        [(0, [("svc", 80)])],
        dns_failure_refresh_rate={"base_interval": "1s", "max_interval": "4s"},
    )
    backoff = FailureBackoff(config, HighestDraw())
    assert [backoff.next_delay() for _ in range(4)] == [0.999, 1.999, 3.999, 3.999]
    backoff.reset()
    assert backoff.next_delay() == 0.999


def test_failure_backoff_max_defaults_to_ten_times_base():
    config = cluster(
        "STRICT_DNS", [(0, [("svc", 80)])], dns_failure_refresh_rate={"base_interval": "0.1s"}
    )
    backoff = FailureBackoff(config, HighestDraw())
    assert [backoff.next_delay() for _ in range(6)] == [0.099, 0.199, 0.399, 0.799, 0.999, 0.999]
    draws = FailureBackoff(config, random.Random(1))
    assert all(0 <= draws.next_delay() < 1.0 for _ in range(20))
