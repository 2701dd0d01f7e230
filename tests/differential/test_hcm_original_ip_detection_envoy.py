"""``original_ip_detection_extensions`` (``envoy.http.original_ip_detection.custom_header`` and
``...xff``) and ``represent_ipv4_remote_address_as_ipv4_mapped_ipv6``, Envoy 1.40 against
legatus: the client each finds (``%DOWNSTREAM_REMOTE_ADDRESS%``), what the upstream sees
(``x-forwarded-for`` appends, ``x-envoy-internal`` and the x-envoy-* headers of an internal
or external request), the rejection of ``reject_with_status``, how extensions chain, and
Envoy's configuration errors (an extension with ``use_remote_address`` or
``xff_num_trusted_hops``, hops with trusted ranges...)."""

from __future__ import annotations

import json
import re
import socket
from dataclasses import dataclass

import pytest

from tests.differential.http_scenario import (  # noqa: F401 (fixtures)
    HCM,
    IO_TIMEOUT,
    ROUTER,
    Cluster,
    Listener,
    hcm_bootstrap,
    host_addresses,
    http_pair_fixture,
    http_pair_processes_fixture,
    http_request,
    scenario,
)
from tests.differential.test_validate_verdicts import envoy_validate, legatus_validate

CUSTOM = "type.googleapis.com/envoy.extensions.http.original_ip_detection.custom_header.v3."
XFF = "type.googleapis.com/envoy.extensions.http.original_ip_detection.xff.v3.XffConfig"


def custom_header(**config) -> dict:
    return {
        "name": "envoy.http.original_ip_detection.custom_header",
        "typed_config": {"@type": CUSTOM + "CustomHeaderConfig", "header_name": "x-real-ip",
                         **config},
    }  # fmt: skip


def xff(**config) -> dict:
    return {
        "name": "envoy.http.original_ip_detection.xff",
        "typed_config": {"@type": XFF, **config},
    }


def cidrs(*ranges: str) -> dict:
    out = []
    for text in ranges:
        address, _, length = text.partition("/")
        out.append({"address_prefix": address, "prefix_len": int(length)})
    return {"cidrs": out}


def internal(*ranges: str) -> dict:
    return {"internal_address_config": {"cidr_ranges": cidrs(*ranges)["cidrs"]}}


def _listener(name: str, *extensions: dict, **hcm) -> tuple[Listener, Cluster]:
    hcm = {"original_ip_detection_extensions": list(extensions), **hcm}
    return Listener(name=name, hcm=hcm), Cluster(name=name)


# Each request: its extra headers. An internal request keeps its x-envoy-* headers.
TAGS = ("x-envoy-ip-tags", "tag")


def _send_all(listener: str, requests: list[list[tuple[str, str]]]):
    def traffic(side):
        return [side.request(listener, "GET", "/", headers).view() for headers in requests]

    return traffic


def _clients(out) -> list:
    return [(e["remote"], e["xff"]) for e in out.envoy.log]


# custom_header ------------------------------------------------------------------------------

HEADER_REQUESTS = [
    [],
    [("x-real-ip", "1.2.3.4"), TAGS],
    [("x-real-ip", "not-an-ip")],
    [("x-real-ip", "2001:db8::7")],
    [("x-real-ip", "1.2.3.4"), ("x-forwarded-for", "9.9.9.9")],
    [("x-real-ip", "1.2.3.4, 5.6.7.8")],
]


@scenario(*_listener("oid_header", custom_header(), **internal("1.2.3.4/32", "127.0.0.1/32")))
def test_custom_header(http_pair):
    out = http_pair.run(_send_all("oid_header", HEADER_REQUESTS))
    assert [e["remote"] for e in out.envoy.log][1:5] == [
        "1.2.3.4:0", "127.0.0.1:<ephemeral>", "[2001:db8::7]:0", "1.2.3.4:0"
    ]  # fmt: skip
    out.assert_same()


@scenario(*_listener("oid_trusted", custom_header(allow_extension_to_set_address_as_trusted=True),
                     **internal("1.2.3.4/32", "127.0.0.1/32")))  # fmt: skip
def test_custom_header_trusted_for_the_internal_decision(http_pair):
    out = http_pair.run(_send_all("oid_trusted", HEADER_REQUESTS))
    internal_requests = [
        any(h == "x-envoy-internal: true" for h in u["headers"]) for u in out.envoy.upstream
    ]
    assert internal_requests == [False, True, False, False, True, False]
    out.assert_same()


