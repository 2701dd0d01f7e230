"""DnsResolver: c-ares on the loop, Envoy's lookup families, bounded failures.

``localhost`` answers come from c-ares itself (it reads /etc/hosts and, since
c-ares 1.2x, answers ``localhost`` with the loopback addresses of RFC 6761 even
when /etc/hosts lists only 127.0.0.1), so they need no nameserver. Everything
else is asked of ``FakeDnsServer``, a UDP DNS responder on 127.0.0.1, or of a
socket that never answers: no test needs the machine's network or resolv.conf.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import struct
import time

import pytest
import uvloop

from legatus.upstream.cluster import LookupFamily
from legatus.upstream.dns import DnsError, DnsNoRecords, DnsResolver

A, AAAA = 1, 28

RECORDS = {
    "v4only.test": {A: [("10.0.0.1", 30), ("10.0.0.2", 40)]},
    "v6only.test": {AAAA: [("fd00::1", 50)]},
    "both.test": {A: [("10.0.1.1", 60)], AAAA: [("fd00::2", 70)]},
}


class FakeDnsServer(asyncio.DatagramProtocol):
    """Answers A/AAAA queries from RECORDS: NXDOMAIN for unknown names, NODATA for no records."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.queries: list[tuple[str, int]] = []

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        qid, _flags = struct.unpack("!HH", data[:4])
        labels, i = [], 12
        while data[i]:
            labels.append(data[i + 1 : i + 1 + data[i]].decode())
            i += 1 + data[i]
        qtype, _qclass = struct.unpack("!HH", data[i + 1 : i + 5])
        question = data[12 : i + 5]
        name = ".".join(labels).lower()
        self.queries.append((name, qtype))
        records = RECORDS.get(name)
        rcode = 3 if records is None else 0
        answers = b""
        rrs = (records or {}).get(qtype, [])
        for ip, ttl in rrs:
            rdata = ipaddress.ip_address(ip).packed
            answers += struct.pack("!HHHIH", 0xC00C, qtype, 1, ttl, len(rdata)) + rdata
        header = struct.pack("!HHHHHH", qid, 0x8180 | rcode, 1, len(rrs), 0, 0)
        self.transport.sendto(header + question + answers, addr)


@pytest.fixture
async def dns_server():
    loop = asyncio.get_running_loop()
    transport, server = await loop.create_datagram_endpoint(
        FakeDnsServer, local_addr=("127.0.0.1", 0)
    )
    server.port = transport.get_extra_info("sockname")[1]
    yield server
    transport.close()


@pytest.fixture
async def resolver(dns_server):
    r = DnsResolver(
        asyncio.get_running_loop(),
        timeout=2.0,
        tries=1,
        nameservers=[f"127.0.0.1:{dns_server.port}"],
    )
    yield r
    await r.close()


def ips(answer):
    return [ip for ip, _ in answer]


# localhost ----------------------------------------------------------------------


async def test_localhost_v4_only(resolver):
    assert ips(await resolver.resolve("localhost", LookupFamily.V4_ONLY)) == ["127.0.0.1"]


async def test_localhost_v6_only(resolver):
    assert ips(await resolver.resolve("localhost", LookupFamily.V6_ONLY)) == ["::1"]


async def test_localhost_auto_prefers_v6(resolver):
    assert ips(await resolver.resolve("localhost", LookupFamily.AUTO)) == ["::1"]


async def test_localhost_v4_preferred(resolver):
    assert ips(await resolver.resolve("localhost", LookupFamily.V4_PREFERRED)) == ["127.0.0.1"]


async def test_localhost_all_returns_both_families(resolver):
    answer = await resolver.resolve("localhost", LookupFamily.ALL)
    assert sorted(ips(answer)) == ["127.0.0.1", "::1"]


async def test_localhost_needs_no_nameserver(dns_server, resolver):
    await resolver.resolve("localhost", LookupFamily.ALL)
    assert dns_server.queries == []


# IP literals ---------------------------------------------------------------------


@pytest.mark.parametrize("family", list(LookupFamily))
async def test_ip_literals_resolve_to_themselves_without_a_query(dns_server, resolver, family):
    assert await resolver.resolve("127.0.0.2", family) == [("127.0.0.2", 0)]
    assert await resolver.resolve("0:0::1", family) == [("::1", 0)]
    assert dns_server.queries == []


# Families against a nameserver -----------------------------------------------------


