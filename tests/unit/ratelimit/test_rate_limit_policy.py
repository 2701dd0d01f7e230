"""Route and virtual-host ``rate_limits``: compilation, refusals, descriptors per request."""

from __future__ import annotations

import pytest

from legatus.router.rate_limit_policy import Descriptor, DescriptorRequest
from tests.unit.router.support import config_error, forward, request, routes_config, table, vhost

ROUTE = "route_config.virtual_hosts[0].routes[0].route"


def route_with(rate_limits, **action):
    t = table(
        routes_config([forward("r", {"cluster": "c1", "rate_limits": rate_limits, **action})])
    )
    return t.virtual_hosts[0].routes[0]


def descriptors(rate_limits, headers=(), path="/", remote="10.1.2.3:5555", stage=0, **action):
    route = route_with(rate_limits, **action)
    out: list[Descriptor] = []
    req = DescriptorRequest(
        request(path, headers=headers),
        route_cluster="c1",
        local_cluster="front",
        remote_address=remote,
    )
    route.action.rate_limit_policy.populate(stage, req, out)
    return [d.entries for d in out]


def test_each_action_builds_its_entry():
    actions = [
        {"source_cluster": {}},
        {"destination_cluster": {}},
        {"request_headers": {"header_name": "X-User", "descriptor_key": "user"}},
        {"remote_address": {}},
        {"generic_key": {"descriptor_value": "gv"}},
        {"generic_key": {"descriptor_value": "gv2", "descriptor_key": "gk"}},
        {"header_value_match": {"descriptor_value": "hv", "headers": [
            {"name": "x-user", "string_match": {"exact": "alice"}}]}},
        {"masked_remote_address": {"v4_prefix_mask_len": 16}},
        {"query_parameters": {"query_parameter_name": "q", "descriptor_key": "query"}},
        {"query_parameter_value_match": {"descriptor_value": "qv", "query_parameters": [
            {"name": "q", "string_match": {"exact": "a%20b"}}]}},
    ]  # fmt: skip
    got = descriptors([{"actions": actions}], headers=[("x-user", "alice")], path="/p?q=a%20b")
    assert got == [
        (
            ("source_cluster", "front"),
            ("destination_cluster", "c1"),
            ("user", "alice"),
            ("remote_address", "10.1.2.3"),
            ("generic_key", "gv"),
            ("gk", "gv2"),
            ("header_match", "hv"),
            ("masked_remote_address", "10.1.0.0/16"),
            ("query", "a b"),
            ("query_match", "qv"),
        )
    ]


def test_absent_header_drops_the_descriptor_unless_skip_if_absent():
    limits = [
        {"actions": [{"generic_key": {"descriptor_value": "a"}},
                     {"request_headers": {"header_name": "x-u", "descriptor_key": "u"}}]},
        {"actions": [{"generic_key": {"descriptor_value": "b"}},
                     {"request_headers": {"header_name": "x-u", "descriptor_key": "u",
                                          "skip_if_absent": True}}]},
        {"actions": [{"request_headers": {"header_name": "x-u", "descriptor_key": "u",
                                          "skip_if_absent": True}}]},
    ]  # fmt: skip
    assert descriptors(limits) == [(("generic_key", "b"),)]
    assert descriptors(limits, headers=[("x-u", "1")]) == [
        (("generic_key", "a"), ("u", "1")),
        (("generic_key", "b"), ("u", "1")),
        (("u", "1"),),
    ]


def test_header_value_match_expect_match_false():
    limits = [{"actions": [{"header_value_match": {
        "descriptor_value": "no-auth", "expect_match": False,
        "headers": [{"name": "authorization", "present_match": True}]}}]}]  # fmt: skip
    assert descriptors(limits) == [(("header_match", "no-auth"),)]
    assert descriptors(limits, headers=[("authorization", "x")]) == []


def test_remote_address_ipv6_and_non_ip():
    limits = [{"actions": [{"remote_address": {}}]},
              {"actions": [{"masked_remote_address": {"v6_prefix_mask_len": 64}}]}]  # fmt: skip
    assert descriptors(limits, remote="[2001:db8::1]:80") == [
        (("remote_address", "2001:db8::1"),),
        (("masked_remote_address", "2001:db8::/64"),),
    ]
    assert descriptors(limits, remote=None) == []


def test_stages_and_hits_addend():
    limits = [
        {"actions": [{"generic_key": {"descriptor_value": "s0"}}]},
        {"stage": 2, "actions": [{"generic_key": {"descriptor_value": "s2"}}],
         "hits_addend": {"number": 5}},
    ]  # fmt: skip
    assert descriptors(limits) == [(("generic_key", "s0"),)]
    route = route_with(limits)
    out: list[Descriptor] = []
    route.action.rate_limit_policy.populate(2, DescriptorRequest(request("/")), out)
    assert out == [Descriptor((("generic_key", "s2"),), 5)]
    assert descriptors(limits, stage=7) == []


def test_virtual_host_rate_limits_are_stored():
    doc = {"name": "rc", "virtual_hosts": [vhost(
        [forward("r", {"cluster": "c1", "include_vh_rate_limits": True})],
        rate_limits=[{"actions": [{"generic_key": {"descriptor_value": "vh"}}]}])]}  # fmt: skip
    vh = table(doc).virtual_hosts[0]
    assert vh.rate_limit_policy.entries(0)
    assert vh.routes[0].action.include_vh_rate_limits


@pytest.mark.parametrize(
    ("rate_limit", "path", "message"),
    [
        ({"actions": [{"metadata": {"descriptor_key": "k", "metadata_key": {"key": "a",
          "path": [{"key": "b"}]}}}]}, "actions[0].metadata", "not supported"),
        ({"actions": [{"generic_key": {"descriptor_value": "a"}}], "limit": {
          "dynamic_metadata": {"metadata_key": {"key": "a", "path": [{"key": "b"}]}}}},
         "limit", "not supported"),
        ({"actions": [{"generic_key": {"descriptor_value": "a"}}],
          "hits_addend": {"format": "%BYTES_RECEIVED%"}}, "hits_addend.format", "not supported"),
        ({"actions": []}, "actions", "at least 1"),
        ({"actions": [{"generic_key": {}}]}, "actions[0].generic_key.descriptor_value",
         "at least 1"),
    ],
)  # fmt: skip
def test_refused_by_field_path(rate_limit, path, message):
    error = config_error(
        routes_config([forward("r", {"cluster": "c1", "rate_limits": [rate_limit]})])
    )
    assert error.path == f"{ROUTE}.rate_limits[0].{path}"
    assert message in error.message