@scenario(
    *_listener("oid_reject", custom_header(reject_with_status={"code": 401})),
    *_listener("oid_reject_any", custom_header(reject_with_status={"code": 200})),
)
def test_reject_with_status(http_pair):
    def traffic(side):
        out = []
        with side.connect("oid_reject") as client:  # the connection stays open
            out.append(client.request("GET", "/", [("x-real-ip", "bad")]).view())
            out.append(client.request("GET", "/", [("x-real-ip", "1.2.3.4")]).view())
            out.append(client.request("POST", "/", body=b"data").view())
        out.append(side.request("oid_reject_any", "GET", "/").view())  # 403 for < 400
        return out

    out = http_pair.run(traffic)
    assert [r["status"] for r in out.envoy.result] == [
        "HTTP/1.1 401 Unauthorized", "HTTP/1.1 200 OK", "HTTP/1.1 401 Unauthorized",
        "HTTP/1.1 403 Forbidden",
    ]  # fmt: skip
    assert out.envoy.log[0]["details"] == "rejecting_because_detection_failed"
    out.assert_same()


# xff ---------------------------------------------------------------------------------------

XFF_REQUESTS = [
    [],
    [("x-forwarded-for", "10.0.0.1"), TAGS],
    [("x-forwarded-for", "1.1.1.1, 10.0.0.1"), TAGS],
    [("x-forwarded-for", "10.0.0.3, 10.0.0.2")],
    [("x-forwarded-for", "1.1.1.1"), TAGS],
    [("x-forwarded-for", "2.2.2.2,1.1.1.1,10.0.0.1")],
    [("x-forwarded-for", "bad, 10.0.0.1")],
    [("x-forwarded-for", "1.1.1.1,")],
    [("x-forwarded-for", "1.1.1.1"), ("x-forwarded-for", "10.0.0.1")],
]
IAC = internal("10.0.0.0/8", "1.1.1.1/32", "127.0.0.1/32")


@scenario(*_listener("oid_xff", xff(), **IAC),
          *_listener("oid_xff_hops", xff(xff_num_trusted_hops=1), **IAC),
          *_listener("oid_xff_append", xff(skip_xff_append=False), **IAC))  # fmt: skip
def test_xff_with_hops_and_the_append(http_pair):
    def traffic(side):
        return [
            _send_all(name, XFF_REQUESTS)(side)
            for name in ("oid_xff", "oid_xff_hops", "oid_xff_append")
        ]

    out = http_pair.run(traffic)
    seen = [h for u in out.envoy.upstream for h in u["headers"] if h.startswith("x-forwarded")]
    assert "x-forwarded-for: 10.0.0.1,<host address>" in seen  # the peer, appended
    out.assert_same()


@scenario(*_listener("oid_cidrs", xff(xff_trusted_cidrs=cidrs("127.0.0.1/32", "10.0.0.0/8")),
                     **IAC),
          *_listener("oid_untrusted", xff(xff_trusted_cidrs=cidrs("10.0.0.0/8")), **IAC),
          *_listener("oid_bad_ranges",
                     xff(xff_trusted_cidrs=cidrs("nope/8", "127.0.0.1/40"))))  # fmt: skip
def test_xff_trusted_cidrs(http_pair):
    def traffic(side):
        return [
            _send_all(name, XFF_REQUESTS)(side)
            for name in ("oid_cidrs", "oid_untrusted", "oid_bad_ranges")
        ]

    out = http_pair.run(traffic)
    remotes = [e["remote"] for e in out.envoy.log]
    # From a trusted peer, the walk skips the trusted entries; all trusted: the leftmost.
    assert remotes[1:6] == ["10.0.0.1:0", "1.1.1.1:0", "10.0.0.3:0", "1.1.1.1:0", "1.1.1.1:0"]
    out.assert_same()


@scenario(*_listener("oid_chain", xff(xff_trusted_cidrs=cidrs("10.0.0.0/8")), custom_header()),
          *_listener("oid_chain_rev", custom_header(), xff(xff_trusted_cidrs=cidrs("10.0.0.0/8"))),
          *_listener("oid_chain_twice", xff(xff_trusted_cidrs=cidrs("10.0.0.0/8")),
                     xff(xff_trusted_cidrs=cidrs("10.0.0.0/8"))))  # fmt: skip
def test_extensions_are_asked_in_order(http_pair):
    requests = [[], [("x-real-ip", "1.2.3.4")], [("x-forwarded-for", "5.5.5.5")]]

    def traffic(side):
        return [
            _send_all(name, requests)(side)
            for name in ("oid_chain", "oid_chain_rev", "oid_chain_twice")
        ]

    out = http_pair.run(traffic)
    xffs = [e["xff"] for e in out.envoy.log]
    # Each extension that does not skip the append adds the peer, as it is asked.
    assert xffs[:3] == ["<host address>", "<host address>", "5.5.5.5,<host address>"]
    assert xffs[3:5] == ["<host address>", None]
    assert xffs[6] == "<host address>,<host address>"
    out.assert_same()


