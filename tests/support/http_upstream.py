"""A small HTTP/1.1 upstream for integration tests, on 127.0.0.1:0, one thread per connection.

Behaviour by path:

- ``/echo...``: 200, JSON body with the method, path, headers (lower-case names, in order, as
  received) and the length of the request body;
- ``/bytes/<n>``: 200 with ``n`` bytes, written in 64 KiB pieces (a slow reader makes the
  server block: the proxy must stop reading it);
- ``/upload``: reads the whole body (content-length or chunked) ``slowly`` if the request
  has ``x-slow: 1`` (sleeps ``0.2`` s before reading), answers with the byte count;
- ``/stall``: reads the request, never answers (until the server stops);
- ``/close``: reads the request and closes without answering;
- ``/garbage``: answers bytes that are not HTTP;
- ``/redirect-to/<path>``: 302 to ``http://<host>/<path>``;
- anything else: 200 ``ok``.

``connections`` counts accepted connections.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time

from tests.support.upstreams import static_cluster


class HttpUpstream:
    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.requests: list[dict] = []
        self.stopping = threading.Event()
        self._conns: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.stopping.set()
        self.sock.close()
        for c in list(self._conns):
            with contextlib.suppress(OSError):
                c.close()

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            self._conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        reader = conn.makefile("rb")
        try:
            while True:
                line = reader.readline()
                if not line:
                    return
                method, path, _ = line.decode("latin-1").split(" ", 2)
                headers: list[tuple[str, str]] = []
                while True:
                    h = reader.readline()
                    if h in (b"\r\n", b"\n", b""):
                        break
                    name, _, value = h.decode("latin-1").partition(":")
                    headers.append((name.strip().lower(), value.strip()))
                hmap = dict(headers)
                if path == "/upload" and hmap.get("x-slow") == "1":
                    time.sleep(0.2)
                body = self._read_body(reader, hmap)
                self.requests.append({"method": method, "path": path, "headers": headers})
                if path == "/stall":
                    self.stopping.wait(30)
                    return
                if path == "/close":
                    return
                if path == "/garbage":
                    conn.sendall(b"this is not http\r\n\r\n")
                    return
                if path.startswith("/redirect-to/"):
                    location = "http://" + hmap.get("host", "") + path[len("/redirect-to") :]
                    conn.sendall(
                        b"HTTP/1.1 302 Found\r\nlocation: %s\r\ncontent-length: 0\r\n\r\n"
                        % location.encode()
                    )
                    continue
                if path.startswith("/bytes/"):
                    n = int(path.split("/")[2])
                    conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % n)
                    piece = b"x" * 65536
                    left = n
                    while left:
                        chunk = piece[: min(left, len(piece))]
                        conn.sendall(chunk)
                        left -= len(chunk)
                    continue
                if path.startswith("/echo"):
                    out = json.dumps(
                        {"method": method, "path": path, "headers": headers, "body": body}
                    ).encode()
                elif path == "/upload":
                    out = str(body).encode()
                else:
                    out = b"ok"
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                    b"content-length: %d\r\n\r\n%s" % (len(out), out)
                )
        except (OSError, ValueError):
            return
        finally:
            conn.close()

    @staticmethod
    def _read_body(reader, headers: dict[str, str]) -> int:
        """Read and drop the request body; its length."""
        total = 0
        if headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size = int(reader.readline().split(b";")[0], 16)
                if size == 0:
                    while reader.readline() not in (b"\r\n", b""):
                        pass
                    return total
                total += len(reader.read(size))
                reader.readline()
        left = int(headers.get("content-length", "0"))
        while left:
            n = len(reader.read(min(left, 1 << 20)))
            if not n:
                break
            total += n
            left -= n
        return total


def http_proxy_config(
    upstream_port: int,
    *,
    routes: list | None = None,
    hcm: dict | None = None,
    clusters: list | None = None,
    listener: dict | None = None,
) -> dict:
    """One HCM listener (``http``, port 0) routing ``/`` to cluster ``backend``."""
    hcm_config = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network."
        "http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "ingress",
        "http_filters": [
            {
                "name": "envoy.filters.http.router",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                },
            }
        ],
        "route_config": {
            "virtual_hosts": [
                {
                    "name": "all",
                    "domains": ["*"],
                    "routes": routes
                    or [{"match": {"prefix": "/"}, "route": {"cluster": "backend"}}],
                }
            ]
        },
    }
    hcm_config.update(hcm or {})
    listener_config = {
        "name": "http",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": hcm_config,
                    }
                ]
            }
        ],
    }
    listener_config.update(listener or {})
    backend = static_cluster("backend", upstream_port)
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "listeners": [listener_config],
            "clusters": [backend, *(clusters or [])],
        },
    }
