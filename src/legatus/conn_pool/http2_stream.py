"""One request on an upstream HTTP/2 connection: Envoy's ``CodecClient::ActiveRequest`` over
its HTTP/2 ``ClientStreamImpl``.

``Http2RequestEncoder`` is both halves of a stream: the router's ``RequestEncoder`` (the
same contract as the HTTP/1 pool's: ``encode_headers`` / ``encode_data`` /
``encode_trailers``, ``reset``, ``read_disable``, watermark subscribers) and the codec
stream's decoder (``decode_headers`` ... ``on_stream_reset``, ``on_send_watermark``), which it
turns into ``ResponseDecoder`` calls. The connection it runs on (``Http2ActiveClient``,
conn_pool/http2.py) decides when a stream is over for the pool.

The codec stream is opened when the request head is sent, not when the pool attaches the
stream: HTTP/2 stream ids must go out in increasing order, and a head the codec cannot send
then never costs an id. ``request_headers`` is Envoy's translation of a request toward an
HTTP/2 upstream: connection-specific headers go (``connection``, ``keep-alive``,
``proxy-connection``, ``transfer-encoding``, ``upgrade``; ``te`` unless ``trailers``), a
CONNECT loses ``:scheme`` and ``:path``, a missing ``:scheme`` is the upstream connection's.
The router's own map is never changed (a retry or a redirect sends it again).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from legatus.conn_pool import ResponseDecoder
from legatus.http.headers import HeaderMap
from legatus.http.http2.stream import StreamState

if TYPE_CHECKING:
    from legatus.conn_pool.http2 import Http2ActiveClient

HTTP_2 = "HTTP/2"
_CLOSED = StreamState.CLOSED
# Headers an HTTP/2 message must not carry (RFC 9113 8.2.2); ``te`` only as "trailers".
_CONNECTION_SPECIFIC = frozenset(
    ("connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade")
)
UPGRADE_NOT_SUPPORTED = (
    "an upgrade request to an HTTP/2 upstream (extended CONNECT, RFC 8441) is not supported "
    "by legatus yet"
)


def request_headers(headers: HeaderMap, scheme: str) -> HeaderMap | str:
    """The head to send for ``headers`` (the same map when nothing changes), or why it cannot
    be sent (a message for the router's local reply)."""
    if "upgrade" in headers:  # the connection manager keeps it for upgrades only
        return UPGRADE_NOT_SUPPORTED
    te = headers.get("te")
    connect = headers.get(":method") == "CONNECT"
    if (
        _CONNECTION_SPECIFIC.isdisjoint(headers)
        and (te is None or te == "trailers")
        and not connect
        and ":scheme" in headers
    ):
        out = headers
    else:
        out = headers.copy()
        out.remove_all(_CONNECTION_SPECIFIC)
        out.remove("te")
        if te is not None and "trailers" in (t.strip().lower() for t in te.split(",")):
            out.add("te", "trailers")
        if connect:
            out.remove(":scheme")
            out.remove(":path")
        elif ":scheme" not in out:
            out.set(":scheme", scheme)
    error = _unsendable(out)
    return out if error is None else error


def _unsendable(headers: HeaderMap) -> str | None:
    """Why a head cannot go out as HTTP/2 (the peer would refuse the whole connection, or
    HPACK could not carry it), or None."""
    text = "".join([name + value for name, value in headers.items()])
    if "\r" in text or "\n" in text or "\x00" in text:
        return "a header name or value contains CR, LF or NUL"
    if not text.isascii():
        try:
            text.encode("latin-1")
        except UnicodeEncodeError:
            return "a header name or value is not latin-1"
    return None


class Http2RequestEncoder:
    """One stream (see module doc)."""

    __slots__ = ("_above", "_callbacks", "_client", "decoder", "done", "encode_complete",
                 "h2_stream", "response_complete")  # fmt: skip

    protocol = HTTP_2

    def __init__(self, client: Http2ActiveClient, decoder: ResponseDecoder, above: bool) -> None:
        self._client = client
        self.decoder = decoder
        self.h2_stream: Any = None  # the codec's stream, once the head went out
        self._callbacks: list[Any] = []
        self._above = 1 if above else 0  # reasons the upstream side is above its watermark
        self.encode_complete = False  # the router ended the request
        self.response_complete = False
        self.done = False  # over for the router: no more calls either way

    # Request (the router) -----------------------------------------------------------

    def encode_headers(self, headers: HeaderMap, end_stream: bool) -> str | None:
        """Send the request head; returns an error message (nothing sent) for a head that
        cannot go to an HTTP/2 upstream, as the HTTP/1 encoder does."""
        if self.done:
            return None
        client = self._client
        out = request_headers(headers, client.scheme)
        if type(out) is str:
            return out
        if end_stream:
            self.encode_complete = True
        client.send_headers(self, out, end_stream)
        return None

    def encode_data(self, data: bytes, end_stream: bool) -> None:
        if self.done or self.encode_complete:
            return
        if end_stream:
            self.encode_complete = True
        client = self._client
        client.codec.send_data(self.h2_stream, data, end_stream)
        client.after_send(self)

    def encode_trailers(self, trailers: HeaderMap) -> None:
        if self.done or self.encode_complete:
            return
        self.encode_complete = True
        client = self._client
        if trailers:
            client.codec.send_trailers(self.h2_stream, trailers)
        else:  # nothing to send as a block: end the stream with an empty DATA frame
            client.codec.send_data(self.h2_stream, b"", True)
        client.after_send(self)

    def reset(self) -> None:
        """Abandon the stream (the router's local reset): RST_STREAM, no decoder callback."""
        if not self.done:
            self._client.reset_stream(self)

    # Flow control ------------------------------------------------------------------

    def read_disable(self, disable: bool) -> None:
        """Stop (True) or resume (False) consuming the response: the stream's window is not
        given back meanwhile, so the upstream stops sending. Calls nest."""
        stream = self.h2_stream
        if self.done or stream is None:
            return
        client = self._client
        client.codec.read_disable(stream, disable)
        if not disable:
            client.flush()  # the WINDOW_UPDATE that was held back

    def add_callbacks(self, callbacks: Any) -> None:
        """Subscribe to the watermarks of what waits to go upstream (this stream's window,
        the connection's write buffer); told at once if already above."""
        self._callbacks.append(callbacks)
        if self._above and not self.done:
            callbacks.on_above_write_buffer_high_watermark()

    def remove_callbacks(self, callbacks: Any) -> None:
        if callbacks in self._callbacks:
            self._callbacks.remove(callbacks)

    @property
    def above_high_watermark(self) -> bool:
        return not self.done and self._above > 0

    def above(self) -> None:
        self._above += 1
        if self._above == 1:
            for cb in list(self._callbacks):
                cb.on_above_write_buffer_high_watermark()

    def below(self) -> None:
        if self._above:
            self._above -= 1
            if not self._above:
                for cb in list(self._callbacks):
                    cb.on_below_write_buffer_low_watermark()

    # Connection facts (stream info, access logs) ----------------------------------

    @property
    def connection_id(self) -> int:
        return self._client.connection.id

    @property
    def local_address(self) -> tuple[Any, ...] | None:
        return self._client.connection.local_address

    @property
    def ssl(self) -> Any:
        """What the upstream TLS handshake negotiated (None on plaintext)."""
        return self._client.connection.ssl

    # The codec stream's decoder ------------------------------------------------------

    def decode_informational_headers(self, headers: HeaderMap) -> None:
        if not self.done:
            self.decoder.on_informational_headers(headers)

    def decode_headers(self, headers: HeaderMap, end_stream: bool) -> None:
        if self.done:
            return
        if end_stream:
            self._complete()
        self.decoder.on_headers(headers, end_stream)

    def decode_data(self, data: bytes, end_stream: bool) -> None:
        if self.done:
            return
        if end_stream:
            self._complete()
        self.decoder.on_data(data, end_stream)

    def decode_trailers(self, trailers: HeaderMap) -> None:
        if self.done:
            return
        self._complete()
        self.decoder.on_trailers(trailers)

    def on_stream_reset(self, reason: Any, details: str) -> None:
        self._client.on_stream_reset(self, reason)

    def on_send_watermark(self, above: bool) -> None:
        if not self.done:
            self.above() if above else self.below()

    def _complete(self) -> None:
        self.response_complete = True
        self._client.on_response_complete(self)

    @property
    def stream_closed(self) -> bool:
        """The codec is done with the stream (both ends, or a reset)."""
        stream = self.h2_stream
        return stream is None or stream.state is _CLOSED

    def __repr__(self) -> str:
        return f"Http2RequestEncoder({self.h2_stream!r})"
