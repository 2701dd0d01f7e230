"""An HTTP/2 upstream (prior knowledge, the ``h2`` package) for tests, on 127.0.0.1:0, in its own
thread and event loop, so that it serves a proxy process and an in-process pool alike.

It records every request (``requests``: connection number, stream id, headers in order, body,
trailers) and, per connection, the client's SETTINGS, the RST_STREAMs and GOAWAYs it got and
the most streams it had open at once (``max_open``). What it answers is chosen by the query
string of ``:path``:

- ``status=N`` (default 200); ``echo=1``: the request body back; ``size=N``: N bytes; else
  ``ok``; ``trailers=1``: trailers ``x-trailer: yes`` after the body (the request's own
  trailers are echoed as ``x-request-trailer-<name>`` response trailers);
- ``hold=1``: answer once ``release()`` is called; ``delay=S``: after S seconds;
- ``early=1``: answer (with END_STREAM) as soon as the request head arrives;
- ``noack=1``: never give back the window of the request body (the client must stop);
- ``rst=CODE&after=N``: send the head and N body bytes, then RST_STREAM with CODE
  (``after=-1``: before the head);
- ``refuse=1``: RST_STREAM REFUSED_STREAM at once;
- ``goaway=LAST``: send GOAWAY(LAST, NO_ERROR) on receiving the head (streams after LAST
  are ignored: the client must take them as refused), then answer if this one is <= LAST;
- ``close=1``: send the head and some body, then close the TCP connection;
- ``malformed=1``: a response head with an upper-case header name (a malformed response);
- ``garbage=1``: send bytes that are not HTTP/2 frames (``garbage=after`` with ``rst``: right
  after the RST_STREAM).

The server's SETTINGS wait for the client's preface (``speak_first``: they go at once). A
client that does not start with the HTTP/2 preface gets a minimal HTTP/1.1 server (an
answer ``http1`` per request; ``H2Request.protocol`` says which was spoken).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import struct
import threading
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings


@dataclass
class H2Request:
    connection: int
    stream_id: int
    headers: list[tuple[str, str]]
    body: bytes = b""
    trailers: list[tuple[str, str]] = field(default_factory=list)
    complete: bool = False
    protocol: str = "HTTP/2"

    @property
    def pseudo(self) -> dict[str, str]:
        return {k: v for k, v in self.headers if k.startswith(":")}

    @property
    def regular(self) -> list[tuple[str, str]]:
        return [(k, v) for k, v in self.headers if not k.startswith(":")]

    @property
    def query(self) -> dict[str, str]:
        path = self.pseudo.get(":path", "/")
        return {k: v[0] for k, v in parse_qs(urlsplit(path).query).items()}


@dataclass
class H2ConnectionRecord:
    number: int
    settings: dict[int, int] = field(default_factory=dict)  # the client's SETTINGS
    resets: list[tuple[int, int]] = field(default_factory=list)  # (stream id, error code)
    goaways: list[tuple[int, int]] = field(default_factory=list)  # (last stream id, code)
    pings: int = 0
    max_open: int = 0
    closed: bool = False
    alpn: str | None = None  # what TLS negotiated (``ssl_context``)


class _Connection(asyncio.Protocol):
    def __init__(self, server: H2Upstream, number: int) -> None:
        self.server = server
        self.record = H2ConnectionRecord(number)
        config = h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
        self.conn = h2.connection.H2Connection(config)
        self.transport: asyncio.Transport | None = None
        self.requests: dict[int, H2Request] = {}
        self.pending: dict[int, bytes] = {}  # body waiting for window
        self.pending_trailers: dict[int, list] = {}
        self.noack: set[int] = set()
        self.ignored_after: int | None = None
        self.http1: bool | None = None  # the client spoke HTTP/1.1 (no preface)
        self.buffer = b""

    def connection_made(self, transport) -> None:
        self.transport = transport
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None:
            self.record.alpn = ssl_object.selected_alpn_protocol()
        if self.server.speak_first:
            self.http1 = False
            self._start_http2()

    def _start_http2(self) -> None:
        """The server's preface, once the client's says it speaks HTTP/2."""
        settings = {}
        if self.server.max_concurrent_streams is not None:
            settings[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] = (
                self.server.max_concurrent_streams
            )
        if self.server.initial_window_size is not None:
            settings[h2.settings.SettingCodes.INITIAL_WINDOW_SIZE] = self.server.initial_window_size
        self.conn.initiate_connection()
        if settings:
            self.conn.update_settings(settings)
        self.flush()

    def connection_lost(self, exc) -> None:
        self.record.closed = True
        self.server._on_closed(self)

    def send_goaway(self, last_stream_id: int, code: int) -> None:
        """A GOAWAY written as raw bytes: h2's own ``close_connection`` would stop it from
        answering the streams it keeps."""
        self.flush()
        payload = struct.pack(">LL", last_stream_id, code)
        self.transport.write(struct.pack(">HBBBL", 0, len(payload), 7, 0, 0) + payload)

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        if self.http1 is None:
            self.http1 = not data.startswith(b"PRI")
            if not self.http1:
                self._start_http2()
        if self.http1:
            self._http1(data)
            return
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError:
            self.flush()
            self.transport.close()
            return
        for event in events:
            self._on_event(event)
        self.flush()

    def _http1(self, data: bytes) -> None:
        """A client that does not speak HTTP/2: one HTTP/1.1 request per read is enough for
        the tests that need it (use_downstream_protocol_config)."""
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            fields = [(k.strip().lower(), v.strip()) for k, v in
                      (line.split(":", 1) for line in lines[1:])]  # fmt: skip
            request = H2Request(self.record.number, 0, [(":method", method), (":path", target),
                                                        *fields], protocol="HTTP/1.1")  # fmt: skip
            request.complete = True
            self.server._record(request)
            self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhttp1")

    def _on_event(self, event) -> None:
        record = self.record
        if isinstance(event, h2.events.RemoteSettingsChanged):
            for code, change in event.changed_settings.items():
                record.settings[int(code)] = change.new_value
        elif isinstance(event, h2.events.RequestReceived):
            sid = event.stream_id
            if self.ignored_after is not None and sid > self.ignored_after:
                return
            request = H2Request(record.number, sid, list(event.headers))
            self.requests[sid] = request
            self.server._record(request)
            record.max_open = max(record.max_open, self.conn.open_inbound_streams)
            self._on_head(request)
        elif isinstance(event, h2.events.DataReceived):
            request = self.requests.get(event.stream_id)
            if request is not None:
                request.body += event.data
                if event.stream_id not in self.noack:
                    self.conn.acknowledge_received_data(
                        event.flow_controlled_length, event.stream_id
                    )
        elif isinstance(event, h2.events.TrailersReceived):
            request = self.requests.get(event.stream_id)
            if request is not None:
                request.trailers = list(event.headers)
        elif isinstance(event, h2.events.StreamEnded):
            request = self.requests.get(event.stream_id)
            if request is not None:
                request.complete = True
                if request.query.get("early") != "1":
                    self._answer(request)
        elif isinstance(event, h2.events.StreamReset):
            record.resets.append((event.stream_id, int(event.error_code)))
            self.pending.pop(event.stream_id, None)
        elif isinstance(event, h2.events.ConnectionTerminated):
            record.goaways.append((event.last_stream_id, int(event.error_code)))
        elif isinstance(event, h2.events.PingReceived):
            record.pings += 1
        elif isinstance(event, h2.events.WindowUpdated):
            for sid in list(self.pending):
                self._send_pending(sid)

    def _on_head(self, request: H2Request) -> None:
        query = request.query
        sid = request.stream_id
        if query.get("noack") == "1":
            self.noack.add(sid)
        if query.get("refuse") == "1":
            self.conn.reset_stream(sid, h2.errors.ErrorCodes.REFUSED_STREAM)
            return
        if "goaway" in query:
            last = int(query["goaway"])
            self.ignored_after = last
            self.send_goaway(last, 0)
            if sid > last:
                return
        if query.get("garbage") == "1":  # (``after``: see rst)
            self.flush()
            self.transport.write(b"\x00\x00\x04\x09\x00\x00\x00\x00\x01garbage!!")
            return
        if query.get("early") == "1":
            self._answer(request)  # (else StreamEnded answers)

    def _answer(self, request: H2Request) -> None:
        query = request.query
        if "goaway" in query and request.stream_id > int(query["goaway"]):
            return
        if query.get("refuse") == "1":
            return
        loop = asyncio.get_running_loop()
        if query.get("hold") == "1":
            self.server._held.append((self, request))
            if self.server._released:
                self.server._release_held()
            return
        if "delay" in query:
            loop.call_later(float(query["delay"]), self._respond, request)
            return
        self._respond(request)

    def _respond(self, request: H2Request) -> None:
        sid = request.stream_id
        if sid not in self.conn.streams or self.transport.is_closing():
            return
        query = request.query
        if query.get("echo") == "1":
            body = request.body
        elif "size" in query:
            body = bytes(i % 251 for i in range(256)) * (int(query["size"]) // 256 + 1)
            body = body[: int(query["size"])]
        else:
            body = b"ok"
        if request.pseudo.get(":method") == "HEAD":
            body = b""
        headers = [(":status", query.get("status", "200")), ("content-type", "text/plain"),
                   ("x-upstream-stream", str(sid))]  # fmt: skip
        trailers: list[tuple[str, str]] = []
        if query.get("trailers") == "1":
            trailers.append(("x-trailer", "yes"))
        trailers += [(f"x-request-trailer-{k}", v) for k, v in request.trailers]
        try:
            if query.get("malformed") == "1":  # an upper-case name: RFC 9113 8.2.1 malformed
                config = self.conn.config
                config.validate_outbound_headers = config.normalize_outbound_headers = False
                self.conn.send_headers(sid, [*headers, ("X-Upper", "1")], end_stream=True)
                config.validate_outbound_headers = config.normalize_outbound_headers = True
                self.flush()
                return
            if "rst" in query:
                after = int(query.get("after", "0"))
                if after >= 0:
                    self.conn.send_headers(sid, headers)
                if after > 0:
                    self.conn.send_data(sid, body[:after])
                self.conn.reset_stream(sid, int(query["rst"]))
                self.flush()
                if query.get("garbage") == "after":  # in the same write, most likely
                    self.transport.write(b"\x00\x00\x04\x09\x00\x00\x00\x00\x01garbage!!")
                return
            if query.get("close") == "1":
                self.conn.send_headers(sid, headers)
                self.conn.send_data(sid, b"partial")
                self.flush()
                self.transport.close()
                return
            if not body and not trailers:
                self.conn.send_headers(sid, headers, end_stream=True)
            else:
                self.conn.send_headers(sid, headers)
                if trailers:
                    self.pending_trailers[sid] = trailers
                self.pending[sid] = body
                self._send_pending(sid)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            pass
        self.flush()

    def _send_pending(self, sid: int) -> None:
        body = self.pending.get(sid)
        if body is None:
            return
        try:
            while True:
                window = min(self.conn.local_flow_control_window(sid),
                             self.conn.max_outbound_frame_size)  # fmt: skip
                if body and window <= 0:
                    self.pending[sid] = body
                    return
                chunk, body = body[:window], body[window:]
                trailers = self.pending_trailers.get(sid)
                last = not body
                self.conn.send_data(sid, chunk, end_stream=last and trailers is None)
                if last:
                    del self.pending[sid]
                    if trailers is not None:
                        del self.pending_trailers[sid]
                        self.conn.send_headers(sid, trailers, end_stream=True)
                    return
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            self.pending.pop(sid, None)


class H2Upstream:
    """See module doc. ``connections``: accepted so far; ``records``: one per connection."""

    def __init__(
        self,
        *,
        max_concurrent_streams: int | None = None,
        initial_window_size: int | None = None,
        speak_first: bool = False,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.speak_first = speak_first  # SETTINGS as soon as the connection is accepted
        self.ssl_context = ssl_context  # TLS (set its ALPN protocols to require h2)
        self.max_concurrent_streams = max_concurrent_streams
        self.initial_window_size = initial_window_size
        self.requests: list[H2Request] = []
        self.records: list[H2ConnectionRecord] = []
        self._held: list[tuple[_Connection, H2Request]] = []
        self._released = False
        self._protocols: list[_Connection] = []
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self._thread.start()
        ready.wait(5)

    @property
    def connections(self) -> int:
        return len(self.records)

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)

        def factory() -> _Connection:
            protocol = _Connection(self, len(self.records))
            with self._changed:
                self.records.append(protocol.record)
                self._protocols.append(protocol)
                self._changed.notify_all()
            return protocol

        self.server = self.loop.run_until_complete(
            self.loop.create_server(factory, "127.0.0.1", 0, ssl=self.ssl_context)
        )
        self.port = self.server.sockets[0].getsockname()[1]
        ready.set()
        self.loop.run_forever()

    def _record(self, request: H2Request) -> None:
        with self._changed:
            self.requests.append(request)
            self._changed.notify_all()

    def _on_closed(self, protocol: _Connection) -> None:
        with self._changed:
            self._changed.notify_all()

    def wait_for(self, predicate, timeout: float = 5.0) -> bool:
        """Block (a thread) until ``predicate()`` holds; False on timeout."""
        with self._changed:
            return self._changed.wait_for(predicate, timeout)

    async def async_wait_for(self, predicate, timeout: float = 5.0) -> bool:
        """The same, from a coroutine (polls: the upstream lives in another thread)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate():
            if loop.time() > deadline:
                return False
            await asyncio.sleep(0.005)
        return True

    def release(self) -> None:
        """Answer every held request, and the ones held from now on."""
        self.loop.call_soon_threadsafe(self._release_now)

    def hold(self) -> None:
        self.loop.call_soon_threadsafe(setattr, self, "_released", False)

    def _release_now(self) -> None:
        self._released = True
        self._release_held()

    def _release_held(self) -> None:
        held, self._held = self._held, []
        for protocol, request in held:
            protocol._respond(request)
            protocol.flush()

    def goaway(self, last_stream_id: int | None = None, code: int = 0) -> None:
        """GOAWAY on every open connection (from the test's thread)."""

        def send() -> None:
            for protocol in self._protocols:
                if not protocol.record.closed:
                    last = protocol.conn.highest_inbound_stream_id
                    protocol.send_goaway(last if last_stream_id is None else last_stream_id, code)

        self.loop.call_soon_threadsafe(send)

    def close(self) -> None:
        def stop() -> None:
            self.server.close()
            for protocol in self._protocols:
                if protocol.transport is not None:
                    with contextlib.suppress(Exception):
                        protocol.transport.abort()
            self.loop.stop()

        self.loop.call_soon_threadsafe(stop)
        self._thread.join(5)
