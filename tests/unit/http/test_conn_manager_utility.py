"""ConnectionManagerUtility's header rules (the differential test checks them against Envoy)."""

from __future__ import annotations

import dataclasses
import ipaddress
import random
import uuid

import pytest
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2,
)
from envoy.extensions.request_id.uuid.v3 import uuid_pb2  # noqa: F401 (for the Any below)
from google.protobuf import json_format

from legatus.config.errors import ConfigError
from legatus.http.conn_manager_utility import (
    UNSUPPORTED_HCM_FIELDS,
    compile_request_policy,
    date_header,
    is_valid_referer,
    mutate_request_headers,
    mutate_response_headers,
    node_local_address,
    update_authority,
)
from legatus.http.headers import HeaderMap

RFC1918 = {"cidr_ranges": [
    {"address_prefix": "10.0.0.0", "prefix_len": 8},
    {"address_prefix": "172.16.0.0", "prefix_len": 12},
    {"address_prefix": "192.168.0.0", "prefix_len": 16},
]}  # fmt: skip
UUID_ANY = "type.googleapis.com/envoy.extensions.request_id.uuid.v3.UuidRequestIdConfig"


def policy(**fields):
    hcm = json_format.ParseDict(
        {"stat_prefix": "test", **fields}, http_connection_manager_pb2.HttpConnectionManager()
    )
    compiled = compile_request_policy(hcm, "hcm", service_cluster="front", service_node="node-1")
    return dataclasses.replace(compiled, local_address="198.51.100.7")


def request(*headers: tuple[str, str]) -> HeaderMap:
    return HeaderMap([(":method", "GET"), (":path", "/"), (":authority", "example.com"), *headers])


def mutate(pol, headers, remote="192.0.2.5:4000", **kw):
    kw.setdefault("random", random.Random(7))
    return mutate_request_headers(pol, headers, remote_address=remote, **kw)


# The x-forwarded-for examples of Envoy's docs (config_http_conn_man_headers_x-forwarded-for)

XFF_CHAIN = "203.0.113.128, 203.0.113.10, 203.0.113.1"


@pytest.mark.parametrize(
    ("fields", "remote", "xff", "client", "external_address", "new_xff", "internal"),
    [
        # 1: edge proxy, no trusted proxy in front: XFF is ignored, the peer is the client.
        ({"use_remote_address": True}, "192.0.2.5:1", XFF_CHAIN, "192.0.2.5:1", "192.0.2.5",
         XFF_CHAIN + ",192.0.2.5", False),
        # 2: internal proxy behind the edge of example 1: the last XFF entry is the client.
        ({}, "10.11.12.13:1", XFF_CHAIN + ", 192.0.2.5", "192.0.2.5:0", None,
         XFF_CHAIN + ", 192.0.2.5", False),
        # 3: edge proxy with two trusted proxies in front: the 2nd from the right.
        ({"use_remote_address": True, "xff_num_trusted_hops": 2}, "192.0.2.5:1", XFF_CHAIN,
         "203.0.113.10:0", "203.0.113.10", XFF_CHAIN + ",192.0.2.5", False),
        # 4: internal proxy behind the edge of example 3.
        ({"xff_num_trusted_hops": 2}, "10.11.12.13:1", XFF_CHAIN + ", 192.0.2.5",
         "203.0.113.10:0", None, XFF_CHAIN + ", 192.0.2.5", False),
        # 5: internal proxy, internal client, no XFF: external (without use_remote_address).
        ({"internal_address_config": RFC1918}, "10.20.30.40:1", None, "10.20.30.40:1", None,
         None, False),
        # 6: the same proxy behind another Envoy that set XFF to one internal address.
        ({"internal_address_config": RFC1918}, "10.20.30.50:1", "10.20.30.40", "10.20.30.40:0",
         None, "10.20.30.40", True),
    ],
)  # fmt: skip
def test_documented_xff_examples(fields, remote, xff, client, external_address, new_xff, internal):
    headers = request(("x-envoy-internal", "true"), *([("x-forwarded-for", xff)] if xff else []))
    result = mutate(policy(**fields), headers, remote=remote)
    assert result.final_remote_address == client
    assert headers.get("x-envoy-external-address") == external_address
    assert headers.get("x-forwarded-for") == new_xff
    assert result.internal is internal
    assert headers.get("x-envoy-internal") == ("true" if internal else None)


