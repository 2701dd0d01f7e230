"""Route actions: cluster choice, weighted clusters, rewrites, timeouts, direct responses."""

from __future__ import annotations

import pytest

from legatus.router.action import DirectResponseAction, InternalRedirectPolicy, RouteAction
from tests.unit.router.support import (
    config_error,
    direct,
    forward,
    request,
    routes_config,
    table,
)

ROUTE = "route_config.virtual_hosts[0].routes[0]"


def action_of(action: dict, match: dict | None = None, **kwargs) -> RouteAction:
    t = table(routes_config([forward("r", action, match)]), **kwargs)
    return t.virtual_hosts[0].routes[0].action


def match_for(action: dict, random_value: int = 0, headers=(), match: dict | None = None):
    t = table(routes_config([forward("r", action, match)]))
    return t.route(request(headers=headers), random_value)


def test_static_cluster_answer_is_prebuilt():
    t = table(routes_config([forward("r", {"cluster": "c1"})]))
    first = t.route(request(), 0)
    assert first.cluster_name == "c1"
    assert first.weighted_cluster is None
    assert t.route(request(path="/x"), 7) is first  # nothing allocated per request


def test_cluster_header_takes_the_first_value():
    action = {"cluster_header": "X-Cluster"}
    assert (
        match_for(action, headers=[("x-cluster", "c9"), ("x-cluster", "c8")]).cluster_name == "c9"
    )
    assert match_for(action).cluster_name == ""  # the router answers cluster_not_found


def test_unknown_static_clusters_are_errors_unless_validation_is_off():
    error = config_error(routes_config([forward("r", {"cluster": "nope"})]))
    assert error.path == f"{ROUTE}.route.cluster"
    assert error.message == "route: unknown cluster 'nope'"
    document = routes_config([forward("r", {"cluster": "nope"})], validate_clusters=False)
    assert table(document).virtual_hosts[0].routes[0].action.cluster == "nope"
    # Envoy validates by default only for an inline route_config; RDS passes False.
    assert table(
        routes_config([forward("r", {"cluster": "nope"})]), validate_clusters_default=False
    )
    error = config_error(
        routes_config(
            [forward("r", {"weighted_clusters": {"clusters": [{"name": "nope", "weight": 1}]}})]
        )
    )
    assert error.path == f"{ROUTE}.route.weighted_clusters.clusters[0].name"
    assert error.message == "route: unknown weighted cluster 'nope'"


WEIGHTED = {
    "weighted_clusters": {
        "clusters": [
            {"name": "c1", "weight": 1},
            {"name": "c2", "weight": 0},
            {"name": "c3", "weight": 3},
        ]
    }
}


def test_weighted_clusters_pick_by_random_value_modulo_the_sum():
    t = table(routes_config([forward("r", WEIGHTED)]))
    picked = [t.route(request(), v).cluster_name for v in range(8)]
    assert picked == ["c1", "c3", "c3", "c3", "c1", "c3", "c3", "c3"]
    match = t.route(request(), 0)
    assert match.weighted_cluster.name == "c1"
    assert t.route(request(), 4) is match  # prebuilt per cluster


def test_total_weight_is_ignored_as_in_envoy_1_40():
    action = {
        "weighted_clusters": {
            "clusters": [{"name": "c1", "weight": 30}, {"name": "c2", "weight": 30}],
            "total_weight": 100,
        }
    }
    assert action_of(action).weighted_clusters.total_weight == 60


def test_weighted_random_value_from_a_header():
    action = {"weighted_clusters": {**WEIGHTED["weighted_clusters"], "header_name": "x-rand"}}
    assert match_for(action, 0, [("x-rand", "1")]).cluster_name == "c3"
    assert match_for(action, 1, [("x-rand", "4")]).cluster_name == "c1"
    assert match_for(action, 1, [("x-rand", "bad")]).cluster_name == "c3"  # falls back
    assert match_for(action, 0, [("x-rand", "1"), ("x-rand", "1")]).cluster_name == "c1"


def test_weighted_cluster_header():
    action = {"weighted_clusters": {"clusters": [{"cluster_header": "x-c", "weight": 1}]}}
    assert match_for(action, headers=[("x-c", "dyn")]).cluster_name == "dyn"
    assert match_for(action).cluster_name == ""


