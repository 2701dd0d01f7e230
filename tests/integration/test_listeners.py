"""Listeners over real sockets: filter-chain matching, IPv6, echo and direct_response."""

from __future__ import annotations

import socket

from tests.support.process import start_proxy, wait_for

ECHO = {
    "name": "envoy.filters.network.echo",
    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.network.echo.v3.Echo"},
}


def _direct(text: str) -> dict:
    return {
        "name": "envoy.filters.network.direct_response",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network."
            "direct_response.v3.Config",
            "response": {"inline_string": text},
        },
    }


def _bootstrap(*listeners: dict) -> dict:
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {"listeners": list(listeners)},
    }


def _listener(name: str, address: str = "127.0.0.1", **extra) -> dict:
    return {
        "name": name,
        "address": {"socket_address": {"address": address, "port_value": 0}},
        **extra,
    }


def _read_all(port: int, send: bytes = b"", host: str = "127.0.0.1", **kw) -> bytes:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        s.settimeout(5)
        if "source_port" in kw:
            s.bind((host, kw["source_port"]))
        s.connect((host, port))
        if send:
            s.sendall(send)
            s.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := s.recv(4096):
            data += chunk
        return data


def test_echo_and_direct_response(tmp_path):
    proxy = start_proxy(
        _bootstrap(
            _listener("echo", filter_chains=[{"filters": [ECHO]}]),
            _listener("direct", filter_chains=[{"filters": [_direct("hello from legatus\n")]}]),
        ),
        tmp_path,
        args=["--concurrency", "1"],
    )
    try:
        assert _read_all(proxy.listener_port("echo"), b"ping") == b"ping"
        assert _read_all(proxy.listener_port("direct")) == b"hello from legatus\n"
    finally:
        proxy.stop()


def test_ipv6_listener(tmp_path):
    proxy = start_proxy(
        _bootstrap(_listener("v6", "::1", filter_chains=[{"filters": [ECHO]}])),
        tmp_path,
        args=["--concurrency", "1"],
    )
    try:
        port = proxy.listener_port("v6")
        assert _read_all(port, b"six", host="::1") == b"six"
        stats = wait_for(
            lambda: (s := proxy.stats()).get("listener.[__1]_0.downstream_cx_destroy") == 1 and s,
            what="the IPv6 listener's stats",
        )
        assert stats["listener.[__1]_0.downstream_cx_total"] == 1
        _, body = proxy.admin("/listeners")
        assert f"v6::[::1]:{port}" in body
    finally:
        proxy.stop()


def test_filter_chain_match_default_chain_and_no_match(tmp_path):
    chains = [
        {
            # Envoy matches the source type before the source ranges, and 127.0.0.2 is not
            # loopback there (only 127.0.0.1 is): without EXTERNAL here, chain two would win.
            "filter_chain_match": {
                "source_type": "EXTERNAL",
                "source_prefix_ranges": [{"address_prefix": "127.0.0.2"}],
            },
            "filters": [_direct("from .2\n")],
        },
        {
            "filter_chain_match": {"source_type": "EXTERNAL"},
            "filters": [_direct("external\n")],
        },
    ]
    proxy = start_proxy(
        _bootstrap(
            _listener("m", "0.0.0.0", filter_chains=chains),
            _listener(
                "d",
                "0.0.0.0",
                filter_chains=[
                    {
                        "filter_chain_match": {"destination_port": 1},
                        "filters": [_direct("port 1\n")],
                    }
                ],
                default_filter_chain={"filters": [_direct("default\n")]},
            ),
        ),
        tmp_path,
        args=["--concurrency", "1"],
    )
    try:
        port = proxy.listener_port("m")
        with socket.socket() as s:
            s.settimeout(5)
            s.bind(("127.0.0.2", 0))
            s.connect(("127.0.0.1", port))
            assert s.recv(100) == b"from .2\n"
        with socket.socket() as s:
            s.settimeout(5)
            s.bind(("127.0.0.3", 0))
            s.connect(("127.0.0.1", port))
            assert s.recv(100) == b"external\n"
        # From 127.0.0.1: no source range matches, and loopback is not EXTERNAL: no chain.
        assert _read_all(port) == b""
        wait_for(
            lambda: proxy.stats().get("listener.0.0.0.0_0.no_filter_chain_match") == 1,
            what="no_filter_chain_match",
        )
        assert _read_all(proxy.listener_port("d")) == b"default\n"
    finally:
        proxy.stop()


def test_strict_dns_cluster_end_to_end(tmp_path):
    from tests.support.upstreams import EchoServer, tcp_proxy_config

    echo = EchoServer()
    cfg = tcp_proxy_config(
        upstream_port=echo.port,
        extra_cluster={"type": "STRICT_DNS", "dns_lookup_family": "V4_ONLY"},
    )
    cluster = cfg["static_resources"]["clusters"][0]
    sa = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    sa["socket_address"]["address"] = "localhost"
    proxy = start_proxy(cfg, tmp_path, args=["--concurrency", "1"])
    try:
        assert _read_all(proxy.listener_port("tcp"), b"dns") == b"dns"
        stats = proxy.stats()
        assert stats["cluster.backend.membership_total"] == 1
        assert stats["cluster.backend.update_success"] >= 1
        _, body = proxy.admin("/clusters")
        assert f"backend::127.0.0.1:{echo.port}::cx_total::1" in body
    finally:
        proxy.stop()
        echo.close()
