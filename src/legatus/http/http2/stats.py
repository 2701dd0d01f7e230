"""``http2.*``: the HTTP/2 codec's stats, declared exactly as Envoy 1.40 shows them.

Envoy declares them at the root scope, shared by every HTTP connection manager of the
process, when the first HTTP/2 connection is made (``Http2CodecStats``); so does legatus
(``codec_stats``). Names and kinds come from the real Envoy's /stats after an HTTP/2
connection (tests/differential/test_http2_envoy.py keeps them checked).

``nghttp2_downstream_connections`` counts the downstream connections of the default codec:
legatus's own codec behaves as Envoy's default (nghttp2) one and is counted there;
``oghttp2_*`` stays 0, as in Envoy unless ``use_oghttp2_codec``.
"""

from __future__ import annotations

from legatus.stats.store import Scope, StatSet, counter, gauge, histogram


class Http2CodecStats(StatSet):
    """``http2.*`` (root scope)."""

    cookies_total_bytes_too_large = counter()
    deferred_stream_close = gauge()
    dropped_headers_with_underscores = counter()
    goaway_sent = counter()
    header_list_size_too_large = counter()
    header_overflow = counter()
    headers_cb_no_stream = counter()
    inbound_empty_frames_flood = counter()
    inbound_priority_frames_flood = counter()
    inbound_window_update_frames_flood = counter()
    keepalive_timeout = counter()
    metadata_empty_frames = counter()
    nghttp2_downstream_connections = counter()
    nghttp2_upstream_connections = counter()
    oghttp2_downstream_connections = counter()
    oghttp2_upstream_connections = counter()
    outbound_control_flood = counter()
    outbound_control_frames_active = gauge()
    outbound_flood = counter()
    outbound_frames_active = gauge()
    pending_send_bytes = gauge()
    requests_rejected_with_underscores_in_headers = counter()
    rx_messaging_error = counter()
    rx_reset = counter()
    stream_refused_errors = counter()
    streams_active = gauge()
    trailers = counter()
    tx_flush_timeout = counter()
    tx_reset = counter()
    cookie_count = histogram()
    cookie_size = histogram()
    header_count = histogram()
    header_list_size = histogram()


def codec_stats(root: Scope) -> Http2CodecStats:
    """The process's ``http2.*`` stats (declaring them twice returns the same stats)."""
    return Http2CodecStats(root.scope("http2."))


class LazyCodecStats:
    """``http2.*``, declared when first asked for: an HCM config holds one, its first HTTP/2
    connection declares the stats (until then /stats shows none, as Envoy's)."""

    __slots__ = ("_root", "_stats")

    def __init__(self, root: Scope) -> None:
        self._root = root
        self._stats: Http2CodecStats | None = None

    def get(self) -> Http2CodecStats:
        stats = self._stats
        if stats is None:
            stats = self._stats = codec_stats(self._root)
        return stats
