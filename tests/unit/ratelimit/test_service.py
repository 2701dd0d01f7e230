"""The rate limit service: config loading, tree matching, window math, responses."""

from __future__ import annotations

import pytest
from envoy.service.ratelimit.v3 import rls_pb2

from legatus.ratelimit.backends import MemoryBackend
from legatus.ratelimit.config import RateLimitConfigError, compile_config, load_config
from legatus.ratelimit.service import RateLimitService, RequestError, cache_key, window

R = rls_pb2.RateLimitResponse
CONFIG = {
    "domain": "d",
    "descriptors": [
        {"key": "remote_address", "rate_limit": {"unit": "second", "requests_per_unit": 2}},
        {"key": "path", "value": "/login", "rate_limit": {"unit": "MINUTE", "requests_per_unit": 1,
                                                          "name": "login"}},
        {"key": "path", "value": "/api/*", "rate_limit": {"unit": "hour", "requests_per_unit": 1}},
        {"key": "path", "value": "/shadow", "shadow_mode": True,
         "rate_limit": {"unit": "second", "requests_per_unit": 0}},
        {"key": "path", "value": "/free", "rate_limit": {"unlimited": True}},
        {"key": "user", "descriptors": [
            {"key": "plan", "value": "gold", "rate_limit": {"unit": "day", "requests_per_unit": 3}},
        ]},
        {"key": "a", "rate_limit": {"unit": "second", "requests_per_unit": 1, "name": "a"}},
        {"key": "b", "rate_limit": {"unit": "second", "requests_per_unit": 5, "name": "b",
                                    }, "replaces": [{"name": "a"}]},
    ],
}  # fmt: skip


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make(now: float = 1_700_000_000.5):
    clock = Clock(now)
    return RateLimitService(compile_config([("t", CONFIG)]), MemoryBackend(clock), clock), clock


def req(*descriptors, hits: int = 0) -> rls_pb2.RateLimitRequest:
    r = rls_pb2.RateLimitRequest(domain="d", hits_addend=hits)
    for entries in descriptors:
        d = r.descriptors.add()
        for k, v in entries:
            d.entries.add(key=k, value=v)
    return r


def test_window_math():
    assert window(1_700_000_007, 60) == (1_699_999_980, 33)
    assert window(120, 60) == (120, 60)
    assert window(59, 1) == (59, 1)
    d = req([("k", "v"), ("k2", "v2")]).descriptors[0]
    assert cache_key("dom", d.entries, 120) == "dom_k_v_k2_v2_120"


async def test_fixed_window_counts_and_resets():
    service, clock = make(1_000_000_000.0)
    r1 = await service.should_rate_limit(req([("remote_address", "1.2.3.4")]))
    assert r1.overall_code == R.OK
    s = r1.statuses[0]
    assert (s.current_limit.requests_per_unit, s.current_limit.unit) == (2, R.RateLimit.SECOND)
    assert (s.limit_remaining, s.duration_until_reset.seconds) == (1, 1)
    r2 = await service.should_rate_limit(req([("remote_address", "1.2.3.4")]))
    assert (r2.overall_code, r2.statuses[0].limit_remaining) == (R.OK, 0)
    r3 = await service.should_rate_limit(req([("remote_address", "1.2.3.4")]))
    assert (r3.overall_code, r3.statuses[0].code) == (R.OVER_LIMIT, R.OVER_LIMIT)
    other = await service.should_rate_limit(req([("remote_address", "5.6.7.8")]))
    assert other.overall_code == R.OK
    clock.now += 1
    again = await service.should_rate_limit(req([("remote_address", "1.2.3.4")]))
    assert again.overall_code == R.OK


async def test_minute_window_reset_and_names():
    service, _ = make(999_999_970.0)  # 10 s into a minute
    r = await service.should_rate_limit(req([("path", "/login")]))
    s = r.statuses[0]
    assert (s.current_limit.name, s.duration_until_reset.seconds, s.limit_remaining) == (
        "login", 50, 0)  # fmt: skip
    r = await service.should_rate_limit(req([("path", "/login")]))
    assert r.overall_code == R.OVER_LIMIT


async def test_no_match_wildcards_nested_shadow_unlimited():
    service, _ = make()
    r = await service.should_rate_limit(req([("path", "/nothing")], [("other", "x")]))
    assert r.overall_code == R.OK
    assert [s.HasField("current_limit") for s in r.statuses] == [False, False]
    assert (await service.should_rate_limit(req([("path", "/api/x")]))).overall_code == R.OK
    # A wildcard value counts each value apart (the key has the request's value).
    assert (await service.should_rate_limit(req([("path", "/api/y")]))).overall_code == R.OK
    assert (await service.should_rate_limit(req([("path", "/api/x")]))).overall_code == (
        R.OVER_LIMIT)  # fmt: skip
    shadow = await service.should_rate_limit(req([("path", "/shadow")]))
    assert (shadow.overall_code, shadow.statuses[0].limit_remaining) == (R.OK, 0)
    free = await service.should_rate_limit(req([("path", "/free")]))
    assert free.overall_code == R.OK and not free.statuses[0].HasField("current_limit")
    gold = req([("user", "u1"), ("plan", "gold")])
    codes = [(await service.should_rate_limit(gold)).overall_code for _ in range(4)]
    assert codes == [R.OK, R.OK, R.OK, R.OVER_LIMIT]
    assert (await service.should_rate_limit(req([("user", "u1")]))).statuses[0].HasField(
        "current_limit") is False  # fmt: skip


async def test_hits_addend_and_replaces():
    service, _ = make()
    r = await service.should_rate_limit(req([("remote_address", "9.9.9.9")], hits=3))
    assert r.overall_code == R.OVER_LIMIT
    r = await service.should_rate_limit(req([("a", "1")], [("b", "1")]))
    assert not r.statuses[0].HasField("current_limit")  # replaced by b
    assert r.statuses[1].current_limit.name == "b"


async def test_bad_requests():
    service, _ = make()
    with pytest.raises(RequestError):
        await service.should_rate_limit(rls_pb2.RateLimitRequest(domain=""))
    with pytest.raises(RequestError):
        await service.should_rate_limit(rls_pb2.RateLimitRequest(domain="d"))


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"descriptors": []}, "empty domain"),
        ({"domain": "d", "descriptors": [{"key": "k", "rate_limit": {"unit": "fortnight",
          "requests_per_unit": 1}}]}, "invalid rate limit unit"),
        ({"domain": "d", "descriptors": [{"key": "k"}, {"key": "k"}]}, "duplicate"),
        ({"domain": "d", "descriptors": [{"key": "k", "detailed_metric": True}]},
         "detailed_metric"),
        ({"domain": "d", "quota": 1}, "key 'quota' is not supported"),
    ],
)  # fmt: skip
def test_config_errors(doc, message):
    with pytest.raises(RateLimitConfigError, match=message):
        compile_config([("f.yaml", doc)])


def test_load_directory(tmp_path):
    (tmp_path / "a.yaml").write_text("domain: a\ndescriptors: []\n")
    (tmp_path / "b.yml").write_text("domain: b\n")
    assert set(load_config(str(tmp_path)).domains) == {"a", "b"}
    (tmp_path / "c.yaml").write_text("domain: a\n")
    with pytest.raises(RateLimitConfigError, match="duplicate domain"):
        load_config(str(tmp_path))
