"""Fixtures shared by the test folders."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest


@dataclass
class RunProcess:
    """A `powerplane run` process up to its "Ctrl-C stops" line: what it printed, the cockpit URL, the admin token."""

    proc: subprocess.Popen[str]
    text: str
    url: str
    token: str


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_powerplane_run(args: list[str], wait_s: float = 120.0) -> RunProcess:
    """Start ``python -m powerplane.cli run --port <free port> *args`` and read its output until it says
    "Ctrl-C stops" (or ``wait_s`` passes); fails, with the process ended, where it printed no URL and token."""
    cmd = [sys.executable, "-m", "powerplane.cli", "run", "--port", str(free_port()), *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if "Ctrl-C stops" in line:
            break
    text = "".join(lines)
    url = re.search(r"cockpit: (\S+)", text)
    token = re.search(r"admin token .*: (pp_\S+)", text)
    if not (url and token):
        proc.kill()
        out, _ = proc.communicate(timeout=30)
        pytest.fail(f"powerplane run printed no cockpit URL and admin token:\n{text}{out}")
    return RunProcess(proc, text, url.group(1), token.group(1))


@pytest.fixture
def powerplane_run() -> Callable[..., RunProcess]:
    """:func:`start_powerplane_run`, for the tests of `powerplane run` as a real process."""
    return start_powerplane_run