@pytest.mark.parametrize(
    ("clusters", "path", "message"),
    [
        ([{"name": "c1"}], "clusters[0].weight", "Field 'weight' is missing"),
        (
            [{"name": "c1", "weight": 0}],
            "clusters",
            "Sum of weights in the weighted_cluster must be greater than 0.",
        ),
        (
            [{"name": "c1", "cluster_header": "x", "weight": 1}],
            "clusters[0]",
            "Only one of name or cluster_header can be specified",
        ),
        (
            [{"weight": 1}],
            "clusters[0]",
            "At least one of name or cluster_header need to be specified",
        ),
        (
            [{"name": "c1", "weight": 4294967295}, {"name": "c2", "weight": 1}],
            "clusters[1]",
            "The sum of weights of all weighted clusters of route r exceeds 4294967295",
        ),
    ],
)
def test_weighted_cluster_errors(clusters, path, message):
    error = config_error(
        routes_config([forward("r", {"weighted_clusters": {"clusters": clusters}})])
    )
    assert error.path == f"{ROUTE}.route.weighted_clusters.{path}"
    assert error.message == message


def test_weighted_use_hash_policy_is_refused():
    action = {"weighted_clusters": {**WEIGHTED["weighted_clusters"], "use_hash_policy": True}}
    error = config_error(routes_config([forward("r", action)]))
    assert error.path == f"{ROUTE}.route.weighted_clusters.use_hash_policy"


def test_weighted_cluster_weights_from_runtime_keys():
    from legatus.runtime import Layer, Runtime

    runtime = Runtime([Layer(name="admin")], admin_index=0)
    action = {"weighted_clusters": {**WEIGHTED["weighted_clusters"], "runtime_key_prefix": "rt"}}
    t = table(routes_config([forward("r", action)]), runtime=runtime)

    def picks():
        return [t.route(request(), v).cluster_name for v in range(4)]

    assert picks() == ["c1", "c3", "c3", "c3"]  # no keys: the configured 1 and 3
    runtime.merge_values({"rt.c1": "3", "rt.c3": "1"})
    assert picks() == ["c1", "c1", "c1", "c3"]
    runtime.merge_values({"rt.c1": "0", "rt.c3": "0"})
    assert t.route(request(), 0) is None  # weights adding up to 0 route nowhere


@pytest.mark.parametrize(
    ("action", "match", "path", "expected"),
    [
        ({"prefix_rewrite": "/b/"}, {"prefix": "/a/"}, "/a/x?q=1", "/b/x?q=1"),
        ({"prefix_rewrite": "/"}, {"prefix": "/api"}, "/api/x", "//x"),
        ({"prefix_rewrite": "/b"}, {"prefix": "/A", "case_sensitive": False}, "/aX", "/bX"),
        ({"prefix_rewrite": "/new"}, {"path": "/old"}, "/old?x", "/new?x"),
        ({"prefix_rewrite": "/s"}, {"path_separated_prefix": "/sep"}, "/sep/a", "/s/a"),
        ({"prefix_rewrite": "/whole"}, {"safe_regex": {"regex": "/r/.*"}}, "/r/a?x", "/whole?x"),
        (
            {"regex_rewrite": {"pattern": {"regex": "^/v1/(.*)$"}, "substitution": "/v2/\\1"}},
            {"prefix": "/"},
            "/v1/items?v1=yes",
            "/v2/items?v1=yes",
        ),
        ({}, {"prefix": "/"}, "/same", None),
    ],
)
def test_rewrite_path(action, match, path, expected):
    assert action_of({"cluster": "c1", **action}, match).rewrite_path(path) == expected


def test_prefix_and_regex_rewrite_together_are_refused():
    action = {
        "cluster": "c1",
        "prefix_rewrite": "/x",
        "regex_rewrite": {"pattern": {"regex": "a"}, "substitution": "b"},
    }
    error = config_error(routes_config([forward("r", action)]))
    assert error.path == f"{ROUTE}.route"
    assert (
        error.message == "Specify only one of prefix_rewrite, regex_rewrite or path_rewrite_policy"
    )


def test_host_rewrites():
    literal = action_of({"cluster": "c1", "host_rewrite_literal": "up.internal"})
    assert literal.host_rewrite(request()) == "up.internal"
    by_header = action_of({"cluster": "c1", "host_rewrite_header": "X-Host"})
    assert by_header.host_rewrite(request(headers=[("x-host", "h1")])) == "h1"
    assert by_header.host_rewrite(request(headers=[("x-host", "")])) is None
    assert by_header.host_rewrite(request()) is None
    auto = action_of({"cluster": "c1", "auto_host_rewrite": True, "append_x_forwarded_host": True})
    assert auto.auto_host_rewrite and auto.append_x_forwarded_host
    assert auto.host_rewrite(request()) is None  # the router does it with the upstream host


def test_timeouts():
    default = action_of({"cluster": "c1"})
    assert default.timeout == 15.0 and default.idle_timeout is None
    custom = action_of({"cluster": "c1", "timeout": "2.5s", "idle_timeout": "0s"})
    assert custom.timeout == 2.5 and custom.idle_timeout == 0.0
    assert action_of({"cluster": "c1", "timeout": "0s"}).timeout == 0.0  # disabled


