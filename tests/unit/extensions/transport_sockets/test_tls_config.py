"""DownstreamTlsContext / UpstreamTlsContext at config time: Envoy's messages for what Envoy
refuses, and a clear refusal, by field, of what Python's ssl module cannot honour."""

from __future__ import annotations

import pytest

from legatus.config.errors import ConfigError
from legatus.config.proto_json import parse
from legatus.extensions.transport_sockets.tls.cert_validator import dns_name_match
from legatus.extensions.transport_sockets.tls.context_config import (
    DownstreamTlsContext,
    UpstreamTlsContext,
    compile_downstream,
    compile_upstream,
)
from legatus.extensions.transport_sockets.tls.tls_params import compile_cipher_suites
from tests.support.certs import CA
from tests.unit.extensions.transport_sockets.tls_helpers import cert_entry


@pytest.fixture(scope="module")
def ca():
    return CA()


@pytest.fixture(scope="module")
def leaf(ca):
    return ca.issue("localhost", common_name="localhost")


def _downstream(config: dict):
    return compile_downstream(parse(config, DownstreamTlsContext), "tls")


def _error(config: dict, *, upstream: bool = False) -> ConfigError:
    with pytest.raises(ConfigError) as e:
        if upstream:
            compile_upstream(parse(config, UpstreamTlsContext), "tls")
        else:
            _downstream(config)
    return e.value


def _with(leaf, **common):
    return {"common_tls_context": {"tls_certificates": [cert_entry(leaf)], **common}}


# Envoy 1.40's own messages (checked with `envoy --mode validate`).


def test_cipher_suites_as_envoy(leaf):
    e = _error(_with(leaf, tls_params={"cipher_suites": [
        "ECDHE-RSA-AES128-GCM-SHA256", "BOGUS", "DHE-RSA-AES128-GCM-SHA256"]}))  # fmt: skip
    assert e.message == (
        "Failed to initialize cipher suites ECDHE-RSA-AES128-GCM-SHA256:BOGUS:"
        "DHE-RSA-AES128-GCM-SHA256. The following ciphers were rejected when tried "
        "individually: BOGUS, DHE-RSA-AES128-GCM-SHA256"
    )
    e = _error(_with(leaf, tls_params={"cipher_suites": ["TLS_AES_128_GCM_SHA256"]}))
    assert e.message.endswith("rejected when tried individually: TLS_AES_128_GCM_SHA256")
    # A removal rule, a CBC-SHA256 suite and an equal-preference group are fine.
    _downstream(_with(leaf, tls_params={"cipher_suites": [
        "-ALL:ECDHE-RSA-AES128-SHA256", "[ECDHE-RSA-AES128-GCM-SHA256|AES128-SHA]"]}))  # fmt: skip


def test_curves_as_envoy(leaf):
    e = _error(_with(leaf, tls_params={"ecdh_curves": ["P-384", "bogus"]}))
    assert e.message == "Failed to initialize ECDH curves P-384:bogus"
    e = _error(_with(leaf, tls_params={"ecdh_curves": ["X25519", "P-256"]}))
    assert "one only" in e.message and e.path == "tls.common_tls_context.tls_params.ecdh_curves"


def test_certificate_errors_as_envoy(ca, leaf, tmp_path):
    other = ca.issue("other")
    key_path = tmp_path / "other.key"
    key_path.write_bytes(other.key_pem)
    bad_key = {**cert_entry(leaf), "private_key": {"filename": str(key_path)}}
    e = _error({"common_tls_context": {"tls_certificates": [bad_key]}})
    assert e.message == (
        f"Failed to load private key from {key_path}, Cause: error:0b000074:X.509 certificate "
        "routines:OPENSSL_internal:KEY_VALUES_MISMATCH"
    )
    missing = {**cert_entry(leaf), "private_key": {"filename": "nope.key"}}
    e = _error({"common_tls_context": {"tls_certificates": [missing]}})
    assert e.message == "Failed to load incomplete private key from path: nope.key"
    garbage = {**cert_entry(leaf), "certificate_chain": {"inline_string": "garbage"}}
    e = _error({"common_tls_context": {"tls_certificates": [garbage]}})
    assert e.message == "Failed to load certificate chain from <inline>"
    garbage = {**cert_entry(leaf), "private_key": {"inline_string": "garbage"}}
    e = _error({"common_tls_context": {"tls_certificates": [garbage]}})
    assert e.message == (
        "Failed to load private key from <inline>, Cause: error:0900006e:PEM "
        "routines:OPENSSL_internal:NO_START_LINE"
    )
    e = _error({"common_tls_context": {}})
    assert e.message == "No TLS certificates found for server context"
    e = _error(_with(leaf, validation_context={"trusted_ca": {"inline_string": "garbage"}}))
    assert e.message == "Failed to load trusted CA certificates from <inline>"
    e = _error(_with(leaf, alpn_protocols=["x" * 300]))
    assert e.message == "Invalid ALPN protocol string"


