"""The original IP detection extensions and how the connection manager asks them
(conn_manager_utility). Expected values: what Envoy 1.40 did with the same requests
(tests/differential/test_hcm_original_ip_detection_envoy.py)."""

from __future__ import annotations

import ipaddress
import random

import pytest
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.http.original_ip_detection.custom_header.v3 import custom_header_pb2
from envoy.extensions.http.original_ip_detection.xff.v3 import xff_pb2
from google.protobuf import json_format

from legatus.config.errors import ConfigError
from legatus.extensions.http.original_ip_detection import custom_header, xff
from legatus.http.conn_manager_utility import (
    compile_request_policy,
    mutate_request_headers,
    original_ip_rejection,
)
from legatus.http.headers import HeaderMap
from legatus.http.original_ip_detection import check_compatible

PEER = ipaddress.ip_address("127.0.0.1")


def header_ext(**fields):
    proto = json_format.ParseDict(
        {"header_name": "X-Real-IP", **fields}, custom_header_pb2.CustomHeaderConfig()
    )
    return custom_header._factory(proto, None, "c")


def xff_ext(**fields):
    return xff._factory(json_format.ParseDict(fields, xff_pb2.XffConfig()), None, "x")


def detect(extension, **headers):
    found = extension.detect(HeaderMap(headers.items()), PEER)
    return (
        None if found.address is None else str(found.address),
        found.allow_trusted_address_checks,
        found.reject_status,
        found.skip_xff_append,
    )


def test_custom_header():
    plain = header_ext()
    assert detect(plain, **{"x-real-ip": "1.2.3.4"}) == ("1.2.3.4", False, None, True)
    assert detect(plain, **{"x-real-ip": "2001:db8::7"}) == ("2001:db8::7", False, None, True)
    assert detect(plain, **{"x-real-ip": "1.2.3.4, 5.6.7.8"}) == (None, False, None, True)
    assert detect(plain) == (None, False, None, True)
    trusted = header_ext(allow_extension_to_set_address_as_trusted=True)
    assert detect(trusted, **{"x-real-ip": "1.2.3.4"})[1] is True


@pytest.mark.parametrize(("code", "status"), [(401, 401), (511, 511), (200, 403), (302, 403)])
def test_reject_with_status(code, status):
    rejecting = header_ext(reject_with_status={"code": code})
    assert detect(rejecting, **{"x-real-ip": "bad"}) == (None, False, status, True)
    assert detect(rejecting, **{"x-real-ip": "1.2.3.4"})[2] is None


@pytest.mark.parametrize(
    ("value", "found"),
    [
        ("10.0.0.1", ("10.0.0.1", True)),  # one entry, trusted range: itself, trusted
        ("1.1.1.1, 10.0.0.1", ("1.1.1.1", False)),
        ("10.0.0.3, 10.0.0.2", ("10.0.0.3", False)),  # all trusted: the leftmost
        ("2.2.2.2,1.1.1.1,10.0.0.1", ("1.1.1.1", False)),
        ("bad, 10.0.0.1", (None, False)),
        ("1.1.1.1,", (None, False)),
    ],
)
def test_xff_trusted_cidrs_walk(value, found):
    ext = xff_ext(xff_trusted_cidrs={"cidrs": [
        {"address_prefix": "127.0.0.1", "prefix_len": 32},
        {"address_prefix": "10.0.0.0", "prefix_len": 8}]})  # fmt: skip
    assert detect(ext, **{"x-forwarded-for": value})[:2] == found


def test_xff_untrusted_peer_appends_and_ranges_as_envoy_reads_them():
    untrusted = xff_ext(xff_trusted_cidrs={"cidrs": [{"address_prefix": "10.0.0.0",
                                                      "prefix_len": 8}]})  # fmt: skip
    assert detect(untrusted, **{"x-forwarded-for": "1.1.1.1"}) == (None, False, None, False)
    # An address that does not parse is left out (no range left: the hops rule); a length
    # past the address's bits is all of them.
    assert xff_ext(xff_trusted_cidrs={"cidrs": [
        {"address_prefix": "nope", "prefix_len": 8}]}).trusted_cidrs == ()  # fmt: skip
    widened = xff_ext(xff_trusted_cidrs={"cidrs": [
        {"address_prefix": "127.0.0.1", "prefix_len": 40}]})  # fmt: skip
    assert widened.trusted_cidrs == (ipaddress.ip_network("127.0.0.1/32"),)


