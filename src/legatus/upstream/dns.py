"""Asynchronous DNS resolution on the event loop, with Envoy's lookup families.

Theory of operation. ``DnsResolver`` wraps one aiodns (c-ares) channel driven
by the event loop through c-ares' socket-state callback, as Envoy drives c-ares
from its dispatcher: no executor, no getaddrinfo(3) and no c-ares event thread.
c-ares reads /etc/hosts and /etc/resolv.conf itself.

``resolve(name, family)`` follows Envoy's c-ares resolver
(source/extensions/network/dns_resolver/cares/dns_impl.cc) and the documented
``Cluster.DnsLookupFamily``:

- V4_ONLY / V6_ONLY: one lookup of that family.
- AUTO: IPv6 first; only if that yields no address, IPv4.
- V4_PREFERRED: IPv4 first; only if that yields no address, IPv6.
- ALL: one lookup for both families; every address is returned.

A lookup answered with "no such name" or "no records" (ENOTFOUND / ENODATA)
is, for Envoy, a *successful* resolution with no addresses; it raises
``DnsNoRecords`` here (a ``DnsError``), so callers that want Envoy's meaning
catch it first. Any other failure, including a timeout, raises ``DnsError``.
An IP literal resolves to itself (TTL 0) without a query.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import weakref
from collections.abc import Sequence

import aiodns
import pycares

from legatus.upstream.cluster import LookupFamily

# c-ares ares.h: ``#define ARES_AI_NOSORT (1 << 7)`` (pycares does not export it). Envoy asks
# for unsorted answers, so a host list follows the DNS answer, not RFC 6724 sorting.
_ARES_AI_NOSORT = 1 << 7
_NO_RECORDS = frozenset({pycares.errno.ARES_ENOTFOUND, pycares.errno.ARES_ENODATA})

Answer = list[tuple[str, int]]  # (IP string, TTL seconds), in answer order


class DnsError(Exception):
    """A name could not be resolved: ``name`` and a human ``reason``."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"DNS resolution of {name!r} failed: {reason}")
        self.name = name
        self.reason = reason


class DnsNoRecords(DnsError):
    """The name has no address of the requested families (NXDOMAIN or NODATA).

    Envoy counts this as a successful resolution that returned zero addresses.
    """


class _LoopDrivenResolver(aiodns.DNSResolver):
    """aiodns on c-ares' socket-state callback: the loop watches c-ares' sockets.

    aiodns 4 prefers a c-ares event thread whose results come back with
    ``call_soon_threadsafe``; this keeps all of c-ares on the loop instead
    (aiodns' own fallback path), which also keeps the main process free of a
    native thread when it forks workers.
    """

    def _make_channel(self, **kwargs):
        this = weakref.ref(self)

        def sock_state_cb(fd: int, readable: bool, writable: bool) -> None:
            resolver = this()
            if resolver is not None:
                resolver._sock_state_cb(fd, readable, writable)

        channel = pycares.Channel(sock_state_cb=sock_state_cb, timeout=self._timeout, **kwargs)
        return False, channel


class DnsResolver:
    """One c-ares channel on ``loop``.

    ``timeout`` bounds each address-family lookup (an AUTO or V4_PREFERRED
    resolution that falls back makes two); c-ares retries a query ``tries``
    times within it.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        *,
        timeout: float = 5.0,
        tries: int = 2,
        nameservers: Sequence[str] | None = None,
    ) -> None:
        if timeout <= 0 or tries < 1:
            raise ValueError("timeout must be positive and tries at least 1")
        self._loop = loop
        self._timeout = timeout
        # c-ares doubles a server's timeout on each retry: T + 2T + ... fits in ``timeout``.
        per_try = timeout / (2**tries - 1)
        self._channel = _LoopDrivenResolver(
            nameservers=list(nameservers) if nameservers else None,
            loop=loop,
            timeout=per_try,
            tries=tries,
        )

    async def resolve(self, name: str, family: LookupFamily) -> Answer:
        """A non-empty list of (IP, TTL) for ``name``, or DnsError / DnsNoRecords."""
        literal = _ip_literal(name)
        if literal is not None:
            return [(literal, 0)]
        if family is LookupFamily.V4_ONLY:
            return await self._lookup(name, socket.AF_INET)
        if family is LookupFamily.V6_ONLY:
            return await self._lookup(name, socket.AF_INET6)
        if family is LookupFamily.ALL:
            return await self._lookup(name, socket.AF_UNSPEC)
        if family is LookupFamily.AUTO:
            order = (socket.AF_INET6, socket.AF_INET)
        elif family is LookupFamily.V4_PREFERRED:
            order = (socket.AF_INET, socket.AF_INET6)
        else:
            raise ValueError(f"unknown lookup family {family!r}")
        return await self._preferred(name, order)

    async def close(self) -> None:
        await self._channel.close()

    async def _preferred(self, name: str, order: tuple[int, int]) -> Answer:
        # Envoy's pending resolution: the second family is asked only when the first gave
        # no address, and the whole resolution counts as successful (with no addresses)
        # if either lookup succeeded, even if the other one failed.
        errors: list[DnsError] = []
        for af in order:
            try:
                return await self._lookup(name, af)
            except DnsError as e:
                errors.append(e)
        if any(isinstance(e, DnsNoRecords) for e in errors):
            raise DnsNoRecords(name, "; ".join(e.reason for e in errors))
        raise DnsError(name, "; ".join(e.reason for e in errors))

    async def _lookup(self, name: str, af: int) -> Answer:
        label = _FAMILY_LABEL[af]
        try:
            async with asyncio.timeout(self._timeout):
                result = await self._channel.getaddrinfo(name, family=af, flags=_ARES_AI_NOSORT)
        except TimeoutError:
            raise DnsError(name, f"{label} lookup timed out after {self._timeout:g}s") from None
        except aiodns.error.DNSError as e:
            code = e.args[0] if e.args else None
            text = e.args[1] if len(e.args) > 1 else str(e)
            kind = DnsNoRecords if code in _NO_RECORDS else DnsError
            raise kind(name, f"{label} lookup: {text}") from None
        # As Envoy: a record's TTL is capped by the TTLs of the CNAMEs that led to it.
        cname_ttl = min((c.ttl for c in result.cnames), default=None)
        answer: Answer = []
        for node in result.nodes:
            if node.family not in (socket.AF_INET, socket.AF_INET6):
                continue
            ip = node.addr[0]
            ip = ip.decode() if isinstance(ip, bytes) else str(ip)
            ttl = node.ttl if cname_ttl is None else min(node.ttl, cname_ttl)
            answer.append((ip, max(ttl, 0)))
        if not answer:
            raise DnsNoRecords(name, f"{label} lookup returned no addresses")
        return answer


_FAMILY_LABEL = {socket.AF_INET: "IPv4", socket.AF_INET6: "IPv6", socket.AF_UNSPEC: "IPv4+IPv6"}


def _ip_literal(name: str) -> str | None:
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        return None
