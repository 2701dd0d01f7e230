"""PGV rule checking on Envoy's own protos, with the messages Envoy 1.40 prints.

The expected message texts were checked against `envoy --mode validate`, which reports e.g.
``Proto constraint validation failed (ClusterValidationError.Name: value length must be at
least 1 characters)``; the paths are legatus's own (YAML field names).
"""

from __future__ import annotations

import pytest
from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2, base_pb2, extension_pb2, protocol_pb2
from envoy.config.rbac.v3 import rbac_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.http.ratelimit.v3 import rate_limit_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2  # noqa: F401 (Any parsing)
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from google.protobuf import (
    any_pb2,
    descriptor_pb2,
    descriptor_pool,
    duration_pb2,
    json_format,
    message_factory,
)
from validate import validate_pb2

from legatus.config.validate import validate_message
from legatus.config.validate_rules import compile_check, go_duration, go_float

HCM_TYPE = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"


def parse(message_cls, data):
    message = message_cls()
    json_format.ParseDict(data, message)
    return message


def errors(message, path=""):
    return [str(e) for e in validate_message(message, path)]


def cluster(**overrides):
    data = {
        "name": "backend",
        "connect_timeout": "1s",
        "type": "STATIC",
        "load_assignment": {
            "cluster_name": "backend",
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {
                                    "socket_address": {"address": "127.0.0.1", "port_value": 8080}
                                }
                            }
                        }
                    ]
                }
            ],
        },
    }
    data.update(overrides)
    return data


def hcm(**overrides):
    data = {
        "@type": f"{HCM_TYPE}.HttpConnectionManager",
        "stat_prefix": "ingress_http",
        "route_config": {
            "name": "local_route",
            "virtual_hosts": [
                {
                    "name": "backend",
                    "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "backend"}}],
                }
            ],
        },
        "http_filters": [
            {
                "name": "envoy.filters.http.router",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                },
            }
        ],
    }
    data.update(overrides)
    return data


def bootstrap(clusters=None, listeners=None, **overrides):
    data = {
        "static_resources": {
            "clusters": [cluster()] if clusters is None else clusters,
            "listeners": listeners or [],
        }
    }
    data.update(overrides)
    return parse(bootstrap_pb2.Bootstrap, data)


def listener(filters):
    return {
        "name": "listener_0",
        "address": {"socket_address": {"address": "0.0.0.0", "port_value": 10000}},
        "filter_chains": [{"filters": filters}],
    }


# Whole bootstraps


def test_valid_full_bootstrap_has_no_violations():
    config = bootstrap(
        clusters=[
            cluster(
                lb_policy="ROUND_ROBIN",
                health_checks=[
                    {
                        "timeout": "1s",
                        "interval": "5s",
                        "unhealthy_threshold": 2,
                        "healthy_threshold": 1,
                        "http_health_check": {"path": "/healthz"},
                    }
                ],
                metadata={"filter_metadata": {"envoy.lb": {"canary": True}}},
            )
        ],
        listeners=[listener([{"name": "envoy.filters.network.hcm", "typed_config": hcm()}])],
        admin={"address": {"socket_address": {"address": "127.0.0.1", "port_value": 9901}}},
        node={"id": "node-1", "cluster": "legatus"},
        stats_flush_interval="5s",
    )
    assert errors(config) == []
    typed = config.static_resources.listeners[0].filter_chains[0].filters[0].typed_config
    inner = hcm_pb2.HttpConnectionManager()
    assert typed.Unpack(inner)
    assert errors(inner, "typed_config") == []


def test_cluster_with_empty_name():
    assert errors(bootstrap([cluster(name="")])) == [
        "static_resources.clusters[0].name: value length must be at least 1 characters"
    ]


def test_cluster_connect_timeout_must_be_positive():
    assert errors(bootstrap([cluster(), cluster(connect_timeout="0s")])) == [
        "static_resources.clusters[1].connect_timeout: value must be greater than 0s"
    ]


