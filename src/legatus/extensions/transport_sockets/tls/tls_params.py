"""``TlsParameters`` and ALPN, compiled from Envoy's (BoringSSL's) terms into OpenSSL's.

Envoy links BoringSSL; legatus runs on the OpenSSL behind Python's ``ssl`` module. What maps:

- protocol versions: the same four, with Envoy's defaults (server TLSv1.2-TLSv1.3, client
  TLSv1.2-TLSv1.2, as Envoy 1.40's ClientContextConfigImpl).
- ``cipher_suites``: BoringSSL's cipher names are OpenSSL's for every suite BoringSSL has;
  names BoringSSL lacks (``DHE-RSA-...``, CAMELLIA...) and TLS 1.3 suite names are refused
  as Envoy refuses them (its strict cipher list). BoringSSL's equal-preference groups
  (``[A|B]``) have no OpenSSL syntax: they are kept as groups and resolved per connection
  from the client's offer (see ``CipherPolicy``), which is what BoringSSL does. Removal
  tokens (``-ALL``, ``!x``) pass through; other keyword rules are refused by name.
  TLS 1.3 suites cannot be configured in either library.
- ``ecdh_curves``: Python's ``ssl`` sets one group only (``set_ecdh_curve``); one curve
  is honoured, a list of several is refused. Unset, OpenSSL's default groups apply
  (X25519, P-256, X448, P-521, P-384), a superset of Envoy's X25519:P-256.
- ``signature_algorithms`` and ``compliance_policies`` cannot be set through Python's
  ``ssl``: refused.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from itertools import product

from envoy.extensions.transport_sockets.tls.v3 import common_pb2

from legatus.config.errors import ConfigError, join_path
from legatus.config.supported import check_supported

TlsParameters = common_pb2.TlsParameters

_VERSIONS = {
    TlsParameters.TLSv1_0: ssl.TLSVersion.TLSv1,
    TlsParameters.TLSv1_1: ssl.TLSVersion.TLSv1_1,
    TlsParameters.TLSv1_2: ssl.TLSVersion.TLSv1_2,
    TlsParameters.TLSv1_3: ssl.TLSVersion.TLSv1_3,
}

# Envoy's default cipher lists (server and client alike, non-FIPS).
DEFAULT_CIPHER_SUITES = (
    "[ECDHE-ECDSA-AES128-GCM-SHA256|ECDHE-ECDSA-CHACHA20-POLY1305]:"
    "[ECDHE-RSA-AES128-GCM-SHA256|ECDHE-RSA-CHACHA20-POLY1305]:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:"
    "ECDHE-RSA-AES256-GCM-SHA384"
)

# The TLS 1.2 (and older) suites BoringSSL knows, by the name both libraries give them.
BORINGSSL_CIPHERS = frozenset(
    {
        "DES-CBC3-SHA",
        "AES128-SHA",
        "AES256-SHA",
        "PSK-AES128-CBC-SHA",
        "PSK-AES256-CBC-SHA",
        "AES128-GCM-SHA256",
        "AES256-GCM-SHA384",
        "ECDHE-ECDSA-AES128-SHA",
        "ECDHE-ECDSA-AES256-SHA",
        "ECDHE-RSA-AES128-SHA",
        "ECDHE-RSA-AES256-SHA",
        "ECDHE-RSA-AES128-SHA256",
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-PSK-AES128-CBC-SHA",
        "ECDHE-PSK-AES256-CBC-SHA",
        "ECDHE-RSA-CHACHA20-POLY1305",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-PSK-CHACHA20-POLY1305",
    }
)

# IANA code points of those suites: what a ClientHello offers.
CIPHER_CODES = {
    "DES-CBC3-SHA": 0x000A,
    "AES128-SHA": 0x002F,
    "AES256-SHA": 0x0035,
    "PSK-AES128-CBC-SHA": 0x008C,
    "PSK-AES256-CBC-SHA": 0x008D,
    "AES128-GCM-SHA256": 0x009C,
    "AES256-GCM-SHA384": 0x009D,
    "ECDHE-ECDSA-AES128-SHA": 0xC009,
    "ECDHE-ECDSA-AES256-SHA": 0xC00A,
    "ECDHE-RSA-AES128-SHA": 0xC013,
    "ECDHE-RSA-AES256-SHA": 0xC014,
    "ECDHE-RSA-AES128-SHA256": 0xC027,
    "ECDHE-ECDSA-AES128-GCM-SHA256": 0xC02B,
    "ECDHE-ECDSA-AES256-GCM-SHA384": 0xC02C,
    "ECDHE-RSA-AES128-GCM-SHA256": 0xC02F,
    "ECDHE-RSA-AES256-GCM-SHA384": 0xC030,
    "ECDHE-PSK-AES128-CBC-SHA": 0xC035,
    "ECDHE-PSK-AES256-CBC-SHA": 0xC036,
    "ECDHE-RSA-CHACHA20-POLY1305": 0xCCA8,
    "ECDHE-ECDSA-CHACHA20-POLY1305": 0xCCA9,
    "ECDHE-PSK-CHACHA20-POLY1305": 0xCCAC,
}

# BoringSSL's curve names -> OpenSSL's, and the TLS group code points (for stats).
CURVES = {
    "P-256": "prime256v1",
    "P-384": "secp384r1",
    "P-521": "secp521r1",
    "X25519": "X25519",
}
GROUP_NAMES = {
    0x0017: "P-256",
    0x0018: "P-384",
    0x0019: "P-521",
    0x001D: "X25519",
    0x001E: "X448",
    0x0100: "ffdhe2048",
    0x0101: "ffdhe3072",
    0x0102: "ffdhe4096",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class CipherPolicy:
    """A compiled ``cipher_suites`` list: OpenSSL strings, one per way of resolving its
    equal-preference groups.

    ``orderings`` maps a choice (for each group, the index of the member put first) to the
    OpenSSL cipher string with that member first. ``groups`` are the groups' members' IANA
    codes. BoringSSL, with server preference, walks its list in order and, at a group,
    takes the member the client prefers; putting that member first in the OpenSSL list
    gives OpenSSL the same answer."""

    spec: str  # as configured (Envoy's joined form), for messages
    groups: tuple[tuple[int, ...], ...]
    orderings: dict[tuple[int, ...], str]

    @property
    def default_string(self) -> str:
        return self.orderings[(0,) * len(self.groups)]

    def choice_for(self, offered: tuple[int, ...]) -> tuple[int, ...]:
        """For each group, the member the client lists first (0 when it lists none)."""
        if not self.groups:
            return ()
        rank = {code: i for i, code in enumerate(offered)}
        out = []
        for members in self.groups:
            best, best_rank = 0, len(offered)
            for i, code in enumerate(members):
                r = rank.get(code, best_rank)
                if r < best_rank:
                    best, best_rank = i, r
            out.append(best)
        return tuple(out)


def compile_cipher_suites(suites, path: str) -> CipherPolicy:
    spec = ":".join(suites) if suites else DEFAULT_CIPHER_SUITES
    tokens = [t for t in spec.split(":") if t]
    rejected: list[str] = []
    parts: list[list[str] | str] = []  # a name/rule, or a group's names
    for token in tokens:
        if token.startswith("[") and token.endswith("]"):
            members = token[1:-1].split("|")
            bad = [m for m in members if m not in BORINGSSL_CIPHERS]
            rejected.extend(bad)
            parts.append(members)
        elif token[0] in "-!+":
            name = token[1:]
            if name not in BORINGSSL_CIPHERS and name not in _KEYWORDS:
                rejected.append(name)
            parts.append(token)
        elif token in BORINGSSL_CIPHERS:
            parts.append(token)
        elif token in _KEYWORDS:
            raise ConfigError(
                join_path(path, "cipher_suites"),
                f"cipher rule '{token}' is not supported by legatus: list cipher names",
            )
        else:
            rejected.append(token)
    if rejected:
        raise ConfigError(
            join_path(path, "cipher_suites"),
            f"Failed to initialize cipher suites {spec}. The following ciphers were rejected "
            f"when tried individually: {', '.join(rejected)}",
        )
    groups = tuple(tuple(CIPHER_CODES[m] for m in p) for p in parts if isinstance(p, list))
    sizes = [len(p) for p in parts if isinstance(p, list)]
    orderings: dict[tuple[int, ...], str] = {}
    for choice in product(*(range(n) for n in sizes)):
        picks = iter(choice)
        names: list[str] = []
        for p in parts:
            if isinstance(p, list):
                first = next(picks)
                names.extend([p[first], *(m for i, m in enumerate(p) if i != first)])
            else:
                names.append(p)
        orderings[choice] = ":".join(names)
    policy = CipherPolicy(spec=spec, groups=groups, orderings=orderings)
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        probe.set_ciphers(policy.default_string)
    except ssl.SSLError:
        raise ConfigError(
            join_path(path, "cipher_suites"), f"Failed to initialize cipher suites {spec}."
        ) from None
    return policy


# The keyword rules of the OpenSSL/BoringSSL cipher-string language: accepted only as
# removals (``-ALL``), since their positive meaning differs between the two libraries.
_KEYWORDS = frozenset(
    {"ALL", "DEFAULT", "HIGH", "MEDIUM", "aNULL", "eNULL", "NULL", "RSA", "kRSA", "ECDHE",
     "ECDSA", "aECDSA", "aRSA", "PSK", "kPSK", "AES", "AES128", "AES256", "AESGCM", "CHACHA20",
     "3DES", "SHA", "SHA1", "SHA256", "SHA384", "TLSv1", "TLSv1.2", "SSLv3", "FIPS",
     "kECDHE", "EECDH"}
)  # fmt: skip


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsParams:
    minimum_version: ssl.TLSVersion
    maximum_version: ssl.TLSVersion
    ciphers: CipherPolicy
    curve: str | None  # the OpenSSL name of the one configured curve; None: OpenSSL's default


def compile_tls_params(proto, path: str, *, server: bool) -> TlsParams:
    """``TlsParameters`` (``proto`` may be the default message) with Envoy's defaults."""
    check_supported(
        proto,
        ("tls_minimum_protocol_version", "tls_maximum_protocol_version", "cipher_suites",
         "ecdh_curves"),
        path,
        "TlsParameters (Python's ssl module cannot set signature algorithms or compliance "
        "policies)",
    )  # fmt: skip
    minimum = _VERSIONS.get(proto.tls_minimum_protocol_version, ssl.TLSVersion.TLSv1_2)
    default_max = ssl.TLSVersion.TLSv1_3 if server else ssl.TLSVersion.TLSv1_2
    maximum = _VERSIONS.get(proto.tls_maximum_protocol_version, default_max)
    curve = None
    curves = list(proto.ecdh_curves)
    if curves:
        spec = ":".join(curves)
        names = [c for part in curves for c in part.split(":") if c]
        if any(c not in CURVES for c in names):
            raise ConfigError(
                join_path(path, "ecdh_curves"), f"Failed to initialize ECDH curves {spec}"
            )
        if len(names) > 1:
            raise ConfigError(
                join_path(path, "ecdh_curves"),
                f"ECDH curves {spec}: legatus can restrict the curves to one only (Python's "
                "ssl module sets a single group); configure one curve, or none for OpenSSL's "
                "defaults",
            )
        curve = CURVES[names[0]]
    return TlsParams(
        minimum_version=minimum,
        maximum_version=maximum,
        ciphers=compile_cipher_suites(list(proto.cipher_suites), path),
        curve=curve,
    )


