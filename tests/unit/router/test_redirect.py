"""Redirect routes: the location for every combination of fields, as Envoy 1.40 builds it."""

from __future__ import annotations

import pytest

from legatus.router.redirect import RedirectAction, redirect_location
from tests.unit.router.support import config_error, request, routes_config, table


def location(redirect: dict, path: str, host: str = "example.com:80", match=None, **kwargs) -> str:
    route = {"name": "r", "match": match or {"prefix": "/"}, "redirect": redirect}
    t = table(routes_config([route]))
    headers = request(path=path, host=host, **kwargs)
    found = t.route(headers, 0)
    assert found is not None and found.name == "r"
    return redirect_location(headers, found.action)


@pytest.mark.parametrize(
    ("redirect", "path", "expected"),
    [
        ({"https_redirect": True}, "/a?q=1", "https://example.com/a?q=1"),  # :80 dropped
        ({"scheme_redirect": "ftp"}, "/a", "ftp://example.com/a"),
        ({"scheme_redirect": "http"}, "/a", "http://example.com:80/a"),  # same scheme: kept
        ({"host_redirect": "new.example.org"}, "/a", "http://new.example.org/a"),
        ({"port_redirect": 8443}, "/a", "http://example.com:8443/a"),
        ({"host_redirect": "h.org", "port_redirect": 9}, "/a", "http://h.org:9/a"),
        ({"path_redirect": "/new/path"}, "/a", "http://example.com:80/new/path"),
        ({"path_redirect": "/new/path"}, "/a?x=1", "http://example.com:80/new/path?x=1"),
        (
            {"path_redirect": "/new?y=2", "strip_query": True},
            "/a?x=1",
            "http://example.com:80/new?y=2",
        ),
        ({"path_redirect": "/new?y=2"}, "/a?x=1", "http://example.com:80/new?y=2"),
        ({"path_redirect": "rel"}, "/a?z", "http://example.com:80/rel?z"),
        ({"strip_query": True}, "/a?x=1", "http://example.com:80/a"),
        ({"strip_query": True, "https_redirect": True}, "/a?x", "https://example.com/a"),
    ],
)
def test_location(redirect, path, expected):
    assert location(redirect, path) == expected


@pytest.mark.parametrize(
    ("redirect", "match", "path", "expected"),
    [
        ({"prefix_rewrite": "/other/"}, {"prefix": "/pfx/"}, "/pfx/a/b?x=1", "/other/a/b?x=1"),
        (
            {"prefix_rewrite": "/o/", "strip_query": True},
            {"prefix": "/pfxs/"},
            "/pfxs/a?x=1",
            "/o/a",
        ),
        ({"prefix_rewrite": "/"}, {"prefix": "/pfxe/"}, "/pfxe/a", "/a"),
        (
            {"prefix_rewrite": "/x/"},
            {"prefix": "/CI/", "case_sensitive": False},
            "/ci/z?k",
            "/x/z?k",
        ),
        ({"prefix_rewrite": "/n"}, {"path": "/old"}, "/old?q", "/n?q"),
        (
            {
                "regex_rewrite": {
                    "pattern": {"regex": "^/rx/([a-z]+)/([0-9]+)$"},
                    "substitution": "/\\2/\\1",
                }
            },
            {"safe_regex": {"regex": "/rx/[a-z]+/[0-9]+"}},
            "/rx/abc/12?q=1",
            "/12/abc?q=1",
        ),
        (
            {"regex_rewrite": {"pattern": {"regex": "a"}, "substitution": "b"}},
            {"prefix": "/"},
            "/aaa?a=a",
            "/bbb?a=a",  # the query string is not rewritten
        ),
        (
            {"regex_rewrite": {"pattern": {"regex": "x*"}, "substitution": "-"}},
            {"prefix": "/"},
            "/rxe/ab",
            "-/-r-e-/-a-b-",  # the path then gets its leading slash back
        ),
    ],
)
def test_location_with_path_rewrites(redirect, match, path, expected):
    got = location(redirect, path, match=match)
    assert got == "http://example.com:80" + (
        expected if expected.startswith("/") else "/" + expected
    )


@pytest.mark.parametrize(
    ("host", "redirect", "expected"),
    [
        ("example.com", {"https_redirect": True}, "https://example.com/a"),
        ("example.com:8080", {"https_redirect": True}, "https://example.com:8080/a"),
        ("example.com:443", {"https_redirect": True}, "https://example.com:443/a"),
        ("example.com:8080", {"port_redirect": 8443}, "http://example.com:8443/a"),
        ("[::1]:80", {"https_redirect": True}, "https://[::1]/a"),
        ("[::1]", {"port_redirect": 8443}, "http://[::1]:8443/a"),
        ("[::1]:80", {"scheme_redirect": "http"}, "http://[::1]:80/a"),
    ],
)
def test_request_host_port_handling(host, redirect, expected):
    assert location(redirect, "/a", host=host) == expected


def test_default_port_follows_x_forwarded_proto():
    # A client that says it came over https keeps :80 on an https redirect (same scheme).
    assert location({"https_redirect": True}, "/a", forwarded_proto="https") == (
        "https://example.com:80/a"
    )
    assert location({"https_redirect": True}, "/a", host="e.com:443", forwarded_proto="https") == (
        "https://e.com:443/a"
    )
    assert location(
        {"scheme_redirect": "http"}, "/a", host="e.com:443", forwarded_proto="https"
    ) == ("http://e.com/a")


def test_response_codes():
    codes = {}
    for name in (
        "MOVED_PERMANENTLY",
        "FOUND",
        "SEE_OTHER",
        "TEMPORARY_REDIRECT",
        "PERMANENT_REDIRECT",
    ):
        route = {"name": "r", "match": {"prefix": "/"}, "redirect": {"response_code": name}}
        codes[name] = table(routes_config([route])).virtual_hosts[0].routes[0].action.response_code
    assert list(codes.values()) == [301, 302, 303, 307, 308]


def test_scheme_or_port_only_redirects_do_not_rewrite_the_path():
    redirect = RedirectAction(scheme="https", prefix_rewrite="")
    assert not redirect.rewrites_path
    assert redirect.rewrite_path("/a") is None


def test_direct_response_location_is_the_request_url():
    headers = request(path="/dr301?x", host="example.com:80")
    assert redirect_location(headers, None) == "http://example.com:80/dr301?x"


def test_bad_redirect_regex_is_a_config_error():
    route = {
        "name": "r",
        "match": {"prefix": "/"},
        "redirect": {"regex_rewrite": {"pattern": {"regex": "("}, "substitution": ""}},
    }
    error = config_error(routes_config([route]))
    assert (
        error.path == "route_config.virtual_hosts[0].routes[0].redirect.regex_rewrite.pattern.regex"
    )