# represent_ipv4_remote_address_as_ipv4_mapped_ipv6 ----------------------------------------


@dataclass(frozen=True, kw_only=True)
class PortlessLogListener(Listener):
    """A Listener whose access log writes the client without its port (the harness leaves
    the ports of this machine's own address as they are)."""

    def typed_config(self, log_path):
        config = super().typed_config(log_path)
        log_format = config["access_log"][0]["typed_config"]["log_format"]
        log_format["json_format"] = {
            **log_format["json_format"],
            "remote": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%",
        }  # (a copy: the harness's format is shared)
        return config


MAPPED = PortlessLogListener(
    name="oid_mapped",
    hcm={"use_remote_address": True, "represent_ipv4_remote_address_as_ipv4_mapped_ipv6": True},
)


@pytest.mark.skipif(not host_addresses(), reason="no IPv4 address other than loopback")
@scenario(MAPPED, Cluster(name="oid_mapped"))
def test_an_ipv4_peer_stays_ipv4(http_pair):
    """Envoy 1.40 does not act on the field (not-implemented-hide there): a peer that is no
    loopback (a client bound to this machine's address) is IPv4 in x-forwarded-for,
    x-envoy-external-address and the access log."""
    source = host_addresses()[0]

    def traffic(side):
        out = []
        for bound in (source, None):
            s = socket.create_connection(
                ("127.0.0.1", side.ports["oid_mapped"]), timeout=IO_TIMEOUT,
                source_address=(bound, 0) if bound else None,
            )  # fmt: skip
            with s:
                s.sendall(http_request("GET", "/", [("connection", "close")]))
                data = b""
                while chunk := s.recv(65536):
                    data += chunk
            # (counted as the harness's clients count theirs: tx bytes are compared to it)
            side.received["oid_mapped"] = side.received.get("oid_mapped", 0) + len(data)
            out.append(data.split(b"\r\n", 1)[0].decode())
        return out

    out = http_pair.run(traffic)
    assert [e["remote"] for e in out.envoy.log] == ["<host address>", "127.0.0.1"]
    seen = out.envoy.upstream[0]["headers"]
    assert "x-forwarded-for: <host address>" in seen
    assert "x-envoy-external-address: <host address>" in seen
    out.assert_same()


# Configuration ------------------------------------------------------------------------------

_CONFIGS = {
    "with_use_remote_address": {"use_remote_address": True,
                                "original_ip_detection_extensions": [custom_header()]},
    "with_xff_num_trusted_hops": {"xff_num_trusted_hops": 1,
                                  "original_ip_detection_extensions": [xff()]},
    "hops_and_cidrs": {"original_ip_detection_extensions": [
        xff(xff_num_trusted_hops=1, xff_trusted_cidrs=cidrs("10.0.0.0/8"))]},
    "empty_header_name": {"original_ip_detection_extensions": [custom_header(header_name="")]},
    "bad_header_name": {"original_ip_detection_extensions": [
        custom_header(header_name="Bad Name")]},
    "undefined_status": {"original_ip_detection_extensions": [
        custom_header(reject_with_status={"code": 512})]},
    "prefix_past_128": {"original_ip_detection_extensions": [
        xff(xff_trusted_cidrs=cidrs("10.0.0.0/200"))]},
    "remote_address_false": {"use_remote_address": False,
                             "original_ip_detection_extensions": [custom_header()]},
}  # fmt: skip


@pytest.mark.parametrize("name", list(_CONFIGS))
def test_configuration_verdicts_and_messages(name, tmp_path):
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(hcm_bootstrap(_CONFIGS[name])))
    envoy, legatus = envoy_validate(path), legatus_validate(path)
    assert legatus.code == envoy.code, (envoy.output[-2000:], legatus.output[-2000:])
    if envoy.code:
        message = re.search(r"error initializing configuration '[^']*': (.*)", envoy.output)
        assert message is not None, envoy.output[-2000:]
        text = message.group(1).strip()
        if "Proto constraint validation failed" in envoy.output:  # PGV: its last cause
            text = re.findall(r"ValidationError\.\w+: ([^)|\n]*)", envoy.output)[-1].strip()
        assert text in legatus.output, (text, legatus.output[-2000:])
