"""Outlier detection of one cluster, decided in the main process (Envoy's Outlier::DetectorImpl).

The workers record each host's outcomes and flush them here (upstream/outlier_reporter.py);
``Detector.on_outcomes`` replays them in order against Envoy's per-host counters:

- consecutive_5xx: every 5xx counts, anything else resets; consecutive_gateway_failure: 502,
  503 and 504 count, anything else resets; consecutive_local_origin_failure (with
  split_external_local_origin_errors): connect failures and timeouts count, connection
  successes reset. Reaching the threshold detects an ejection of that type (the detected
  counter), which is then attempted (``_eject``) unless the host is already ejected, and the
  counter restarts from 0.
- every ``interval``: ejected hosts whose time is up come back (their consecutive counters
  reset); success rate and failure percentage are computed over the previous interval's
  requests (external origin, and local origin when split); a host that was not ejected for a
  whole interval has its ejection backoff lowered by one.
- an attempt ejects only while ``(ejected + 1) / hosts`` stays within max_ejection_percent
  (else ``ejections_overflow``), and only for the ``enforcing_*`` percentage of detections;
  an ejection lasts ``base_ejection_time x backoff`` (the backoff grows by one per ejection,
  up to ``max_ejection_time``), plus a random jitter up to max_ejection_time_jitter.
- with successful_active_health_check_uneject_host (the default), a passing active health
  check brings an ejected host back at once.

Time and randomness are injected; the cluster manager runs the interval timer.
"""

from __future__ import annotations

import enum
import math
import random as _random
from collections.abc import Callable
from dataclasses import dataclass

from envoy.config.cluster.v3 import outlier_detection_pb2

from legatus.config.errors import ConfigError
from legatus.config.supported import check_supported
from legatus.stats.store import Scope, StatSet, counter, gauge
from legatus.upstream.outlier_reporter import ERROR_5XX, GATEWAY, LOCAL_FAILURE, LOCAL_OK, OK

OutlierDetection = outlier_detection_pb2.OutlierDetection

DEFAULT_BASE_EJECTION_TIME = 30.0
DEFAULT_MAX_EJECTION_TIME = 300.0
_SUPPORTED = frozenset(
    f.name for f in OutlierDetection.DESCRIPTOR.fields if f.name not in ("monitors",)
)


class EjectionType(enum.Enum):
    """envoy.data.cluster.v3.OutlierEjectionType, named as in the stats."""

    CONSECUTIVE_5XX = "consecutive_5xx"
    SUCCESS_RATE = "success_rate"
    CONSECUTIVE_GATEWAY_FAILURE = "consecutive_gateway_failure"
    CONSECUTIVE_LOCAL_ORIGIN_FAILURE = "consecutive_local_origin_failure"
    SUCCESS_RATE_LOCAL_ORIGIN = "local_origin_success_rate"
    FAILURE_PERCENTAGE = "failure_percentage"
    FAILURE_PERCENTAGE_LOCAL_ORIGIN = "local_origin_failure_percentage"


class OutlierDetectionStats(StatSet):
    """``cluster.<name>.outlier_detection.*``, kept by the main process (Envoy's names;
    ejections_total, ejections_consecutive_5xx and ejections_success_rate are Envoy's
    deprecated counters, still emitted)."""

    ejections_active = gauge()
    ejections_overflow = counter()
    ejections_enforced_total = counter()
    ejections_total = counter()
    ejections_consecutive_5xx = counter()
    ejections_success_rate = counter()
    ejections_detected_consecutive_5xx = counter()
    ejections_enforced_consecutive_5xx = counter()
    ejections_detected_success_rate = counter()
    ejections_enforced_success_rate = counter()
    ejections_detected_consecutive_gateway_failure = counter()
    ejections_enforced_consecutive_gateway_failure = counter()
    ejections_detected_consecutive_local_origin_failure = counter()
    ejections_enforced_consecutive_local_origin_failure = counter()
    ejections_detected_local_origin_success_rate = counter()
    ejections_enforced_local_origin_success_rate = counter()
    ejections_detected_failure_percentage = counter()
    ejections_enforced_failure_percentage = counter()
    ejections_detected_local_origin_failure_percentage = counter()
    ejections_enforced_local_origin_failure_percentage = counter()
    ejections_detected_degradation = counter()  # detect_degraded_hosts: not implemented