def test_cluster_not_found_response_code():
    assert action_of({"cluster": "c1"}).cluster_not_found_response_code == 503
    action = {"cluster_header": "x", "cluster_not_found_response_code": "NOT_FOUND"}
    assert action_of(action).cluster_not_found_response_code == 404


def test_internal_redirect_policy():
    assert action_of({"cluster": "c1"}).internal_redirect_policy is None
    policy = action_of(
        {
            "cluster": "c1",
            "internal_redirect_policy": {
                "max_internal_redirects": 3,
                "redirect_response_codes": [301, 307, 200],
                "allow_cross_scheme_redirect": True,
                "response_headers_to_copy": ["X-Keep"],
            },
        }
    ).internal_redirect_policy
    assert policy == InternalRedirectPolicy(
        max_internal_redirects=3,
        redirect_response_codes=frozenset({301, 307}),  # Envoy drops non-redirect codes
        allow_cross_scheme_redirect=True,
        response_headers_to_copy=("x-keep",),
    )
    empty = action_of({"cluster": "c1", "internal_redirect_policy": {}}).internal_redirect_policy
    assert empty == InternalRedirectPolicy()  # 1 redirect, on 302 only
    legacy = action_of(
        {
            "cluster": "c1",
            "internal_redirect_action": "HANDLE_INTERNAL_REDIRECT",
            "max_internal_redirects": 4,
        }
    ).internal_redirect_policy
    assert legacy == InternalRedirectPolicy(max_internal_redirects=4)


def test_internal_redirect_policy_errors():
    action = {"cluster": "c1", "internal_redirect_policy": {"response_headers_to_copy": ["host"]}}
    error = config_error(routes_config([forward("r", action)]))
    assert error.path == f"{ROUTE}.route.internal_redirect_policy.response_headers_to_copy[0]"
    assert error.message == ":-prefixed headers or Hosts may not be specified here."
    action = {
        "cluster": "c1",
        "internal_redirect_policy": {
            "predicates": [
                {
                    "name": "p",
                    "typed_config": {"@type": "type.googleapis.com/google.protobuf.Struct"},
                }
            ]
        },
    }
    error = config_error(routes_config([forward("r", action)]))
    assert error.path == f"{ROUTE}.route.internal_redirect_policy.predicates"


def test_direct_response_body_and_size_limit(tmp_path):
    t = table(routes_config([direct("r", status=503)]))
    assert t.virtual_hosts[0].routes[0].action == DirectResponseAction(status=503, body=b"r")
    big = {
        "name": "r",
        "match": {"prefix": "/"},
        "direct_response": {"status": 200, "body": {"inline_string": "x" * 4097}},
    }
    error = config_error(routes_config([big]))
    assert error.path == f"{ROUTE}.direct_response.body"
    assert error.message == "response body size is 4097 bytes; maximum is 4096"
    assert table(routes_config([big], max_direct_response_body_size_bytes=5000))
    body_file = tmp_path / "body"
    body_file.write_bytes(b"from a file")
    from_file = {
        "name": "r",
        "match": {"prefix": "/"},
        "direct_response": {"status": 200, "body": {"filename": str(body_file)}},
    }
    assert (
        table(routes_config([from_file])).virtual_hosts[0].routes[0].action.body == b"from a file"
    )
    error = config_error(routes_config([from_file], max_direct_response_body_size_bytes=3))
    assert error.message == f"file {body_file} size is 11 bytes; maximum is 3"
    no_body = {"name": "r", "match": {"prefix": "/"}, "direct_response": {"status": 204}}
    assert table(routes_config([no_body])).virtual_hosts[0].routes[0].action.body == b""


def test_direct_response_status_range_is_pgv():
    bad = {"name": "r", "match": {"prefix": "/"}, "direct_response": {"status": 99}}
    error = config_error(routes_config([bad]))
    assert error.path == f"{ROUTE}.direct_response.status"
    assert error.message == "value must be inside range [200, 600)"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("cors", {}),
        ("metadata_match", {}),
        ("priority", "HIGH"),
        (
            "path_rewrite_policy",
            {"name": "x", "typed_config": {"@type": "type.googleapis.com/google.protobuf.Struct"}},
        ),
    ],
)
def test_unimplemented_route_action_fields_are_refused_by_name(field, value):
    error = config_error(routes_config([forward("r", {"cluster": "c1", field: value})]))
    assert error.path == f"{ROUTE}.route.{field}"
    assert error.message == f"field '{field}' of RouteAction is not supported by legatus yet"


def test_cluster_specifier_plugins_are_refused():
    action = {"cluster_specifier_plugin": "p"}
    error = config_error(routes_config([forward("r", action)]))
    assert error.path == f"{ROUTE}.route.cluster_specifier_plugin"
