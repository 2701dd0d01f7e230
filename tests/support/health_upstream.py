"""An HTTP/1.1 upstream whose health-check and traffic answers a test can change, on 127.0.0.1.

``/healthz`` answers ``hc_status`` (plus ``hc_headers``); any other path answers
``rq_status`` (plus ``rq_headers``) with the upstream's ``name`` as body. Every request head
is kept in ``heads`` (bytes, as received); ``traffic`` counts the non-health-check requests.
"""

from __future__ import annotations

import contextlib
import socket
import threading


class HealthUpstream:
    def __init__(self, name: str = "up") -> None:
        self.name = name
        self.hc_status = 200
        self.rq_status = 200
        self.hc_headers: list[str] = []
        self.rq_headers: list[str] = []
        self.heads: list[bytes] = []
        self.traffic = 0
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self._conns: list[socket.socket] = []
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def hc_count(self) -> int:
        return sum(1 for h in list(self.heads) if h.split(b" ", 2)[1] == b"/healthz")

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread (Linux)
        self.sock.close()
        for c in list(self._conns):
            with contextlib.suppress(OSError):
                c.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self._conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buf = b""
        try:
            while True:
                data = conn.recv(65536)
                if not data:
                    return
                buf += data
                while b"\r\n\r\n" in buf:
                    head, buf = buf.split(b"\r\n\r\n", 1)
                    self.heads.append(head)
                    hc = head.split(b" ", 2)[1] == b"/healthz"
                    if not hc:
                        self.traffic += 1
                    status = self.hc_status if hc else self.rq_status
                    extra = "".join(
                        f"{h}\r\n" for h in (self.hc_headers if hc else self.rq_headers)
                    )
                    body = b"hc" if hc else self.name.encode()
                    head = f"HTTP/1.1 {status} X\r\n{extra}content-length: {len(body)}\r\n\r\n"
                    conn.sendall(head.encode() + body)
        except OSError:
            return
        finally:
            conn.close()
