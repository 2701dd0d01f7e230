"""The process that forks the workers: forked by the main process before it does anything else.

Why. Workers are forked so that they share the pages of the code and protos already loaded
(DESIGN §2). But the main process talks gRPC (xDS), and a process forked while gRPC's
threads run inherits a gRPC that no longer works: a worker forked then would hang in its
first gRPC call (the rate limit filters'). So the main process forks this small process
first, while it is still single-threaded and has touched no gRPC, and asks it for every
worker, at start-up and for each replacement later.

Protocol (a SOCK_SEQPACKET socketpair, one pickled message per packet, blocking; the
zygote answers each request before reading the next):

- ``("spawn", index, main_fds)`` with the file descriptors themselves attached
  (SCM_RIGHTS): the worker's end of its control channel first, then its end of its socket
  channel (listening sockets passed later, see control.py), then the listening sockets it
  shares with the main process (``main_fds`` are their numbers in the main process, so the
  worker can translate its ListenerSocket.inherited_fd). Answer: ``("pid", pid)``.
- ``("wait", pid, timeout)``: reap that worker if it exits within ``timeout`` seconds.
  Answer: ``("status", text)`` (``"exit code 0"``, ``"killed by SIGKILL"``) or ``("status", None)``.

The zygote exits when the main process closes its end (or dies: PR_SET_PDEATHSIG), and a
worker dies with the zygote the same way, so no process outlives the main process.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import pickle
import signal
import socket
import time
from collections.abc import Callable

__all__ = ["Zygote"]

log = logging.getLogger("legatus.main")
_MAX_PACKET = 64 * 1024
_MAX_FDS = 1024


class Zygote:
    """The main process's handle on the zygote."""

    def __init__(self, pid: int, sock: socket.socket) -> None:
        self.pid = pid
        self._sock = sock

    @classmethod
    def start(cls, run_worker: Callable[..., None]) -> Zygote:
        """Fork the zygote. ``run_worker(index=, control_sock=, socket_channel=, parent_pid=,
        fd_map=)`` is what a worker runs (it never returns)."""
        parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        main_pid = os.getpid()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child never returns
            parent_sock.close()
            code = 0
            try:
                _serve(child_sock, main_pid, run_worker)
            except BaseException:
                log.exception("the worker zygote failed")
                code = 1
            os._exit(code)
        child_sock.close()
        return cls(pid, parent_sock)

    def spawn(
        self,
        index: int,
        control_sock: socket.socket,
        socket_channel: socket.socket,
        shared_fds: list[int],
    ) -> int:
        """A new worker; returns its pid."""
        fds = [control_sock.fileno(), socket_channel.fileno(), *shared_fds]
        socket.send_fds(self._sock, [pickle.dumps(("spawn", index, shared_fds))], fds)
        kind, pid = pickle.loads(self._sock.recv(_MAX_PACKET))
        assert kind == "pid", kind
        return pid

    def wait(self, pid: int, timeout: float = 0.0) -> str | None:
        """Reap worker ``pid`` if it has exited (waiting up to ``timeout``): its status."""
        try:
            self._sock.sendall(pickle.dumps(("wait", pid, timeout)))
            kind, status = pickle.loads(self._sock.recv(_MAX_PACKET))
        except (OSError, EOFError):
            return "unknown status (the worker zygote is gone)"
        assert kind == "status", kind
        return status

    def stop(self) -> None:
        """Close the channel: the zygote exits; reap it."""
        self._sock.close()
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)


def _serve(sock: socket.socket, main_pid: int, run_worker) -> None:  # pragma: no cover
    from legatus.server.worker import die_with_parent

    die_with_parent(main_pid)
    signal.set_wakeup_fd(-1)
    for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGHUP, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process coordinates Ctrl-C
    gc.freeze()  # keep the shared pages shared in every worker
    while True:
        try:
            data, fds, _flags, _addr = socket.recv_fds(sock, _MAX_PACKET, _MAX_FDS)
        except OSError:
            return
        if not data:
            return  # the main process closed the channel
        request = pickle.loads(data)
        if request[0] == "spawn":
            _, index, main_fds = request
            control_fd, channel_fd, shared = fds[0], fds[1], fds[2:]
            pid = os.fork()
            if pid == 0:
                sock.close()
                run_worker(
                    index=index,
                    control_sock=socket.socket(fileno=control_fd),
                    socket_channel=socket.socket(fileno=channel_fd),
                    parent_pid=os.getppid(),
                    fd_map=dict(zip(main_fds, shared, strict=True)),
                )
                os._exit(1)  # run_worker never returns
            for fd in fds:
                os.close(fd)
            sock.sendall(pickle.dumps(("pid", pid)))
        elif request[0] == "wait":
            _, pid, timeout = request
            sock.sendall(pickle.dumps(("status", _reap(pid, timeout))))


def _reap(pid: int, timeout: float) -> str | None:  # pragma: no cover - in the zygote
    deadline = time.monotonic() + timeout
    while True:
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return "already reaped"
        if done:
            if os.WIFSIGNALED(status):
                return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
            return f"exit code {os.WEXITSTATUS(status)}"
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.005)
