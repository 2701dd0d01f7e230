import pytest
from google.protobuf import any_pb2, struct_pb2
from xds.type.v3 import typed_struct_pb2

from legatus.config.errors import ConfigError
from legatus.extensions.registry import default_registry
from legatus.registry import Category

TCP = "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"


def _any(message) -> any_pb2.Any:
    a = any_pb2.Any()
    a.Pack(message)
    return a


def test_resolves_by_type_url():
    from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

    registry = default_registry()
    ext, config = registry.resolve(
        Category.NETWORK_FILTER,
        name="anything",
        typed_config=_any(tcp_proxy_pb2.TcpProxy(stat_prefix="p", cluster="c")),
        path="f",
    )
    assert ext.name == "envoy.filters.network.tcp_proxy"
    assert config.stat_prefix == "p"


def test_typed_struct_names_the_real_type():
    ts = typed_struct_pb2.TypedStruct(type_url=f"type.googleapis.com/{TCP}")
    ts.value.update({"stat_prefix": "p", "cluster": "c"})
    _, config = default_registry().resolve(
        Category.NETWORK_FILTER, name="x", typed_config=_any(ts), path="f"
    )
    assert config.cluster == "c"


def test_opaque_config_falls_back_to_name():
    ext, _ = default_registry().resolve(
        Category.NETWORK_FILTER,
        name="envoy.filters.network.echo",
        typed_config=_any(struct_pb2.Struct()),
        path="f",
    )
    assert ext.name == "envoy.filters.network.echo"


def test_unknown_extension_names_path_and_type():
    from envoy.extensions.filters.network.mongo_proxy.v3 import mongo_proxy_pb2

    with pytest.raises(ConfigError) as e:
        default_registry().resolve(
            Category.NETWORK_FILTER,
            name="envoy.filters.network.mongo_proxy",
            typed_config=_any(mongo_proxy_pb2.MongoProxy(stat_prefix="m")),
            path="static_resources.listeners[0].filter_chains[0].filters[0]",
        )
    assert str(e.value).startswith(
        "static_resources.listeners[0].filter_chains[0].filters[0].typed_config: unsupported "
        "extension type.googleapis.com/envoy.extensions.filters.network.mongo_proxy.v3.MongoProxy"
    )


def test_missing_typed_config_is_envoys_error():
    with pytest.raises(ConfigError, match="Didn't find a registered implementation for 'x'"):
        default_registry().resolve(Category.NETWORK_FILTER, name="x", typed_config=None, path="f")
