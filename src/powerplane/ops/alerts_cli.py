"""``powerplane alerts``: check a rule file, list the rules (``alerts test`` is added by the runtime's ops loop)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from powerplane.ops.expr import ExprError
from powerplane.ops.rules import RuleFileError, load_rule_file

app = typer.Typer(no_args_is_help=True, add_completion=False)
console = Console()
err = Console(stderr=True, soft_wrap=True)


@app.command()
def check(
    rules: Annotated[Path, typer.Argument(help="alert rule file (YAML)")],
    scenario: Annotated[str, typer.Option(help="site the expressions are compiled against")] = "small",
) -> None:
    """Validate a rule file and compile every expression against a site; exit 2 with the reason when wrong."""
    from powerplane.config import load_scenario
    from powerplane.ops.alerts import AlertEngine
    from powerplane.topology import Topology

    try:
        rf = load_rule_file(rules)
        site, _ = load_scenario(scenario)
        eng = AlertEngine(rf, Topology.from_site(site), site)
    except (RuleFileError, ExprError, ValueError) as e:
        err.print(f"[bold red]error:[/] {e}")
        raise typer.Exit(2) from None
    _table(eng.rule_status(), f"{rules}: {len(eng.rules)} rules OK on {scenario}")


@app.command("rules")
def list_rules(
    scenario: Annotated[str, typer.Option(help="site to compile the default rules against")] = "small",
) -> None:
    """List the shipped default rules."""
    from powerplane.config import load_scenario
    from powerplane.ops.alerts import AlertEngine
    from powerplane.topology import Topology

    site, _ = load_scenario(scenario)
    eng = AlertEngine.with_default_rules(site, Topology.from_site(site))
    _table(eng.rule_status(), f"default rules: {len(eng.rules)}")


def _table(status: list[dict[str, object]], title: str) -> None:
    t = Table("rule", "severity", "level", "entities", title=title)
    for r in status:
        t.add_row(str(r["rule"]), str(r["severity"]), str(r["level"]), str(r["entities"]))
    console.print(t)
