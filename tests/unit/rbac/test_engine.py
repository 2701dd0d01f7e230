"""The RBAC engine on its own: policies compiled from protos, decided for requests."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from envoy.config.rbac.v3 import rbac_pb2

from legatus.config.errors import ConfigError
from legatus.config.proto_json import parse
from legatus.http.headers import HeaderMap
from legatus.rbac.engine import compile_engine, response_detail, stat_prefix_join
from legatus.rbac.request import RbacRequest, parse_address

ANY = [{"any": True}]


def engine(action: str, policies: dict):
    return compile_engine(parse({"action": action, "policies": policies}, rbac_pb2.RBAC), "rules")


def policy(permissions=ANY, principals=ANY) -> dict:
    return {"permissions": permissions, "principals": principals}


def request(path="/", headers=(), *, local="127.0.0.1:8080", source="127.0.0.1:5000",
            direct="127.0.0.1:5000", remote="127.0.0.1:5000") -> RbacRequest:  # fmt: skip
    items = [(":method", "GET"), (":path", path), *headers] if path is not None else []
    return RbacRequest(headers=HeaderMap(items), path=path, local=local, source=source,
                       direct_remote=direct, remote=remote)  # fmt: skip


def test_allow_needs_a_matching_policy():
    e = engine("ALLOW", {"admin": policy(principals=[
        {"header": {"name": "x-role", "string_match": {"exact": "admin"}}}])})  # fmt: skip
    assert e.evaluate(request(headers=[("x-role", "admin")])) == (True, "admin")
    assert e.evaluate(request(headers=[("x-role", "user")])) == (False, "")


def test_deny_denies_what_matches():
    e = engine("DENY", {"admin-path": policy([{"url_path": {"path": {"prefix": "/admin"}}}])})
    assert e.evaluate(request("/admin/x?q=1")) == (False, "admin-path")
    assert e.evaluate(request("/x?/admin")) == (True, "")  # the query is not the path


def test_log_always_allows_and_reports_the_match():
    e = engine("LOG", {"p": policy([{"destination_port": 8080}])})
    assert e.evaluate(request()) == (True, "p")
    assert e.evaluate(request(local="127.0.0.1:9090")) == (True, "")


def test_policies_are_tried_in_name_order():
    e = engine("ALLOW", {"b": policy(), "a": policy()})
    assert e.evaluate(request()) == (True, "a")


def test_and_or_not():
    e = engine("ALLOW", {"p": policy([{"and_rules": {"rules": [
        {"or_rules": {"rules": [{"destination_port": 1}, {"destination_port": 8080}]}},
        {"not_rule": {"header": {"name": "x-block", "present_match": True}}},
    ]}}])})  # fmt: skip
    assert e.evaluate(request())[0]
    assert not e.evaluate(request(headers=[("x-block", "1")]))[0]
    assert not e.evaluate(request(local="127.0.0.1:2"))[0]


def test_addresses():
    e = engine("ALLOW", {"p": policy(
        [{"destination_ip": {"address_prefix": "127.0.0.0", "prefix_len": 8}},
         {"destination_port_range": {"start": 9000, "end": 9100}}],
        [{"and_ids": {"ids": [
            {"direct_remote_ip": {"address_prefix": "127.0.0.1", "prefix_len": 32}},
            {"remote_ip": {"address_prefix": "10.0.0.0", "prefix_len": 8}},
            {"source_ip": {"address_prefix": "127.0.0.1", "prefix_len": 32}},
        ]}}])})  # fmt: skip
    assert e.evaluate(request(remote="10.1.1.1:0"))[0]
    assert not e.evaluate(request(remote="11.1.1.1:0"))[0]
    assert not e.evaluate(request(remote="[::1]:0"))[0]  # another IP version never matches
    assert e.evaluate(request(local="[::1]:9000", remote="10.0.0.1:0"))[0]  # port range


def test_connection_has_no_path_no_headers_no_sni_no_peer_certificate():
    e = engine("ALLOW", {
        "path": policy([{"url_path": {"path": {"prefix": "/"}}}]),
        "sni": policy([{"requested_server_name": {"exact": "example.com"}}]),
        "tls": policy(principals=[{"authenticated": {}}]),
        "hdr": policy([{"header": {"name": "x", "present_match": True}}]),
    })  # fmt: skip
    connection = RbacRequest(headers={}, path=None, local="127.0.0.1:1", source=None,
                             direct_remote=None, remote=None)  # fmt: skip
    assert e.evaluate(connection) == (False, "")
    empty_sni = engine("ALLOW", {"p": policy([{"requested_server_name": {"exact": ""}}])})
    assert empty_sni.evaluate(connection) == (True, "p")


def test_authenticated_peers_by_uri_san_then_dns_san_then_subject():
    def tls(uris=(), dns=(), subject="", cert=True):
        details = SimpleNamespace(uri_sans=uris, dns_sans=dns, subject=subject)
        return SimpleNamespace(peer_certificate=details if cert else None)

    def decided(principal_name, ssl):
        authenticated = {"principal_name": principal_name} if principal_name else {}
        e = engine("ALLOW", {"p": policy(principals=[{"authenticated": authenticated}])})
        r = RbacRequest(headers={}, path=None, local="127.0.0.1:1", source=None,
                        direct_remote=None, remote=None, ssl=ssl)  # fmt: skip
        return e.evaluate(r)[0]

    assert decided(None, tls(cert=False))  # any TLS connection, with or without a certificate
    assert not decided(None, None)
    assert decided({"exact": "spiffe://a/b"}, tls(uris=("spiffe://x", "spiffe://a/b")))
    assert decided({"exact": "a.example"}, tls(uris=("spiffe://x",), dns=("a.example",)))
    assert decided({"prefix": "CN=x"}, tls(uris=("spiffe://x",), subject="CN=x,O=y"))
    assert not decided({"prefix": "CN=x"}, tls(cert=False))
    assert decided({"exact": ""}, tls(cert=False))  # no certificate: an empty subject


def test_unsupported_fields_are_refused_by_path():
    metadata = {"filter": "f", "path": [{"key": "k"}], "value": {"present_match": True}}
    with pytest.raises(ConfigError) as e:
        engine("ALLOW", {"p": policy([{"metadata": metadata}])})
    assert e.value.path == "rules.policies['p'].permissions[0].metadata"
    with pytest.raises(ConfigError) as e:
        engine("ALLOW", {"p": policy(principals=[{"filter_state": {"key": "k"}}])})
    assert e.value.path == "rules.policies['p'].principals[0].filter_state"


def test_helpers():
    assert response_detail("") == "rbac_access_denied_matched_policy[none]"
    assert response_detail("a b\tc") == "rbac_access_denied_matched_policy[a_b_c]"
    assert stat_prefix_join("http.x.", "rbac.") == "http.x.rbac."
    assert stat_prefix_join("nrb", "rbac.") == "nrb.rbac."
    assert parse_address("[::1]:80")[1] == 80
    assert parse_address("garbage") == (None, 0)