def test_every_violation_is_reported():
    config = bootstrap([cluster(name=""), cluster(connect_timeout="0s")])
    config.static_resources.clusters[0].lb_policy = 99
    assert errors(config) == [
        "static_resources.clusters[0].name: value length must be at least 1 characters",
        "static_resources.clusters[0].lb_policy: value must be one of the defined enum values",
        "static_resources.clusters[1].connect_timeout: value must be greater than 0s",
    ]


def test_listener_filter_without_name():
    config = bootstrap(listeners=[listener([{"name": "", "typed_config": hcm()}])])
    assert errors(config) == [
        "static_resources.listeners[0].filter_chains[0].filters[0].name: "
        "value length must be at least 1 characters"
    ]


def test_undefined_enum_value():
    c = parse(cluster_pb2.Cluster, cluster())
    c.type = 42  # open enum: the raw number is kept
    assert errors(c) == ["type: value must be one of the defined enum values"]


def test_deep_uint32_range():
    config = bootstrap([cluster()])
    endpoint = config.static_resources.clusters[0].load_assignment.endpoints[0].lb_endpoints[0]
    endpoint.endpoint.address.socket_address.port_value = 70000
    assert errors(config) == [
        "static_resources.clusters[0].load_assignment.endpoints[0].lb_endpoints[0].endpoint"
        ".address.socket_address.port_value: value must be less than or equal to 65535"
    ]


def test_duration_range_with_both_bounds():
    # Bootstrap.stats_flush_interval: {lt: 300s, gte: 1ms}
    assert errors(bootstrap(stats_flush_interval="300s")) == [
        "stats_flush_interval: value must be inside range [1ms, 5m0s)"
    ]
    assert errors(bootstrap(stats_flush_interval="0.0005s")) == [
        "stats_flush_interval: value must be inside range [1ms, 5m0s)"
    ]
    assert errors(bootstrap(stats_flush_interval="299.999s")) == []


def test_double_range_message_prints_numbers_like_envoy():
    c = parse(cluster_pb2.Cluster, cluster(preconnect_policy={"per_upstream_preconnect_ratio": 5}))
    assert errors(c) == [
        "preconnect_policy.per_upstream_preconnect_ratio: value must be inside range [1, 3]"
    ]


# Containers


def test_repeated_min_items():
    route_config = parse(
        route_pb2.RouteConfiguration,
        {"name": "r", "virtual_hosts": [{"name": "vh", "domains": []}]},
    )
    assert errors(route_config) == [
        "virtual_hosts[0].domains: value must contain at least 1 item(s)"
    ]


def test_repeated_items_header_name_lenient_regex():
    # request_headers_to_remove items: {min_len: 1, HTTP_HEADER_NAME, strict: false}
    route_config = parse(
        route_pb2.RouteConfiguration,
        {
            "virtual_hosts": [
                {
                    "name": "vh",
                    "domains": ["*"],
                    "request_headers_to_remove": ["x-ok", "with space", "bad\nname", ""],
                }
            ]
        },
    )
    removed = "virtual_hosts[0].request_headers_to_remove"
    assert errors(route_config) == [
        f'{removed}[2]: value does not match regex pattern "^[^\\x00\\n\\r]*$"',
        f"{removed}[3]: value length must be at least 1 characters",
    ]


