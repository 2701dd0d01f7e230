import os

import pytest

from legatus.server.options import OptionsError, parse


def test_envoy_defaults():
    o = parse(["-c", "envoy.yaml"])
    assert o.concurrency == (os.cpu_count() or 1)
    assert (o.drain_time_s, o.parent_shutdown_time_s, o.drain_strategy) == (600, 900, "gradual")
    assert (o.file_flush_interval_msec, o.local_address_ip_version) == (10000, "v4")
    assert (o.log_level, o.mode, o.restart_epoch, o.base_id) == ("info", "serve", 0, 0)
    assert o.log_format == "[%Y-%m-%d %T.%e][%t][%l][%n] [%g:%#] %v"
    assert o.unimplemented == ()


def test_concurrency_zero_means_one_and_cpuset():
    assert parse(["--concurrency", "0"]).concurrency == 1
    assert parse(["--cpuset-threads"]).concurrency == len(os.sched_getaffinity(0))


def test_flags_without_a_feature_are_listed():
    o = parse(["--drain-strategy", "immediate", "--base-id", "3", "--disable-hot-restart"])
    assert [flag for flag, _ in o.unimplemented] == ["--base-id"]


def test_stats_tags_and_warn_alias():
    o = parse(["--stats-tag", "a:b", "--stats-tag", "c:d", "-l", "warn"])
    assert o.stats_tags == (("a", "b"), ("c", "d"))
    assert o.log_level == "warning"
    with pytest.raises(OptionsError, match="misformatted stats-tag"):
        parse(["--stats-tag", "nocolon"])


def test_command_line_options_proto():
    o = parse(["-c", "x.yaml", "--concurrency", "3", "--service-node", "n", "--mode", "validate"])
    p = o.to_proto()
    assert (p.concurrency, p.config_path, p.service_node) == (3, "x.yaml", "n")
    assert p.mode == p.Validate
    assert p.drain_time.seconds == 600
