"""RouteAction.upgrade_configs and connect_matcher, compiled into the route table."""

from __future__ import annotations

from legatus.http.headers import HeaderMap
from legatus.router.upgrade import ConnectConfig, is_websocket_upgrade, uses_tcp_upstream
from tests.unit.router.support import (
    config_error,
    direct,
    forward,
    request,
    route_name,
    routes_config,
    table,
)

ROUTE = "route_config.virtual_hosts[0].routes[0]"


def _connect(authority: str = "example.com:443", **headers: str) -> HeaderMap:
    """A CONNECT as the HTTP/1 codec hands it over: no :path."""
    items = [(":method", "CONNECT"), (":authority", authority), ("x-forwarded-proto", "http")]
    return HeaderMap(items + [(k.replace("_", "-"), v) for k, v in headers.items()])


def test_upgrade_configs_compile_to_a_map_by_lower_case_type():
    action = {"cluster": "c1", "upgrade_configs": [
        {"upgrade_type": "WebSocket"}, {"upgrade_type": "foo", "enabled": False},
        {"upgrade_type": "CONNECT", "connect_config": {"allow_post": True}}]}  # fmt: skip
    route = table(routes_config([forward("r", action)])).virtual_hosts[0].routes[0]
    assert dict(route.action.upgrade_map) == {"websocket": True, "foo": False, "connect": True}
    assert route.action.connect_config == ConnectConfig(allow_post=True)


def test_a_route_without_upgrade_configs_says_nothing():
    route = table(routes_config([forward("r", {"cluster": "c1"})])).virtual_hosts[0].routes[0]
    assert not route.action.upgrade_map and route.action.connect_config is None


def test_upgrade_config_errors_are_envoys():
    twice = [{"upgrade_type": "websocket"}, {"upgrade_type": "WEBSOCKET"}]
    error = config_error(routes_config([forward("r", {"cluster": "c1", "upgrade_configs": twice})]))
    assert (error.path, error.message) == (
        f"{ROUTE}.route.upgrade_configs[1]",
        "Duplicate upgrade WEBSOCKET",
    )
    not_connect = [{"upgrade_type": "websocket", "connect_config": {}}]
    error = config_error(
        routes_config([forward("r", {"cluster": "c1", "upgrade_configs": not_connect})])
    )
    assert error.path == f"{ROUTE}.route.upgrade_configs[0].connect_config"
    assert error.message == "Non-CONNECT upgrade type websocket has ConnectConfig"


def test_what_legatus_does_not_do_is_refused_by_name():
    proxy_protocol = [{"upgrade_type": "CONNECT", "connect_config": {"proxy_protocol_config": {}}}]
    error = config_error(
        routes_config([forward("r", {"cluster": "c1", "upgrade_configs": proxy_protocol})])
    )
    assert error.path == f"{ROUTE}.route.upgrade_configs[0].connect_config.proxy_protocol_config"
    assert "not supported by legatus" in error.message


def test_connect_matcher_routes_match_connect_only():
    tagged = {"connect_matcher": {}, "headers": [{"name": "x-target", "exact_match": "a"}]}
    routes = [
        forward("tagged", {"cluster": "c1"}, tagged),
        forward("connect", {"cluster": "c2"}, {"connect_matcher": {}}),
        direct("any", {"prefix": ""}),
    ]
    t = table(routes_config(routes))
    assert t.route(_connect(x_target="a"), 0).name == "tagged"
    assert t.route(_connect(), 0).name == "connect"
    assert route_name(t, path="/") == "any"  # not a CONNECT: the connect routes pass


def test_a_connect_without_a_connect_route_has_no_route():
    t = table(routes_config([direct("any", {"prefix": ""})]))
    assert t.route(_connect(), 0) is None


def test_which_requests_go_over_tcp():
    connect = ConnectConfig()
    post = ConnectConfig(allow_post=True)
    assert uses_tcp_upstream(connect, _connect())
    assert not uses_tcp_upstream(None, _connect())
    assert not uses_tcp_upstream(connect, request(method="POST"))
    assert uses_tcp_upstream(post, request(method="POST"))
    assert not uses_tcp_upstream(post, request(method="GET"))


def test_websocket_upgrades_are_told_apart():
    upgrade = (("connection", "keep-alive, Upgrade"), ("upgrade", "WebSocket"))
    assert is_websocket_upgrade(request(headers=upgrade))
    assert not is_websocket_upgrade(request(headers=(("upgrade", "websocket"),)))
    assert not is_websocket_upgrade(request(headers=(("connection", "upgrade"), ("upgrade", "x"))))
