"""The TLS inspector listener filter and the listener-filter phase (ActiveTcpSocket)."""

from __future__ import annotations

import ssl

import pytest

from legatus.extensions.filters.listener.tls_inspector.filter import (
    TlsInspectorConfig,
    TlsInspectorFilter,
)
from legatus.network.listener_filter import (
    AcceptedSocket,
    ActiveTcpSocket,
    ListenerFilterStatus,
)
from legatus.stats.store import Store


def _hello(sni="example.com", alpn=("h2",)) -> bytes:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    obj = ctx.wrap_bio(ssl.MemoryBIO(), out := ssl.MemoryBIO(), server_hostname=sni)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return out.read()


def _inspector(**kwargs):
    store = Store()
    config = TlsInspectorConfig(
        max_client_hello_size=kwargs.get("max_size", 64 * 1024),
        close_on_parsing_errors=kwargs.get("close", False),
        store=store,
    )
    return TlsInspectorFilter(config), store


def _stats(store):
    return {s.name: s.value for s in store if s.name.startswith("tls_inspector.") and
            getattr(s, "value", 0)}  # fmt: skip


def test_sni_and_alpn_found_in_pieces():
    f, store = _inspector()
    sock = AcceptedSocket()
    data = _hello()
    assert f.on_accept(sock) is ListenerFilterStatus.STOP_ITERATION
    assert f.on_data(sock, data[:10]) is ListenerFilterStatus.STOP_ITERATION
    assert f.on_data(sock, data) is ListenerFilterStatus.CONTINUE
    assert sock.requested_server_name == "example.com"
    assert sock.detected_transport_protocol == "tls"
    assert sock.requested_application_protocols == ("h2",)
    assert _stats(store) == {
        "tls_inspector.tls_found": 1, "tls_inspector.sni_found": 1,
        "tls_inspector.alpn_found": 1,
    }  # fmt: skip


def test_no_sni_no_alpn():
    f, store = _inspector()
    sock = AcceptedSocket()
    assert f.on_data(sock, _hello(sni=None, alpn=None)) is ListenerFilterStatus.CONTINUE
    assert sock.requested_server_name == ""
    assert _stats(store) == {
        "tls_inspector.tls_found": 1, "tls_inspector.sni_not_found": 1,
        "tls_inspector.alpn_not_found": 1,
    }  # fmt: skip


def test_plaintext_continues_without_tls():
    f, store = _inspector()
    sock = AcceptedSocket()
    assert f.on_data(sock, b"GET / HTTP/1.1\r\n") is ListenerFilterStatus.CONTINUE
    assert sock.detected_transport_protocol == ""
    assert not sock.closed_by_filter
    assert _stats(store) == {"tls_inspector.tls_not_found": 1}
    f, store = _inspector(close=True)
    sock = AcceptedSocket()
    f.on_data(sock, b"GET / HTTP/1.1\r\n")
    assert sock.closed_by_filter


def test_client_hello_too_large():
    f, store = _inspector(max_size=64)
    sock = AcceptedSocket()
    f.on_data(sock, bytes([22, 3, 1, 0x10, 0x00]) + b"\x01" * 100)
    assert sock.closed_by_filter
    assert _stats(store) == {"tls_inspector.client_hello_too_large": 1}


class _Transport:
    def __init__(self):
        self.aborted = False

    def abort(self):
        self.aborted = True


async def test_active_tcp_socket_phases():
    import asyncio

    loop = asyncio.get_running_loop()
    results = []

    def make(**kw):
        f, _ = _inspector()
        return ActiveTcpSocket(
            [f], loop=loop, timeout=kw.get("timeout", 5), continue_on_timeout=kw.get("cont", False),
            on_done=lambda p, t, s, initial: results.append(("done", s.requested_server_name,
                                                              initial)),
            on_gone=lambda p, reason: results.append(("gone", reason)),
        )  # fmt: skip

    data = _hello()
    pending = make()
    pending.connection_made(_Transport())
    pending.data_received(data[:20])
    pending.data_received(data[20:])
    assert results[-1] == ("done", "example.com", data)  # every byte goes on to the connection

    pending = make()
    transport = _Transport()
    pending.connection_made(transport)
    pending.data_received(data[:20])
    pending.eof_received()
    assert results[-1] == ("gone", "remote_close") and transport.aborted

    pending = make(timeout=0.01)
    pending.connection_made(_Transport())
    await asyncio.sleep(0.05)
    assert results[-1] == ("gone", "timeout")

    pending = make(timeout=0.01, cont=True)
    pending.connection_made(_Transport())
    await asyncio.sleep(0.05)
    assert results[-2:] == [("gone", "timeout_continue"), ("done", "", b"")]
