"""Header mutations at route configuration, virtual host, route and weighted cluster level."""

from __future__ import annotations

import pytest

from legatus.http.headers import HeaderMap
from legatus.stream_info import StreamInfo
from tests.unit.router.support import config_error, direct, forward, request, table, vhost


def h(key: str, value: str, action: str | None = None, keep: bool = False, **extra) -> dict:
    option: dict = {"header": {"key": key, "value": value}, **extra}
    if action:
        option["append_action"] = action
    if keep:
        option["keep_empty_value"] = True
    return option


def info() -> StreamInfo:
    stream_info = StreamInfo(now_monotonic=0.0)
    stream_info.downstream_remote_address = "10.0.0.1:5000"
    stream_info.protocol = "HTTP/1.1"
    return stream_info


ROUTE_HEADERS = [
    h("x-level", "route"),
    h("x-over", "route", "OVERWRITE_IF_EXISTS_OR_ADD"),
    h("x-absent", "route", "ADD_IF_ABSENT"),
    h("x-req", "%REQ(x-in)%"),
    h("x-req-missing", "%REQ(x-nope)%"),
    h("x-req-keep", "%REQ(x-nope)%", keep=True),
    h("x-empty", ""),
    h("x-empty-keep", "", keep=True),
    h("x-addr", "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"),
    h("x-literal", "100%% sure"),
    h("x-only-if-present", "route", "OVERWRITE_IF_EXISTS"),
    h("x-resp", "[%RESP(x-level)%]"),
]
VHOST_HEADERS = [
    h("x-level", "vhost"),
    h("x-over", "vhost", "OVERWRITE_IF_EXISTS_OR_ADD"),
    h("x-absent", "vhost", "ADD_IF_ABSENT"),
    h("x-removed", "vhost"),
]
TABLE_HEADERS = [
    h("x-level", "table"),
    h("x-over", "table", "OVERWRITE_IF_EXISTS_OR_ADD"),
    h("x-absent", "table", "ADD_IF_ABSENT"),
]


def layered(most_specific: bool):
    route = direct(
        "r", response_headers_to_add=ROUTE_HEADERS, response_headers_to_remove=["x-removed"]
    )
    return table(
        {
            "name": "rc",
            "most_specific_header_mutations_wins": most_specific,
            "virtual_hosts": [vhost([route], response_headers_to_add=VHOST_HEADERS)],
            "response_headers_to_add": TABLE_HEADERS,
            "response_headers_to_remove": ["x-level"],
        }
    )


def response_after(route_table, request_headers=None) -> list[tuple[str, str]]:
    request_headers = request_headers or request(headers=[("x-in", "v1")])
    match = route_table.route(request_headers, 0)
    response = HeaderMap([(":status", "200")])
    match.finalize_response_headers(request_headers, response, info())
    return [item for item in response.items() if item[0] != ":status"]


def test_default_order_least_specific_wins():
    # Route, then virtual host, then table (Envoy 1.40, checked on the wire): the table
    # removes x-level and its overwrite of x-over lands last; ADD_IF_ABSENT keeps the first.
    assert sorted(response_after(layered(False))) == sorted(
        [
            ("x-absent", "route"),
            ("x-req", "v1"),
            ("x-req-keep", ""),
            ("x-empty-keep", ""),
            ("x-addr", "10.0.0.1"),
            ("x-literal", "100% sure"),
            ("x-resp", "[]"),  # formatted before this level's additions
            ("x-removed", "vhost"),
            ("x-over", "table"),
            ("x-level", "table"),
        ]
    )


def test_most_specific_header_mutations_wins():
    got = response_after(layered(True))
    assert sorted(got) == sorted(
        [
            ("x-level", "table"),
            ("x-absent", "table"),
            ("x-level", "vhost"),
            ("x-over", "route"),
            ("x-level", "route"),
            ("x-req", "v1"),
            ("x-req-keep", ""),
            ("x-empty-keep", ""),
            ("x-addr", "10.0.0.1"),
            ("x-literal", "100% sure"),
            ("x-resp", "[table]"),
        ]
    )
    values = [value for name, value in got if name == "x-level"]
    assert values == ["table", "vhost", "route"]  # one name's values keep their order