def test_strict_header_regexes():
    # HttpHealthCheck.path: HTTP_HEADER_VALUE, strict (the default)
    c = parse(
        cluster_pb2.Cluster,
        cluster(
            health_checks=[
                {
                    "timeout": "1s",
                    "interval": "1s",
                    "unhealthy_threshold": 1,
                    "healthy_threshold": 1,
                    "http_health_check": {"path": "/a\u0001", "method": "CONNECT"},
                }
            ]
        ),
    )
    check = "health_checks[0].http_health_check"
    assert errors(c) == [
        f'{check}.path: value does not match regex pattern "^[^\\x00-\\b\\n-\\x1f\\x7f]*$"',
        f"{check}.method: value must not be in list [CONNECT]",
    ]
    # override_auto_sni_header: HTTP_HEADER_NAME, strict, ignore_empty
    options = protocol_pb2.UpstreamHttpProtocolOptions()
    assert errors(options) == []
    options.override_auto_sni_header = "x-sni"
    assert errors(options) == []
    options.override_auto_sni_header = "x sni"
    assert errors(options) == [
        "override_auto_sni_header: value does not match regex pattern "
        '"^:?[0-9a-zA-Z!#$%&\'*+-.^_|~`]+$"'
    ]


def test_map_key_rule_and_message_values():
    c = parse(cluster_pb2.Cluster, cluster(metadata={"filter_metadata": {"": {"a": 1}}}))
    assert errors(c) == [
        'metadata.filter_metadata[""]: invalid key: value length must be at least 1 characters'
    ]


def test_required_message_field():
    option = parse(base_pb2.HeaderValueOption, {"append_action": "OVERWRITE_IF_EXISTS"})
    assert errors(option) == ["header: value is required"]
    option.header.key = "x-a\r"
    assert errors(option) == ['header.key: value does not match regex pattern "^[^\\x00\\n\\r]*$"']


def test_string_in_list_prints_like_go():
    config = rate_limit_pb2.RateLimit(domain="d", request_type="sometimes")
    config.rate_limit_service.grpc_service.envoy_grpc.cluster_name = "rls"
    assert errors(config) == ["request_type: value must be in list [internal external both ]"]
    config.request_type = ""
    assert errors(config) == []


# Oneofs


def test_required_oneof_and_string_rules_on_typed_config():
    proxy = tcp_proxy_pb2.TcpProxy()
    assert errors(proxy, "filters[0].typed_config") == [
        "filters[0].typed_config.stat_prefix: value length must be at least 1 characters",
        "filters[0].typed_config: one of cluster or weighted_clusters must be set "
        "(oneof cluster_specifier is required)",
    ]
    proxy.stat_prefix = "tcp"
    proxy.cluster = "backend"
    assert errors(proxy) == []


def test_socket_address_required_port_oneof():
    assert errors(address_pb2.SocketAddress()) == [
        "address: value length must be at least 1 characters",
        "one of port_value or named_port must be set (oneof port_specifier is required)",
    ]
    explicit_zero = parse(address_pb2.SocketAddress, {"address": "::", "port_value": 0})
    assert errors(explicit_zero) == []


def test_unset_oneof_members_are_not_checked():
    proxy = parse(tcp_proxy_pb2.TcpProxy, {"stat_prefix": "t", "cluster": "c"})
    assert not proxy.HasField("weighted_clusters")
    assert errors(proxy) == []
    proxy.weighted_clusters.SetInParent()  # now the set member, with min_items: 1 clusters
    assert errors(proxy) == ["weighted_clusters.clusters: value must contain at least 1 item(s)"]


# Well-known types


def test_wrapper_rules_apply_to_the_value_when_set():
    config = hcm_pb2.HttpConnectionManager(stat_prefix="h")
    config.route_config.name = "r"
    assert errors(config) == []
    config.max_request_headers_kb.value = 9000
    assert errors(config) == ["max_request_headers_kb: value must be inside range (0, 8192]"]
    config.max_request_headers_kb.value = 0  # a set wrapper holding zero is still checked
    assert errors(config) == ["max_request_headers_kb: value must be inside range (0, 8192]"]


def test_any_is_required_but_not_unpacked():
    assert errors(extension_pb2.TypedExtensionConfig(name="x")) == [
        "typed_config: value is required"
    ]
    bad_cluster = any_pb2.Any()
    bad_cluster.Pack(cluster_pb2.Cluster())  # invalid inside, but opaque here
    config = extension_pb2.TypedExtensionConfig(name="x", typed_config=bad_cluster)
    assert errors(config) == []