def test_xff_hops_and_append():
    assert detect(xff_ext(), **{"x-forwarded-for": "1.1.1.1"}) == ("1.1.1.1", True, None, True)
    hops = xff_ext(xff_num_trusted_hops=1)
    assert detect(hops, **{"x-forwarded-for": "1.1.1.1, 10.0.0.1"})[:2] == ("1.1.1.1", False)
    assert detect(hops, **{"x-forwarded-for": "10.0.0.1"})[0] is None
    appending = xff_ext(skip_xff_append=False)
    assert detect(appending, **{"x-forwarded-for": "1.1.1.1"})[3] is False
    assert detect(appending)[3] is False


def test_xff_hops_and_cidrs_is_envoys_error():
    with pytest.raises(ConfigError) as e:
        xff_ext(xff_num_trusted_hops=1, xff_trusted_cidrs={"cidrs": []})
    assert e.value.message == "Cannot set both xff_num_trusted_hops and xff_trusted_cidrs"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"use_remote_address": True},
         "Original IP detection extensions and use_remote_address may not be mixed"),
        ({"xff_num_trusted_hops": 2},
         "Original IP detection extensions and xff_num_trusted_hops may not be mixed"),
    ],
)  # fmt: skip
def test_what_the_extensions_do_not_mix_with(fields, message):
    hcm = json_format.ParseDict(fields, hcm_pb2.HttpConnectionManager())
    with pytest.raises(ConfigError) as e:
        check_compatible(hcm, "hcm")
    assert (e.value.path, e.value.message) == ("hcm.original_ip_detection_extensions", message)
    check_compatible(hcm_pb2.HttpConnectionManager(use_remote_address={"value": False}), "hcm")


def policy(*extensions, **hcm_fields):
    hcm = json_format.ParseDict(hcm_fields, hcm_pb2.HttpConnectionManager())
    return compile_request_policy(hcm, "hcm", original_ip_detection=extensions)


def mutate(pol, *headers):
    request = HeaderMap([(":method", "GET"), (":path", "/"), (":authority", "a"), *headers])
    result = mutate_request_headers(
        pol, request, remote_address="127.0.0.1:5000", random=random.Random(1)
    )
    return result, request


def test_the_connection_manager_asks_them_in_order():
    trusted_header = header_ext(allow_extension_to_set_address_as_trusted=True)
    untrusted_xff = xff_ext(xff_trusted_cidrs={"cidrs": [{"address_prefix": "10.0.0.0",
                                                         "prefix_len": 8}]})  # fmt: skip
    pol = policy(untrusted_xff, trusted_header, internal_address_config={
        "cidr_ranges": [{"address_prefix": "1.2.3.4", "prefix_len": 32}]})  # fmt: skip
    assert not pol.plain
    result, request = mutate(pol, ("x-real-ip", "1.2.3.4"))
    local = pol.local_address  # the node's address stands for a loopback peer
    assert (result.internal, result.final_remote_address) == (True, "1.2.3.4:0")
    assert request.get("x-forwarded-for") == local
    assert request.get("x-envoy-internal") == "true"
    result, request = mutate(pol, ("x-forwarded-for", "5.5.5.5"))
    assert (result.internal, result.final_remote_address) == (False, "127.0.0.1:5000")
    assert request.get("x-forwarded-for") == f"5.5.5.5,{local}"


def test_a_rejection_is_asked_before_the_header_rules():
    rejecting = header_ext(reject_with_status={"code": 401})
    pol = policy(xff_ext(), rejecting)
    assert original_ip_rejection(pol, HeaderMap(), "127.0.0.1:1") == 401
    found = HeaderMap([("x-forwarded-for", "1.1.1.1")])
    assert original_ip_rejection(pol, found, "127.0.0.1:1") is None
