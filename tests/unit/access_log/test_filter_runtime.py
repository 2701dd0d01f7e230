"""Access-log filters that read the runtime, RuntimeFilter's request-id randomness, and the
gRPC status filter's reading of odd ``grpc-status`` values.

Decisions marked "real Envoy" were observed with envoy 1.40.0: a file access log behind a
runtime_filter (50/HUNDRED, key ``al.sample``), with and without a static runtime layer
``al.sample: 10``, for requests carrying the x-request-ids below.
"""

from __future__ import annotations

import random

import pytest
from envoy.config.accesslog.v3 import accesslog_pb2
from google.protobuf import json_format

from legatus.access_log.access_log import compile_filter, request_id_integer
from legatus.config.factory_context import FactoryContext
from legatus.registry import Registry
from legatus.server.options import Options
from legatus.stats.store import Store
from legatus.stream_info import StreamInfo


class FakeRuntime:
    """The runtime's reading interface: integers by key, with a default."""

    def __init__(self, values: dict[str, int]) -> None:
        self.values = values
        self.asked: list[str] = []

    def get_integer(self, key: str, default: int) -> int:
        self.asked.append(key)
        return self.values.get(key, default)

    def feature_enabled(self, key, default_numerator, default_denominator, random_value) -> bool:
        raise AssertionError("access-log filters use get_integer, as Envoy's do")


class CountingRandom(random.Random):
    def __init__(self) -> None:
        super().__init__(7)
        self.draws = 0

    def getrandbits(self, k: int) -> int:
        self.draws += 1
        return super().getrandbits(k)


def context(runtime=None, rng=None) -> FactoryContext:
    return FactoryContext(
        registry=Registry(),
        store=Store(),
        options=Options(),
        random=rng or random.Random(1),
        runtime=runtime,
    )


def flt(document: dict, ctx=None):
    proto = json_format.ParseDict(document, accesslog_pb2.AccessLogFilter())
    return compile_filter(proto, "f", ctx or context())


def info(**fields) -> StreamInfo:
    result = StreamInfo(now_monotonic=10.0, now_wall=1795708919.0)
    result.end_monotonic = 10.25
    for name, value in fields.items():
        setattr(result, name, value)
    return result


def comparison(kind: str, op: str, default: int, key: str = "al.key") -> dict:
    return {
        kind: {"comparison": {"op": op, "value": {"default_value": default, "runtime_key": key}}}
    }


# ComparisonFilter --------------------------------------------------------------------------


def test_status_code_filter_reads_its_runtime_key_at_each_evaluation():
    runtime = FakeRuntime({})
    f = flt(comparison("status_code_filter", "GE", 500), context(runtime))
    assert not f.evaluate(info(response_code=404), None, None, None)
    runtime.values["al.key"] = 400  # /runtime_modify: takes effect at once
    assert f.evaluate(info(response_code=404), None, None, None)
    assert runtime.asked == ["al.key", "al.key"]


def test_duration_filter_with_a_runtime_override_like_real_envoy():
    runtime = FakeRuntime({"al.dur": 0})
    f = flt(comparison("duration_filter", "GE", 100000, "al.dur"), context(runtime))
    assert f.evaluate(info(), None, None, None)  # real Envoy: every request logged
    assert not flt(comparison("duration_filter", "GE", 100000, "al.dur")).evaluate(
        info(), None, None, None
    )


def test_comparison_without_runtime_key_never_asks_the_runtime():
    runtime = FakeRuntime({"": 0})
    f = flt(
        {"status_code_filter": {"comparison": {"op": "EQ", "value": {"default_value": 200}}}},
        context(runtime),
    )
    assert f.evaluate(info(response_code=200), None, None, None)
    assert runtime.asked == []


# RuntimeFilter -----------------------------------------------------------------------------

HALF = {
    "runtime_filter": {
        "runtime_key": "al.sample",
        "percent_sampled": {"numerator": 50, "denominator": "HUNDRED"},
    }
}