def test_inline_bytes_and_several_certificates(ca, leaf):
    ecdsa = ca.issue("localhost", key="ecdsa")
    entry = {
        "certificate_chain": {"inline_bytes": __import__("base64").b64encode(ecdsa.chain_pem)
                              .decode()},
        "private_key": {"inline_bytes": __import__("base64").b64encode(ecdsa.key_pem).decode()},
    }  # fmt: skip
    config = _downstream({"common_tls_context": {"tls_certificates": [cert_entry(leaf), entry]}})
    assert [c.leaf.key_kind for c in config.common.certificates] == ["rsa", "ecdsa"]
    assert config.common.certificates[0].name == "unnamed_cert_e3b0c442"


@pytest.mark.parametrize(
    ("field", "value", "why"),
    [
        ("session_timeout", "10s", "cannot set the session lifetime"),
        ("session_ticket_keys", {"keys": [{"inline_string": "k" * 80}]}, "ticket keys"),
        ("disable_stateful_session_resumption", True, "session cache off"),
    ],
)
def test_session_options_python_cannot_honour(leaf, field, value, why):
    e = _error({**_with(leaf), field: value})
    assert e.path == f"tls.{field}"
    assert why in e.message and "not supported by legatus" in e.message


def test_disable_stateless_session_resumption_is_honoured(leaf):
    config = _downstream({**_with(leaf), "disable_stateless_session_resumption": True})
    assert config.disable_stateless_session_resumption


@pytest.mark.parametrize(
    ("common", "path"),
    [
        ({"tls_params": {"signature_algorithms": ["rsa_pss_rsae_sha256"]}},
         "tls.common_tls_context.tls_params.signature_algorithms"),
        ({"key_log": {"path": "/dev/null"}}, "tls.common_tls_context.key_log"),
        ({"tls_certificate_sds_secret_configs": [{"name": "x"}]},
         "tls.common_tls_context.tls_certificate_sds_secret_configs[0].name"),
        ({"validation_context_sds_secret_config": {"name": "x"}},
         "tls.common_tls_context.validation_context_sds_secret_config.name"),
        ({"validation_context": {"require_signed_certificate_timestamp": True}},
         "tls.common_tls_context.validation_context.require_signed_certificate_timestamp"),
    ],
)  # fmt: skip
def test_unsupported_fields_are_named(leaf, common, path):
    config = _with(leaf, **common)
    if "tls_certificate_sds_secret_configs" in common:
        config["common_tls_context"].pop("tls_certificates")
    assert _error(config).path == path


def test_validation_needs_a_trust_anchor_for_pinning(leaf):
    e = _error(_with(leaf, validation_context={"verify_certificate_hash": ["a" * 64]}))
    assert "needs a trusted_ca" in e.message
    e = _error({**_with(leaf), "require_client_certificate": True})
    assert e.path == "tls.require_client_certificate"


def test_upstream_contexts(ca, leaf):
    e = _error({"common_tls_context": {"tls_certificates": [cert_entry(leaf)] * 2}},
               upstream=True)  # fmt: skip
    assert e.message == "Multiple TLS certificates are not supported for client contexts"
    e = _error({"sni": "a\0b"}, upstream=True)
    assert e.message == "SNI names containing NULL-byte are not allowed"
    config = compile_upstream(parse({"sni": "x"}, UpstreamTlsContext), "tls")
    assert config.common.params.maximum_version.name == "TLSv1_2"  # Envoy's client default


def test_equal_preference_groups_resolve_from_the_offer():
    policy = compile_cipher_suites([], "p")
    rsa_chacha, rsa_aes128 = 0xCCA8, 0xC02F
    assert policy.choice_for((rsa_chacha, rsa_aes128)) == (0, 1)
    assert policy.orderings[(0, 1)].split(":")[2] == "ECDHE-RSA-CHACHA20-POLY1305"
    assert policy.choice_for((rsa_aes128, rsa_chacha)) == (0, 0)


@pytest.mark.parametrize(
    ("name", "pattern", "match"),
    [
        ("a.example.com", "*.example.com", True),
        ("A.Example.com", "*.example.COM", True),
        ("a.b.example.com", "*.example.com", False),
        ("example.com", "*.example.com", False),
        ("example.com", "example.com", True),
    ],
)
def test_dns_name_match(name, pattern, match):
    assert dns_name_match(name, pattern) is match
