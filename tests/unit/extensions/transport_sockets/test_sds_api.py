"""SDS over xDS at the main process's end: what an update must hold, how a secret that a
TLS context refuses is NACKed and kept as Envoy keeps it, a context compiled before its
secret arrived, and the redaction of ``/config_dump``."""

from __future__ import annotations

import pytest
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2

from legatus.config.errors import ConfigError
from legatus.config.proto_json import parse
from legatus.config.subscription import ConfigUpdate, DecodedResource
from legatus.config_subscription.records import ResourceRecords
from legatus.extensions.transport_sockets.tls.context_config import (
    DownstreamTlsContext,
    compile_downstream,
)
from legatus.extensions.transport_sockets.tls.sds_api import SdsApi
from legatus.extensions.transport_sockets.tls.secret_manager import SecretManager
from legatus.server.admin.secrets_dump import redact
from tests.support.certs import CA
from tests.unit.extensions.transport_sockets.tls_helpers import cert_entry

ADS = {"ads": {}}


@pytest.fixture(scope="module")
def leaves():
    ca = CA()
    return ca.issue("one.example", common_name="one"), ca.issue("two.example", common_name="two")


def _secret(name: str, leaf, key_of=None) -> secret_pb2.Secret:
    entry = cert_entry(leaf)
    if key_of is not None:
        entry["private_key"] = cert_entry(key_of)["private_key"]
    return parse({"name": name, "tls_certificate": entry}, secret_pb2.Secret)


def _update(*secrets, removed=(), sotw=True, version="1") -> ConfigUpdate:
    added = [DecodedResource(s.name, s) for s in secrets]
    return ConfigUpdate("t", added, list(removed), version, sotw)


def _listener_context(manager: SecretManager):
    proto = parse(
        {"common_tls_context": {"tls_certificate_sds_secret_configs": [
            {"name": "server", "sds_config": ADS}]}},
        DownstreamTlsContext,
    )  # fmt: skip
    return compile_downstream(proto, "tls", manager)


def _api(manager: SecretManager):
    provider = manager.xds_providers()[0]
    published: list = []
    records = ResourceRecords()
    return SdsApi(provider, records=records, publish=published.append), published, records


def test_a_context_waits_for_its_secret_then_builds(leaves):
    manager = SecretManager()
    config = _listener_context(manager)
    assert not config.common.ready and config.common.certificates == ()
    api, published, _ = _api(manager)
    api.on_config_update(_update(_secret("server", leaves[0])))
    assert published == [api.provider]
    refreshed = config.refreshed()
    assert refreshed.common.ready
    assert refreshed.common.certificates[0].leaf.common_name == "one"


@pytest.mark.parametrize(
    ("update", "message"),
    [
        (_update(), "Missing SDS resources for server in onConfigUpdate()"),
        (_update(secret_pb2.Secret(name="a"), secret_pb2.Secret(name="b")),
         "Unexpected SDS secrets length: 2"),
        (_update(secret_pb2.Secret(name="other")),
         "Unexpected SDS secret (expecting server): other"),
    ],
)  # fmt: skip
def test_an_update_holds_exactly_the_secret_asked_for(update, message):
    manager = SecretManager()
    _listener_context(manager)
    api, published, _ = _api(manager)
    with pytest.raises(ConfigError) as e:
        api.on_config_update(update)
    assert e.value.message == message
    assert published == [] and not api.provider.ready


def test_a_secret_naming_files_is_refused():
    manager = SecretManager()
    _listener_context(manager)
    api, _, _ = _api(manager)
    secret = parse(
        {"name": "server", "tls_certificate": {"certificate_chain": {"filename": "/x"}}},
        secret_pb2.Secret,
    )
    with pytest.raises(ConfigError) as e:
        api.on_config_update(_update(secret))
    assert e.value.path == "tls_certificate.certificate_chain.filename"


def test_a_key_that_does_not_match_is_nacked_and_kept_as_envoy(leaves):
    one, two = leaves
    manager = SecretManager()
    config = _listener_context(manager)
    api, published, records = _api(manager)
    api.on_config_update(_update(_secret("server", one)))
    bad = _secret("server", one, key_of=two)
    with pytest.raises(ConfigError) as e:
        api.on_config_update(_update(bad, version="2"))
    assert "KEY_VALUES_MISMATCH" in e.value.message
    assert len(published) == 1  # the workers keep the good one
    assert api.provider.secret == _secret("server", one)
    assert records.accepted["server"].resource == bad  # /config_dump shows the refused one
    assert records.accepted["server"].version == "2"
    api.on_config_update(_update(bad, version="3"))  # the same again: unchanged, ACKed
    assert len(published) == 1
    # Envoy's value of the secret is the refused one: a rebuild of the context fails too.
    assert api.provider.current == bad
    with pytest.raises(ConfigError):
        config.refreshed()


def test_a_delta_removal_keeps_the_secret(leaves):
    manager = SecretManager()
    _listener_context(manager)
    api, published, _ = _api(manager)
    api.on_config_update(_update(_secret("server", leaves[0]), sotw=False))
    api.on_config_update(_update(removed=["server"], sotw=False))
    assert api.provider.ready and len(published) == 1


def test_a_worker_takes_the_value_the_main_process_sent(leaves):
    worker = SecretManager(count_stats=False)
    config = _listener_context(worker)
    key = worker.xds_providers()[0].key
    worker.apply_xds(key, _secret("server", leaves[1]).SerializeToString())
    assert config.refreshed().common.certificates[0].leaf.common_name == "two"
    later = SecretManager(count_stats=False)  # a worker started after the update
    later.apply_xds(key, _secret("server", leaves[1]).SerializeToString())
    assert _listener_context(later).common.certificates[0].leaf.common_name == "two"


def test_redaction_as_envoy(leaves):
    secret = _secret("server", leaves[0])
    secret.tls_certificate.password.inline_string = "hunter2"
    out = redact(secret)
    assert out.tls_certificate.private_key.inline_string == "[redacted]"
    assert out.tls_certificate.password.inline_string == "[redacted]"
    assert out.tls_certificate.certificate_chain == secret.tls_certificate.certificate_chain
    assert secret.tls_certificate.password.inline_string == "hunter2"  # a copy
