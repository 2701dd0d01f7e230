"""The HCM's path options left unset take their defaults from the runtime, once, when the
configuration loads (``http_connection_manager.normalize_path``,
``http_connection_manager.path_with_escaped_slashes_action`` and
``http_connection_manager.path_with_escaped_slashes_action_enabled``), Envoy against
legatus."""

from __future__ import annotations

from tests.differential.http_scenario import (  # noqa: F401 (fixtures)
    Cluster,
    Listener,
    http_pair_fixture,
    http_pair_processes_fixture,
    scenario,
)

BOOTSTRAP = {"layered_runtime": {"layers": [{"name": "static", "static_layer": {
    "http_connection_manager.normalize_path": 100,
    "http_connection_manager.path_with_escaped_slashes_action": 2,
}}]}}  # fmt: skip
ROUTES = [{"match": {"prefix": "/"}, "route": {"cluster": "pnr"}}]


def _each_alone(listener: str, paths: list[str]):
    return lambda side: [side.request(listener, "GET", p).view() for p in paths]


def _upstream_paths(side) -> list[str]:
    return [r["request"].split(" ")[1] for r in side.upstream]


@scenario(Listener(name="pnr_defaults", routes=ROUTES), Cluster(name="pnr"))
def test_runtime_defaults(http_pair):
    out = http_pair.run(_each_alone("pnr_defaults", ["/a/../b", "/a%2Fb", "/a/%41"]))
    assert _upstream_paths(out.envoy) == ["/b", "/a/A"]
    out.assert_same()


@scenario(
    Listener(name="pnr_explicit", routes=ROUTES,
             hcm={"normalize_path": False, "path_with_escaped_slashes_action": "KEEP_UNCHANGED"}),
    Cluster(name="pnr"),
)  # fmt: skip
def test_explicit_options_win(http_pair):
    out = http_pair.run(_each_alone("pnr_explicit", ["/a/../b", "/a%2Fb"]))
    assert _upstream_paths(out.envoy) == ["/a/../b", "/a%2Fb"]
    out.assert_same()
