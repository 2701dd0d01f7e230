"""SDS key rotation (secret_files, secret_manager), driven with an explicit clock: which
changes reload a secret's files, what a failed reload counts and keeps, and how a TLS
context that uses two secrets rebuilds, as Envoy 1.40's SdsApi does."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from legatus.config.errors import ConfigError
from legatus.config.proto_json import parse
from legatus.extensions.transport_sockets.tls.context_config import (
    DownstreamTlsContext,
    compile_downstream,
)
from legatus.extensions.transport_sockets.tls.secret_files import watched_filenames
from legatus.extensions.transport_sockets.tls.secret_manager import Secret, SecretManager
from legatus.stats.store import Store
from tests.support.certs import CA

SECRET = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"


class Loop:
    """The event loop as the manager uses it: a clock and a timer it is never let run."""

    def __init__(self) -> None:
        self.now = 0.0

    def time(self) -> float:
        return self.now

    def call_later(self, _delay, _callback):
        return self

    def cancel(self) -> None:
        pass


class Volume:
    """A Kubernetes secret volume: ``<name>`` links to ``..data/<name>``; ``publish`` swaps
    ``..data`` to a new directory by a rename into the volume."""

    def __init__(self, path: Path, *names: str) -> None:
        self.path, self.generation = path, 0
        path.mkdir()
        for name in names:
            os.symlink(f"..data/{name}", path / name)

    def publish(self, **files: bytes) -> None:
        self.generation += 1
        data = self.path / f"..gen{self.generation}"
        data.mkdir()
        for name, content in files.items():
            (data / name.replace("_", ".")).write_bytes(content)
        os.symlink(data.name, self.path / "..tmp")
        os.replace(self.path / "..tmp", self.path / "..data")


@pytest.fixture(scope="module")
def ca():
    return CA()


def _sds(path: Path, name: str, secret: dict, version: str = "v1") -> str:
    resource = {"@type": SECRET, "name": name, **secret}
    path.write_text(yaml.safe_dump({"version_info": version, "resources": [resource]}))
    return str(path)


def _certificate(directory: Path, watched: bool) -> dict:
    out = {"certificate_chain": {"filename": str(directory / "tls.crt")},
           "private_key": {"filename": str(directory / "tls.key")}}  # fmt: skip
    if watched:
        out["watched_directory"] = {"path": str(directory)}
    return out


class Harness:
    """A listener's context on SDS file secrets, with the main process's stats."""

    def __init__(self, common: dict) -> None:
        self.loop = Loop()
        self.store = Store()
        self.secrets = SecretManager()
        self.proto = parse({"common_tls_context": common}, DownstreamTlsContext)
        self.config = compile_downstream(self.proto, "tls", self.secrets)
        self.secrets.start(self.loop, self.store)
        self.updates = 0
        for provider in self.config.common.certificate_providers:
            provider.add_callback(self.on_update)
        if self.config.common.validation_provider is not None:
            self.config.common.validation_provider.add_callback(self.on_update)

    def on_update(self) -> None:
        self.updates += 1
        self.config = self.config.refreshed()

    def settle(self) -> None:
        """Polls until a change has been still for longer than the debounce."""
        for _ in range(4):
            self.loop.now += 0.3
            for provider in self.secrets.providers():
                provider.poll(self.loop.now)

    def serial(self) -> int:
        return int(self.config.common.certificates[0].leaf.serial, 16)

    def stat(self, name: str) -> int:
        return next((s.value for s in self.store if s.name == name), 0)

    def shown(self):
        """What /certs compiles: the values the contexts have."""
        return compile_downstream(self.proto, "", self.secrets).common


def _pair(ca, serial: int) -> dict[str, bytes]:
    leaf = ca.issue("localhost", serial=serial)
    return {"tls_crt": leaf.chain_pem, "tls_key": leaf.key_pem}


def test_watched_directory_reloads_on_a_move_into_it_only(ca, tmp_path):
    volume = Volume(tmp_path / "vol", "tls.crt", "tls.key")
    volume.publish(**_pair(ca, 1))
    sds = _sds(tmp_path / "sds.yaml", "cert", {"tls_certificate": _certificate(volume.path,
                                                                               True)})  # fmt: skip
    h = Harness({"tls_certificate_sds_secret_configs": [{"name": "cert", "sds_config": {
        "path_config_source": {"path": sds}}}]})  # fmt: skip
    assert h.serial() == 1
    pair = _pair(ca, 2)  # rewritten in place, through the links: no move, no reload
    (volume.path / "tls.key").write_bytes(pair["tls_key"])
    (volume.path / "tls.crt").write_bytes(pair["tls_crt"])
    h.settle()
    assert (h.serial(), h.updates) == (1, 0)
    volume.publish(**_pair(ca, 3))
    h.settle()
    assert (h.serial(), h.updates) == (3, 1)
    # A reload is no SDS update: the subscription's stats do not move.
    assert h.stat("sds.cert.update_success") == 1 and h.stat("sds.cert.update_attempt") == 1
    assert h.stat("sds.cert.key_rotation_failed") == 0


def test_a_failed_reload_counts_and_keeps_what_is_in_use(ca, tmp_path):
    volume = Volume(tmp_path / "vol", "tls.crt", "tls.key")
    volume.publish(**_pair(ca, 1))
    sds = _sds(tmp_path / "sds.yaml", "cert", {"tls_certificate": _certificate(volume.path,
                                                                               True)})  # fmt: skip
    h = Harness({"tls_certificate_sds_secret_configs": [{"name": "cert", "sds_config": {
        "path_config_source": {"path": sds}}}]})  # fmt: skip
    broken = _pair(ca, 2)
    broken["tls_key"] = ca.issue("localhost").key_pem
    volume.publish(**broken)
    h.settle()
    assert (h.serial(), h.updates, h.stat("sds.cert.key_rotation_failed")) == (1, 0, 1)
    provider = h.config.common.certificate_providers[0]
    assert provider.current is not provider.secret  # Envoy keeps the refused value
    assert int(h.shown().certificates[0].leaf.serial, 16) == 1
    volume.publish(**broken)  # the same files again: tried again, counted again
    h.settle()
    assert h.stat("sds.cert.key_rotation_failed") == 2
    volume.publish(**_pair(ca, 4))
    h.settle()
    assert (h.serial(), h.updates) == (4, 1)


def test_without_watched_directory_each_file_is_a_watch(ca, tmp_path):
    """Envoy watches each file's directory once per file: a move seen by both watches of a
    certificate and its key in one directory fails twice."""
    directory = tmp_path / "certs"
    directory.mkdir()
    pair = _pair(ca, 1)
    (directory / "tls.crt").write_bytes(pair["tls_crt"])
    (directory / "tls.key").write_bytes(pair["tls_key"])
    sds = _sds(tmp_path / "sds.yaml", "cert", {"tls_certificate": _certificate(directory,
                                                                               False)})  # fmt: skip
    h = Harness({"tls_certificate_sds_secret_configs": [{"name": "cert", "sds_config": {
        "path_config_source": {"path": sds}}}]})  # fmt: skip
    (tmp_path / "k").write_bytes(ca.issue("other").key_pem)
    os.replace(tmp_path / "k", directory / "tls.key")
    h.settle()
    assert (h.serial(), h.stat("sds.cert.key_rotation_failed")) == (1, 2)
    pair = _pair(ca, 5)  # rewritten in place: legatus reloads (Envoy waits for a move)
    (directory / "tls.key").write_bytes(pair["tls_key"])
    (directory / "tls.crt").write_bytes(pair["tls_crt"])
    h.settle()
    assert h.serial() == 5


def test_a_context_on_two_secrets_rebuilds_as_envoy(ca, tmp_path):
    """The client CA changes while the certificate's files are broken: the context cannot be
    rebuilt with both current values, so the CA reload fails too; once the certificate is
    good again, both take effect."""
    certs = Volume(tmp_path / "certs", "tls.crt", "tls.key")
    certs.publish(**_pair(ca, 1))
    cas = Volume(tmp_path / "cas", "ca.crt")
    cas.publish(ca_crt=ca.cert_pem)
    sds = _sds(tmp_path / "sds.yaml", "cert", {"tls_certificate": _certificate(certs.path,
                                                                               True)})  # fmt: skip
    ca_sds = _sds(tmp_path / "ca.yaml", "ca", {"validation_context": {
        "trusted_ca": {"filename": str(cas.path / "ca.crt")},
        "watched_directory": {"path": str(cas.path)}}})  # fmt: skip
    h = Harness({
        "tls_certificate_sds_secret_configs": [{"name": "cert", "sds_config": {
            "path_config_source": {"path": sds}}}],
        "validation_context_sds_secret_config": {"name": "ca", "sds_config": {
            "path_config_source": {"path": ca_sds}}},
    })  # fmt: skip
    broken = _pair(ca, 2)
    broken["tls_key"] = ca.issue("x").key_pem
    certs.publish(**broken)
    h.settle()
    other = CA("another CA")
    cas.publish(ca_crt=other.cert_pem)
    h.settle()
    assert h.stat("sds.ca.key_rotation_failed") == 1
    assert h.config.common.validation.ca_pem == ca.cert_pem
    assert h.shown().validation.ca_pem == ca.cert_pem  # /certs: what the context has
    certs.publish(**_pair(ca, 3))
    h.settle()
    assert (h.serial(), h.config.common.validation.ca_pem) == (3, other.cert_pem)
    assert h.shown().validation.ca_pem == other.cert_pem


def test_the_same_secret_again_only_moves_the_version(ca, tmp_path):
    directory = tmp_path / "certs"
    directory.mkdir()
    pair = _pair(ca, 1)
    (directory / "tls.crt").write_bytes(pair["tls_crt"])
    (directory / "tls.key").write_bytes(pair["tls_key"])
    secret = {"tls_certificate": _certificate(directory, False)}
    sds = _sds(tmp_path / "sds.yaml", "cert", secret)
    h = Harness({"tls_certificate_sds_secret_configs": [{"name": "cert", "sds_config": {
        "path_config_source": {"path": sds}}}]})  # fmt: skip
    _sds(tmp_path / "new.yaml", "cert", secret, version="v2")
    os.replace(tmp_path / "new.yaml", sds)
    h.settle()
    assert h.updates == 0
    assert h.stat("sds.cert.update_success") == 2
    assert h.stat("sds.cert.version_text") == "v2"


def test_a_missing_watched_directory_is_refused_as_envoy(ca, tmp_path):
    directory = tmp_path / "certs"
    directory.mkdir()
    pair = _pair(ca, 1)
    (directory / "tls.crt").write_bytes(pair["tls_crt"])
    (directory / "tls.key").write_bytes(pair["tls_key"])
    certificate = {**_certificate(directory, False),
                   "watched_directory": {"path": str(tmp_path / "nope")}}  # fmt: skip
    sds = _sds(tmp_path / "sds.yaml", "cert", {"tls_certificate": certificate})
    with pytest.raises(ConfigError) as e:
        Harness({"tls_certificate_sds_secret_configs": [{"name": "cert", "sds_config": {
            "path_config_source": {"path": sds}}}]})  # fmt: skip
    assert e.value.message == (
        f"unable to add filesystem watch for file {tmp_path / 'nope'}/: No such file or directory"
    )


def test_what_is_watched():
    """A certificate's chain and key, a CA bundle and CRL; never a password or a bundle,
    which Envoy reads when it builds a context."""
    secret = parse({"name": "s", "tls_certificate": {
        "pkcs12": {"filename": "/b.p12"}, "password": {"filename": "/pw"}}}, Secret)  # fmt: skip
    assert watched_filenames(secret) == []
    secret = parse({"name": "s", "validation_context": {
        "trusted_ca": {"filename": "/ca"}, "crl": {"filename": "/crl"}}}, Secret)  # fmt: skip
    assert watched_filenames(secret) == ["/ca", "/crl"]


def test_sds_config_source_fields_are_checked(tmp_path):
    for source, path in (
        ({"path_config_source": {"path": "/x"}, "authorities": [{"name": "a"}]},
         "tls.common_tls_context.tls_certificate_sds_secret_configs[0].sds_config.authorities"),
        ({"path_config_source": {"path": "/x"}, "resource_api_version": "V2"},
         "tls.common_tls_context.tls_certificate_sds_secret_configs[0].sds_config."
         "resource_api_version"),
    ):  # fmt: skip
        proto = parse({"common_tls_context": {"tls_certificate_sds_secret_configs": [
            {"name": "s", "sds_config": source}]}}, DownstreamTlsContext)  # fmt: skip
        with pytest.raises(ConfigError) as e:
            compile_downstream(proto, "tls", SecretManager())
        assert e.value.path == path