def compile_alpn(protocols, path: str) -> tuple[str, ...]:
    """``alpn_protocols``, checked as Envoy's parseAlpnProtocols checks them."""
    out = tuple(protocols)
    joined = ",".join(out)
    if len(joined) >= 65535 or any(len(p.encode()) > 255 for p in joined.split(",")):
        raise ConfigError(join_path(path, "alpn_protocols"), "Invalid ALPN protocol string")
    return out


def apply_params(ctx: ssl.SSLContext, params: TlsParams, cipher_string: str) -> None:
    """Set versions, ciphers and the curve on a fresh context."""
    if params.minimum_version > params.maximum_version:
        # BoringSSL accepts the config and then fails every handshake; OpenSSL refuses to
        # set such versions, so the context keeps the minimum and the handshake fails alike.
        ctx.minimum_version = params.minimum_version
        ctx.maximum_version = params.minimum_version
        ctx.options |= _NO_VERSIONS
    else:
        ctx.minimum_version = params.minimum_version
        ctx.maximum_version = params.maximum_version
    ctx.set_ciphers(cipher_string)
    if params.curve is not None:
        ctx.set_ecdh_curve(params.curve)


_NO_VERSIONS = ssl.OP_NO_TLSv1 | ssl.OP_NO_TLSv1_1 | ssl.OP_NO_TLSv1_2 | ssl.OP_NO_TLSv1_3
