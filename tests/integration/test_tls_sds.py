"""SDS from files and static secrets: a listener's certificate rotated on disk (rewritten in
place, or swapped by symlink like a Kubernetes secret volume) is used by new connections
without a restart, while a client keeps connecting; a broken rotation is rejected."""

from __future__ import annotations

import os
import threading
import time

import pytest
import yaml

from tests.support.certs import CA
from tests.support.process import start_proxy, wait_for
from tests.support.tls import DOWNSTREAM, tls_connect

ECHO = "type.googleapis.com/envoy.extensions.filters.network.echo.v3.Echo"
SECRET = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"


def _sds_file(path, cert_path, key_path, name="server_cert") -> None:
    path.write_text(yaml.safe_dump({"resources": [{
        "@type": SECRET, "name": name,
        "tls_certificate": {"certificate_chain": {"filename": str(cert_path)},
                            "private_key": {"filename": str(key_path)}},
    }]}))  # fmt: skip


def _bootstrap(common: dict, secrets: list | None = None) -> dict:
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "secrets": secrets or [],
            "listeners": [{
                "name": "tls",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                "filter_chains": [{
                    "filters": [{"name": "envoy.filters.network.echo",
                                 "typed_config": {"@type": ECHO}}],
                    "transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": {
                        "@type": DOWNSTREAM, "common_tls_context": common}},
                }],
            }],
        },
    }  # fmt: skip


def _serial(port: int, ctx) -> int:
    conn = tls_connect(port, ctx)
    conn.sendall(b"x")
    assert conn.recv(10) == b"x"
    der = conn.getpeercert(binary_form=True)
    conn.close()
    from cryptography import x509

    return x509.load_der_x509_certificate(der).serial_number


@pytest.fixture
def ca():
    return CA()


def _client(ca, tmp_path):
    import ssl

    ctx = ssl.create_default_context(cafile=str(ca.write(tmp_path / "ca.pem")))
    return ctx


def test_rotation_in_place_while_connecting(tmp_path, ca):
    first = ca.issue("localhost", serial=1001)
    cert_path, key_path = first.write(tmp_path, "srv")
    sds = tmp_path / "sds.yaml"
    _sds_file(sds, cert_path, key_path)
    common = {
        "tls_certificate_sds_secret_configs": [
            {"name": "server_cert", "sds_config": {"path_config_source": {"path": str(sds)}}}
        ]
    }
    proxy = start_proxy(_bootstrap(common), tmp_path / "legatus", args=["--concurrency", "2"])
    ctx = _client(ca, tmp_path)
    seen: list[int] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def keep_connecting(port):
        while not stop.is_set():
            try:
                seen.append(_serial(port, ctx))
            except Exception as e:  # any failed connection fails the test
                errors.append(e)
            time.sleep(0.01)

    try:
        port = proxy.listener_port("tls")
        assert _serial(port, ctx) == 1001
        worker = threading.Thread(target=keep_connecting, args=(port,))
        worker.start()
        time.sleep(0.3)
        second = ca.issue("localhost", serial=1002)
        # Rewritten in place (the same inodes), the key first: a half-done rotation is
        # rejected and retried, never served.
        key_path.write_bytes(second.key_pem)
        cert_path.write_bytes(second.chain_pem)
        wait_for(lambda: seen and seen[-1] == 1002, what="the rotated certificate")
        time.sleep(0.3)
        stop.set()
        worker.join(5)
        assert errors == []
        assert set(seen) == {1001, 1002}
        assert seen.index(1002) > 0 and 1001 not in seen[seen.index(1002) + 5 :]
        stats = proxy.stats()
        # A rotation of the files is no SDS update (Envoy's key rotation, secret_files.py).
        assert stats["sds.server_cert.update_success"] == 1
        assert stats["listener.127.0.0.1_0.server_ssl_socket_factory.ssl_context_update_by_sds"] \
            >= 2  # fmt: skip
    finally:
        stop.set()
        proxy.stop()


