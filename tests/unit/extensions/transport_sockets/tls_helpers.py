"""Building TLS contexts from config dicts, and driving a server ``SslSocket`` against a
client ``ssl.SSLObject`` in memory."""

from __future__ import annotations

import ssl
from pathlib import Path

from legatus.config.proto_json import parse
from legatus.extensions.transport_sockets.tls.client_context import ClientContext
from legatus.extensions.transport_sockets.tls.context_config import (
    DownstreamTlsContext,
    UpstreamTlsContext,
    compile_downstream,
    compile_upstream,
)
from legatus.extensions.transport_sockets.tls.server_context import ServerContext
from legatus.extensions.transport_sockets.tls.stats import HandshakeStats
from legatus.stats.store import Store
from tests.support.certs import Leaf


def cert_entry(leaf: Leaf) -> dict:
    return {
        "certificate_chain": {"inline_string": leaf.chain_pem.decode()},
        "private_key": {"inline_string": leaf.key_pem.decode()},
    }


def server_context(config: dict) -> tuple[ServerContext, Store]:
    store = Store()
    compiled = compile_downstream(parse(config, DownstreamTlsContext), "tls")
    return ServerContext(compiled, HandshakeStats(store.scope("listener.test."))), store


def client_context(config: dict) -> tuple[ClientContext, Store]:
    store = Store()
    compiled = compile_upstream(parse(config, UpstreamTlsContext), "tls")
    return ClientContext(compiled, HandshakeStats(store.scope("cluster.test."))), store


def python_client(
    *,
    ca: Path | bytes | None = None,
    sni: str | None = "localhost",
    alpn=None,
    cert=None,
    max_version=None,
    ciphers=None,
    curve=None,
) -> tuple[ssl.SSLObject, ssl.MemoryBIO, ssl.MemoryBIO]:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    if ca is None:
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx.load_verify_locations(
            cadata=ca.decode() if isinstance(ca, bytes) else None,
            cafile=str(ca) if isinstance(ca, Path) else None,
        )
    if alpn:
        ctx.set_alpn_protocols(alpn)
    if cert is not None:
        ctx.load_cert_chain(*cert)
    if max_version is not None:
        ctx.maximum_version = max_version
    if ciphers:
        ctx.set_ciphers(ciphers)
    if curve:
        ctx.set_ecdh_curve(curve)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    return ctx.wrap_bio(incoming, outgoing, server_hostname=sni), incoming, outgoing


def handshake(server_sock, client, c_in, c_out, *, rounds: int = 6) -> None:
    """Pump bytes both ways until the client's handshake is done (or raises)."""
    for _ in range(rounds):
        try:
            client.do_handshake()
            done = True
        except ssl.SSLWantReadError:
            done = False
        data = c_out.read()
        if data:
            server_sock.receive(data)
        out = server_sock.outgoing()
        if out:
            c_in.write(out)
        if done and not out:
            return
