"""The HCM's path options (``normalize_path``, ``merge_slashes``,
``path_with_escaped_slashes_action``) and the fragment check, Envoy against legatus: what the
upstream is sent, the 400s and 307s, the access-log lines and the
``downstream_rq_failed_path_normalization`` / ``downstream_rq_redirected_with_normalized_path``
counters. Each path goes on its own connection (a rejected one closes it)."""

from __future__ import annotations

from tests.differential.http_scenario import (  # noqa: F401 (fixtures)
    Cluster,
    Listener,
    http_pair_fixture,
    http_pair_processes_fixture,
    scenario,
)

# Paths a normalizer must get right: dot segments (plain and escaped, at the end, past the
# root), backslashes, escaped unreserved characters, characters Envoy escapes, escapes kept
# as sent (reserved, invalid, non-ASCII), an escaped NUL, a query left alone.
NORMALIZE_PATHS = [
    "/a/b/../c", "/a/b/./c", "/a/b/..", "/a/b/.", "/..", "//..", "/./", "/a/./../b",
    "/a/b/../../../../c", "/a/..\\c", "/a/\\\\b", "/a/%2e/b", "/a/b/%2E%2e/c", "/%2e%2e/x",
    "/a/%2E%2E%2fb", "/a/.b/..c/...", "/a%2eb", "/a/b/%2Ex", "/a/%41%42/c", "/a/%7e%7E/%2d%5f",
    "/a%2fb", "/a/%3a%3A", "/a/%7b%7B", "/a/%25/b", "/a/%252e%252e/b", "/a/b%c0%af",
    "/a/%C3%A9", "/%zz/a", "/a%", "/a/%4", "/a/%u0041", '/a/"x"', "/a/{x}", "/a/`x`", "/a/^x",
    "/a/|x", "/a/<x>", "/a/[x]", "/a/:b@c!d$e&f'g(h)i*j+k,l;m=n", "/a;b/../c", "/a//b",
    "/a/%5c/../b", "/a/%00/b", "/a/%%0000/b", "/a/%01b%1F%20%7F%80%ff", "/a/b/..?x=/../y#",
    "/a/b/..?x=/../y", "/a/b?",
]  # fmt: skip
MERGE_PATHS = ["/a//b", "//a///b/", "/a//b?x=//y", "/a/./b//../c", "/a%2f%2fb//c", "/a/b#x"]
ESCAPED_SLASH_PATHS = [
    "/a%2Fb", "/a%2fb%5Cc%5cd", "/a/%2e%2e%2Fb", "/a%2F%2F/b", "/a/b%2F..%2Fc", "/a/%5C../c",
    "/a%2fb?x=%2f", "/a/%252F", "/plain",
]  # fmt: skip


def _listener(name: str, **hcm) -> Listener:
    routes = [{"match": {"prefix": "/"}, "route": {"cluster": "pn"}}]
    return Listener(name=name, hcm=hcm, routes=routes)


def _each_alone(listener: str, paths: list[str], headers=()):
    def traffic(side):
        return [side.request(listener, "GET", p, list(headers)).view() for p in paths]

    return traffic


def _upstream_paths(side) -> list[str]:
    return [r["request"].split(" ")[1] for r in side.upstream]


@scenario(_listener("pn_normalize", normalize_path=True), Cluster(name="pn"))
def test_normalize_path(http_pair):
    out = http_pair.run(_each_alone("pn_normalize", NORMALIZE_PATHS))
    seen = _upstream_paths(out.envoy)
    assert "/a/c" in seen and "/a/AB/c" in seen and "/a/%22x%22" in seen and "/c" in seen
    assert out.envoy.result[NORMALIZE_PATHS.index("/a/%00/b")]["status"].startswith("HTTP/1.1 400")
    out.assert_same()


@scenario(_listener("pn_merge", merge_slashes=True), Cluster(name="pn"))
def test_merge_slashes_and_fragments(http_pair):
    out = http_pair.run(_each_alone("pn_merge", MERGE_PATHS))
    assert _upstream_paths(out.envoy) == [
        "/a/b", "/a/b/", "/a/b?x=//y", "/a/./b/../c", "/a%2f%2fb/c"
    ]  # fmt: skip
    out.assert_same()


@scenario(Listener(name="pn_plain"), Cluster(name="pn_plain"))
def test_fragment_refused_without_any_option(http_pair):
    """Envoy refuses a path with a fragment whatever the options (the 400 closes)."""
    paths = ["/a#b", "/a?q#", "/a%23b"]
    out = http_pair.run(_each_alone("pn_plain", paths))
    assert _upstream_paths(out.envoy) == ["/a%23b"]
    out.assert_same()


@scenario(
    _listener("pn_unescape", path_with_escaped_slashes_action="UNESCAPE_AND_FORWARD"),
    _listener("pn_unescape_all", path_with_escaped_slashes_action="UNESCAPE_AND_FORWARD",
              normalize_path=True, merge_slashes=True),
    Cluster(name="pn"),
)  # fmt: skip
def test_unescape_and_forward(http_pair):
    def traffic(side):
        return [
            _each_alone("pn_unescape", ESCAPED_SLASH_PATHS)(side),
            _each_alone("pn_unescape_all", ESCAPED_SLASH_PATHS)(side),
        ]

    out = http_pair.run(traffic)
    seen = _upstream_paths(out.envoy)
    assert seen[:2] == ["/a/b", "/a/b\\c\\d"]
    out.assert_same()


@scenario(
    _listener("pn_reject", path_with_escaped_slashes_action="REJECT_REQUEST"),
    Cluster(name="pn"),
)
def test_reject_escaped_slashes(http_pair):
    out = http_pair.run(_each_alone("pn_reject", ESCAPED_SLASH_PATHS))
    assert _upstream_paths(out.envoy) == ["/a/%252F", "/plain"]
    out.assert_same()


@scenario(
    _listener("pn_redirect", path_with_escaped_slashes_action="UNESCAPE_AND_REDIRECT",
              normalize_path=True),
    Cluster(name="pn"),
)  # fmt: skip
def test_unescape_and_redirect(http_pair):
    """A 307 to the unescaped (then normalized) path, the connection kept; a gRPC request
    gets the 400 instead, as a gRPC reply; a path without escaped slashes is only
    normalized."""

    def traffic(side):
        views = _each_alone("pn_redirect", [*ESCAPED_SLASH_PATHS, "/a/../b%2f", "/a/../b"])(side)
        grpc = side.request(
            "pn_redirect", "POST", "/pkg.Svc/M%2Fx", [("content-type", "application/grpc")], b""
        )
        with side.connect("pn_redirect") as client:  # keep-alive after the redirect
            kept = [client.request("GET", "/x/%2F/y?z").view(), client.request("GET", "/ok").view()]
        return [views, grpc.view(), kept]

    out = http_pair.run(traffic)
    first = out.envoy.result[0][0]
    assert first["status"] == "HTTP/1.1 307 Temporary Redirect"
    assert "location: /a/b" in first["headers"]
    assert out.envoy.result[2][1]["status"] == "HTTP/1.1 200 OK"
    out.assert_same()
