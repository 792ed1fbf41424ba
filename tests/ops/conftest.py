"""Loopback servers for the notification tests: SMTP (aiosmtpd) and an HTTP webhook sink (http.server)."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from aiosmtpd.controller import Controller


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Mailbox:
    def __init__(self) -> None:
        self.messages: list[Any] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(envelope)
        return "250 OK"


class Hooks:
    """Records every JSON POST; answers like a WeCom/DingTalk robot (``errcode: 0``)."""

    def __init__(self, port: int = 0) -> None:
        self.posts: list[tuple[str, Any]] = []
        hooks = self

        class H(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                hooks.posts.append((self.path, json.loads(body)))
                out = b'{"errcode": 0}'
                self.send_response(200)
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), H)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def paths(self) -> list[str]:
        return [p.split("?")[0] for p, _ in self.posts]


@pytest.fixture
def free_port() -> Callable[[], int]:
    return _free_port


@pytest.fixture
def smtp() -> Iterator[tuple[int, Mailbox]]:
    box = Mailbox()
    port = _free_port()
    ctl = Controller(box, hostname="127.0.0.1", port=port)
    ctl.start()
    try:
        yield port, box
    finally:
        ctl.stop()


@pytest.fixture
def hook_server() -> Iterator[Callable[..., Hooks]]:
    """A factory of webhook sinks on loopback (``hook_server(port=0)``), all closed at teardown."""
    made: list[Hooks] = []

    def make(port: int = 0) -> Hooks:
        h = Hooks(port)
        made.append(h)
        return h

    yield make
    for h in made:
        h.close()
