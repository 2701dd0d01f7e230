"""The local rate limit and RBAC filter extensions: config refusals, metadata, stats."""

from __future__ import annotations

import random
import types

import pytest
from envoy.extensions.filters.http.local_ratelimit.v3 import local_rate_limit_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac_pb2
from envoy.extensions.filters.network.connection_limit.v3 import connection_limit_pb2
from envoy.extensions.filters.network.local_ratelimit.v3 import (
    local_rate_limit_pb2 as net_lrl_pb2,
)
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as net_rbac_pb2

from legatus.config.errors import ConfigError
from legatus.config.factory_context import FactoryContext
from legatus.config.proto_json import parse
from legatus.extensions.filters.http.local_ratelimit.filter import (
    LocalRateLimitFilter,
    compile_config,
)
from legatus.extensions.filters.http.rbac.filter import RbacFilter
from legatus.extensions.filters.http.rbac.filter import compile_config as compile_rbac
from legatus.extensions.registry import default_registry
from legatus.http.filter import FilterHeadersStatus
from legatus.http.headers import HeaderMap
from legatus.stats.store import Store
from legatus.stream_info import ResponseFlag, StreamInfo


def context(store: Store | None = None) -> FactoryContext:
    return FactoryContext(
        registry=default_registry(),
        store=store if store is not None else Store(),
        options=None,  # type: ignore[arg-type]
        random=random.Random(1),
        http_stat_prefix="ing",
        http_filter_name="f",
    )


class Callbacks:
    """The decoder callbacks a filter uses: stream info, route, connection, local reply."""

    def __init__(self) -> None:
        self.stream_info = StreamInfo(now_monotonic=0.0)
        self.stream_info.downstream_local_address = "127.0.0.1:80"
        self.stream_info.downstream_remote_address = "10.0.0.1:1234"
        self.stream_info.downstream_direct_remote_address = "127.0.0.1:1234"
        connection_info = StreamInfo(now_monotonic=0.0)
        connection_info.downstream_remote_address = "127.0.0.1:1234"
        self.stream = types.SimpleNamespace(
            connection=types.SimpleNamespace(stream_info=connection_info, ssl=None)
        )
        self.route = None
        self.replies: list = []

    def send_local_reply(self, status, body=b"", *, details, flags=0, modify_headers=None,
                         headers=None) -> None:  # fmt: skip
        self.stream_info.response_code_details = details
        if flags:
            self.stream_info.set_flags(flags)
        reply = HeaderMap([(":status", str(status))])
        if modify_headers:
            modify_headers(reply)
        self.replies.append((status, body, details, list(reply.items())))


def request(path: str = "/", *headers) -> HeaderMap:
    return HeaderMap([(":method", "GET"), (":path", path), (":authority", "x"), *headers])


def lrl(document: dict):
    return compile_config(
        parse(document, local_rate_limit_pb2.LocalRateLimit), context(), "typed_config"
    )


@pytest.mark.parametrize(
    ("document", "path"),
    [
        ({"stat_prefix": "x", "descriptors": [{"entries": [{"key": "a", "value": "b"}],
                                               "token_bucket": {"max_tokens": 1}}]},
         "typed_config.descriptors[0].token_bucket.fill_interval"),
        ({"stat_prefix": "x", "local_rate_limit_per_downstream_connection": True,
          "descriptors": [{"entries": [{"key": "a", "value": "b"}],
                           "token_bucket": {"max_tokens": 1, "fill_interval": "1s"}}]},
         "typed_config.descriptors"),
        ({"stat_prefix": "x", "token_bucket": {"max_tokens": 1, "fill_interval": "0.01s"}},
         "typed_config.token_bucket.fill_interval"),
        ({"stat_prefix": "x", "rate_limited_as_resource_exhausted": True},
         "typed_config.rate_limited_as_resource_exhausted"),
    ],
)  # fmt: skip
def test_local_ratelimit_refuses(document, path):
    with pytest.raises(ConfigError) as e:
        lrl(document)
    assert e.value.path == path


def test_local_ratelimit_limits_with_envoys_reply():
    config = lrl({
        "stat_prefix": "p", "status": {"code": 302},
        "token_bucket": {"max_tokens": 1, "fill_interval": "60s"},
        "filter_enabled": {"default_value": {"numerator": 100}},
        "filter_enforced": {"default_value": {"numerator": 100}},
        "response_headers_to_add": [{"header": {"key": "x-rl", "value": "1"}}],
    })  # fmt: skip
    results = []
    for _ in range(2):
        f = LocalRateLimitFilter(config, "f")
        callbacks = Callbacks()
        f.set_decoder_filter_callbacks(callbacks)
        results.append((f.decode_headers(request(), True), callbacks))
    assert results[0][0] is FilterHeadersStatus.CONTINUE
    status, callbacks = results[1]
    assert status is FilterHeadersStatus.STOP_ITERATION
    assert callbacks.replies == [
        (429, b"local_rate_limited", "local_rate_limited", [(":status", "429"), ("x-rl", "1")])
    ]
    assert callbacks.stream_info.has_flag(ResponseFlag.RATE_LIMITED)
    assert config.stats.rate_limited.value == 1 and config.stats.ok.value == 1