def test_edge_internal_client_without_xff():
    headers = request()
    result = mutate(policy(use_remote_address=True, internal_address_config=RFC1918), headers,
                    remote="10.1.2.3:5")  # fmt: skip
    assert (result.internal, result.edge) == (True, False)
    assert headers.get("x-envoy-internal") == "true"
    assert headers.get("x-forwarded-for") == "10.1.2.3"
    assert "x-envoy-external-address" not in headers


def test_no_address_is_internal_without_internal_address_config():
    """Envoy 1.40 (explicit_internal_address_config): RFC 1918 and loopback are external."""
    for remote in ("10.1.2.3:5", "127.0.0.1:5", "[::1]:5"):
        result = mutate(policy(use_remote_address=True), request(), remote=remote)
        assert (result.internal, result.edge) == (False, True)
    result = mutate(policy(), request(("x-forwarded-for", "192.168.1.1")))
    assert result.internal is False


def test_loopback_peer_appends_the_node_address():
    headers = request()
    mutate(policy(use_remote_address=True), headers, remote="127.0.0.1:9")
    assert headers.get("x-forwarded-for") == "198.51.100.7"
    assert headers.get("x-envoy-external-address") == "127.0.0.1"


def test_only_the_canonical_loopback_is_replaced():
    """Envoy's isLoopbackAddress is 127.0.0.1 and ::1 only (checked against Envoy 1.40): a
    peer elsewhere in 127.0.0.0/8 goes into x-forwarded-for as itself."""
    for remote, expected in (("127.0.0.2:9", "127.0.0.2"), ("[::1]:9", "198.51.100.7")):
        headers = request()
        mutate(policy(use_remote_address=True), headers, remote=remote)
        assert headers.get("x-forwarded-for") == expected


def test_ipv6_peer_and_v4_mapped_xff():
    headers = request(("x-forwarded-for", "::ffff:10.0.0.1"))
    result = mutate(policy(use_remote_address=True, xff_num_trusted_hops=1), headers,
                    remote="[2001:db8::1]:443")  # fmt: skip
    assert headers.get("x-forwarded-for") == "::ffff:10.0.0.1,2001:db8::1"
    assert headers.get("x-envoy-external-address") == "::ffff:10.0.0.1"
    assert result.final_remote_address == "[::ffff:10.0.0.1]:0"


def test_unix_socket_peer_is_internal_only_when_configured():
    for unix, internal in ((False, False), (True, True)):
        headers = request()
        pol = policy(use_remote_address=True, internal_address_config={"unix_sockets": unix})
        result = mutate(pol, headers, remote="/tmp/envoy.sock")
        assert result.internal is internal
        assert "x-forwarded-for" not in headers  # nothing to append for a pipe
        assert "x-envoy-external-address" not in headers


@pytest.mark.parametrize(
    ("xff", "hops", "client"),
    [
        ("garbage", 1, "192.0.2.5:4000"),  # unparsable: fall back to the peer
        ("10.0.0.1,", 1, "192.0.2.5:4000"),  # a trailing comma leaves nothing to parse
        ("10.0.0.1,", 2, "10.0.0.1:0"),
        ("1.2.3.4", 2, "192.0.2.5:4000"),  # fewer entries than trusted hops
        (" 1.2.3.4 , 5.6.7.8 ", 2, "1.2.3.4:0"),
    ],
)
def test_trusted_hops_edge_cases(xff, hops, client):
    result = mutate(policy(use_remote_address=True, xff_num_trusted_hops=hops),
                    request(("x-forwarded-for", xff)))  # fmt: skip
    assert result.final_remote_address == client


def test_repeated_xff_headers_are_joined_like_envoys_codec():
    headers = request(("x-forwarded-for", "10.0.0.1"), ("x-forwarded-for", "1.2.3.4"))
    mutate(policy(use_remote_address=True), headers)
    assert headers.get_all("x-forwarded-for") == ["10.0.0.1,1.2.3.4,192.0.2.5"]


def test_skip_xff_append():
    headers = request(("x-forwarded-for", "1.2.3.4"))
    mutate(policy(use_remote_address=True, skip_xff_append=True), headers)
    assert headers.get("x-forwarded-for") == "1.2.3.4"
    assert headers.get("x-envoy-external-address") == "192.0.2.5"


