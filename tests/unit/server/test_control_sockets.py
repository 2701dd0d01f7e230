"""Listening sockets passed from the main process to a worker over a SOCK_SEQPACKET
socketpair (SCM_RIGHTS), named by their number in the main process."""

from __future__ import annotations

import os
import socket

from legatus.server import control


def _listening() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    return sock


def test_a_passed_socket_is_the_same_listening_socket():
    here, there = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    received = control.ReceivedSockets(there)
    listening = _listening()
    try:
        control.pass_socket(here, listening.fileno())
        received.collect()
        fd = received.take(listening.fileno())
        assert fd is not None and fd != listening.fileno()
        assert received.take(listening.fileno()) is None  # taken once
        with socket.socket(fileno=fd) as copy:
            assert copy.getsockname() == listening.getsockname()
            client = socket.create_connection(listening.getsockname(), timeout=2)
            copy.settimeout(2)
            conn, _ = copy.accept()  # accepted through the copy
            conn.close()
            client.close()
    finally:
        listening.close()
        received.close()
        here.close()


def test_sockets_not_taken_are_closed():
    here, there = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    received = control.ReceivedSockets(there)
    a, b = _listening(), _listening()
    try:
        received.collect()  # nothing yet: returns at once
        control.pass_socket(here, a.fileno())
        control.pass_socket(here, a.fileno())  # the same name again: the first copy is closed
        control.pass_socket(here, b.fileno())
        before = set(os.listdir("/proc/self/fd"))
        received.collect()
        after = set(os.listdir("/proc/self/fd"))
        assert len(after - before) == 2  # one copy of a (the newer), one of b
        received.discard(b.fileno())
        assert len(set(os.listdir("/proc/self/fd")) - before) == 1
        received.close()
        assert not set(os.listdir("/proc/self/fd")) - before
    finally:
        a.close()
        b.close()
        here.close()
