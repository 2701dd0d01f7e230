"""``envoy.http.original_ip_detection.custom_header``: the client is the IP in a header.

The first value of ``header_name`` parsed as an IPv4 or IPv6 address (no port, no brackets)
is the client; with ``allow_extension_to_set_address_as_trusted`` it may make the request
internal (``internal_address_config``). A missing or unparsable value is no detection (the
next extension is asked) or, with ``reject_with_status``, the request's rejection with that
status (403 for one under 400 or over 511, as Envoy). The extension never adds to
``x-forwarded-for``. Checked against Envoy 1.40 in
tests/differential/test_hcm_original_ip_detection_envoy.py.
"""

from __future__ import annotations

from legatus.config.supported import check_supported
from legatus.http.original_ip_detection import NOT_DETECTED, Detection, parse_ip
from legatus.registry import Category, Registry, extension

NAME = "envoy.http.original_ip_detection.custom_header"
CONFIG_TYPE = "envoy.extensions.http.original_ip_detection.custom_header.v3.CustomHeaderConfig"
_SUPPORTED = ("header_name", "allow_extension_to_set_address_as_trusted", "reject_with_status")
_DEFAULT_REJECT_STATUS = 403


class CustomHeaderIpDetection:
    """One configured extension: immutable, shared by every request."""

    __slots__ = ("_failed", "header_name", "trusted")

    def __init__(self, header_name: str, *, trusted: bool, reject_status: int | None) -> None:
        self.header_name = header_name.lower()
        self.trusted = trusted
        self._failed = NOT_DETECTED if reject_status is None else Detection(
            None, reject_status=reject_status
        )  # fmt: skip

    def detect(self, headers, peer) -> Detection:
        value = headers.get(self.header_name)
        address = parse_ip(value) if value is not None else None
        if address is None:
            return self._failed
        return Detection(address, self.trusted)


def _factory(config, _context, path: str) -> CustomHeaderIpDetection:
    check_supported(config, _SUPPORTED, path, "CustomHeaderConfig")
    reject_status = None
    if config.HasField("reject_with_status"):
        reject_status = config.reject_with_status.code
        if not 400 <= reject_status <= 511:
            reject_status = _DEFAULT_REJECT_STATUS
    return CustomHeaderIpDetection(
        config.header_name,
        trusted=config.allow_extension_to_set_address_as_trusted,
        reject_status=reject_status,
    )


def register(registry: Registry) -> None:
    registry.register(extension(Category.ORIGINAL_IP_DETECTION, NAME, CONFIG_TYPE, _factory))
