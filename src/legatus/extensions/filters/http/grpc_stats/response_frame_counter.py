"""Counting response messages, Connect's end-of-stream frame aside (Envoy's ResponseFrameCounter).

A Connect streaming response ends with a frame flagged ``0x02`` whose message is JSON: ``{}``
for success, ``{"error": {"code": "...", ...}}`` for a failure. That frame is no message of the
call: it is not counted, and it tells whether the call succeeded. Nothing after it is read.
"""

from __future__ import annotations

import enum
import json

from legatus.grpc.common import FLAG_CONNECT_END_STREAM, FrameInspector


class _EndFrame(enum.Enum):
    NONE = 0
    BUFFERING = 1
    PARSED = 2
    INVALID = 3


class ResponseFrameCounter(FrameInspector):
    __slots__ = ("_end", "_end_message", "_error_code")

    def __init__(self) -> None:
        super().__init__()
        self._end = _EndFrame.NONE
        self._end_message = bytearray()
        self._error_code: object = None  # the end frame's error.code, when it has one

    def inspect(self, data) -> int:
        before = self._end
        delta = super().inspect(data)
        if before is _EndFrame.NONE and self._end is not _EndFrame.NONE:
            delta -= 1  # the end-of-stream frame is not a message
            self.count -= 1
        return delta

    def connect_success(self) -> bool:
        return self._end is _EndFrame.PARSED and self._error_code is None

    def frame_start(self, flags: int) -> bool:
        if self._end is not _EndFrame.NONE:
            return False  # nothing may follow the end-of-stream frame
        if flags & FLAG_CONNECT_END_STREAM:
            self._end = _EndFrame.BUFFERING
        return True

    def frame_data(self, data) -> None:
        if self._end is _EndFrame.BUFFERING:
            self._end_message += data

    def frame_end(self) -> None:
        if self._end is not _EndFrame.BUFFERING:
            return
        try:
            message = json.loads(self._end_message)
        except ValueError:
            message = None
        if not isinstance(message, dict):
            self._end = _EndFrame.INVALID
            return
        self._end = _EndFrame.PARSED
        error = message.get("error")
        if isinstance(error, dict) and "code" in error:
            self._error_code = error["code"]
