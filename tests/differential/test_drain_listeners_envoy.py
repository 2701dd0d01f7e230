"""Admin /drain_listeners and /healthcheck/fail, differential: the same listeners (no
traffic_direction, INBOUND, OUTBOUND, drain_type MODIFY_ONLY) through the real Envoy 1.40
and legatus, the same admin calls, and what a client sees on each listener afterwards: does
it accept a connection, does a response say ``connection: close``. Stats and admin answers
are compared too.

``immediate`` makes every observation certain; the ``gradual`` scenario looks only at its two
certain phases (the first second: no close; from half the drain time on: every response).
"""

from __future__ import annotations

import time

from tests.integration.test_drain import Client, accepts, http_listener, settle
from tests.support.process import envoy_command, start_proxy, wait_for

NAMES = ("plain", "inbound", "outbound", "modify_only")
ADMIN = {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}}
STATS = ("listener_manager.listener_stopped", "listener_manager.total_listeners_active",
         "server.state")  # fmt: skip


def _config() -> dict:
    return {
        "admin": ADMIN,
        "static_resources": {
            "listeners": [
                http_listener("plain"),
                http_listener("inbound", traffic_direction="INBOUND"),
                http_listener("outbound", traffic_direction="OUTBOUND"),
                http_listener("modify_only", drain_type="MODIFY_ONLY"),
            ]
        },
    }


def _start(name: str, tmp_path, args: list[str]):
    command = envoy_command() if name == "envoy" else None
    return start_proxy(_config(), tmp_path / name, command=command,
                       args=["--concurrency", "1", *args])  # fmt: skip


def _closes(ports: dict[str, int]) -> dict[str, bool | None]:
    """Per listener: whether a response on a new connection says close (None: refused)."""
    out: dict[str, bool | None] = {}
    for name, port in ports.items():
        if not accepts(port):
            out[name] = None
            continue
        client = Client(port)
        try:
            out[name] = client.get()
        finally:
            client.close()
    return out


def _settled(proxy, ports, expected_refused: set[str]) -> None:
    """Workers stop listeners a moment after the admin answer, in both proxies."""
    wait_for(lambda: {n for n, p in ports.items() if not accepts(p)} >= expected_refused,
             timeout=3, what="the listeners stopped")  # fmt: skip


def _immediate_scenario(proxy) -> list:
    ports = {name: proxy.listener_port(name) for name in NAMES}
    seen: list = []

    def step(what: str, call: tuple | None = None) -> None:
        answer = None
        if call:
            answer = proxy.admin(call[0], method=call[1])
            settle()
        seen.append((what, answer, _closes(ports)))

    step("start")
    step("healthcheck/fail", ("/healthcheck/fail", "POST"))
    step("healthcheck/ok", ("/healthcheck/ok", "POST"))
    step("GET", ("/drain_listeners", "GET"))
    step("graceful inbound", ("/drain_listeners?graceful&inboundonly", "POST"))
    step("graceful inbound again", ("/drain_listeners?graceful&inboundonly", "POST"))
    _settled(proxy, ports, {"inbound"})
    step("after the drain time")
    step("skip_exit", ("/drain_listeners?skip_exit", "POST"))
    time.sleep(2.2)
    step("skip_exit after the drain time")
    answer = proxy.admin("/drain_listeners", method="POST")
    _settled(proxy, ports, set(NAMES))
    seen.append(("stop all", answer, _closes(ports)))
    stats = proxy.stats()
    seen.append(("stats", {name: stats.get(name) for name in STATS}))
    return seen


def test_drain_listeners_as_envoy(tmp_path):
    args = ["--drain-time-s", "2", "--drain-strategy", "immediate"]
    runs = {}
    for name in ("envoy", "legatus"):
        proxy = _start(name, tmp_path, args)
        try:
            runs[name] = _immediate_scenario(proxy)
        finally:
            proxy.stop()
    for envoy, legatus in zip(runs["envoy"], runs["legatus"], strict=True):
        assert envoy == legatus, f"envoy: {envoy}\nlegatus: {legatus}"
    # What the scenario shows (Envoy's behaviour, checked equal above).
    steps = {s[0]: s for s in runs["envoy"]}
    assert steps["healthcheck/fail"][2] == {
        "plain": True, "inbound": True, "outbound": True, "modify_only": False}  # fmt: skip
    assert steps["graceful inbound"][2]["inbound"] is True
    assert steps["after the drain time"][2]["inbound"] is None


def _gradual_scenario(proxy) -> list:
    ports = {name: proxy.listener_port(name) for name in NAMES}
    clients = {name: [Client(port) for _ in range(5)] for name, port in ports.items()}
    seen: list = []
    try:
        seen.append(proxy.admin("/drain_listeners?skip_exit&inboundonly", method="POST"))
        t0 = time.monotonic()
        early = {name: False for name in NAMES}
        while time.monotonic() - t0 < 0.8:
            for name, group in clients.items():
                early[name] |= any(c.get() for c in group)
        seen.append(("first second", early))
        time.sleep(max(0.0, t0 + 2.3 - time.monotonic()))  # ramp over ceil(4 / 2) = 2 s
        seen.append(("from half the drain time", {
            name: [c.get() for c in group] for name, group in clients.items()}))  # fmt: skip
        time.sleep(max(0.0, t0 + 4.5 - time.monotonic()))
        seen.append(("after the drain time", {n: accepts(p) for n, p in ports.items()}))
    finally:
        for group in clients.values():
            for c in group:
                c.close()
    return seen


def test_gradual_drain_as_envoy(tmp_path):
    runs = {}
    for name in ("envoy", "legatus"):
        proxy = _start(name, tmp_path, ["--drain-time-s", "4"])
        try:
            runs[name] = _gradual_scenario(proxy)
        finally:
            proxy.stop()
    assert runs["envoy"] == runs["legatus"]
    assert runs["envoy"][1] == ("first second", dict.fromkeys(NAMES, False))
    assert runs["envoy"][2][1]["inbound"] == [True] * 5
    assert runs["envoy"][2][1]["plain"] == [False] * 5