@dataclass(frozen=True, slots=True, kw_only=True)
class OutlierConfig:
    """Envoy's DetectorConfig; times in seconds."""

    interval: float = 10.0
    base_ejection_time: float = 30.0
    max_ejection_time: float = 300.0
    max_ejection_time_jitter: float = 0.0
    max_ejection_percent: int = 10
    always_eject_one_host: bool = False
    consecutive_5xx: int = 5
    consecutive_gateway_failure: int = 5
    consecutive_local_origin_failure: int = 5
    split_external_local_origin_errors: bool = False
    success_rate_minimum_hosts: int = 5
    success_rate_request_volume: int = 100
    success_rate_stdev_factor: int = 1900
    failure_percentage_threshold: int = 85
    failure_percentage_minimum_hosts: int = 5
    failure_percentage_request_volume: int = 50
    enforcing_consecutive_5xx: int = 100
    enforcing_consecutive_gateway_failure: int = 0
    enforcing_consecutive_local_origin_failure: int = 100
    enforcing_success_rate: int = 100
    enforcing_local_origin_success_rate: int = 100
    enforcing_failure_percentage: int = 0
    enforcing_failure_percentage_local_origin: int = 0
    successful_active_health_check_uneject_host: bool = True

    def enforcing(self, kind: EjectionType) -> int:
        return {
            EjectionType.CONSECUTIVE_5XX: self.enforcing_consecutive_5xx,
            EjectionType.CONSECUTIVE_GATEWAY_FAILURE: self.enforcing_consecutive_gateway_failure,
            EjectionType.CONSECUTIVE_LOCAL_ORIGIN_FAILURE: (
                self.enforcing_consecutive_local_origin_failure
            ),
            EjectionType.SUCCESS_RATE: self.enforcing_success_rate,
            EjectionType.SUCCESS_RATE_LOCAL_ORIGIN: self.enforcing_local_origin_success_rate,
            EjectionType.FAILURE_PERCENTAGE: self.enforcing_failure_percentage,
            EjectionType.FAILURE_PERCENTAGE_LOCAL_ORIGIN: (
                self.enforcing_failure_percentage_local_origin
            ),
        }[kind]


_WRAPPED_INTS = (
    "consecutive_5xx",
    "consecutive_gateway_failure",
    "consecutive_local_origin_failure",
    "max_ejection_percent",
    "success_rate_minimum_hosts",
    "success_rate_request_volume",
    "success_rate_stdev_factor",
    "failure_percentage_threshold",
    "failure_percentage_minimum_hosts",
    "failure_percentage_request_volume",
    "enforcing_consecutive_5xx",
    "enforcing_consecutive_gateway_failure",
    "enforcing_consecutive_local_origin_failure",
    "enforcing_success_rate",
    "enforcing_local_origin_success_rate",
    "enforcing_failure_percentage",
    "enforcing_failure_percentage_local_origin",
)


