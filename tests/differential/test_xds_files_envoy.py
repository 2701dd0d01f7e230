"""CDS from a file, legatus against Envoy 1.40: the same reloads (a file moved over the
watched path, Envoy's contract), the same traffic and the same cluster_manager.cds.* stats,
including for a file that does not parse."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import httpx
import yaml

from tests.integration.test_xds_files import bootstrap, cds_file
from tests.support.http_upstream import HttpUpstream
from tests.support.process import envoy_command, start_proxy, wait_for

STATS = (
    "cluster_manager.cds.update_attempt",
    "cluster_manager.cds.update_success",
    "cluster_manager.cds.update_failure",
    "cluster_manager.cds.update_rejected",
    "cluster_manager.cds.version_text",
    "cluster_manager.active_clusters",
    "cluster_manager.cluster_added",
    "cluster_manager.cluster_modified",
)


def run(workdir, command, a: HttpUpstream, b: HttpUpstream) -> list:
    """Bring-up, a moved-in new file, a moved-in broken file; what is seen after each."""
    data = workdir / "data"
    data.mkdir(parents=True)
    path = data / "cds.yaml"
    path.write_text(cds_file("1", a.port))
    proxy = start_proxy(bootstrap(str(path)), workdir / "proxy", command=command)
    seen = []
    try:
        port = proxy.listener_port("http")

        def served() -> str:
            before_a, before_b = len(a.requests), len(b.requests)
            code = httpx.get(f"http://127.0.0.1:{port}/", timeout=5).status_code
            upstream = (
                "a" if len(a.requests) > before_a else "b" if len(b.requests) > before_b else "-"
            )
            return f"{code} {upstream}"

        def snapshot() -> dict:
            stats = proxy.stats()
            return {name: stats.get(name) for name in STATS}

        seen.append((served(), snapshot()))
        for version, text in (("2", cds_file("2", b.port)), ("3", "resources: [")):
            tmp = data / "cds.yaml.tmp"
            tmp.write_text(text)
            os.replace(tmp, path)
            key = "update_success" if version == "2" else "update_failure"
            wait_for(lambda k=key: (proxy.stats().get(f"cluster_manager.cds.{k}") or 0) >= 1
                     + (k == "update_success"), timeout=10, what=f"version {version}")  # fmt: skip
            seen.append((served(), snapshot()))
    finally:
        proxy.stop()
    return seen


def test_cds_file_reloads_alike(tmp_path):
    ups = [HttpUpstream() for _ in range(4)]
    try:
        with ThreadPoolExecutor(2) as pool:
            envoy = pool.submit(run, tmp_path / "envoy", envoy_command(), ups[0], ups[1])
            legatus = pool.submit(run, tmp_path / "legatus", None, ups[2], ups[3])
            envoy, legatus = envoy.result(), legatus.result()
    finally:
        for u in ups:
            u.close()
    shown = yaml.safe_dump({"envoy": envoy, "legatus": legatus}, default_flow_style=None)
    assert [s for s, _ in envoy] == ["200 a", "200 b", "200 b"], shown
    assert envoy == legatus, shown
