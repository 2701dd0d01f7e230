"""A WebSocket server (the ``websockets`` package) on 127.0.0.1:0, for tests through a proxy.

Behaviour by path:

- ``/echo``: echoes every message (text as text, binary as binary), until the client closes;
- ``/close``: echoes the first message, then closes the connection itself (code 4000, reason
  ``bye``): a server-initiated close handshake;
- ``/stall``: reads nothing for ``stall_seconds`` (what the client sends meanwhile backs up
  through the proxy), then answers each message with the SHA-256 of its bytes, in hex (a
  short answer: with two blocking peers, echoing megabytes both ways could fill every
  buffer on the path at once);
- ``/flood/<n>``: sends ``n`` bytes as binary messages of 1 MiB without reading, then echoes;
- ``/reject``: refuses the handshake with a 403 (``x-refused: yes``, body ``no``).

``requests`` keeps the path and the headers (lower-case names, in order) of each handshake.
"""

from __future__ import annotations

import hashlib
import threading
import time

from websockets.datastructures import Headers
from websockets.http11 import Response
from websockets.sync.server import ServerConnection, serve

MESSAGE = 1 << 20


class WebSocketUpstream:
    def __init__(self, *, stall_seconds: float = 1.0) -> None:
        self.requests: list[tuple[str, list[tuple[str, str]]]] = []
        self.stall_seconds = stall_seconds
        self.closed = threading.Event()  # a handler saw its connection end
        self.server = serve(
            self._handle,
            "127.0.0.1",
            0,
            process_request=self._process_request,
            max_size=None,
            compression=None,
            ping_interval=None,
        )
        self.port = self.server.socket.getsockname()[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()

    def _process_request(self, connection: ServerConnection, request) -> Response | None:
        headers = [(name.lower(), value) for name, value in request.headers.raw_items()]
        self.requests.append((request.path, headers))
        if request.path == "/reject":
            return Response(403, "Forbidden", Headers({"x-refused": "yes"}), b"no")
        return None

    def _handle(self, connection: ServerConnection) -> None:
        path = connection.request.path
        try:
            if path == "/close":
                connection.send(connection.recv())
                connection.close(4000, "bye")
                return
            if path == "/stall":
                time.sleep(self.stall_seconds)
                for message in connection:
                    data = message.encode() if isinstance(message, str) else message
                    connection.send(hashlib.sha256(data).hexdigest())
                return
            if path.startswith("/flood/"):
                left = int(path.rsplit("/", 1)[1])
                while left > 0:
                    piece = min(left, MESSAGE)
                    connection.send(b"f" * piece)
                    left -= piece
            for message in connection:
                connection.send(message)
        finally:
            self.closed.set()