def _ms(d) -> float:
    return (d.seconds * 1000 + d.nanos // 1_000_000) / 1000


def compile_outlier_detection(proto: OutlierDetection, path: str) -> OutlierConfig:
    if proto.monitors:
        raise ConfigError(
            f"{path}.monitors", "outlier detection monitors are not supported by legatus yet"
        )
    check_supported(proto, _SUPPORTED, path, "OutlierDetection")
    values: dict = {}
    for name in _WRAPPED_INTS:
        if proto.HasField(name):
            values[name] = getattr(proto, name).value
    for name in ("always_eject_one_host", "successful_active_health_check_uneject_host"):
        if proto.HasField(name):
            values[name] = getattr(proto, name).value
    values["split_external_local_origin_errors"] = proto.split_external_local_origin_errors
    for name in ("interval", "base_ejection_time", "max_ejection_time_jitter"):
        if proto.HasField(name):
            values[name] = _ms(getattr(proto, name))
    base = values.get("base_ejection_time", DEFAULT_BASE_EJECTION_TIME)
    if proto.HasField("max_ejection_time"):
        values["max_ejection_time"] = _ms(proto.max_ejection_time)
    else:
        values["max_ejection_time"] = max(DEFAULT_MAX_EJECTION_TIME, base)
    if values["max_ejection_time"] < base:
        raise ConfigError(
            f"{path}.max_ejection_time",
            "outlier detector's max_ejection_time cannot be smaller than base_ejection_time",
        )
    return OutlierConfig(**values)


class _Bucket:
    """Success-rate counts: the interval being written and the previous one (read)."""

    __slots__ = ("prev_success", "prev_total", "success", "total")

    def __init__(self) -> None:
        self.success = self.total = self.prev_success = self.prev_total = 0

    def swap(self) -> None:
        self.prev_success, self.prev_total = self.success, self.total
        self.success = self.total = 0

    def rate(self) -> tuple[float, int] | None:
        if not self.prev_total:
            return None
        return self.prev_success * 100.0 / self.prev_total, self.prev_total


class HostMonitor:
    """What the detector knows of one host (Envoy's DetectorHostMonitorImpl)."""

    __slots__ = ("backoff", "consecutive_5xx", "consecutive_gateway", "consecutive_local",
                 "ejected", "external", "jitter", "last_ejection", "last_unejection",
                 "local", "local_success_rate", "num_ejections", "success_rate")  # fmt: skip

    def __init__(self) -> None:
        self.consecutive_5xx = 0
        self.consecutive_gateway = 0
        self.consecutive_local = 0
        self.external = _Bucket()
        self.local = _Bucket()
        self.ejected = False
        self.num_ejections = 0
        self.backoff = 0
        self.jitter = 0.0
        self.last_ejection: float | None = None
        self.last_unejection: float | None = None
        self.success_rate = -1.0  # for /clusters; -1: not computed
        self.local_success_rate = -1.0


class Detector:
    def __init__(
        self,
        config: OutlierConfig,
        *,
        scope: Scope,
        clock: Callable[[], float],
        rng: _random.Random,
        on_change: Callable[[], None],
    ) -> None:
        self.config = config
        self.stats = OutlierDetectionStats(scope.scope("outlier_detection."))
        self._clock = clock
        self._rng = rng
        self._on_change = on_change
        self.hosts: dict[str, HostMonitor] = {}
        self.success_rate_average = -1.0
        self.success_rate_ejection_threshold = -1.0
        self.local_success_rate_average = -1.0
        self.local_success_rate_ejection_threshold = -1.0

    # Membership ----------------------------------------------------------------------

    def set_hosts(self, addresses) -> None:
        wanted = set(addresses)
        for address in list(self.hosts):
            if address not in wanted and self.hosts.pop(address).ejected:
                self.stats.ejections_active.dec()
        for address in addresses:
            if address not in self.hosts:
                self.hosts[address] = HostMonitor()

    def ejected(self, address: str) -> bool:
        monitor = self.hosts.get(address)
        return monitor is not None and monitor.ejected

    # Reports from the workers -----------------------------------------------------------

    def on_outcomes(self, address: str, runs: list[int]) -> None:
        """Replay one worker's outcome sequence for ``address``."""
        monitor = self.hosts.get(address)
        if monitor is None:
            return  # removed meanwhile
        config = self.config
        for i in range(0, len(runs) - 1, 2):
            symbol, count = runs[i], runs[i + 1]
            if symbol == OK:
                monitor.external.total += count
                monitor.external.success += count
                monitor.consecutive_5xx = monitor.consecutive_gateway = 0
            elif symbol in (GATEWAY, ERROR_5XX):
                monitor.external.total += count
                if symbol == GATEWAY:
                    self._count(
                        address, monitor, "consecutive_gateway", count,
                        config.consecutive_gateway_failure,
                        EjectionType.CONSECUTIVE_GATEWAY_FAILURE,
                    )  # fmt: skip
                else:
                    monitor.consecutive_gateway = 0
                self._count(
                    address, monitor, "consecutive_5xx", count, config.consecutive_5xx,
                    EjectionType.CONSECUTIVE_5XX,
                )  # fmt: skip
            elif symbol == LOCAL_OK:
                monitor.local.total += count
                monitor.local.success += count
                monitor.consecutive_local = 0
            elif symbol == LOCAL_FAILURE:
                monitor.local.total += count
                self._count(
                    address, monitor, "consecutive_local", count,
                    config.consecutive_local_origin_failure,
                    EjectionType.CONSECUTIVE_LOCAL_ORIGIN_FAILURE,
                )  # fmt: skip

    def _count(
        self,
        address: str,
        monitor: HostMonitor,
        attr: str,
        count: int,
        threshold: int,
        kind: EjectionType,
    ) -> None:
        """Add ``count`` errors to a consecutive counter, acting each time it reaches
        ``threshold`` exactly (Envoy's ``++counter == threshold``)."""
        value = getattr(monitor, attr)
        while count:
            need = threshold - value
            if need <= 0 or count < need:
                value += count
                break
            value += need
            count -= need
            setattr(monitor, attr, value)
            if not monitor.ejected:
                self._detected(kind)
                if kind is EjectionType.CONSECUTIVE_5XX:
                    self.stats.ejections_consecutive_5xx.inc()  # deprecated
                self._eject(address, monitor, kind)
                value = 0
        setattr(monitor, attr, value)

    # Health checking ------------------------------------------------------------------

    def on_health_check_passed(self, address: str, hc_healthy: bool) -> None:
        monitor = self.hosts.get(address)
        if (
            self.config.successful_active_health_check_uneject_host
            and monitor is not None
            and monitor.ejected
            and hc_healthy
        ):
            self._uneject(monitor)
            self._on_change()

    # The interval timer ---------------------------------------------------------------

    def on_interval(self) -> None:
        now = self._clock()
        config = self.config
        changed = False
        for monitor in self.hosts.values():
            if monitor.ejected:
                duration = min(
                    config.base_ejection_time * monitor.backoff, config.max_ejection_time
                )
                if duration + monitor.jitter <= now - monitor.last_ejection:
                    self._uneject(monitor)
                    changed = True
            monitor.external.swap()
            monitor.local.swap()
            monitor.success_rate = monitor.local_success_rate = -1.0
        if self._success_rate_ejections(local=False):
            changed = True
        if self._success_rate_ejections(local=True):
            changed = True
        for monitor in self.hosts.values():
            if (
                not monitor.ejected
                and monitor.last_unejection is not None
                and now - monitor.last_unejection >= config.interval
                and monitor.backoff
            ):
                monitor.backoff -= 1
        if changed:
            self._on_change()

    def _success_rate_ejections(self, *, local: bool) -> bool:
        config = self.config
        if local:
            self.local_success_rate_average = self.local_success_rate_ejection_threshold = -1.0
        else:
            self.success_rate_average = self.success_rate_ejection_threshold = -1.0
        hosts = self.hosts
        if (
            len(hosts) < config.success_rate_minimum_hosts
            and len(hosts) < config.failure_percentage_minimum_hosts
        ):
            return False
        sr_hosts: list[tuple[str, HostMonitor, float]] = []
        fp_hosts: list[tuple[str, HostMonitor, float]] = []
        volume_floor = min(
            config.success_rate_request_volume, config.failure_percentage_request_volume
        )
        for address, monitor in hosts.items():
            if monitor.ejected:
                continue
            got = (monitor.local if local else monitor.external).rate()
            if got is None:
                continue
            rate, volume = got
            if volume >= volume_floor:
                if local:
                    monitor.local_success_rate = rate
                else:
                    monitor.success_rate = rate
            if volume >= config.success_rate_request_volume:
                sr_hosts.append((address, monitor, rate))
            if volume >= config.failure_percentage_request_volume:
                fp_hosts.append((address, monitor, rate))
        ejected = False
        if sr_hosts and len(sr_hosts) >= config.success_rate_minimum_hosts:
            rates = [r for _, _, r in sr_hosts]
            mean = sum(rates) / len(rates)
            stdev = math.sqrt(sum((r - mean) ** 2 for r in rates) / len(rates))
            threshold = mean - config.success_rate_stdev_factor / 1000.0 * stdev
            if local:
                self.local_success_rate_average = mean
                self.local_success_rate_ejection_threshold = threshold
            else:
                self.success_rate_average = mean
                self.success_rate_ejection_threshold = threshold
            kind = EjectionType.SUCCESS_RATE_LOCAL_ORIGIN if local else EjectionType.SUCCESS_RATE
            for address, monitor, rate in sr_hosts:
                if rate < threshold:
                    self.stats.ejections_success_rate.inc()  # deprecated
                    self._detected(kind)
                    ejected |= self._eject(address, monitor, kind)
        if fp_hosts and len(fp_hosts) >= config.failure_percentage_minimum_hosts:
            kind = (
                EjectionType.FAILURE_PERCENTAGE_LOCAL_ORIGIN
                if local
                else EjectionType.FAILURE_PERCENTAGE
            )
            for address, monitor, rate in fp_hosts:
                if 100.0 - rate >= config.failure_percentage_threshold:
                    self._detected(kind)
                    ejected |= self._eject(address, monitor, kind)
        return ejected

    # Ejection ----------------------------------------------------------------------------

    def _detected(self, kind: EjectionType) -> None:
        getattr(self.stats, f"ejections_detected_{kind.value}").inc()

    def _eject(self, address: str, monitor: HostMonitor, kind: EjectionType) -> bool:
        """Try to eject (within max_ejection_percent, if enforced); True if ejected."""
        if monitor.ejected:  # success rate and failure percentage may both pick a host
            return False
        config = self.config
        active = self.stats.ejections_active.value
        percent = 100.0 * (active + 1) / len(self.hosts)
        should = percent <= min(100, config.max_ejection_percent)
        if config.always_eject_one_host and active == 0:
            should = True
        if not should:
            self.stats.ejections_overflow.inc()
            return False
        if kind in (EjectionType.CONSECUTIVE_5XX, EjectionType.SUCCESS_RATE):
            self.stats.ejections_total.inc()  # deprecated
        if self._rng.random() * 100 >= config.enforcing(kind):
            return False
        self.stats.ejections_active.inc()
        self.stats.ejections_enforced_total.inc()
        getattr(self.stats, f"ejections_enforced_{kind.value}").inc()
        monitor.ejected = True
        monitor.num_ejections += 1
        monitor.last_ejection = self._clock()
        jitter_ms = round(config.max_ejection_time_jitter * 1000)
        monitor.jitter = self._rng.randrange(jitter_ms + 1) / 1000
        if monitor.backoff * config.base_ejection_time < (
            config.max_ejection_time + config.base_ejection_time
        ):
            monitor.backoff += 1
        self._on_change()
        return True

    def _uneject(self, monitor: HostMonitor) -> None:
        self.stats.ejections_active.dec()
        monitor.ejected = False
        monitor.consecutive_5xx = monitor.consecutive_gateway = monitor.consecutive_local = 0
        monitor.last_unejection = self._clock()