def test_forwarded_proto_and_port_are_trusted_only_behind_trusted_hops():
    incoming = (("x-forwarded-proto", "https"), ("x-forwarded-port", "9999"))
    untrusted, trusted = request(*incoming), request(*incoming)
    mutate(policy(use_remote_address=True, append_x_forwarded_port=True), untrusted,
           local_address="127.0.0.1:8080")  # fmt: skip
    mutate(policy(use_remote_address=True, append_x_forwarded_port=True, xff_num_trusted_hops=1),
           trusted, local_address="127.0.0.1:8080")  # fmt: skip
    assert (untrusted.get("x-forwarded-proto"), untrusted.get("x-forwarded-port")) == (
        "http", "8080")  # fmt: skip
    assert (trusted.get("x-forwarded-proto"), trusted.get("x-forwarded-port")) == ("https", "9999")
    inner = request()
    mutate(policy(append_x_forwarded_port=True), inner, local_address="[::1]:8443", is_tls=True)
    assert (inner.get("x-forwarded-proto"), inner.get("x-forwarded-port")) == ("https", "8443")


def test_scheme():
    headers = request(("x-forwarded-proto", "HTTPS"))
    mutate(policy(), headers)
    assert headers.get(":scheme") == "HTTPS"  # a valid x-forwarded-proto, as given
    headers = request(("x-forwarded-proto", "ftp"))
    mutate(policy(), headers, is_tls=True)
    assert (headers.get(":scheme"), headers.get("x-forwarded-proto")) == ("https", "ftp")
    headers = request()
    mutate(policy(scheme_header_transformation={"scheme_to_overwrite": "https"}), headers)
    assert (headers.get(":scheme"), headers.get("x-forwarded-proto")) == ("https", "https")


# x-envoy-* and hop-by-hop headers

EDGE_ONLY = (
    "x-envoy-decorator-operation",
    "x-envoy-downstream-service-cluster",
    "x-envoy-downstream-service-node",
    "x-envoy-original-path",
    "x-envoy-original-host",
)
EXTERNAL = (
    "x-envoy-retry-on",
    "x-envoy-retry-grpc-on",
    "x-envoy-max-retries",
    "x-envoy-retriable-status-codes",
    "x-envoy-retriable-header-names",
    "x-envoy-upstream-alt-stat-name",
    "x-envoy-upstream-rq-timeout-ms",
    "x-envoy-upstream-rq-per-try-timeout-ms",
    "x-envoy-upstream-rq-timeout-alt-response",
    "x-envoy-expected-rq-timeout-ms",
    "x-envoy-upstream-stream-duration-ms",
    "x-envoy-force-trace",
    "x-envoy-ip-tags",
    "x-envoy-original-url",
    "x-envoy-hedge-on-per-try-timeout",
)
KEPT = ("x-envoy-attempt-count", "x-envoy-is-timeout-retry", "x-envoy-upstream-canary",
        "x-envoy-foo", "x-forwarded-host")  # fmt: skip


@pytest.mark.parametrize(
    ("fields", "remote", "stripped"),
    [
        ({"use_remote_address": True}, "1.2.3.4:1", EDGE_ONLY + EXTERNAL),  # edge
        ({}, "1.2.3.4:1", EXTERNAL),  # external, not the edge
        ({"use_remote_address": True, "internal_address_config": RFC1918}, "10.0.0.1:1", ()),
    ],
)
def test_envoy_headers_stripped_from_external_requests(fields, remote, stripped):
    names = EDGE_ONLY + EXTERNAL + KEPT
    headers = request(*((n, "1") for n in names), ("x-secret", "s"))
    mutate(policy(**fields), headers, remote=remote, internal_only_headers=("x-secret",))
    assert [n for n in names if n not in headers] == list(stripped)
    assert ("x-secret" in headers) is (not stripped)


def test_hop_by_hop_request_headers():
    headers = request(("connection", "close"), ("keep-alive", "1"), ("proxy-connection", "x"),
                      ("upgrade", "foo"), ("transfer-encoding", "chunked"),
                      ("x-forwarded-client-cert", "By=x"))  # fmt: skip
    mutate(policy(), headers)
    for name in ("connection", "keep-alive", "proxy-connection", "upgrade", "transfer-encoding",
                 "x-forwarded-client-cert"):  # fmt: skip
        assert name not in headers


