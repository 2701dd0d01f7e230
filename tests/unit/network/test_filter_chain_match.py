import pytest
from envoy.config.listener.v3 import listener_components_pb2
from google.protobuf import json_format

from legatus.config.errors import ConfigError
from legatus.network.filter_chain_match import (
    ConnectionKey,
    FilterChainMatcher,
    compile_match,
)


def _m(**kw):
    proto = json_format.ParseDict(kw, listener_components_pb2.FilterChainMatch())
    return compile_match(proto, "m")


def _key(dst="10.0.0.1", dport=80, src="192.168.1.5", sport=40000, **kw):
    return ConnectionKey(
        destination_ip=dst, destination_port=dport, source_ip=src, source_port=sport, **kw
    )


def _matcher(*chains, default=None):
    return FilterChainMatcher([(m, name) for name, m in chains], default, listener_path="l")


def _matcher_with_protos(*chains):
    protos = [json_format.ParseDict(kw, listener_components_pb2.FilterChainMatch())
              for _, kw in chains]  # fmt: skip
    return FilterChainMatcher(
        [(compile_match(p, "m"), name) for (name, _), p in zip(chains, protos, strict=True)],
        None, listener_path="l", protos=protos, names=[n for n, _ in chains],
    )  # fmt: skip


def test_exact_port_beats_unset():
    m = _matcher(("any", _m()), ("p80", _m(destination_port=80)))
    assert m.match(_key(dport=80)) == "p80"
    assert m.match(_key(dport=81)) == "any"


def test_longest_destination_prefix_wins():
    m = _matcher(
        ("wide", _m(prefix_ranges=[{"address_prefix": "10.0.0.0", "prefix_len": 8}])),
        ("narrow", _m(prefix_ranges=[{"address_prefix": "10.0.0.0", "prefix_len": 24}])),
    )
    assert m.match(_key(dst="10.0.0.7")) == "narrow"
    assert m.match(_key(dst="10.9.0.7")) == "wide"
    assert m.match(_key(dst="11.0.0.1")) is None


def test_no_backtracking_falls_to_default():
    # The port-80 chain wins step one but fails the source-port step; Envoy does not
    # go back to the port-less chain: the connection gets the default chain.
    m = _matcher(
        ("p80", _m(destination_port=80, source_ports=[1])), ("any", _m()), default="default"
    )
    assert m.match(_key(dport=80, sport=2)) == "default"


def test_server_names_exact_beats_wildcard():
    m = _matcher(
        ("wild", _m(server_names=["*.example.com"])),
        ("exact", _m(server_names=["api.example.com"])),
        ("none", _m()),
    )
    assert m.match(_key(server_name="api.example.com")) == "exact"
    assert m.match(_key(server_name="www.example.com")) == "wild"
    assert m.match(_key(server_name="other.org")) == "none"
    assert m.match(_key()) == "none"


def test_transport_and_application_protocols():
    m = _matcher(
        ("tls", _m(transport_protocol="tls")),
        ("raw", _m()),
        ("h2", _m(transport_protocol="tls", application_protocols=["h2"])),
    )
    assert m.match(_key()) == "raw"
    assert m.match(_key(transport_protocol="tls", application_protocols=("h2",))) == "h2"
    assert m.match(_key(transport_protocol="tls", application_protocols=("http/1.1",))) == "tls"


def test_source_type_and_ranges_and_ports():
    m = _matcher(
        ("local", _m(source_type="SAME_IP_OR_LOOPBACK")),
        ("external", _m(source_type="EXTERNAL")),
    )
    assert m.match(_key(src="127.0.0.1")) == "local"
    assert m.match(_key(src="10.0.0.1", dst="10.0.0.1")) == "local"
    assert m.match(_key(src="8.8.8.8")) == "external"
    # Envoy's isLoopbackAddress is 127.0.0.1 only (checked against Envoy 1.40).
    assert m.match(_key(src="127.0.0.2", dst="127.0.0.1")) == "external"
    m = _matcher(
        ("net", _m(source_prefix_ranges=[{"address_prefix": "192.168.0.0", "prefix_len": 16}])),
        ("port", _m(source_ports=[5555])),
    )
    assert m.match(_key(src="192.168.3.3")) == "net"
    assert m.match(_key(src="172.16.0.1", sport=5555)) == "port"
    assert m.match(_key(src="172.16.0.1", sport=5556)) is None


def test_ipv6_ranges():
    m = _matcher(
        ("v6", _m(prefix_ranges=[{"address_prefix": "::1", "prefix_len": 128}])),
        ("v4", _m(prefix_ranges=[{"address_prefix": "127.0.0.0", "prefix_len": 8}])),
    )
    assert m.match(_key(dst="::1", src="::1")) == "v6"
    assert m.match(_key(dst="127.0.0.1", src="127.0.0.1")) == "v4"


def test_duplicate_matches_are_rejected():
    # Envoy 1.40's text.
    with pytest.raises(ConfigError, match="has the same matching rules defined as"):
        _matcher(("a", _m(destination_port=80)), ("b", _m(destination_port=80)))


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ({"server_names": ["a.com", "b.com"]}, {"server_names": ["b.com"]}),
        ({"server_names": ["A.com"]}, {"server_names": ["a.com"]}),  # names fold case
        ({"application_protocols": ["h2", "x"]}, {"application_protocols": ["h2"]}),
    ],
)
def test_overlapping_matches_are_rejected(a, b):
    with pytest.raises(ConfigError, match="overlapping matching rules are defined"):
        _matcher_with_protos(("a", a), ("b", b))


@pytest.mark.parametrize("name", ["a*.example.com", "*example.com", "*", "a.*.com"])
def test_partial_wildcards_are_rejected(name):
    with pytest.raises(ConfigError, match='partial wildcards are not supported in "server_names"'):
        _m(server_names=[name])


def test_server_names_exact_then_longest_wildcard_then_any():
    m = _matcher(
        ("exact", _m(server_names=["a.example.com"])),
        ("wild", _m(server_names=["*.example.com"])),
        ("deeper", _m(server_names=["*.b.example.com"])),
        ("any", _m()),
    )
    assert m.match(_key(server_name="A.Example.com")) == "exact"
    assert m.match(_key(server_name="x.y.example.com")) == "wild"
    assert m.match(_key(server_name="x.b.example.com")) == "deeper"
    assert m.match(_key(server_name="example.com")) == "any"
    assert m.match(_key(server_name="")) == "any"


def test_transport_protocol_and_alpn():
    m = _matcher(
        ("plain", _m(transport_protocol="raw_buffer")),
        ("h2", _m(transport_protocol="tls", application_protocols=["h2"])),
        ("tls", _m(transport_protocol="tls")),
    )
    assert m.match(_key()) == "plain"  # raw_buffer: the default with no inspector
    assert m.match(_key(transport_protocol="tls", application_protocols=("h2", "http/1.1"))) == (
        "h2"
    )
    assert m.match(_key(transport_protocol="tls", application_protocols=("http/1.1",))) == "tls"


def test_unsupported_field_is_named():
    with pytest.raises(ConfigError, match="not supported"):
        proto = listener_components_pb2.FilterChainMatch()
        proto.address_suffix = "x"
        compile_match(proto, "m")
