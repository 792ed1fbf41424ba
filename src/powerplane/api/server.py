"""`powerplane run`: the live runtime in its own thread and the cockpit's web server in the foreground."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from powerplane.api.auth import TokenStore
from powerplane.api.cli import tokens_path
from powerplane.runtime.live import LiveOptions, LiveRuntime
from powerplane.runtime.live_core import LiveCore


@dataclass
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = 8080
    cert: Path | None = None
    key: Path | None = None
    log_level: str = "warning"
    bus: str | None = None  # a NATS URL or "local": the site over the bus (runtime/live_bus.py)
    agents: int = 1
    trackers: int = 2


def serve(live: LiveOptions, opts: ServeOptions, announce: Callable[[str], None]) -> None:
    """Start the runtime and serve until Ctrl-C (or SIGTERM); both are stopped cleanly on the way out."""
    import uvicorn

    from powerplane.api.app import create_app

    if (opts.cert is None) != (opts.key is None):
        raise ValueError("TLS needs both --cert and --key")
    for p in (opts.cert, opts.key):
        if p is not None and not p.is_file():
            raise ValueError(f"{p}: no such file")

    def terminate(signum: int, frame: object) -> None:
        raise SystemExit(0)

    # uvicorn stops gracefully on SIGINT/SIGTERM and then re-raises the signal to the handler it found: make
    # SIGTERM end like Ctrl-C, through the ``finally`` below that stops the runtime and closes the history (and,
    # set before the runtime starts, through the bus site's cleanup while it is starting).
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, terminate)
    tokens = TokenStore(tokens_path(live.state_dir))
    runtime: LiveCore
    if opts.bus is None:
        runtime = LiveRuntime(live)
    else:
        from powerplane.runtime.live_bus import open_bus_runtime

        runtime = open_bus_runtime(live, opts.bus, agents=opts.agents, trackers=opts.trackers, announce=announce)
    admin = tokens.create("admin", "admin")
    runtime.record_admin("powerplane-run", "admin token created at start")
    app = create_app(runtime, tokens)
    config = uvicorn.Config(
        app,
        host=opts.host,
        port=opts.port,
        log_level=opts.log_level,
        ssl_certfile=str(opts.cert) if opts.cert else None,
        ssl_keyfile=str(opts.key) if opts.key else None,
        ws_ping_interval=20.0,
        lifespan="on",
    )
    server = uvicorn.Server(config)

    try:
        runtime.start()
    except BaseException:  # a first cycle that fails: still stop what the runtime started (the bus site)
        runtime.stop()
        raise
    scheme = "https" if opts.cert else "http"

    def announce_when_listening() -> None:
        while not server.started and not server.should_exit:
            threading.Event().wait(0.05)
        if server.started:
            announce(f"cockpit: {scheme}://{opts.host}:{opts.port}/")
            announce(f"admin token (shown once; stored hashed in {tokens_path(live.state_dir)}): {admin}")
            announce(f"one-click sign-in: {scheme}://{opts.host}:{opts.port}/#token={admin}")
            announce(
                f"scenario {live.scenario}, speed {live.speed:g}x, policy {live.policy}; "
                f"state in {live.state_dir}; Ctrl-C stops"
            )

    threading.Thread(target=announce_when_listening, name="announce", daemon=True).start()
    try:
        server.run()
    finally:
        runtime.stop()
        announce("stopped")


class BackgroundServer:
    """The cockpit served from a thread (tests, benchmarks): ``with BackgroundServer(rt, tokens) as url: ...``.

    Port 0 picks a free loopback port; the runtime is started and stopped with the server."""

    def __init__(
        self,
        runtime: LiveCore,
        tokens: TokenStore,
        host: str = "127.0.0.1",
        port: int = 0,
        chart_libs: dict[str, Path] | None = None,
    ) -> None:
        import socket

        import uvicorn

        from powerplane.api.app import create_app

        if port == 0:
            with socket.socket() as s:
                s.bind((host, 0))
                port = int(s.getsockname()[1])
        self.runtime = runtime
        self.app = create_app(runtime, tokens, chart_libs)
        self.url = f"http://{host}:{port}"
        self.server = uvicorn.Server(uvicorn.Config(self.app, host=host, port=port, log_level="warning", lifespan="on"))
        self._thread: threading.Thread | None = None

    def start(self, timeout_s: float = 30.0) -> str:
        self.runtime.start()
        self._thread = threading.Thread(target=self.server.run, name="cockpit-server", daemon=True)
        self._thread.start()
        ready = threading.Event()
        while not self.server.started:
            if not self._thread.is_alive():
                raise RuntimeError("the cockpit server failed to start")
            ready.wait(0.05)
            timeout_s -= 0.05
            if timeout_s <= 0:
                raise TimeoutError("the cockpit server did not start")
        return self.url

    def stop(self) -> None:
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(15.0)
        self.runtime.stop()

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
