"""Compiled route configuration fields: require_tls, vhost_header, internal_only_headers,
mirror policies at every level, include_is_timeout_retry_header, host_rewrite_path_regex and
a direct response's body_format."""

from __future__ import annotations

import pytest

from legatus.http.headers import HeaderMap
from legatus.router.redirect import TLS_REDIRECT, redirect_location
from legatus.stream_info import StreamInfo
from tests.unit.router.support import (
    config_error,
    direct,
    forward,
    request,
    routes_config,
    table,
    vhost,
)

ROUTE = "route_config.virtual_hosts[0].routes[0]"


# require_tls ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "forwarded_proto", "internal", "redirected"),
    [
        ("ALL", "http", False, True),
        ("ALL", "HTTPS", False, True),  # exactly "https", as Envoy compares
        ("ALL", "https", False, False),
        ("ALL", "http", True, True),
        ("EXTERNAL_ONLY", "http", False, True),
        ("EXTERNAL_ONLY", "http", True, False),
        ("EXTERNAL_ONLY", "https", False, False),
        ("NONE", "http", False, False),
    ],
)
def test_require_tls_decides_by_forwarded_proto(mode, forwarded_proto, internal, redirected):
    t = table({"name": "rc", "virtual_hosts": [vhost([direct("r")], require_tls=mode)]})
    headers = [("x-envoy-internal", "true")] if internal else []
    found = t.route(request(forwarded_proto=forwarded_proto, headers=headers), 0)
    assert (found.action is TLS_REDIRECT) is redirected
    assert found.virtual_host is t.virtual_hosts[0]


def test_require_tls_without_forwarded_proto_routes_nothing():
    t = table({"name": "rc", "virtual_hosts": [vhost([direct("r")], require_tls="ALL")]})
    assert t.route(request(forwarded_proto=None), 0) is None


def test_the_tls_redirect_keeps_host_and_path_as_they_are():
    t = table({"name": "rc", "virtual_hosts": [vhost(
        [direct("r", response_headers_to_add=[{"header": {"key": "x", "value": "y"}}])],
        domains=["*"], require_tls="ALL",
        response_headers_to_add=[{"header": {"key": "x-vh", "value": "y"}}])]})  # fmt: skip
    headers = request(path="/a/b?q=1", host="Example.com:80")
    found = t.route(headers, 0)
    assert found.name == "" and found.cluster_name is None
    assert redirect_location(headers, found.action) == "https://Example.com:80/a/b?q=1"
    response = HeaderMap([(":status", "301")])
    found.finalize_response_headers(headers, response, StreamInfo(now_monotonic=0.0))
    assert list(response.items()) == [(":status", "301")]  # no header mutation


# vhost_header ---------------------------------------------------------------------------------


def _hosts_table(**extra):
    return table({"name": "rc", "virtual_hosts": [
        vhost([direct("a")], domains=["a.com"], name="a"),
        vhost([direct("b")], domains=["*.b.com"], name="b"),
        vhost([direct("any")], domains=["*"], name="any"),
    ], **extra})  # fmt: skip


def test_vhost_header_chooses_the_virtual_host():
    t = _hosts_table(vhost_header="X-VHost")
    assert t.route(request(host="a.com", headers=[("x-vhost", "X.B.com")]), 0).name == "b"
    assert t.route(request(host="x.b.com", headers=[("x-vhost", "a.com")]), 0).name == "a"
    assert t.route(request(headers=[("x-vhost", "a.com"), ("x-vhost", "c")]), 0).name == "a"
    assert t.route(request(headers=[("x-vhost", "")]), 0).name == "any"
    assert t.route(request(host="a.com"), 0) is None  # no such header: no virtual host


def test_vhost_header_with_only_a_wildcard_domain_needs_no_header():
    t = table({"name": "rc", "vhost_header": "x-vhost", "virtual_hosts": [vhost([direct("r")])]})
    assert t.route(request(), 0).name == "r"


def test_vhost_header_and_ignore_port():
    t = _hosts_table(vhost_header="x-vhost", ignore_port_in_host_matching=True)
    assert t.route(request(headers=[("x-vhost", "a.com:8080")]), 0).name == "a"


# internal_only_headers --------------------------------------------------------------------------


def test_internal_only_headers_are_kept_lower_case_for_the_connection_manager():
    t = table({"name": "rc", "internal_only_headers": ["X-Secret", "x-other"],
               "virtual_hosts": [vhost([direct("r")])]})  # fmt: skip
    assert t.internal_only_headers == ("x-secret", "x-other")
    assert table(routes_config([direct("r")])).internal_only_headers == ()


# request_mirror_policies ------------------------------------------------------------------------


def _mirrors_of(route_mirrors=None, vhost_mirrors=None, table_mirrors=None, **kwargs):
    action = {"cluster": "c1"}
    if route_mirrors:
        action["request_mirror_policies"] = [{"cluster": route_mirrors}]
    vh = vhost([forward("r", action)])
    if vhost_mirrors:
        vh["request_mirror_policies"] = [{"cluster": vhost_mirrors}]
    document = {"name": "rc", "virtual_hosts": [vh]}
    if table_mirrors:
        document["request_mirror_policies"] = [{"cluster": table_mirrors}]
    t = table(document, **kwargs)
    return [p.cluster for p in t.virtual_hosts[0].routes[0].action.request_mirror_policies]


