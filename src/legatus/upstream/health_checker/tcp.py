"""The TCP health check probe (Envoy's TcpHealthCheck).

Connect; write ``send`` if any; with no ``receive`` blocks the check passes once connected (and
the connection is closed: Envoy's connect-only check does not keep it). Otherwise read until
every ``receive`` block has been found, in order, not necessarily contiguous ("fuzzy"
matching); the connection is kept for the next check unless ``reuse_connection`` is false. A
connection that fails or closes before the answer is a network failure; an answer that never
matches runs into the timeout.
"""

from __future__ import annotations

import asyncio
import contextlib

from legatus.upstream.health_checker.config import TcpCheckConfig
from legatus.upstream.health_checker.session import Outcome

_READ_SIZE = 65536


def fuzzy_match(blocks: tuple[bytes, ...], data: bytes) -> bool:
    """Every block found in ``data``, in order, each after the end of the previous one."""
    at = 0
    for block in blocks:
        found = data.find(block, at)
        if found < 0:
            return False
        at = found + len(block)
    return True


class TcpProbe:
    def __init__(self, config: TcpCheckConfig, *, address: tuple[str, int], reuse: bool) -> None:
        self._config = config
        self._address = address
        self._reuse = reuse
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def check(self) -> Outcome:
        config = self._config
        try:
            if self._writer is None or self._writer.is_closing() or self._reader.at_eof():
                self.close()
                self._reader, self._writer = await asyncio.open_connection(*self._address)
            if config.send:
                self._writer.write(config.send)
            if not config.receive:
                if config.send:
                    await self._writer.drain()
                self.close()
                return Outcome.SUCCESS
            buffer = bytearray()
            while not fuzzy_match(config.receive, buffer):
                data = await self._reader.read(_READ_SIZE)
                if not data:
                    raise EOFError("upstream closed before the expected answer")
                buffer += data
        except (OSError, EOFError):
            self.close()
            return Outcome.NETWORK
        if not self._reuse:
            self.close()
        return Outcome.SUCCESS

    def close(self) -> None:
        writer = self._writer
        self._reader = self._writer = None
        if writer is not None:
            with contextlib.suppress(Exception):
                writer.close()
