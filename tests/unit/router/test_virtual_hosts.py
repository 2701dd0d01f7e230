"""Virtual host selection by :authority, as Envoy 1.40 orders domains."""

from __future__ import annotations

import pytest

from tests.unit.router.support import config_error, direct, request, route_name, table, vhost


def domains_table(*entries: tuple[str, list[str]], **extra):
    return table(
        {
            "name": "rc",
            "virtual_hosts": [
                vhost([direct(name)], domains, name=name) for name, domains in entries
            ],
            **extra,
        }
    )


ORDERING = domains_table(
    ("exact", ["example.com"]),
    ("exact-port", ["example.com:8080"]),
    ("suffix", ["*.example.com"]),
    ("long-suffix", ["*-bar.example.com"]),
    ("prefix", ["foo.*"]),
    ("long-prefix", ["foo.example.*"]),
    ("default", ["*"]),
)


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("example.com", "exact"),
        ("EXAMPLE.com", "exact"),  # host names are case-insensitive
        ("example.com:8080", "exact-port"),  # the port is part of the name...
        ("example.com:80", "default"),  # ...so no match without it
        ("a.example.com", "suffix"),
        ("a.example.com:80", "default"),
        ("x-bar.example.com", "long-suffix"),  # longest suffix first
        ("-bar.example.com", "suffix"),  # a wildcard never matches an empty part
        (".example.com", "default"),
        ("foo.example.com", "suffix"),  # suffixes before prefixes
        ("foo.example.org", "long-prefix"),  # longest prefix first
        ("foo.", "default"),
        ("foo.x", "prefix"),
        ("foo.example.com:1", "long-prefix"),
        ("other", "default"),
    ],
)
def test_domain_search_order(host, expected):
    assert route_name(ORDERING, host=host) == expected


def test_envoy_docs_example_suffix_wildcards():
    # "foo-bar.baz.com" matches "*-bar.baz.com" before "*.baz.com" (config_impl.cc).
    t = domains_table(("short", ["*.baz.com"]), ("long", ["*-bar.baz.com"]))
    assert route_name(t, host="foo-bar.baz.com") == "long"
    assert route_name(t, host="foo.baz.com") == "short"


def test_no_match_and_no_default_is_no_route():
    t = domains_table(("exact", ["example.com"]))
    assert route_name(t, host="other") is None
    assert t.find_virtual_host(request(host="other")) is None


def test_missing_authority_routes_only_a_table_with_just_a_default():
    assert route_name(domains_table(("default", ["*"])), host=None) == "default"
    assert route_name(ORDERING, host=None) is None


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("example.com:8080", "exact"),
        ("example.com:", "exact"),
        ("example.com:abc", "exact"),
        ("EXAMPLE.COM:1", "exact"),
        ("[::1]:80", "v6"),
        ("[::1]", "v6"),
        ("other:1", "default"),
    ],
)
def test_ignore_port_in_host_matching(host, expected):
    t = domains_table(
        ("exact", ["example.com"]),
        ("v6", ["[::1]"]),
        ("default", ["*"]),
        ignore_port_in_host_matching=True,
    )
    assert route_name(t, host=host) == expected


def test_duplicate_domains_are_refused_case_insensitively():
    error = config_error(
        {
            "name": "rc",
            "virtual_hosts": [
                vhost([], ["A.com"], name="a"),
                vhost([], ["a.com"], name="b"),
            ],
        }
    )
    assert error.path == "route_config.virtual_hosts[1].domains[0]"
    assert error.message == (
        "Only unique values for domains are permitted. Duplicate entry of domain a.com in route rc"
    )


def test_duplicate_wildcards_are_refused():
    error = config_error({"name": "rc", "virtual_hosts": [vhost([], ["*.a.com", "*.a.com"])]})
    assert error.message.endswith("Duplicate entry of domain *.a.com in route rc")
    error = config_error(
        {"name": "rc", "virtual_hosts": [vhost([], ["*"], name="a"), vhost([], ["*"], name="b")]}
    )
    assert error.path == "route_config.virtual_hosts[1].domains[0]"
    assert error.message == "Only a single wildcard domain is permitted in route rc"


def test_suffix_and_prefix_of_the_same_text_coexist():
    t = domains_table(("suffix", ["*a"]), ("prefix", ["a*"]), ("exact", ["a"]))
    assert route_name(t, host="ba") == "suffix"
    assert route_name(t, host="ab") == "prefix"
    assert route_name(t, host="aa") == "suffix"
    assert route_name(t, host="a") == "exact"


def test_pgv_rules_apply():
    error = config_error({"name": "rc", "virtual_hosts": [{"name": "a", "domains": []}]})
    assert error.path == "route_config.virtual_hosts[0].domains"
    assert error.message == "value must contain at least 1 item(s)"