@pytest.mark.parametrize(
    ("request_id", "logged"),
    [  # real Envoy
        ("00000031-x", True),  # 0x31 = 49 < 50
        ("00000032-x", False),  # 50
        ("0x000031", True),  # strtoull reads the 0x prefix
        ("-0000001", True),  # wraps to 2**64 - 1: % 100 = 15
        ("00000063", False),  # 99
        ("00000009", True),
        ("0000000a", True),
        ("0000000A", True),
    ],
)
def test_runtime_filter_samples_by_request_id_like_real_envoy(request_id, logged):
    rng = CountingRandom()
    f = flt(HALF, context(rng=rng))
    assert f.evaluate(info(), {"x-request-id": request_id}, None, None) is logged
    assert rng.draws == 0  # the request id is the random number


@pytest.mark.parametrize(
    ("request_id", "logged"),
    [("00000009", True), ("0000000a", False), ("00000031-x", False)],  # real Envoy
)
def test_runtime_key_is_a_numerator_over_the_filters_denominator(request_id, logged):
    f = flt(HALF, context(FakeRuntime({"al.sample": 10})))
    assert f.evaluate(info(), {"x-request-id": request_id}, None, None) is logged


def test_runtime_numerator_is_capped_at_the_denominator():
    f = flt(HALF, context(FakeRuntime({"al.sample": 10**6})))
    assert f.evaluate(info(), {"x-request-id": "00000063"}, None, None)


def test_independent_randomness_and_unreadable_ids_draw_a_number():
    rng = CountingRandom()
    independent = {"runtime_filter": {**HALF["runtime_filter"], "use_independent_randomness": True}}
    f = flt(independent, context(rng=rng))
    f.evaluate(info(), {"x-request-id": "00000031-x"}, None, None)
    assert rng.draws == 1
    g = flt(HALF, context(rng=rng))
    for headers in (None, {}, {"x-request-id": "short"}, {"x-request-id": "zzzzzzzz-x"}):
        g.evaluate(info(), headers, None, None)
    assert rng.draws == 5


def test_same_request_id_same_decision_in_every_log():
    filters = [flt(HALF, context(rng=random.Random(seed))) for seed in range(5)]
    decisions = {f.evaluate(info(), {"x-request-id": "0000002a-..."}, None, None) for f in filters}
    assert decisions == {True}  # 42 < 50, whatever each log's own random source


@pytest.mark.parametrize(
    ("request_id", "value"),
    [
        ("d8d53be3-8d54-4e71-9630-e3ba4e06001d", 0xD8D53BE3),
        ("0X00001f", 0x1F),
        ("+000001f", 0x1F),
        ("  00001f", 0x1F),
        ("-0000001", 2**64 - 1),
        ("0000001", None),  # fewer than 8 characters
        ("0000001g", None),
        ("0x", None),
        ("0000 001", None),
        (None, None),
    ],
)
def test_request_id_integer_reads_like_strtoull(request_id, value):
    assert request_id_integer(request_id) == value


# GrpcStatusFilter --------------------------------------------------------------------------


def test_grpc_status_filter_treats_odd_values_as_invalid():
    ok = flt({"grpc_status_filter": {"statuses": ["OK"]}})
    unknown = flt({"grpc_status_filter": {"statuses": ["UNKNOWN"]}})
    # Present but empty, or beyond the known codes: Envoy's InvalidCode, matching nothing.
    assert not ok.evaluate(info(), None, {"grpc-status": ""}, None)
    assert not unknown.evaluate(info(), None, {"grpc-status": ""}, None)
    assert not unknown.evaluate(info(), None, {"grpc-status": "17"}, None)
    # No status anywhere and no response code: UNKNOWN.
    assert unknown.evaluate(info(), None, None, None)
    assert ok.evaluate(info(response_code=503), None, None, {"grpc-status": "0"})
