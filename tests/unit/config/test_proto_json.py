import pytest
from envoy.config.bootstrap.v3 import bootstrap_pb2

from legatus.config.errors import ConfigError
from legatus.config.proto_json import parse

TCP = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"


def _listener_with(typed_config):
    return {
        "static_resources": {
            "listeners": [
                {"name": "a"},
                {
                    "name": "b",
                    "filter_chains": [{"filters": [{"name": "f", "typed_config": typed_config}]}],
                },
            ]
        }
    }


@pytest.mark.parametrize(
    ("doc", "path", "text"),
    [
        (
            _listener_with({"@type": TCP, "stat_prefix": "x", "bogus": 1}),
            "static_resources.listeners[1].filter_chains[0].filters[0].typed_config.bogus",
            "unknown field 'bogus'",
        ),
        (
            _listener_with({"@type": TCP, "idle_timeout": "zz"}),
            "static_resources.listeners[1].filter_chains[0].filters[0].typed_config.idle_timeout",
            "Duration",
        ),
        (
            _listener_with({"@type": "type.googleapis.com/envoy.nope.v3.Nope"}),
            "static_resources.listeners[1].filter_chains[0].filters[0].typed_config",
            "unknown type URL",
        ),
        (
            {"static_resources": {"listeners": "x"}},
            "static_resources.listeners[0]",
            "expected an object (envoy.config.listener.v3.Listener), got a string",
        ),
        (
            {"static_resources": {"clusters": [{"name": "c", "connect_timeout": 5}]}},
            "static_resources.clusters[0].connect_timeout",
            "Duration",
        ),
        (
            {"static_resources": {"clusters": [{"name": "c", "type": "NOPE"}]}},
            "static_resources.clusters[0].type",
            "Invalid enum value NOPE",
        ),
    ],
)
def test_errors_name_the_field(doc, path, text):
    with pytest.raises(ConfigError) as e:
        parse(doc, bootstrap_pb2.Bootstrap)
    assert e.value.path == path
    assert text in e.value.message


def test_any_types_are_imported_on_demand():
    b = parse(
        _listener_with({"@type": TCP, "stat_prefix": "x", "cluster": "c"}), bootstrap_pb2.Bootstrap
    )
    assert b.static_resources.listeners[1].filter_chains[0].filters[0].typed_config.type_url == TCP


def test_unknown_fields_can_be_ignored():
    b = parse(
        {"static_resources": {"clusters": [{"name": "c", "nope": 1}]}},
        bootstrap_pb2.Bootstrap,
        ignore_unknown_fields=True,
    )
    assert b.static_resources.clusters[0].name == "c"
