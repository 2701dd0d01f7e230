"""Runtime-backed switches compiled once: ``RuntimeFractionalPercent`` and ``RuntimeFeatureFlag``.

``FractionalPercentFlag`` answers Envoy's ``featureEnabled(runtime_key, default_value)``
(the runtime value replaces the default; see ``legatus.runtime.Snapshot.feature_enabled``)
with a fresh random number per call, except when the answer cannot vary (no runtime key and
a default of 0 % or 100 %): then no random number is drawn. ``FeatureFlag`` answers
``runtime.getBoolean(runtime_key, default_value)``.
"""

from __future__ import annotations

import random as _random
from typing import Any

_DENOMINATORS = {0: 100, 1: 10_000, 2: 1_000_000}


class FractionalPercentFlag:
    __slots__ = ("constant", "denominator", "key", "numerator", "random", "runtime")

    def __init__(self, proto, *, runtime: Any, rng: _random.Random, unset: bool) -> None:
        """``proto`` is a RuntimeFractionalPercent or None; ``unset`` is the answer then."""
        self.runtime = runtime
        self.random = rng
        if proto is None:
            self.key, self.numerator, self.denominator = "", 100 if unset else 0, 100
        else:
            self.key = proto.runtime_key
            self.numerator = proto.default_value.numerator
            self.denominator = _DENOMINATORS.get(proto.default_value.denominator, 100)
        self.constant: bool | None = None
        if not self.key or runtime is None:
            if self.numerator >= self.denominator:
                self.constant = True
            elif self.numerator == 0:
                self.constant = False

    def enabled(self) -> bool:
        constant = self.constant
        if constant is not None:
            return constant
        value = self.random.getrandbits(64)
        if self.runtime is None:
            return value % self.denominator < self.numerator
        return self.runtime.feature_enabled(self.key, self.numerator, self.denominator, value)


class FeatureFlag:
    __slots__ = ("default", "key", "runtime")

    def __init__(self, proto, *, runtime: Any, unset: bool) -> None:
        """``proto`` is a RuntimeFeatureFlag or None; ``unset`` is the answer then."""
        self.runtime = runtime
        if proto is None:
            self.key, self.default = "", unset
        else:
            self.key = proto.runtime_key
            self.default = proto.default_value.value if proto.HasField("default_value") else unset

    def enabled(self) -> bool:
        if self.runtime is None or not self.key:
            return self.default
        return self.runtime.get_boolean(self.key, self.default)