def test_upgrade_request_keeps_connection_upgrade_and_te():
    headers = request(("connection", "keep-alive, Upgrade"), ("upgrade", "websocket"),
                      ("te", "gzip"))  # fmt: skip
    mutate(policy(), headers)
    assert headers.get("connection") == "keep-alive, Upgrade"
    assert headers.get("upgrade") == "websocket"
    assert headers.get("te") == "gzip"


def test_forward_client_cert_always_forward_only():
    headers = request(("x-forwarded-client-cert", "By=x"))
    mutate(policy(forward_client_cert_details="ALWAYS_FORWARD_ONLY"), headers)
    assert headers.get("x-forwarded-client-cert") == "By=x"


@pytest.mark.parametrize(
    ("te", "result"),
    [("trailers", "trailers"), ("trailers, deflate", "trailers"), ("gzip , trailers", "trailers"),
     ("deflate;q=0.5, trailers;q=0.2", None), ("TRAILERS", None), ("gzip", None), ("", "")],
)  # fmt: skip
def test_te(te, result):
    headers = request(("te", te))
    mutate(policy(), headers)
    assert headers.get("te") == result


@pytest.mark.parametrize(
    ("referer", "valid"),
    [("/relative", True), ("foo", True), ("?q", True), ("/x:y", True), ("/a%20b", True),
     ("//a/p", True), ("https://example.com/path?q=1", True), ("http://[::1]/p", True),
     ("http://a/b#", True), ("http://a/b#frag", False), ("http://user@a/", False),
     ("a:b", False), ("/a#b", False), ("/a|b", False), ("http:/a", False), ("mailto:x@y", False),
     ("http://a/b c", False), ("http://a b/", False), ("/a{b}", False)],
)  # fmt: skip
def test_referer(referer, valid):
    assert is_valid_referer(referer) is valid
    headers = request(("referer", referer))
    mutate(policy(), headers)
    assert headers.get("referer") == (referer if valid else None)


def test_repeated_referer_is_judged_joined():
    headers = request(("referer", "/a"), ("referer", "/b"))
    mutate(policy(), headers)
    assert headers.get_all("referer") == ["/a,/b"]


def test_user_agent_via_and_order():
    headers = request(("user-agent", ""), ("via", "1.0 a"))
    mutate(policy(add_user_agent=True, via="proxy-1"), headers)
    assert headers.get("user-agent") == "front"
    assert headers.get("x-envoy-downstream-service-cluster") == "front"
    assert headers.get("x-envoy-downstream-service-node") == "node-1"
    assert headers.get("via") == "1.0 a, proxy-1"
    names = [n for n, _ in headers.items() if not n.startswith(":")]
    assert names == ["user-agent", "via", "x-forwarded-proto", "x-envoy-downstream-service-cluster",
                     "x-envoy-downstream-service-node", "x-request-id"]  # fmt: skip


# x-request-id

TRACED = "2ed1e8a8-49ad-9c47-9d3e-3e66d7b5b7e6"


def test_request_id_generated_when_absent_with_the_injected_random():
    headers = request()
    mutate(policy(), headers, random=random.Random(7))
    expected = request()
    mutate(policy(), expected, random=random.Random(7))
    value = headers.get("x-request-id")
    assert value == expected.get("x-request-id")
    assert value[14] == "4" and value[19] in "89ab" and len(value) == 36


@pytest.mark.parametrize(
    ("fields", "remote", "incoming", "kept"),
    [
        ({}, "1.2.3.4:1", "abc", "abc"),  # not the edge: trusted
        ({"use_remote_address": True}, "1.2.3.4:1", "abc", None),  # edge: replaced
        ({"use_remote_address": True, "preserve_external_request_id": True}, "1.2.3.4:1",
         TRACED, TRACED[:14] + "4" + TRACED[15:]),  # preserved, without its trace reason
        ({"use_remote_address": True, "preserve_external_request_id": True,
          "request_id_extension": {"typed_config": {"@type": UUID_ANY,
                                                    "pack_trace_reason": False}}},
         "1.2.3.4:1", TRACED, TRACED),
        ({"use_remote_address": True, "generate_request_id": False}, "1.2.3.4:1", "abc", "abc"),
    ],
)  # fmt: skip
def test_request_id(fields, remote, incoming, kept):
    headers = request(("x-request-id", incoming))
    mutate(policy(**fields), headers, remote=remote)
    if kept is None:
        assert headers.get("x-request-id") not in (None, incoming)
    else:
        assert headers.get("x-request-id") == kept


