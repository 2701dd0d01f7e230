"""``x-forwarded-client-cert`` (XFCC): the HCM's ``forward_client_cert_details`` and
``set_current_client_cert_details``, as Envoy's ConnectionManagerUtility::mutateXfccRequestHeader.

- ALWAYS_FORWARD_ONLY: the header passes untouched.
- SANITIZE (the default), or any mode on a connection without a client certificate: removed.
- FORWARD_ONLY: passes untouched (mTLS connections only).
- APPEND_FORWARD / SANITIZE_SET: this hop's element is appended (``,``) to / replaces the
  header: ``By=<local URI SAN>`` per URI SAN of the certificate legatus presented,
  ``Hash=<sha256 of the client certificate>``, then the configured details in Envoy's order
  (Cert, Subject, URI, DNS), joined with ``;``.

``Chain`` needs the client's certificate chain, which Python's ``ssl`` module does not
expose: it is refused at config time.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from legatus.config.errors import ConfigError, join_path

HEADER = "x-forwarded-client-cert"


class ForwardClientCert(enum.IntEnum):
    """HttpConnectionManager.ForwardClientCertDetails."""

    SANITIZE = 0
    FORWARD_ONLY = 1
    APPEND_FORWARD = 2
    SANITIZE_SET = 3
    ALWAYS_FORWARD_ONLY = 4


# Envoy's ClientCertDetailsType, in the order it writes them.
_DETAILS = ("cert", "chain", "subject", "uri", "dns")


@dataclass(frozen=True, slots=True)
class XfccPolicy:
    mode: ForwardClientCert = ForwardClientCert.SANITIZE
    details: tuple[str, ...] = ()  # from set_current_client_cert_details, in _DETAILS order


def compile_xfcc(hcm, path: str) -> XfccPolicy:
    mode = ForwardClientCert(hcm.forward_client_cert_details)
    details: tuple[str, ...] = ()
    if hcm.HasField("set_current_client_cert_details"):
        spec = hcm.set_current_client_cert_details
        spath = join_path(path, "set_current_client_cert_details")
        if spec.chain:
            raise ConfigError(
                join_path(spath, "chain"),
                "set_current_client_cert_details.chain is not supported by legatus: Python's "
                "ssl module does not expose the client's certificate chain",
            )
        details = tuple(
            d for d in _DETAILS
            if (spec.HasField(d) and getattr(spec, d).value if d == "subject" else getattr(spec, d))
        )  # fmt: skip
    return XfccPolicy(mode=mode, details=details)


def mutate_xfcc(policy: XfccPolicy, headers: Any, ssl: Any) -> None:
    """Apply ``policy`` to a request's headers; ``ssl``: the downstream connection's
    SslConnectionInfo (None for plaintext)."""
    mode = policy.mode
    if mode is ForwardClientCert.ALWAYS_FORWARD_ONLY:
        return
    if mode is ForwardClientCert.SANITIZE or ssl is None or ssl.peer_certificate is None:
        headers.remove(HEADER)
        return
    if mode is ForwardClientCert.FORWARD_ONLY:
        return
    peer = ssl.peer_certificate
    parts = []
    local = ssl.local_certificate
    if local is not None:
        parts.extend(f"By={uri}" for uri in local.uri_sans)
    parts.append(f"Hash={peer.sha256}")
    for detail in policy.details:
        if detail == "cert":
            parts.append(f'Cert="{peer.url_encoded_pem}"')
        elif detail == "subject":
            parts.append(f'Subject="{peer.subject}"')
        elif detail == "uri":
            uris = peer.uri_sans
            parts.extend(f"URI={u}" for u in uris) if uris else parts.append("URI=")
        elif detail == "dns":
            parts.extend(f"DNS={d}" for d in peer.dns_sans)
    value = ";".join(parts)
    if mode is ForwardClientCert.APPEND_FORWARD:
        current = headers.get(HEADER)
        headers.set(HEADER, f"{current},{value}" if current else value)
    else:
        headers.set(HEADER, value)
