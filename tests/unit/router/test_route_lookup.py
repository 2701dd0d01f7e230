"""What the compiled table decides once per route, checked against the request-time rules.

The lookup answers a request its first route matches on a plain prefix without stripping the
path, and a route's policies (its own or its virtual host's) are summed up in flags the router
tests once per request; both must give exactly the answers of the full rules.
"""

from __future__ import annotations

import pytest

from legatus.router.config import RouteTable
from legatus.router.matchers import path_for_matching
from tests.unit.router.support import direct, forward, request, table, vhost

PATHS = (
    "/",
    "/api",
    "/api/",
    "/apix",
    "/api?x=1",
    "/ap?i",
    "/a#pi",
    "/api;v=1",
    "/ap;i",
    "/API",
    "*",
    "",
    "?/api",
)


def reference(route_table: RouteTable, path: str):
    """The route by the full rules: every route's matcher on the stripped path, in order."""
    virtual_host = route_table.default
    stripped = path_for_matching(path, virtual_host.ignore_path_parameters)
    headers = request(path)
    for route in virtual_host.routes:
        if route.match.matches(headers, path, stripped, 0):
            return route.select(headers, 0)
    return None


def lookup_table(first_match: dict, **extra) -> RouteTable:
    return table(
        {
            "name": "rc",
            "virtual_hosts": [
                vhost([direct("first", first_match), direct("rest", {"prefix": ""})])
            ],
            **extra,
        }
    )


@pytest.mark.parametrize(
    ("first_match", "extra", "fast"),
    [
        ({"prefix": "/api"}, {}, True),
        ({"prefix": "/"}, {}, True),
        ({"prefix": ""}, {}, True),
        ({"prefix": "/api"}, {"ignore_path_parameters_in_path_matching": True}, True),
        # Prefixes the stripping could cut, or that need more than the raw path: no shortcut.
        ({"prefix": "/ap?i"}, {}, False),
        ({"prefix": "/a#pi"}, {}, False),
        ({"prefix": "/ap;i"}, {"ignore_path_parameters_in_path_matching": True}, False),
        ({"prefix": "/api", "case_sensitive": False}, {}, False),
        ({"path": "/api"}, {}, False),
        ({"path_separated_prefix": "/api"}, {}, False),
        ({"prefix": "/api", "headers": [{"name": "x-a", "present_match": True}]}, {}, False),
    ],
)
def test_leading_prefix_answers_as_the_full_rules(first_match, extra, fast):
    route_table = lookup_table(first_match, **extra)
    assert (route_table.default.leading_prefix is not None) is fast
    for path in PATHS:
        assert route_table.route(request(path), 0) == reference(route_table, path), path


def test_leading_prefix_still_needs_the_scheme():
    route_table = lookup_table({"prefix": "/"})
    assert route_table.route(request("/", forwarded_proto=None), 0) is None


def test_wildcard_only_table_skips_the_host_search():
    assert lookup_table({"prefix": "/"}).wildcard_only
    named = table(
        {
            "name": "rc",
            "virtual_hosts": [vhost([direct("a")], ["a.com"], "a"), vhost([direct("b")])],
        }
    )
    assert not named.wildcard_only
    assert named.route(request("/", host="a.com"), 0).name == "a"
    assert named.route(request("/", host="b.com"), 0).name == "b"
    assert not table({"name": "rc", "virtual_hosts": []}).wildcard_only


def _action(route_table: RouteTable, index: int = 0):
    return route_table.default.routes[index].action


def test_a_bare_route_is_plain_and_forwards_as_is():
    route_table = table({"name": "rc", "virtual_hosts": [vhost([forward("r", {"cluster": "c1"})])]})
    match = route_table.route(request("/"), 0)
    assert match.action.plain and not match.action.rewrites
    assert match.request_as_is and match.response_as_is
    assert match.action.timeout_ms == "15000"


@pytest.mark.parametrize(
    "vhost_extra",
    [
        {"retry_policy": {"retry_on": "5xx"}},
        {"hedge_policy": {"hedge_on_per_try_timeout": True}},
    ],
)
def test_policies_inherited_from_the_virtual_host_make_a_route_not_plain(vhost_extra):
    route_table = table(
        {"name": "rc", "virtual_hosts": [vhost([forward("r", {"cluster": "c1"})], **vhost_extra)]}
    )
    action = _action(route_table)
    assert not action.plain
    if "retry_policy" in vhost_extra:
        assert action.retry_policy is not None
    else:
        assert action.hedge_on_per_try_timeout is True