def test_rotation_by_symlink_swap(tmp_path, ca):
    """The layout of a Kubernetes secret volume: files reached through a ``..data`` symlink
    to a timestamped directory, swapped atomically by a rename."""
    volume = tmp_path / "volume"
    volume.mkdir()

    def publish(leaf, name):
        data = volume / name
        data.mkdir()
        leaf.write(data, "tls")
        tmp_link = volume / "..data_tmp"
        os.symlink(name, tmp_link)
        os.replace(tmp_link, volume / "..data")

    publish(ca.issue("localhost", serial=2001), "..2026_01")
    for f in ("tls.pem", "tls.key"):
        os.symlink(f"..data/{f}", volume / f)
    sds = tmp_path / "sds.yaml"
    _sds_file(sds, volume / "tls.pem", volume / "tls.key")
    common = {
        "tls_certificate_sds_secret_configs": [
            {"name": "server_cert", "sds_config": {"path_config_source": {"path": str(sds)}}}
        ]
    }
    proxy = start_proxy(_bootstrap(common), tmp_path / "legatus", args=["--concurrency", "1"])
    try:
        port = proxy.listener_port("tls")
        ctx = _client(ca, tmp_path)
        assert _serial(port, ctx) == 2001
        publish(ca.issue("localhost", serial=2002), "..2026_02")
        wait_for(lambda: _serial(port, ctx) == 2002, what="the swapped certificate")
    finally:
        proxy.stop()


def test_broken_rotation_keeps_the_certificate(tmp_path, ca):
    first = ca.issue("localhost", serial=3001)
    cert_path, key_path = first.write(tmp_path, "srv")
    sds = tmp_path / "sds.yaml"
    _sds_file(sds, cert_path, key_path)
    common = {
        "tls_certificate_sds_secret_configs": [
            {"name": "server_cert", "sds_config": {"path_config_source": {"path": str(sds)}}}
        ]
    }
    proxy = start_proxy(_bootstrap(common), tmp_path / "legatus", args=["--concurrency", "1"])
    try:
        port = proxy.listener_port("tls")
        ctx = _client(ca, tmp_path)
        key_path.write_bytes(ca.issue("localhost").key_pem)  # a key of another certificate
        wait_for(lambda: proxy.stats().get("sds.server_cert.key_rotation_failed", 0) >= 1,
                 what="key_rotation_failed")  # fmt: skip
        assert _serial(port, ctx) == 3001
    finally:
        proxy.stop()


def test_static_secrets(tmp_path, ca):
    leaf = ca.issue("localhost", serial=4001)
    cert_path, key_path = leaf.write(tmp_path, "srv")
    client_cert = ca.issue("client").write(tmp_path, "client")
    secrets = [
        {"name": "server", "tls_certificate": {
            "certificate_chain": {"filename": str(cert_path)},
            "private_key": {"filename": str(key_path)}}},
        {"name": "clients_ca", "validation_context": {
            "trusted_ca": {"filename": str(ca.write(tmp_path / "ca.pem"))}}},
    ]  # fmt: skip
    common = {"tls_certificate_sds_secret_configs": [{"name": "server"}],
              "validation_context_sds_secret_config": {"name": "clients_ca"}}  # fmt: skip
    config = _bootstrap(common, secrets)
    config["static_resources"]["listeners"][0]["filter_chains"][0]["transport_socket"][
        "typed_config"]["require_client_certificate"] = True  # fmt: skip
    proxy = start_proxy(config, tmp_path / "legatus", args=["--concurrency", "1"])
    try:
        port = proxy.listener_port("tls")
        ctx = _client(ca, tmp_path)
        ctx.load_cert_chain(*client_cert)
        assert _serial(port, ctx) == 4001
    finally:
        proxy.stop()


def test_unknown_static_secret_is_refused(tmp_path):
    from tests.support.process import legatus_command

    config = _bootstrap({"tls_certificate_sds_secret_configs": [{"name": "missing"}]})
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    import subprocess

    r = subprocess.run([*legatus_command(), "--mode", "validate", "-c", str(path)],
                       capture_output=True, text=True)  # fmt: skip
    assert r.returncode != 0
    assert "Unknown static secret: missing" in r.stdout + r.stderr
