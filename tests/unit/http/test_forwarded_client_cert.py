"""x-forwarded-client-cert (forward_client_cert_details / set_current_client_cert_details)."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from google.protobuf import json_format

from legatus.config.errors import ConfigError
from legatus.extensions.transport_sockets.tls.connection_info import SslConnectionInfo
from legatus.extensions.transport_sockets.tls.x509_info import CertificateDetails
from legatus.http.forwarded_client_cert import compile_xfcc, mutate_xfcc
from legatus.http.headers import HeaderMap
from tests.support.certs import CA

XFCC = "x-forwarded-client-cert"


@pytest.fixture(scope="module")
def ssl_info():
    ca = CA()
    peer = ca.issue("spiffe://a/client", "client.example.com", common_name="client")
    local = ca.issue("spiffe://a/proxy", "proxy.example.com")

    def details(leaf):
        return CertificateDetails(leaf.cert.public_bytes(serialization.Encoding.DER))

    return SslConnectionInfo(
        version="TLSv1.3", cipher="TLS_AES_128_GCM_SHA256", alpn=None, server_name="",
        session_id="", session_reused=False, peer_certificate=details(peer),
        local_certificate=details(local), peer_certificate_validated=True,
    )  # fmt: skip


def _policy(**fields):
    return compile_xfcc(json_format.ParseDict(fields, hcm_pb2.HttpConnectionManager()), "hcm")


def _headers(value=None):
    h = HeaderMap()
    h.add(":path", "/")
    if value is not None:
        h.add(XFCC, value)
    return h


def test_sanitize_removes(ssl_info):
    h = _headers("By=x")
    mutate_xfcc(_policy(), h, ssl_info)
    assert XFCC not in h


def test_forward_only_needs_mtls(ssl_info):
    h = _headers("By=x")
    mutate_xfcc(_policy(forward_client_cert_details="FORWARD_ONLY"), h, ssl_info)
    assert h.get(XFCC) == "By=x"
    h = _headers("By=x")
    mutate_xfcc(_policy(forward_client_cert_details="FORWARD_ONLY"), h, None)
    assert XFCC not in h


def test_sanitize_set_and_append(ssl_info):
    policy = _policy(forward_client_cert_details="SANITIZE_SET",
                     set_current_client_cert_details={"subject": True, "uri": True,
                                                      "dns": True})  # fmt: skip
    h = _headers("By=spoofed")
    mutate_xfcc(policy, h, ssl_info)
    sha = ssl_info.peer_certificate.sha256
    assert h.get(XFCC) == (
        f'By=spiffe://a/proxy;Hash={sha};Subject="CN=client,O=legatus tests";'
        "URI=spiffe://a/client;DNS=client.example.com"
    )
    h = _headers("By=earlier")
    mutate_xfcc(_policy(forward_client_cert_details="APPEND_FORWARD"), h, ssl_info)
    assert h.get(XFCC) == f"By=earlier,By=spiffe://a/proxy;Hash={sha}"


def test_chain_is_refused():
    with pytest.raises(ConfigError) as e:
        _policy(forward_client_cert_details="SANITIZE_SET",
                set_current_client_cert_details={"chain": True})  # fmt: skip
    assert e.value.path == "hcm.set_current_client_cert_details.chain"
