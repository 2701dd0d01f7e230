"""Envoy's HTTP/2 flood protections (``ProtocolConstraints``), with its limits and stats.

Inbound, per connection, counted as frames arrive (before they are acted on):

- frames with an empty payload and no END_STREAM (HEADERS, CONTINUATION, DATA) in a row:
  more than ``max_consecutive_inbound_frames_with_empty_payload`` ->
  ``http2.inbound_empty_frames_flood``;
- PRIORITY frames: more than ``max_inbound_priority_frames_per_stream`` x (1 + streams
  opened) -> ``http2.inbound_priority_frames_flood``;
- WINDOW_UPDATE frames: more than 1 + 2 x (streams opened +
  ``max_inbound_window_update_frames_per_data_frame_sent`` x DATA frames sent) ->
  ``http2.inbound_window_update_frames_flood``.

Outbound, the frames written and not yet handed to the kernel (the codec's output buffer
plus the transport's write buffer, see ``Http2Connection.on_transport_buffer``): more than
``max_outbound_frames`` -> ``http2.outbound_flood``; control frames sent in answer to the
peer (SETTINGS and PING acknowledgements, RST_STREAM) more than
``max_outbound_control_frames`` -> ``http2.outbound_control_flood``. This bounds the memory
a peer that sends but never reads can make the connection hold.

A violation is final: ``violation`` keeps the first one, the connection closes.
"""

from __future__ import annotations

from collections import deque

from legatus.http.http2 import frames as f

INBOUND_EMPTY_FRAMES_FLOOD = "Too many consecutive frames with an empty payload"
INBOUND_PRIORITY_FRAMES_FLOOD = "Too many PRIORITY frames"
INBOUND_WINDOW_UPDATE_FRAMES_FLOOD = "Too many WINDOW_UPDATE frames"
OUTBOUND_FLOOD = "Too many frames in the outbound queue."
OUTBOUND_CONTROL_FLOOD = "Too many control frames in the outbound queue."

_STATS = {
    INBOUND_EMPTY_FRAMES_FLOOD: "inbound_empty_frames_flood",
    INBOUND_PRIORITY_FRAMES_FLOOD: "inbound_priority_frames_flood",
    INBOUND_WINDOW_UPDATE_FRAMES_FLOOD: "inbound_window_update_frames_flood",
    OUTBOUND_FLOOD: "outbound_flood",
    OUTBOUND_CONTROL_FLOOD: "outbound_control_flood",
}


class ProtocolConstraints:
    __slots__ = ("_batches", "_handed", "_settings", "_stats", "_written", "_written_control",
                 "consecutive_empty", "inbound_priority_frames", "inbound_streams",
                 "inbound_window_update_frames", "outbound_control_frames",
                 "outbound_data_frames", "outbound_frames", "violation")  # fmt: skip

    def __init__(self, settings, stats) -> None:
        self._settings = settings
        self._stats = stats
        self.consecutive_empty = 0
        self.inbound_streams = 0
        self.inbound_priority_frames = 0
        self.inbound_window_update_frames = 0
        self.outbound_data_frames = 0
        # Outbound frames are counted from the start: queued (by the codec, as it queues
        # them) and written (by the transport); the difference is what is still held.
        self.outbound_frames = 0
        self.outbound_control_frames = 0
        self._written = 0
        self._written_control = 0
        self._handed = 0  # bytes handed to the transport, ever
        # Output handed to the transport, not yet known written: (end offset, frames queued
        # and control frames queued by then).
        self._batches: deque[tuple[int, int, int]] = deque()
        self.violation: str | None = None

    # Inbound -----------------------------------------------------------------------

    def track_inbound(self, kind: int, flags: int, length: int, padding: int) -> str | None:
        """Count one inbound frame (its header and padding known); the violation, if any."""
        if kind <= f.HEADERS or kind == f.CONTINUATION:  # DATA, HEADERS, CONTINUATION
            if kind != f.DATA and flags & f.FLAG_END_HEADERS:
                self.inbound_streams += 1
            if length - padding == 0 and not flags & f.FLAG_END_STREAM:
                self.consecutive_empty += 1
                if (
                    self.consecutive_empty
                    > self._settings.max_consecutive_inbound_frames_with_empty_payload
                ):
                    return self._violate(INBOUND_EMPTY_FRAMES_FLOOD)
            else:
                self.consecutive_empty = 0
        elif kind == f.PRIORITY:
            self.inbound_priority_frames += 1
            limit = self._settings.max_inbound_priority_frames_per_stream
            if self.inbound_priority_frames > limit * (1 + self.inbound_streams):
                return self._violate(INBOUND_PRIORITY_FRAMES_FLOOD)
        elif kind == f.WINDOW_UPDATE:
            self.inbound_window_update_frames += 1
            per_data = self._settings.max_inbound_window_update_frames_per_data_frame_sent
            if self.inbound_window_update_frames > 1 + 2 * (
                self.inbound_streams + per_data * self.outbound_data_frames
            ):
                return self._violate(INBOUND_WINDOW_UPDATE_FRAMES_FLOOD)
        return None

    # Outbound ----------------------------------------------------------------------

    def check_outbound(self) -> str | None:
        """After frames were queued: the violation, if the queue is now too long."""
        settings = self._settings
        if self.outbound_frames - self._written > settings.max_outbound_frames:
            return self._violate(OUTBOUND_FLOOD)
        if self.outbound_control_frames - self._written_control > (
            settings.max_outbound_control_frames
        ):
            return self._violate(OUTBOUND_CONTROL_FLOOD)
        return None

    def handed(self, size: int) -> None:
        """The output buffer (``size`` bytes, the frames queued so far) went to the
        transport."""
        self._handed += size
        self._batches.append((self._handed, self.outbound_frames, self.outbound_control_frames))

    def transport_buffer(self, unsent: int) -> tuple[int, int]:
        """The transport still holds ``unsent`` bytes: frames before them are written.
        Returns ``active_frames``."""
        batches = self._batches
        if batches:
            written = self._handed - unsent
            while batches and batches[0][0] <= written:
                _, self._written, self._written_control = batches.popleft()
        return (self.outbound_frames - self._written,
                self.outbound_control_frames - self._written_control)  # fmt: skip

    @property
    def active_frames(self) -> tuple[int, int]:
        """(frames, control frames) queued and not yet written."""
        return (self.outbound_frames - self._written,
                self.outbound_control_frames - self._written_control)  # fmt: skip

    def _violate(self, message: str) -> str:
        if self.violation is None:
            self.violation = message
            getattr(self._stats, _STATS[message]).inc()
        return self.violation
