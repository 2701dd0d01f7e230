"""The connection manager's upgrade decision (Envoy's createUpgradeFilterChain table)."""

from __future__ import annotations

import pytest

from legatus.http.headers import HeaderMap
from legatus.http.upgrades import NO_UPGRADE_CONFIGS, UpgradeConfig, UpgradeConfigs, upgrade_type

DEFAULT = ("router",)
OWN = ("fault", "router")


@pytest.mark.parametrize(
    ("hcm", "route", "allowed"),
    [
        # Envoy's table (docs/root/intro/arch_overview/http/upgrades.rst).
        (UpgradeConfig(), None, True),
        (UpgradeConfig(), {"websocket": True}, True),
        (UpgradeConfig(), {"websocket": False}, False),
        (UpgradeConfig(enabled=False), {"websocket": True}, True),
        (UpgradeConfig(enabled=False), None, False),
        (UpgradeConfig(enabled=False), {"other": True}, False),
        (None, {"websocket": True}, True),
        (None, None, False),
    ],
)
def test_the_route_overrides_the_connection_manager(hcm, route, allowed):
    configs = UpgradeConfigs({"websocket": hcm} if hcm is not None else {})
    chain = configs.filter_chain("websocket", route, DEFAULT)
    assert (chain is not None) is allowed
    if allowed:
        assert chain == DEFAULT


def test_types_compare_without_case_and_an_upgrade_may_have_its_own_chain():
    configs = UpgradeConfigs({"websocket": UpgradeConfig(filter_chain=OWN)})
    assert configs.filter_chain("WebSocket", None, DEFAULT) == OWN
    assert configs.filter_chain("websocket", {"websocket": True}, DEFAULT) == OWN
    assert configs.filter_chain("h2c-ish", None, DEFAULT) is None
    assert not NO_UPGRADE_CONFIGS and configs


def test_the_upgrade_type_of_a_request():
    assert upgrade_type(HeaderMap([(":method", "CONNECT"), (":authority", "a:1")])) == "CONNECT"
    websocket = HeaderMap([(":method", "GET"), ("connection", "upgrade"), ("upgrade", "WebSocket")])
    assert upgrade_type(websocket) == "WebSocket"