async def test_records_and_ttls_come_from_the_answer(resolver):
    answer = await resolver.resolve("v4only.test", LookupFamily.V4_ONLY)
    assert answer == [("10.0.0.1", 30), ("10.0.0.2", 40)]


async def test_auto_falls_back_to_v4_when_there_is_no_v6_record(dns_server, resolver):
    answer = await resolver.resolve("v4only.test", LookupFamily.AUTO)
    assert ips(answer) == ["10.0.0.1", "10.0.0.2"]
    assert [q for q in dns_server.queries if q[0] == "v4only.test"] == [
        ("v4only.test", AAAA),
        ("v4only.test", A),
    ]


async def test_auto_does_not_ask_v4_when_v6_answers(dns_server, resolver):
    assert await resolver.resolve("both.test", LookupFamily.AUTO) == [("fd00::2", 70)]
    assert ("both.test", A) not in dns_server.queries


async def test_v4_preferred_falls_back_to_v6(resolver):
    assert await resolver.resolve("v6only.test", LookupFamily.V4_PREFERRED) == [("fd00::1", 50)]


async def test_v4_preferred_returns_only_v4_when_there_is_some(resolver):
    assert await resolver.resolve("both.test", LookupFamily.V4_PREFERRED) == [("10.0.1.1", 60)]


async def test_all_returns_both_families(resolver):
    answer = await resolver.resolve("both.test", LookupFamily.ALL)
    assert sorted(answer) == [("10.0.1.1", 60), ("fd00::2", 70)]


async def test_only_family_without_records_is_no_records(resolver):
    with pytest.raises(DnsNoRecords):
        await resolver.resolve("v4only.test", LookupFamily.V6_ONLY)
    with pytest.raises(DnsNoRecords):
        await resolver.resolve("v6only.test", LookupFamily.V4_ONLY)


async def test_nonexistent_name_fails_fast(resolver):
    start = time.monotonic()
    for family in LookupFamily:
        with pytest.raises(DnsError) as info:
            await resolver.resolve("does-not-exist.invalid", family)
        # NXDOMAIN: Envoy's "successful resolution with no addresses".
        assert isinstance(info.value, DnsNoRecords)
        assert info.value.name == "does-not-exist.invalid"
    assert time.monotonic() - start < 1.0


# Failures are bounded ---------------------------------------------------------------


@pytest.fixture
def silent_nameserver():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    yield f"127.0.0.1:{sock.getsockname()[1]}"
    sock.close()


async def test_unanswered_query_times_out_as_dns_error(silent_nameserver):
    r = DnsResolver(
        asyncio.get_running_loop(), timeout=0.3, tries=2, nameservers=[silent_nameserver]
    )
    try:
        start = time.monotonic()
        with pytest.raises(DnsError) as info:
            await r.resolve("svc.example", LookupFamily.V4_ONLY)
        assert not isinstance(info.value, DnsNoRecords)
        assert time.monotonic() - start < 1.5
        # AUTO makes two bounded lookups; both failing is a failure, not "no records".
        with pytest.raises(DnsError) as info:
            await r.resolve("svc.example", LookupFamily.AUTO)
        assert not isinstance(info.value, DnsNoRecords)
        assert "IPv6" in info.value.reason and "IPv4" in info.value.reason
    finally:
        await r.close()


async def test_system_configuration_is_bounded_too():
    # Whatever /etc/resolv.conf points at (answering or not), this ends quickly.
    r = DnsResolver(asyncio.get_running_loop(), timeout=0.5, tries=1)
    try:
        start = time.monotonic()
        with pytest.raises(DnsError):
            await r.resolve("does-not-exist.invalid", LookupFamily.V4_ONLY)
        assert time.monotonic() - start < 2.0
    finally:
        await r.close()


def test_works_on_uvloop():
    async def main():
        loop = asyncio.get_running_loop()
        transport, _server = await loop.create_datagram_endpoint(
            FakeDnsServer, local_addr=("127.0.0.1", 0)
        )
        port = transport.get_extra_info("sockname")[1]
        r = DnsResolver(loop, timeout=2.0, tries=1, nameservers=[f"127.0.0.1:{port}"])
        try:
            return (
                await r.resolve("localhost", LookupFamily.V4_ONLY),
                await r.resolve("v6only.test", LookupFamily.AUTO),
            )
        finally:
            await r.close()
            transport.close()

    local, remote = uvloop.run(main())
    assert ips(local) == ["127.0.0.1"]
    assert remote == [("fd00::1", 50)]