def test_recursive_types():
    policy = parse(
        rbac_pb2.Policy,
        {
            "permissions": [{"and_rules": {"rules": [{"or_rules": {"rules": [{}]}}]}}],
            "principals": [{"any": True}],
        },
    )
    [error] = validate_message(policy)
    assert error.path == "permissions[0].and_rules.rules[0].or_rules.rules[0]"
    assert error.message.startswith("one of and_rules, or_rules, any, header, ")
    assert error.message.endswith(" must be set (oneof rule is required)")


# Rules Envoy's protos rarely use, on a message built here


def _test_message():
    """A message type carrying the rule shapes not easily found in Envoy's protos."""
    pool = descriptor_pool.Default()
    name = "legatus.test.validate.Probe"
    try:
        return message_factory.GetMessageClass(pool.FindMessageTypeByName(name))
    except KeyError:
        pass
    file = descriptor_pb2.FileDescriptorProto(
        name="legatus/test/validate_probe.proto",
        package="legatus.test.validate",
        syntax="proto3",
        dependency=["google/protobuf/duration.proto", "validate/validate.proto"],
    )
    probe = file.message_type.add(name="Probe")
    T = descriptor_pb2.FieldDescriptorProto

    def field(number, fname, ftype, rules=None, label=T.LABEL_OPTIONAL, **kw):
        f = probe.field.add(name=fname, number=number, type=ftype, label=label, **kw)
        if rules is not None:
            f.options.Extensions[validate_pb2.rules].CopyFrom(rules)
        return f

    R = validate_pb2.FieldRules
    field(1, "crossed", T.TYPE_INT32, R(int32=validate_pb2.Int32Rules(lt=0, gt=10)))
    unique = R(repeated=validate_pb2.RepeatedRules(unique=True))
    field(2, "tags", T.TYPE_STRING, unique, label=T.LABEL_REPEATED)
    opt = field(3, "maybe", T.TYPE_UINT32, R(uint32=validate_pb2.UInt32Rules(gt=5)))
    opt.proto3_optional = True
    opt.oneof_index = 0
    probe.oneof_decl.add(name="_maybe")
    code_rules = validate_pb2.StringRules(ignore_empty=True, len=3, prefix="x")
    field(4, "code", T.TYPE_STRING, R(string=code_rules))
    ttl_rules = validate_pb2.DurationRules(required=True, lte=duration_pb2.Duration(seconds=90))
    field(5, "ttl", T.TYPE_MESSAGE, R(duration=ttl_rules), type_name=".google.protobuf.Duration")
    field(6, "host", T.TYPE_STRING, R(string=validate_pb2.StringRules(address=True)))
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(name))


def test_rule_shapes_on_a_constructed_message():
    Probe = _test_message()
    probe = Probe(crossed=5, tags=["a", "b", "a"], code="yz", host="bad_host!")
    probe.ttl.seconds = 91
    assert errors(probe) == [
        "crossed: value must be outside range [0, 10]",
        "tags[2]: repeated value must contain unique items",
        "code: value must be 3 characters",
        "ttl: value must be less than or equal to 1m30s",
        "host: value must be an ip address, or a hostname.",
    ]
    ok = Probe(crossed=11, tags=["a", "b"], host="::1")
    ok.ttl.seconds = 90
    assert errors(ok) == []  # empty `code` is ignored; unset optional `maybe` is skipped
    ok.maybe = 5
    assert errors(ok) == ["maybe: value must be greater than 5"]
    assert errors(Probe(crossed=-1, host="example.com.")) == ["ttl: value is required"]