@pytest.mark.parametrize(
    ("route_extra", "vhost_extra", "plain_retries"),
    [
        ({"retry_policy": {"retry_on": "5xx,reset", "num_retries": 2}}, {}, True),
        ({}, {"retry_policy": {"retry_on": "connect-failure"}}, True),
        ({"retry_policy": {"retry_on": "5xx", "per_try_timeout": "1s"}}, {}, False),
        ({"retry_policy": {"retry_on": "5xx", "per_try_idle_timeout": "1s"}}, {}, False),
        ({"retry_policy": {"num_retries": 2}}, {}, False),  # retries on nothing
        (
            {
                "retry_policy": {
                    "retry_on": "5xx",
                    "retriable_request_headers": [{"name": "x-retry"}],
                }
            },
            {},
            False,
        ),
        (
            {"retry_policy": {"retry_on": "5xx"}},
            {"hedge_policy": {"hedge_on_per_try_timeout": True}},
            False,
        ),
        ({"retry_policy": {"retry_on": "5xx"}, "idle_timeout": "5s"}, {}, False),
        ({"retry_policy": {"retry_on": "5xx"}, "max_grpc_timeout": "5s"}, {}, False),
        ({}, {}, False),  # plain: no retry policy at all
    ],
)
def test_a_retry_policy_without_timeouts_of_its_own_is_plain_retries(
    route_extra, vhost_extra, plain_retries
):
    """The router makes such a route's retry state and timeout without reading the request
    (when it has no router headers): only a policy that leaves both as the route says."""
    route_table = table(
        {
            "name": "rc",
            "virtual_hosts": [
                vhost([forward("r", {"cluster": "c1", **route_extra})], **vhost_extra)
            ],
        }
    )
    action = _action(route_table)
    assert action.plain_retries is plain_retries
    assert not (action.plain and action.plain_retries)


def test_a_route_keeps_its_own_policies_over_the_virtual_hosts():
    route_table = table(
        {
            "name": "rc",
            "virtual_hosts": [
                vhost(
                    [
                        forward("own", {"cluster": "c1", "retry_policy": {"num_retries": 5}}),
                        forward("inherits", {"cluster": "c1"}),
                    ],
                    retry_policy={"num_retries": 2},
                    hedge_policy={"hedge_on_per_try_timeout": True},
                )
            ],
        }
    )
    own, inherits = _action(route_table, 0), _action(route_table, 1)
    assert own.retry_policy is not inherits.retry_policy
    assert own.hedge_on_per_try_timeout is True and inherits.hedge_on_per_try_timeout is True


@pytest.mark.parametrize(
    ("route_extra", "vhost_extra", "action_extra", "request_as_is", "response_as_is"),
    [
        ({}, {"request_mirror_policies": [{"cluster": "c2"}]}, {}, False, True),
        ({}, {"include_request_attempt_count": True}, {}, False, True),
        ({}, {"include_attempt_count_in_response": True}, {}, True, False),
        ({"request_headers_to_add": [{"header": {"key": "a", "value": "b"}}]}, {}, {}, False, True),
        ({"response_headers_to_remove": ["a"]}, {}, {}, True, False),
        ({}, {}, {"prefix_rewrite": "/x"}, False, True),
        ({}, {}, {"host_rewrite_literal": "h"}, False, True),
        ({}, {}, {"auto_host_rewrite": True}, False, True),
        ({}, {}, {"internal_redirect_policy": {}}, True, False),
    ],
)
def test_what_makes_a_route_touch_the_request_or_response(
    route_extra, vhost_extra, action_extra, request_as_is, response_as_is
):
    route = forward("r", {"cluster": "c1", **action_extra}, **route_extra)
    route_table = table({"name": "rc", "virtual_hosts": [vhost([route], **vhost_extra)]})
    match = route_table.route(request("/"), 0)
    assert match.request_as_is is request_as_is
    assert match.response_as_is is response_as_is


def test_weighted_cluster_mutations_count_per_cluster():
    action = {
        "weighted_clusters": {
            "clusters": [
                {"name": "c1", "weight": 1, "request_headers_to_add": [
                    {"header": {"key": "a", "value": "b"}}
                ]},
                {"name": "c2", "weight": 1, "response_headers_to_remove": ["a"]},
                {"name": "c3", "weight": 1},
            ]
        }
    }  # fmt: skip
    route_table = table({"name": "rc", "virtual_hosts": [vhost([forward("r", action)])]})
    matches = route_table.default.routes[0].weighted_matches
    assert [(m.request_as_is, m.response_as_is) for m in matches] == [
        (False, True),
        (True, False),
        (True, True),
    ]
