"""The token bucket: starts full, refills continuously from the injected clock."""

from __future__ import annotations

import pytest

from legatus.common.token_bucket import TokenBucket


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def bucket(clock, max_tokens=3, tokens_per_fill=1, fill_interval=1.0) -> TokenBucket:
    return TokenBucket(
        max_tokens=max_tokens,
        tokens_per_fill=tokens_per_fill,
        fill_interval=fill_interval,
        clock=clock,
    )


def test_starts_full_and_empties():
    clock = Clock()
    b = bucket(clock)
    assert [b.consume() for _ in range(4)] == [True, True, True, False]
    assert b.remaining_tokens() == 0


def test_refills_continuously_up_to_max():
    clock = Clock()
    b = bucket(clock, max_tokens=2, tokens_per_fill=2, fill_interval=1.0)
    assert b.consume() and b.consume() and not b.consume()
    clock.now += 0.25  # half a token
    assert not b.consume()
    clock.now += 0.25
    assert b.consume()
    clock.now += 100
    assert b.remaining_tokens() == 2  # never above max_tokens


def test_a_refused_request_takes_nothing():
    clock = Clock()
    b = bucket(clock, max_tokens=1, fill_interval=1.0)
    assert b.consume()
    clock.now += 0.9
    assert not b.consume()
    clock.now += 0.1
    assert b.consume()


def test_reset_seconds_is_envoys_estimate():
    clock = Clock()
    b = bucket(clock, max_tokens=1, tokens_per_fill=1, fill_interval=10.0)
    assert b.reset_seconds() == 0
    b.consume()
    assert b.reset_seconds() == 10  # a whole token's time, as Envoy reports it
    assert bucket(clock, max_tokens=1, tokens_per_fill=3, fill_interval=1.0).next_token_ms() == 0


def test_zero_max_tokens_refuses_everything():
    clock = Clock()
    b = bucket(clock, max_tokens=0)
    clock.now += 10
    assert not b.consume()


def test_fill_interval_must_be_positive():
    with pytest.raises(ValueError):
        bucket(Clock(), fill_interval=0)


def test_full_bucket_does_not_overfill_while_idle():
    # A full bucket left idle stays at exactly max_tokens: after a long idle spell it still
    # gives max_tokens tokens, not one more.
    clock = Clock()
    b = bucket(clock, max_tokens=2, tokens_per_fill=1, fill_interval=1.0)
    clock.now += 3600.0
    assert [b.consume() for _ in range(3)] == [True, True, False]
    assert b.remaining_tokens() == 0