@pytest.mark.parametrize(
    ("kind", "rules", "value", "expected"),
    [
        (
            "uint32",
            validate_pb2.UInt32Rules(gte=10, lt=5),
            7,
            "value must be outside range [5, 10)",
        ),
        ("uint32", validate_pb2.UInt32Rules(gte=10, lt=5), 4, None),
        ("int64", validate_pb2.Int64Rules(lte=-1, gt=1), 0, "value must be outside range (-1, 1]"),
        (
            "double",
            validate_pb2.DoubleRules(gte=0.5, lte=1e6),
            2e6,
            "value must be inside range [0.5, 1e+06]",
        ),
        ("uint64", validate_pb2.UInt64Rules(ignore_empty=True, gt=100), 0, None),
        ("int32", validate_pb2.Int32Rules(const=3), 4, "value must equal 3"),
        ("int32", validate_pb2.Int32Rules(**{"in": [1, 2]}), 4, "value must be in list [1 2]"),
        ("bool", validate_pb2.BoolRules(const=True), False, "value must equal true"),
        (
            "string",
            validate_pb2.StringRules(min_bytes=4),
            "é",
            "value length must be at least 4 bytes",
        ),
        (
            "string",
            validate_pb2.StringRules(pattern="^[a-z]+$"),
            "ab\n",
            'value does not match regex pattern "^[a-z]+$"',
        ),
        ("string", validate_pb2.StringRules(suffix="%"), "%x", 'value does not have suffix "%"'),
        (
            "string",
            validate_pb2.StringRules(ipv4=True),
            "::1",
            "value must be a valid IPv4 Address",
        ),
        ("string", validate_pb2.StringRules(uuid=True), "not-a-uuid", "value must be a valid UUID"),
        (
            "bytes",
            validate_pb2.BytesRules(max_len=2),
            b"abc",
            "value length must be at most 2 bytes",
        ),
    ],
)
def test_value_checks(kind, rules, value, expected):
    check = compile_check(kind, rules)
    assert check is not None
    assert check(value) == expected


def test_go_formatting():
    assert [go_duration(ns) for ns in (0, 1_500, 1_000_000, 1_500_000_000, 90 * 10**9)] == [
        "0s",
        "1.5µs",
        "1ms",
        "1.5s",
        "1m30s",
    ]
    assert go_duration(3600 * 10**9) == "1h0m0s"
    assert [go_float(x) for x in (0.0, 3.0, 0.25, 1e6, 1e-5)] == [
        "0",
        "3",
        "0.25",
        "1e+06",
        "1e-05",
    ]


# Scale


def test_two_thousand_clusters_validate_quickly():
    # Not timed here: it takes a few tens of milliseconds (plans are compiled once per type).
    config = bootstrap([cluster(name=f"c{i}", lb_policy="LEAST_REQUEST") for i in range(2000)])
    assert errors(config) == []
    config.static_resources.clusters[1999].name = ""
    assert errors(config) == [
        "static_resources.clusters[1999].name: value length must be at least 1 characters"
    ]


def test_negative_durations_are_refused_anywhere_as_envoy_refuses_them():
    """Envoy's MessageUtil::validateDurationFields: any negative Duration, with its text."""
    from envoy.config.cluster.v3 import cluster_pb2
    from envoy.config.route.v3 import route_pb2

    from legatus.config.validate import validate_message

    cluster = cluster_pb2.Cluster(name="c")
    cluster.connect_timeout.seconds = -1
    error = validate_message(cluster, "resources[0]")[0]  # before PGV's own "greater than 0s"
    assert error.path == "resources[0].connect_timeout"
    assert error.message == "Invalid duration: Expected positive duration: seconds: -1"

    route = route_pb2.RouteConfiguration(name="r")
    vh = route.virtual_hosts.add(name="v", domains=["*"])
    r = vh.routes.add()
    r.match.prefix = "/"
    r.route.cluster = "c"
    r.route.timeout.nanos = -5
    errors = validate_message(route, "")
    assert [e.path for e in errors] == ["virtual_hosts[0].routes[0].route.timeout"]
    r.route.timeout.nanos = 0
    assert validate_message(route, "") == []
