"""TLS pieces for proxy configs in tests: certificate files and transport_socket blocks."""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from tests.support.certs import CA

DOWNSTREAM = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
UPSTREAM = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"


@dataclass
class TlsFiles:
    """A CA, a server certificate (localhost, 127.0.0.1, *.example.com), an ECDSA one, a
    client certificate with URI/DNS/e-mail SANs and one from an unrelated CA, on disk."""

    dir: Path
    ca: CA
    ca_path: Path
    server: tuple[Path, Path]
    server_ecdsa: tuple[Path, Path]
    client: tuple[Path, Path]
    rogue: tuple[Path, Path]

    @classmethod
    def make(cls, directory: Path) -> TlsFiles:
        directory.mkdir(parents=True, exist_ok=True)
        ca = CA()
        rogue_ca = CA("unrelated CA")
        return cls(
            dir=directory,
            ca=ca,
            ca_path=ca.write(directory / "ca.pem"),
            server=ca.issue("localhost", "127.0.0.1", "*.example.com",
                            common_name="localhost").write(directory, "server"),
            server_ecdsa=ca.issue("localhost", "*.example.com", common_name="localhost-ecdsa",
                                  key="ecdsa").write(directory, "server_ecdsa"),
            client=ca.issue("client.example.com", "spiffe://example.com/client",
                            "client@example.com", common_name="client",
                            organizational_unit="eng").write(directory, "client"),
            rogue=rogue_ca.issue("client.example.com",
                                 common_name="rogue").write(directory, "rogue"),
        )  # fmt: skip


def certificate(paths: tuple[Path, Path]) -> dict:
    return {
        "certificate_chain": {"filename": str(paths[0])},
        "private_key": {"filename": str(paths[1])},
    }


def downstream_tls(
    *certs: tuple[Path, Path],
    ca: Path | None = None,
    require_client: bool | None = None,
    alpn: list[str] | None = None,
    params: dict | None = None,
    validation: dict | None = None,
    **extra,
) -> dict:
    """A filter chain's ``transport_socket`` with a DownstreamTlsContext."""
    common: dict = {"tls_certificates": [certificate(c) for c in certs]}
    if ca is not None or validation:
        common["validation_context"] = {
            **({"trusted_ca": {"filename": str(ca)}} if ca is not None else {}),
            **(validation or {}),
        }
    if alpn:
        common["alpn_protocols"] = alpn
    if params:
        common["tls_params"] = params
    config = {"@type": DOWNSTREAM, "common_tls_context": common, **extra}
    if require_client is not None:
        config["require_client_certificate"] = require_client
    return {"name": "envoy.transport_sockets.tls", "typed_config": config}


def upstream_tls(
    *,
    sni: str | None = None,
    ca: Path | None = None,
    cert: tuple[Path, Path] | None = None,
    alpn: list[str] | None = None,
    validation: dict | None = None,
    **extra,
) -> dict:
    """A cluster's ``transport_socket`` with an UpstreamTlsContext."""
    common: dict = {}
    if cert is not None:
        common["tls_certificates"] = [certificate(cert)]
    if ca is not None or validation:
        common["validation_context"] = {
            **({"trusted_ca": {"filename": str(ca)}} if ca is not None else {}),
            **(validation or {}),
        }
    if alpn:
        common["alpn_protocols"] = alpn
    config: dict = {"@type": UPSTREAM, "common_tls_context": common, **extra}
    if sni:
        config["sni"] = sni
    return {"name": "envoy.transport_sockets.tls", "typed_config": config}


def client_context(
    files: TlsFiles,
    *,
    cert: tuple[Path, Path] | None = None,
    alpn: list[str] | None = None,
    max_version: ssl.TLSVersion | None = None,
) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(files.ca_path))
    if cert is not None:
        ctx.load_cert_chain(*cert)
    if alpn:
        ctx.set_alpn_protocols(alpn)
    if max_version is not None:
        ctx.maximum_version = max_version
    return ctx


def tls_connect(
    port: int, ctx: ssl.SSLContext, server_name: str = "localhost", timeout: float = 5.0
) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    return ctx.wrap_socket(raw, server_hostname=server_name)


class TlsEchoServer:
    """A TLS upstream that echoes what it reads (one thread per connection), for upstream
    TLS tests. ``alpn``: protocols it accepts; ``client_ca``: require client certificates."""

    def __init__(self, cert: tuple[Path, Path], *, alpn: list[str] | None = None,
                 client_ca: Path | None = None) -> None:  # fmt: skip
        import threading

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(*cert)
        if alpn:
            ctx.set_alpn_protocols(alpn)
        if client_ca is not None:
            ctx.load_verify_locations(cafile=str(client_ca))
            ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.sni_callback = lambda sock, name, _ctx: setattr(sock, "requested_sni", name)
        self.ctx = ctx
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.handshakes: list[dict] = []
        self._stop = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        import threading

        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        try:
            conn = self.ctx.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError) as e:
            self.handshakes.append({"error": str(e)})
            raw.close()
            return
        self.handshakes.append(
            {
                "sni": getattr(conn, "requested_sni", None),
                "alpn": conn.selected_alpn_protocol(),
                "peer": conn.getpeercert(),
                "version": conn.version(),
            }
        )
        try:
            while True:
                data = conn.recv(65536)
                if not data:
                    break
                conn.sendall(data)
        except (ssl.SSLError, OSError):
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self._stop = True
        self.sock.close()