def test_the_most_specific_mirror_policies_win():
    assert _mirrors_of(table_mirrors="c3") == ["c3"]
    assert _mirrors_of(vhost_mirrors="c2", table_mirrors="c3") == ["c2"]
    assert _mirrors_of(route_mirrors="c1", vhost_mirrors="c2", table_mirrors="c3") == ["c1"]
    assert _mirrors_of() == []


def test_a_mirror_to_an_unknown_cluster_is_an_error_on_each_route_it_applies_to():
    error = config_error({"name": "rc", "request_mirror_policies": [{"cluster": "nope"}],
                          "virtual_hosts": [vhost([forward("r", {"cluster": "c1"})])]})  # fmt: skip
    assert error.path == ROUTE
    assert error.message == "route: unknown shadow cluster 'nope'"
    # a redirect or a direct response inherits them too (Envoy checks every route)
    error = config_error({"name": "rc", "virtual_hosts": [
        vhost([direct("r")], request_mirror_policies=[{"cluster": "nope"}])]})  # fmt: skip
    assert error.path == ROUTE
    action = {"cluster": "c1", "request_mirror_policies": [{"cluster": "c2"}, {"cluster": "no"}]}
    error = config_error(routes_config([forward("r", action)]))
    assert error.path == f"{ROUTE}.route.request_mirror_policies"
    assert error.message == "route: unknown shadow cluster 'no'"
    # the route's own list replaces the inherited one, which is then not checked
    assert _mirrors_of(route_mirrors="c1", table_mirrors="nope") == ["c1"]
    assert _mirrors_of(table_mirrors="nope", validate_clusters_default=False) == ["nope"]
    assert table({"name": "rc", "request_mirror_policies": [{"cluster": "nope"}],
                  "virtual_hosts": [vhost([])]})  # no route: nothing to check  # fmt: skip


# include_is_timeout_retry_header ---------------------------------------------------------------


def test_include_is_timeout_retry_header_is_the_virtual_hosts():
    t = table({"name": "rc", "virtual_hosts": [
        vhost([direct("r")], include_is_timeout_retry_header=True)]})  # fmt: skip
    assert t.virtual_hosts[0].include_is_timeout_retry_header
    assert not table(routes_config([direct("r")])).virtual_hosts[0].include_is_timeout_retry_header


# host_rewrite_path_regex -----------------------------------------------------------------------


def _host_regex(substitution: str = "\\1.internal"):
    regex = {"pattern": {"regex": "^/host/([^/]*)/.*$"}, "substitution": substitution}
    t = table(routes_config([forward("r", {"cluster": "c1", "host_rewrite_path_regex": regex})]))
    return t.virtual_hosts[0].routes[0]


@pytest.mark.parametrize(
    ("path", "host"),
    [
        ("/host/svc/a?x=/host/q/r", "svc.internal"),  # the query is not matched
        ("/host/svc/a#/host/f/g", "svc.internal"),  # nor the fragment
        ("/other?q", "/other"),  # no match: the path as it is
        ("/host//a", ".internal"),
    ],
)
def test_host_rewrite_path_regex(path, host):
    route = _host_regex()
    assert not route.request_as_is  # the router rewrites the host
    assert route.action.host_rewrite(request(path=path)) == host


def test_an_empty_host_from_the_path_rewrites_nothing():
    assert _host_regex("\\1").action.host_rewrite(request(path="/host//a")) is None


def test_a_bad_host_rewrite_path_regex_names_the_field():
    regex = {"pattern": {"regex": "("}, "substitution": "x"}
    error = config_error(
        routes_config([forward("r", {"cluster": "c1", "host_rewrite_path_regex": regex})])
    )
    assert error.path.startswith(f"{ROUTE}.route.host_rewrite_path_regex.pattern")


# direct_response body_format -------------------------------------------------------------------


def _direct_action(body_format: dict, body: str | None = "configured"):
    response: dict = {"status": 200, "body_format": body_format}
    if body is not None:
        response["body"] = {"inline_string": body}
    route = {"name": "r", "match": {"prefix": "/"}, "direct_response": response}
    return table(routes_config([route])).virtual_hosts[0].routes[0].action


def test_direct_response_body_format_formats_the_configured_body():
    action = _direct_action({"text_format": "<%LOCAL_REPLY_BODY%|%REQ(x-in)%|%RESPONSE_CODE%>"})
    info = StreamInfo(now_monotonic=0.0)
    assert action.response_body(request(headers=[("x-in", "in")]), info) == b"<configured|in|0>"
    assert action.content_type is None  # the reply's text/plain, after its content-length


@pytest.mark.parametrize(
    ("body_format", "content_type", "body"),
    [
        ({"json_format": {"b": "%LOCAL_REPLY_BODY%"}}, "application/json",
         b'{"b":"configured"}\n'),
        ({"json_format": {"b": "x"}, "content_type": "text/plain"}, "text/plain", b'{"b":"x"}\n'),
        ({"text_format": "x", "content_type": "text/html"}, "text/html", b"x"),
        ({"text_format_source": {"inline_string": "[%LOCAL_REPLY_BODY%]"}}, None, b"[configured]"),
    ],
)  # fmt: skip
def test_direct_response_body_format_content_type(body_format, content_type, body):
    action = _direct_action(body_format)
    assert action.content_type == content_type
    assert action.response_body(request(), StreamInfo(now_monotonic=0.0)) == body


def test_a_direct_response_without_body_format_answers_its_body_as_it_is():
    route = direct("r")
    action = table(routes_config([route])).virtual_hosts[0].routes[0].action
    assert action.body_format is None and action.content_type is None
    assert action.response_body(request(), None) == b"r"