def test_local_ratelimit_off_without_filter_enabled():
    config = lrl({"stat_prefix": "p", "token_bucket": {"max_tokens": 0, "fill_interval": "1s"}})
    f = LocalRateLimitFilter(config, "f")
    f.set_decoder_filter_callbacks(Callbacks())
    assert f.decode_headers(request(), True) is FilterHeadersStatus.CONTINUE
    assert config.stats.enabled.value == 0


class Connection:
    """A downstream connection, as far as per-connection buckets see it."""


def test_local_ratelimit_per_connection_buckets_are_not_the_plain_path():
    # A shared bucket with filter_enabled at 100 % takes the short path; per-connection
    # buckets do not, and each connection still gets its own bucket.
    enabled = {"default_value": {"numerator": 100}}
    shared = lrl({"stat_prefix": "s", "filter_enabled": enabled,
                  "token_bucket": {"max_tokens": 1, "fill_interval": "60s"}})  # fmt: skip
    assert shared.plain and shared.always_enabled
    config = lrl({"stat_prefix": "p", "filter_enabled": enabled,
                  "local_rate_limit_per_downstream_connection": True,
                  "token_bucket": {"max_tokens": 1, "fill_interval": "60s"}})  # fmt: skip
    assert not config.plain
    first, second = Connection(), Connection()  # (buckets are kept per weak reference)
    for connection in (first, first, second):  # the first connection's second request: none
        f = LocalRateLimitFilter(config, "f", per_route=False)
        callbacks = Callbacks()
        callbacks.stream.connection = connection
        f.set_decoder_filter_callbacks(callbacks)
        assert f.decode_headers(request(), True) is FilterHeadersStatus.CONTINUE  # not enforced
    assert config.stats.ok.value == 2 and config.stats.rate_limited.value == 1


def test_rbac_metadata_and_details():
    store = Store()
    proto = parse({
        "rules_stat_prefix": "r_", "shadow_rules_stat_prefix": "s_",
        "rules": {"action": "DENY", "policies": {"bad one": {
            "permissions": [{"url_path": {"path": {"exact": "/bad"}}}],
            "principals": [{"remote_ip": {"address_prefix": "10.0.0.0", "prefix_len": 8}}]}}},
        "shadow_rules": {"action": "ALLOW", "policies": {}},
    }, http_rbac_pb2.RBAC)  # fmt: skip
    config = compile_rbac(proto, context(store), "typed_config")
    f = RbacFilter(config, "f")
    callbacks = Callbacks()
    f.set_decoder_filter_callbacks(callbacks)
    assert f.decode_headers(request("/bad?x"), True) is FilterHeadersStatus.STOP_ITERATION
    assert callbacks.replies[0][:3] == (
        403, b"RBAC: access denied", "rbac_access_denied_matched_policy[bad_one]")  # fmt: skip
    assert callbacks.stream_info.dynamic_metadata == {"envoy.filters.http.rbac": {
        "s_shadow_engine_result": "denied", "r_enforced_engine_result": "denied",
        "r_enforced_effective_policy_id": "bad one"}}  # fmt: skip
    assert store.value("http.ing.rbac.r_.denied") == 1
    assert store.value("http.ing.rbac.s_.shadow_denied") == 1


@pytest.mark.parametrize(
    ("cls", "document", "path"),
    [
        (http_rbac_pb2.RBAC, {"matcher": {}}, "typed_config.matcher.matcher_type"),
        (http_rbac_pb2.RBAC, {"track_per_rule_stats": True}, "typed_config.track_per_rule_stats"),
        (net_rbac_pb2.RBAC, {"stat_prefix": "x", "delay_deny": "1s"}, "typed_config.delay_deny"),
        (net_lrl_pb2.LocalRateLimit, {"stat_prefix": "x", "share_key": "k",
                                      "token_bucket": {"max_tokens": 1, "fill_interval": "1s"}},
         "typed_config.share_key"),
        (connection_limit_pb2.ConnectionLimit, {"stat_prefix": "x", "max_connections": 1},
         None),
    ],
)  # fmt: skip
def test_extensions_refuse_by_path(cls, document, path):
    registry = default_registry()
    extension = next(e for e in registry.extensions() if cls.DESCRIPTOR.full_name
                     in e.config_types)  # fmt: skip
    proto = parse(document, cls)
    if path is None:
        assert extension.factory(proto, context(), "typed_config") is not None
        return
    with pytest.raises(ConfigError) as e:
        extension.factory(proto, context(), "typed_config")
    assert e.value.path == path