def test_no_request_id_without_generation():
    headers = request()
    mutate(policy(generate_request_id=False), headers)
    assert "x-request-id" not in headers


@pytest.mark.parametrize("fields", [{}, {"use_remote_address": True}])
def test_request_id_is_the_uuid4_of_the_random_bits(fields):
    for seed in range(20):
        headers = request()
        mutate(policy(**fields), headers, random=random.Random(seed))
        bits = random.Random(seed).getrandbits(128)
        assert headers.get("x-request-id") == str(uuid.UUID(int=bits, version=4))


# The short path of a plain policy (no use_remote_address, no header of its own)


@pytest.mark.parametrize(
    ("fields", "plain"),
    [({}, True), ({"xff_num_trusted_hops": 1}, True), ({"use_remote_address": True}, False),
     ({"via": "v"}, False), ({"append_x_forwarded_port": True}, False),
     ({"add_user_agent": True}, False),
     ({"scheme_header_transformation": {"scheme_to_overwrite": "https"}}, False)],
)  # fmt: skip
def test_plain_policy(fields, plain):
    assert policy(**fields).plain is plain


@pytest.mark.parametrize(
    "extra",
    [(), (("x-forwarded-proto", "https"),), (("x-forwarded-proto", "ftp"),),
     ((":scheme", "https"),), (("x-request-id", "abc"),), (("x-envoy-retry-on", "5xx"),),
     (("x-envoy-internal", "true"), ("keep-alive", "1"), ("te", "trailers, gzip")),
     (("referer", "/a#b"),), (("connection", "upgrade"), ("upgrade", "websocket")),
     (("x-forwarded-client-cert", "By=x"), ("x-internal-only", "1"))],
)  # fmt: skip
@pytest.mark.parametrize("is_tls", [False, True])
def test_plain_policy_short_path_equals_the_general_one(extra, is_tls):
    plain = policy(generate_request_id=True)
    general = dataclasses.replace(plain)
    object.__setattr__(general, "plain", False)
    kw = {"is_tls": is_tls, "internal_only_headers": ("x-internal-only",)}
    short, long = request(*extra), request(*extra)
    result = mutate(plain, short, random=random.Random(3), **kw)
    assert result == mutate(general, long, random=random.Random(3), **kw)
    assert list(short.items()) == list(long.items())
    assert result.final_remote_address == "192.0.2.5:4000" and not result.internal


# Responses


def response(*headers: tuple[str, str]) -> HeaderMap:
    return HeaderMap([(":status", "200"), *headers])


def test_response_hop_by_hop_date_server_via():
    headers = response(("connection", "keep-alive"), ("keep-alive", "timeout=5"),
                       ("proxy-connection", "x"), ("upgrade", "h2c"),
                       ("transfer-encoding", "chunked"), ("via", "1.1 up"),
                       ("server", "up"))  # fmt: skip
    mutate_response_headers(policy(via="edge"), headers, request(), date="DATE")
    assert list(headers.items()) == [(":status", "200"), ("via", "1.1 up, edge"),
                                     ("server", "envoy"), ("date", "DATE")]  # fmt: skip


@pytest.mark.parametrize(
    ("transformation", "upstream", "expected"),
    [("OVERWRITE", "up", "custom"), ("OVERWRITE", None, "custom"),
     ("APPEND_IF_ABSENT", "up", "up"), ("APPEND_IF_ABSENT", None, "custom"),
     ("PASS_THROUGH", "up", "up"), ("PASS_THROUGH", None, None)],
)  # fmt: skip
def test_server_header_transformation(transformation, upstream, expected):
    headers = response(*([("server", upstream)] if upstream else []))
    pol = policy(server_name="custom", server_header_transformation=transformation)
    mutate_response_headers(pol, headers, request())
    assert headers.get("server") == expected


def test_default_server_name_and_existing_date():
    headers = response(("date", "Mon, 01 Jan 2024 00:00:00 GMT"))
    mutate_response_headers(policy(), headers, None, date="ignored")
    assert headers.get("server") == "envoy"
    assert headers.get("date") == "Mon, 01 Jan 2024 00:00:00 GMT"