def test_overwrite_moves_the_header_to_the_end():
    t = table(
        {
            "name": "rc",
            "virtual_hosts": [
                vhost(
                    [
                        direct(
                            "r", response_headers_to_add=[h("a", "2", "OVERWRITE_IF_EXISTS_OR_ADD")]
                        )
                    ]
                )
            ],
        }
    )
    match = t.route(request(), 0)
    response = HeaderMap([("a", "1"), ("b", "1")])
    match.finalize_response_headers(request(), response, info())
    assert list(response.items()) == [("b", "1"), ("a", "2")]


@pytest.mark.parametrize(
    ("action", "present", "expected"),
    [
        ("APPEND_IF_EXISTS_OR_ADD", True, ["old", "new"]),
        ("APPEND_IF_EXISTS_OR_ADD", False, ["new"]),
        ("ADD_IF_ABSENT", True, ["old"]),
        ("ADD_IF_ABSENT", False, ["new"]),
        ("OVERWRITE_IF_EXISTS_OR_ADD", True, ["new"]),
        ("OVERWRITE_IF_EXISTS_OR_ADD", False, ["new"]),
        ("OVERWRITE_IF_EXISTS", True, ["new"]),
        ("OVERWRITE_IF_EXISTS", False, []),
    ],
)
def test_append_actions_on_request_headers(action, present, expected):
    route = forward("r", {"cluster": "c1"}, request_headers_to_add=[h("x-a", "new", action)])
    t = table({"name": "rc", "virtual_hosts": [vhost([route])]})
    headers = request(headers=[("x-a", "old")] if present else [])
    t.route(headers, 0).finalize_request_headers(headers, info())
    assert headers.get_all("x-a") == expected


def test_deprecated_append_flag():
    route = forward(
        "r",
        {"cluster": "c1"},
        request_headers_to_add=[
            {"header": {"key": "x-a", "value": "1"}, "append": False},
            {"header": {"key": "x-b", "value": "1"}, "append": True},
        ],
    )
    t = table({"name": "rc", "virtual_hosts": [vhost([route])]})
    headers = request(headers=[("x-a", "0"), ("x-b", "0")])
    t.route(headers, 0).finalize_request_headers(headers, info())
    assert headers.get_all("x-a") == ["1"]
    assert headers.get_all("x-b") == ["0", "1"]


def test_request_formatters_see_the_request_being_mutated():
    route = forward(
        "r",
        {"cluster": "c1"},
        request_headers_to_add=[
            h("x-copy", "%REQ(:path)% via %PROTOCOL%"),
            h("x-host", "%REQ(:authority)%"),
        ],
        request_headers_to_remove=["x-secret"],
    )
    t = table(
        {
            "name": "rc",
            "virtual_hosts": [vhost([route], request_headers_to_add=[h("x-vh", "%REQ(x-copy)%")])],
            "request_headers_to_add": [h("x-table", "t")],
        }
    )
    headers = request(path="/p?q", headers=[("x-secret", "s")])
    t.route(headers, 0).finalize_request_headers(headers, info())
    assert headers.get("x-copy") == "/p?q via HTTP/1.1"
    assert headers.get("x-host") == "example.com"
    assert headers.get("x-vh") == "/p?q via HTTP/1.1"  # the route level applied first
    assert headers.get("x-table") == "t"
    assert "x-secret" not in headers


