"""`powerplane run` (the cockpit) and `powerplane tokens` (API tokens of a run's state dir)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from powerplane.api.auth import ROLES, TokenStore
from powerplane.core.errors import PowerPlaneError

out = Console()
err = Console(stderr=True, soft_wrap=True)
StateDir = Annotated[Path, typer.Option(help="state directory: tokens, audit log, history")]


def run(
    scenario: Annotated[str, typer.Option(help="shipped scenario name or a site YAML")] = "texas",
    speed: Annotated[float, typer.Option(help="simulated seconds per wall second, 1..600")] = 1.0,
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on")] = 8080,
    policy: Annotated[str, typer.Option(help="energy management at start: none, threshold or mpc")] = "mpc",
    seed: Annotated[int, typer.Option(help="random seed of the twin")] = 0,
    period: Annotated[float, typer.Option(help="wall seconds between cycles")] = 1.0,
    state_dir: StateDir = Path("runs/cockpit"),
    history: Annotated[bool, typer.Option("--history/--no-history", help="keep a DuckDB history")] = True,
    cert: Annotated[Path | None, typer.Option(help="TLS certificate (PEM); serve https with --key")] = None,
    key: Annotated[Path | None, typer.Option(help="TLS private key (PEM)")] = None,
    models: Annotated[
        Path, typer.Option(help="directory of the forecast model registry (registry.duckdb); the prior model if absent")
    ] = Path("runs"),
    bus: Annotated[
        str | None,
        typer.Option(help="run the site over NATS: a nats:// URL, or 'local' for a nats-server of our own"),
    ] = None,
    agents: Annotated[int, typer.Option(help="with --bus: twin agents that play the site's nodes")] = 1,
    trackers: Annotated[int, typer.Option(help="with --bus: hall trackers that share the halls")] = 2,
    heal: Annotated[
        bool, typer.Option("--heal/--no-heal", help="heal routine faults (drain, restart, reset) through the twin")
    ] = True,
    notify: Annotated[
        Path | None,
        typer.Option(help="notification config (YAML: receivers, routes by severity); outbox in the state dir"),
    ] = None,
) -> None:
    """Run the embedded stack (twin, telemetry, energy management, alerts, forecasts) and serve the cockpit."""
    from powerplane.api.server import ServeOptions, serve
    from powerplane.runtime.live import LiveOptions

    live = LiveOptions(
        scenario=scenario,
        speed=speed,
        period_s=period,
        seed=seed,
        policy=policy,
        state_dir=state_dir,
        history=history,
        forecast_registry=models if (models / "registry.duckdb").exists() else None,
        heal=heal,
        notify=notify,
    )
    try:
        serve(
            live,
            ServeOptions(host=host, port=port, cert=cert, key=key, bus=bus, agents=agents, trackers=trackers),
            lambda m: out.print(m, highlight=False, soft_wrap=True),
        )
    except (PowerPlaneError, ValueError, OSError) as exc:
        err.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        pass


def tokens_path(state_dir: Path) -> Path:
    return state_dir / "tokens.json"


tokens_app = typer.Typer(no_args_is_help=True, help="API tokens of the cockpit (stored hashed in the state dir).")


@tokens_app.command("create")
def create(
    name: Annotated[str, typer.Argument(help="who or what uses the token (shown in the audit log)")],
    role: Annotated[str, typer.Option(help=f"one of {', '.join(ROLES)}")] = "viewer",
    state_dir: StateDir = Path("runs/cockpit"),
) -> None:
    """Create (or replace) a token and print it once."""
    try:
        token = TokenStore(tokens_path(state_dir)).create(name, role)
    except ValueError as exc:
        err.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(2) from None
    out.print(token, highlight=False)


@tokens_app.command("list")
def list_tokens(state_dir: StateDir = Path("runs/cockpit")) -> None:
    """List token names and roles (never the secrets)."""
    for t in TokenStore(tokens_path(state_dir)).list():
        out.print(f"{t['name']:<24} {t['role']}", highlight=False)


@tokens_app.command("revoke")
def revoke(name: str, state_dir: StateDir = Path("runs/cockpit")) -> None:
    """Revoke a token by name."""
    if not TokenStore(tokens_path(state_dir)).revoke(name):
        err.print(f"[bold red]error:[/] no token named {name!r}")
        raise typer.Exit(1)
    out.print(f"revoked {name}")