def test_request_id_in_response():
    req = request(("x-request-id", "abc"))
    plain = response()
    mutate_response_headers(policy(), plain, req)
    assert "x-request-id" not in plain
    always = response(("x-request-id", "upstream"))
    mutate_response_headers(policy(always_set_request_id_in_response=True), always, req)
    assert always.get("x-request-id") == "abc"
    forced = response()
    mutate_response_headers(policy(), forced, request(("x-request-id", "t"),
                                                      ("x-envoy-force-trace", "1")))  # fmt: skip
    assert forced.get("x-request-id") == "t"


def test_upgrade_response_keeps_connection_and_gets_content_length():
    req = request(("connection", "upgrade"), ("upgrade", "websocket"))
    switching = HeaderMap([(":status", "101"), ("connection", "Upgrade"), ("upgrade", "websocket")])
    mutate_response_headers(policy(), switching, req)
    assert switching.get("connection") == "Upgrade" and "content-length" not in switching
    ok = response(("connection", "upgrade"), ("upgrade", "websocket"))
    mutate_response_headers(policy(), ok, req)
    assert ok.get("content-length") == "0" and ok.get("upgrade") == "websocket"


# Config


@pytest.mark.parametrize("name", UNSUPPORTED_HCM_FIELDS)
def test_unsupported_fields_are_refused_by_name(name):
    hcm = http_connection_manager_pb2.HttpConnectionManager()
    field = hcm.DESCRIPTOR.fields_by_name[name]
    if field.is_repeated:
        getattr(hcm, name).add().name = "x"
    elif field.message_type is not None:
        getattr(hcm, name).SetInParent()
        if name == "add_proxy_protocol_connection_state":
            hcm.add_proxy_protocol_connection_state.value = True
    else:
        setattr(hcm, name, True)
    with pytest.raises(ConfigError) as e:
        compile_request_policy(hcm, "listeners[0].hcm")
    assert e.value.path == f"listeners[0].hcm.{name}"
    assert name in str(e.value)


@pytest.mark.parametrize(
    ("fields", "path"),
    [
        ({"forward_client_cert_details": "SANITIZE_SET",
          "set_current_client_cert_details": {"chain": True}},
         "hcm.set_current_client_cert_details.chain"),
        ({"scheme_header_transformation": {"match_upstream": True}},
         "hcm.scheme_header_transformation.match_upstream"),
        ({"request_id_extension": {"typed_config": {
            "@type": "type.googleapis.com/google.protobuf.Empty"}}},
         "hcm.request_id_extension.typed_config"),
        ({"internal_address_config": {"cidr_ranges": [{"address_prefix": "nope"}]}},
         "hcm.internal_address_config.cidr_ranges[0]"),
    ],
)  # fmt: skip
def test_config_errors(fields, path):
    with pytest.raises(ConfigError) as e:
        policy(**fields)
    assert e.value.path == path


def test_compiled_policy():
    pol = policy(use_remote_address=True, xff_num_trusted_hops=1, via="v",
                 internal_address_config={"cidr_ranges": [{"address_prefix": "10.1.2.3",
                                                           "prefix_len": 8}]})  # fmt: skip
    assert pol.internal_networks == (ipaddress.ip_network("10.0.0.0/8"),)
    assert (pol.use_remote_address, pol.xff_num_trusted_hops, pol.via) == (True, 1, "v")
    assert (pol.server_name, pol.generate_request_id, pol.user_agent) == ("envoy", True, None)


def test_node_local_address():
    v4 = ipaddress.ip_address(node_local_address("v4"))
    assert v4.version == 4
    assert node_local_address("v4") == str(v4)


def test_date_header_is_cached_per_second():
    assert date_header(0.2) == "Thu, 01 Jan 1970 00:00:00 GMT"
    first = date_header(1796230000.1)
    assert date_header(1796230000.9) is first
    assert date_header(1796230001.0) == "Wed, 02 Dec 2026 16:46:41 GMT"


def test_update_authority():
    headers = request()
    update_authority(headers, "backend", append_x_forwarded_host=True, keep_original=True)
    assert headers.get(":authority") == "backend"
    assert headers.get("x-forwarded-host") == "example.com"
    assert headers.get("x-envoy-original-host") == "example.com"
