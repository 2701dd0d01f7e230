"""The admin listener: a small HTTP/1.1 server in the main process.

Theory of operation. One ``AdminConnection`` per TCP connection parses requests
with httptools and queues them; one task per connection answers them in order
(pipelining keeps its order) through ``router.handle`` and writes each answer
with a Content-Length. Connections stay open unless the client asks to close.
This is deliberately not the HTTP connection manager, which arrives later.

What Envoy 1.40's admin listener answers, and so this one too:
- headers ``date`` (RFC 7231, GMT) and ``server: envoy`` after the handler's,
  ``connection: close`` when closing; (Envoy streams bodies chunked, this
  listener sends Content-Length, which clients treat alike);
- unparseable input: ``400 Bad Request`` with body ``Bad Request``, then close;
- HTTP/1.0: ``426 Upgrade Required`` (Envoy refuses HTTP/1.0 by default), close;
- HTTP/1.1 without Host: 400 with an empty body, then close.
HEAD answers the headers of GET; ``Expect: 100-continue`` gets its interim 100.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import email.utils
import http
import time
from dataclasses import dataclass
from typing import Any

import httptools

from legatus.network.listener import AcceptBatch, ListenerCoreStats, PerWorkerListenerStats
from legatus.server.admin.access_log import AdminAccessLogger
from legatus.server.admin.response import AdminResponse
from legatus.server.admin.router import handle
from legatus.server.logging import get_logger
from legatus.stats.store import StatSet, counter

_log = get_logger("admin")
MAX_BODY = 1 << 20  # admin requests carry at most a small form
MAX_QUEUED = 16  # pipelined requests held before reading pauses


@dataclass(frozen=True, slots=True, kw_only=True)
class _Request:
    method: str
    target: str
    body: bytes
    content_type: str
    keep_alive: bool
    headers: tuple[tuple[str, str], ...] = ()  # as received, names lower-cased (access logs)
    started: float = 0.0  # wall clock, then loop time, of the request's first byte
    started_monotonic: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class _Refusal:
    """A protocol-level answer that ends the connection (Envoy's codec replies)."""

    status: int
    headers_before_date: tuple[tuple[str, str], ...]
    body: bytes
    content_length_last: bool = False


_BAD_REQUEST = _Refusal(
    status=400,
    headers_before_date=(("content-length", "11"), ("content-type", "text/plain")),
    body=b"Bad Request",
)
_UPGRADE_REQUIRED = _Refusal(
    status=426,
    headers_before_date=(("content-length", "16"), ("content-type", "text/plain")),
    body=b"Upgrade Required",
)
_MISSING_HOST = _Refusal(status=400, headers_before_date=(), body=b"", content_length_last=True)
_TOO_LARGE = _Refusal(
    status=413,
    headers_before_date=(("content-length", "17"), ("content-type", "text/plain")),
    body=b"Payload Too Large",
)


class _DateCache:
    """The ``date`` header value, formatted at most once a second."""

    __slots__ = ("_second", "_value")

    def __init__(self) -> None:
        self._second = -1
        self._value = ""

    def get(self) -> str:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._value = email.utils.formatdate(now, usegmt=True)
        return self._value


_date = _DateCache()


def _status_line(status: int) -> str:
    try:
        reason = http.HTTPStatus(status).phrase
    except ValueError:
        reason = "Unknown"
    return f"HTTP/1.1 {status} {reason}\r\n"


def serialize(response: AdminResponse, *, close: bool, head: bool = False) -> bytes:
    """An admin response as HTTP/1.1 bytes, headers in Envoy's order."""
    lines = [_status_line(response.status)]
    lines.extend(f"{k}: {v}\r\n" for k, v in response.headers)
    lines.append(f"date: {_date.get()}\r\nserver: envoy\r\n")
    if close:
        lines.append("connection: close\r\n")
    lines.append(f"content-length: {len(response.body)}\r\n\r\n")
    head_bytes = "".join(lines).encode("latin-1")
    return head_bytes if head else head_bytes + response.body


def _serialize_refusal(refusal: _Refusal) -> bytes:
    lines = [_status_line(refusal.status)]
    lines.extend(f"{k}: {v}\r\n" for k, v in refusal.headers_before_date)
    lines.append(f"date: {_date.get()}\r\nserver: envoy\r\nconnection: close\r\n")
    if refusal.content_length_last:
        lines.append(f"content-length: {len(refusal.body)}\r\n")
    return "".join(lines).encode("latin-1") + b"\r\n" + refusal.body


class AdminListenerStats(StatSet):
    """``listener.admin.http.admin.*``: what Envoy's admin HTTP connection manager counts."""

    downstream_rq_1xx = counter()
    downstream_rq_2xx = counter()
    downstream_rq_3xx = counter()
    downstream_rq_4xx = counter()
    downstream_rq_5xx = counter()
    downstream_rq_completed = counter()


class _Stats:
    """The admin listener's ``listener.admin.*`` stats, as Envoy's admin listener has them."""

    __slots__ = ("accept_batch", "http", "listener", "main_thread", "rq_by_class")

    def __init__(self, store: Any) -> None:
        scope = store.scope("listener.admin.")
        self.listener = ListenerCoreStats(scope)
        self.accept_batch: AcceptBatch | None = None
        self.main_thread = PerWorkerListenerStats(scope.scope("main_thread."))
        self.http = AdminListenerStats(scope.scope("http.admin."))
        h = self.http
        self.rq_by_class = (None, h.downstream_rq_1xx, h.downstream_rq_2xx, h.downstream_rq_3xx,
                            h.downstream_rq_4xx, h.downstream_rq_5xx)  # fmt: skip

    def opened(self) -> None:
        batch = self.accept_batch
        if batch is None:
            batch = self.accept_batch = AcceptBatch(
                asyncio.get_running_loop(), self.listener.connections_accepted_per_socket_event
            )
        batch.accepted()
        self.listener.downstream_cx_total.inc()
        self.listener.downstream_cx_active.inc()
        self.main_thread.downstream_cx_total.inc()
        self.main_thread.downstream_cx_active.inc()

    def closed(self, length_ms: float) -> None:
        self.listener.downstream_cx_destroy.inc()
        self.listener.downstream_cx_active.dec()
        self.main_thread.downstream_cx_active.dec()
        self.listener.downstream_cx_length_ms.record(length_ms)

    def answered(self, status: int) -> None:
        if 100 <= status < 600:
            self.rq_by_class[status // 100].inc()
        self.http.downstream_rq_completed.inc()


class AdminConnection(asyncio.Protocol):
    def __init__(
        self,
        context: Any,
        loop: asyncio.AbstractEventLoop,
        stats: _Stats,
        access_logger: AdminAccessLogger | None = None,
    ) -> None:
        self._stats = stats
        self._access_logger = access_logger
        self._opened = loop.time()
        self._context = context
        self._loop = loop
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._queue: collections.deque[_Request | _Refusal] = collections.deque()
        self._task: asyncio.Task[None] | None = None
        self._paused = False
        self._done = False  # a refusal is queued or the connection is closing
        self._eof = False
        self._url = bytearray()
        self._headers: dict[str, str] = {}
        self._header_list: list[tuple[str, str]] = []
        self._body = bytearray()
        self._refusal: _Refusal | None = None
        self._started = (0.0, 0.0)  # the current request's first byte: wall clock, loop time
        # A request refused after its head (no host): Envoy logs its method and path.
        self._refused_head: tuple[str, str, tuple[tuple[str, str], ...]] | None = None

    # Protocol interface ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._opened = self._loop.time()
        self._stats.opened()

    def data_received(self, data: bytes) -> None:
        if self._done:
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._refuse(_BAD_REQUEST)  # no protocol upgrades on the admin port
        except httptools.HttpParserError:
            self._refuse(self._refusal or _BAD_REQUEST)

    def eof_received(self) -> bool:
        """The client is done sending: answer what it asked, then close."""
        self._eof = True
        if self._task is None and self._transport is not None:
            self._transport.close()
        return True  # keep the transport open until the answers are written

    def connection_lost(self, exc: Exception | None) -> None:
        self._stats.closed((self._loop.time() - self._opened) * 1000)
        self._done = True
        self._queue.clear()
        if self._task is not None:
            self._task.cancel()

    # Parser callbacks -----------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url.clear()
        self._headers = {}
        self._header_list = []
        self._body.clear()
        if self._access_logger is not None:
            self._started = (time.time(), self._loop.time())

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.decode("latin-1").lower()
        text = self._headers[key] = value.decode("latin-1")
        self._header_list.append((key, text))

    def on_headers_complete(self) -> None:
        version = self._parser.get_http_version()
        if version != "1.1":
            self._refusal = _UPGRADE_REQUIRED
        elif "host" not in self._headers:
            self._refusal = _MISSING_HOST
            with contextlib.suppress(httptools.HttpParserInvalidURLError):
                self._refused_head = (
                    self._parser.get_method().decode("latin-1"),
                    _target(bytes(self._url)),
                    tuple(self._header_list),
                )
        if self._refusal is not None:
            raise httptools.HttpParserError("refused")
        if self._headers.get("expect", "").lower() == "100-continue" and self._transport:
            self._transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # curl waits for it

    def on_body(self, body: bytes) -> None:
        self._body += body
        if len(self._body) > MAX_BODY:
            self._refusal = _TOO_LARGE
            raise httptools.HttpParserError("body too large")

    def on_message_complete(self) -> None:
        try:
            target = _target(bytes(self._url))
        except httptools.HttpParserInvalidURLError:
            raise httptools.HttpParserError("bad url") from None
        self._enqueue(
            _Request(
                method=self._parser.get_method().decode("latin-1"),
                target=target,
                body=bytes(self._body),
                content_type=self._headers.get("content-type", ""),
                keep_alive=self._parser.should_keep_alive(),
                headers=tuple(self._header_list),
                started=self._started[0],
                started_monotonic=self._started[1],
            )
        )

    # Answering ------------------------------------------------------------------

    def _log_request(self, item: _Request, response, transport) -> None:
        self._access_logger.log_request(
            started=item.started,
            started_monotonic=item.started_monotonic,
            ended_monotonic=self._loop.time(),
            peer=transport.get_extra_info("peername"),
            local=transport.get_extra_info("sockname"),
            method=item.method,
            target=item.target,
            headers=list(item.headers),
            request_body_bytes=len(item.body),
            status=response.status,
            response_body_bytes=len(response.body),
        )

    def _log_refusal(self, refusal: _Refusal, transport) -> None:
        started, started_monotonic = self._started
        now = self._loop.time()
        if refusal is _MISSING_HOST and self._refused_head is not None:
            method, target, headers = self._refused_head
            self._access_logger.log_request(
                started=started,
                started_monotonic=started_monotonic,
                ended_monotonic=now,
                peer=transport.get_extra_info("peername"),
                local=transport.get_extra_info("sockname"),
                method=method,
                target=target,
                headers=list(headers),
                request_body_bytes=0,
                status=refusal.status,
                response_body_bytes=len(refusal.body),
                forwarded=False,  # refused before the connection manager's header policy
            )
            return
        self._access_logger.log_refusal(
            started=started or time.time(),
            started_monotonic=started_monotonic or now,
            ended_monotonic=now,
            peer=transport.get_extra_info("peername"),
            local=transport.get_extra_info("sockname"),
            status=refusal.status,
            response_body_bytes=len(refusal.body),
        )

    def _refuse(self, refusal: _Refusal) -> None:
        self._enqueue(refusal)
        self._done = True

    def _enqueue(self, item: _Request | _Refusal) -> None:
        self._queue.append(item)
        if len(self._queue) >= MAX_QUEUED and not self._paused and self._transport is not None:
            self._transport.pause_reading()
            self._paused = True
        if self._task is None:
            self._task = self._loop.create_task(self._answer())

    async def _answer(self) -> None:
        transport = self._transport
        try:
            while self._queue and transport is not None and not transport.is_closing():
                item = self._queue.popleft()
                if self._paused and len(self._queue) < MAX_QUEUED // 2:
                    transport.resume_reading()
                    self._paused = False
                if isinstance(item, _Refusal):
                    self._stats.answered(item.status)
                    transport.write(_serialize_refusal(item))
                    if self._access_logger is not None:
                        self._log_refusal(item, transport)
                    transport.close()
                    return
                response = await handle(
                    self._context,
                    item.method,
                    item.target,
                    item.body,
                    content_type=item.content_type,
                )
                close = not item.keep_alive
                self._stats.answered(response.status)
                transport.write(serialize(response, close=close, head=item.method == "HEAD"))
                if self._access_logger is not None:
                    self._log_request(item, response, transport)
                if close:
                    transport.close()
                    return
        except asyncio.CancelledError:
            raise
        except Exception:  # never let a bug here kill the loop; drop this connection
            _log.exception("admin connection failed")
            if transport is not None:
                transport.abort()
        finally:
            self._task = None
            if self._eof and transport is not None and not self._queue:
                transport.close()


def _target(url: bytes) -> str:
    """The request target's path and query (an absolute-form target loses its authority)."""
    parsed = httptools.parse_url(url)
    target = (parsed.path or b"/").decode("latin-1")
    if parsed.query:
        target += "?" + parsed.query.decode("latin-1")
    return target


async def start_admin(
    context: Any,
    host: str,
    port: int,
    loop: asyncio.AbstractEventLoop | None = None,
    access_logger: AdminAccessLogger | None = None,
) -> tuple[asyncio.AbstractServer, int]:
    """Listen for admin requests on ``host:port`` (0: any free port); returns the
    server (close it to stop) and the port it is bound to."""
    loop = loop or asyncio.get_running_loop()
    stats = _Stats(context.stats)
    server = await loop.create_server(
        lambda: AdminConnection(context, loop, stats, access_logger),
        host,
        port,
        reuse_address=True,
    )
    bound_port = server.sockets[0].getsockname()[1]
    return server, bound_port
