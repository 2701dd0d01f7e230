"""/server_info and /memory: Envoy 1.40's field set and field order."""

from __future__ import annotations

import json
import os

import pytest

from legatus.server.admin.memory import memory


async def test_server_info_shape(admin, context):
    context.start_time -= 42.7
    status, content_type, body = await admin("/server_info")
    assert (status, content_type) == (200, "application/json")
    info = json.loads(body)
    # Envoy prints these keys in this order, then hot_restart_initializing.
    assert list(info) == [
        "version",
        "state",
        "uptime_current_epoch",
        "uptime_all_epochs",
        "hot_restart_version",
        "command_line_options",
        "node",
        "hot_restart_initializing",
    ]
    assert info["version"].split("/")[1:] == ["1.40.0", "Clean", "RELEASE", "OpenSSL"]
    assert info["state"] == "LIVE"
    assert info["uptime_current_epoch"] == info["uptime_all_epochs"] == "42s"
    assert info["hot_restart_version"] == "11.104"
    assert info["hot_restart_initializing"] is False
    options = info["command_line_options"]
    assert options["concurrency"] == 2 and options["config_yaml"] == ""  # zero values print
    assert list(options)[:3] == ["base_id", "concurrency", "config_path"]  # field-number order
    node = info["node"]
    assert node["id"] == "probe-node" and node["cluster"] == "probe-cluster"
    assert node["user_agent_name"] == "envoy"
    assert node["user_agent_build_version"]["version"] == {
        "major_number": 1,
        "minor_number": 40,
        "patch": 0,
    }
    assert set(node["user_agent_build_version"]["metadata"]) == {
        "revision.sha",
        "revision.status",
        "build.type",
        "ssl.version",
    }
    assert body.startswith('{\n "version": ') and body.endswith("}\n")


@pytest.mark.parametrize(
    ("failed", "state", "expected"),
    [(False, "DRAINING", "DRAINING"), (True, "LIVE", "DRAINING"), (False, "LIVE", "LIVE")],
)
async def test_server_info_state(admin, context, failed, state, expected):
    context.healthcheck_failed = failed
    context.state = type(context.state)[state]
    _, _, body = await admin("/server_info")
    assert json.loads(body)["state"] == expected


async def test_memory_fields_in_envoys_order(admin):
    status, content_type, body = await admin("/memory")
    assert (status, content_type) == (200, "application/json")
    data = json.loads(body)
    assert list(data) == [
        "allocated",
        "heap_size",
        "pageheap_unmapped",
        "pageheap_free",
        "total_thread_cache",
        "total_physical_bytes",
    ]
    assert all(isinstance(v, str) for v in data.values())  # uint64 prints as a string
    assert int(data["total_physical_bytes"]) >= int(data["allocated"]) > 0


def test_memory_from_statm(tmp_path):
    statm = tmp_path / "statm"
    statm.write_text("1000 300 100 10 0 500 0\n")
    m = memory(str(statm))
    page = os.sysconf("SC_PAGE_SIZE")
    assert (m.allocated, m.heap_size, m.total_physical_bytes) == (
        200 * page,
        500 * page,
        300 * page,
    )