def test_weighted_cluster_mutations_apply_first():
    action = {
        "weighted_clusters": {
            "clusters": [
                {
                    "name": "c1",
                    "weight": 1,
                    "request_headers_to_add": [h("x-w", "cluster")],
                    "response_headers_to_add": [h("x-w", "cluster")],
                    "host_rewrite_literal": "c1.internal",
                }
            ]
        }
    }
    route = forward(
        "r",
        action,
        request_headers_to_add=[h("x-w", "route", "OVERWRITE_IF_EXISTS")],
        response_headers_to_add=[h("x-seen", "%RESP(x-w)%")],
    )
    t = table({"name": "rc", "virtual_hosts": [vhost([route])]})
    headers = request()
    match = t.route(headers, 0)
    assert match.weighted_cluster.host_rewrite_literal == "c1.internal"
    match.finalize_request_headers(headers, info())
    assert headers.get_all("x-w") == ["route"]
    response = HeaderMap()
    match.finalize_response_headers(headers, response, info())
    assert response.get("x-seen") == "cluster"


@pytest.mark.parametrize(
    ("where", "document", "path", "message"),
    [
        (
            "route",
            {"response_headers_to_add": [h(":path", "x")]},
            "routes[0].response_headers_to_add[0].header.key",
            ":-prefixed or host headers may not be modified",
        ),
        (
            "route",
            {"request_headers_to_add": [h("Host", "x")]},
            "routes[0].request_headers_to_add[0].header.key",
            ":-prefixed or host headers may not be modified",
        ),
        (
            "vhost",
            {"request_headers_to_remove": ["HOST"]},
            "request_headers_to_remove[0]",
            ":-prefixed or host headers may not be removed",
        ),
        (
            "vhost",
            {"response_headers_to_remove": [":status"]},
            "response_headers_to_remove[0]",
            ":-prefixed or host headers may not be removed",
        ),
        (
            "route",
            {"response_headers_to_add": [h("x", "x", "ADD_IF_ABSENT", append=True)]},
            "routes[0].response_headers_to_add[0].append",
            "Both append and append_action are set and it's not allowed",
        ),
        (
            "route",
            {"response_headers_to_add": [h("x", "%FOO%")]},
            "routes[0].response_headers_to_add[0].header.value",
            "Not supported field in StreamInfo: FOO",
        ),
        (
            "route",
            {"response_headers_to_add": [h("x", "50%")]},
            "routes[0].response_headers_to_add[0].header.value",
            "Incorrect configuration: 50%. Couldn't find valid command at position 2",
        ),
        (
            "route",
            {"response_headers_to_add": [h("x", "%PER_REQUEST_STATE(k)%")]},
            "routes[0].response_headers_to_add[0].header.value",
            "Envoy's %FILTER_STATE% command operator is not implemented by legatus yet",
        ),
    ],
)
def test_header_mutation_errors(where, document, path, message):
    route = direct("r", **document) if where == "route" else direct("r")
    vh = vhost([route], **(document if where == "vhost" else {}))
    error = config_error({"name": "rc", "virtual_hosts": [vh]})
    assert error.path == f"route_config.virtual_hosts[0].{path}"
    assert error.message == message


def test_literal_values_are_not_formatted_per_request():
    t = table(
        {
            "name": "rc",
            "virtual_hosts": [vhost([direct("r", response_headers_to_add=[h("x", "a%%b")])])],
        }
    )
    (entry,) = t.virtual_hosts[0].routes[0].response_headers[0].to_add
    assert entry.value == "a%b" and entry.formatter is None


def test_raw_value_is_not_the_value_of_a_route_header_mutation():
    """Envoy 1.40 formats ``value`` only: ``raw_value`` alone is an empty value."""
    raw = {"key": "x-raw", "raw_value": "cmF3"}  # b"raw"
    headers = [
        {"header": raw},
        {"header": {**raw, "key": "x-raw-keep"}, "keep_empty_value": True},
        {"header": {**raw, "key": "x-both", "value": "value"}},
    ]
    t = table(
        {"name": "rc", "virtual_hosts": [vhost([direct("r", request_headers_to_add=headers)])]}
    )
    route = t.route(request(), 0)
    headers_out = request()
    route.finalize_request_headers(headers_out, info())
    assert "x-raw" not in headers_out
    assert headers_out.get("x-raw-keep") == ""
    assert headers_out.get("x-both") == "value"
