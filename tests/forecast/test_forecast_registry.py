"""The model registry on a real DuckDB file: versions, aliases, audit history, rollback."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from powerplane.cli import app
from powerplane.forecast.registry import Registry, RegistryError, parse_version


def test_versions_aliases_history_and_rollback(tmp_path: Path) -> None:
    path = tmp_path / "registry.duckdb"
    reg = Registry(path)
    v1 = reg.register("job-aware", b"m1", {"backtest": {"15min": {"mae_w": 10.0}}}, t_s=1.0)
    v2 = reg.register("job-aware", b"m2", {}, t_s=2.0)
    v3 = reg.register("job-aware", b"m3", {}, t_s=3.0, bump="patch")
    assert (v1, v2, v3) == ("v1.0.0", "v1.1.0", "v1.1.1")
    assert reg.next_version("major") == "v2.0.0"
    assert reg.promote(v1, t_s=10.0) is None
    assert reg.promote(v2, t_s=11.0, by="alice", reason="better") == v1
    assert reg.promote(v3, t_s=12.0) == v2
    # a second process sees the same file
    other = Registry(path)
    assert other.alias("champion") == v3
    assert other.load("champion")[1] == b"m3"
    assert other.rollback(t_s=13.0) == (v3, v2)
    assert other.rollback(t_s=14.0) == (v2, v1)
    with pytest.raises(RegistryError, match="no previous holder"):
        other.rollback(t_s=15.0)
    hist = other.history("champion")
    assert [h["action"] for h in hist] == ["promote", "promote", "promote", "rollback", "rollback"]
    assert (
        hist[3]["from_version"] == v3 and hist[3]["to_version"] == v2 and "rolled back from v1.1.1" in hist[3]["reason"]
    )
    assert hist[1]["by"] == "alice" and hist[1]["reason"] == "better"
    assert [r.version for r in other.models()] == [v1, v2, v3]
    assert other.show("champion").aliases == ("champion",)


def test_bad_requests_are_clear_errors(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "r.duckdb")
    with pytest.raises(RegistryError, match="no model"):
        reg.promote("v9.9.9", t_s=0.0)
    with pytest.raises(RegistryError, match="points to no model"):
        reg.rollback(t_s=0.0)
    v = reg.register("x", b"", {}, t_s=0.0)
    with pytest.raises(RegistryError, match="alias must be"):
        reg.promote(v, "king", t_s=0.0)
    with pytest.raises(RegistryError, match="already exists"):
        reg.register("x", b"", {}, t_s=0.0, version=v)
    with pytest.raises(RegistryError, match="not a version"):
        parse_version("1.0")


def test_models_cli(tmp_path: Path) -> None:
    path = tmp_path / "registry.duckdb"
    reg = Registry(path)
    v1 = reg.register("job-aware", b"a", {"backtest": {"15min": {"mae_w": 5e5, "mase": 0.8}}}, t_s=0.0)
    v2 = reg.register("job-aware", b"b", {}, t_s=0.0)
    r = CliRunner()
    res = r.invoke(app, ["models", "promote", v1, "--registry", str(path)])
    assert res.exit_code == 0, res.output
    res = r.invoke(app, ["models", "promote", v2, "--alias", "champion", "--registry", str(path)])
    assert json.loads(res.output) == {"alias": "champion", "from_version": v1, "to_version": v2}
    res = r.invoke(app, ["models", "list", "--json", "--registry", str(path)])
    assert [m["aliases"] for m in json.loads(res.output)] == [[], ["champion"]]
    res = r.invoke(app, ["models", "rollback", "--registry", str(path)])
    assert json.loads(res.output) == {"alias": "champion", "rolled_back_from": v2, "restored": v1}
    res = r.invoke(app, ["models", "show", "champion", "--registry", str(path)])
    doc = json.loads(res.output)
    assert doc["version"] == v1 and doc["alias_history"][-1]["action"] == "rollback"
    res = r.invoke(app, ["models", "show", "v7.0.0", "--registry", str(path)])
    assert res.exit_code == 2


def _hold(path: str, ready: Any, seconds: float) -> None:
    import time

    import duckdb

    con = duckdb.connect(path)  # another process holds the file's lock for a while
    ready.set()
    time.sleep(seconds)
    con.close()


def test_a_call_waits_while_another_process_holds_the_file(tmp_path: Path) -> None:
    import multiprocessing as mp

    reg = Registry(tmp_path / "r.duckdb")
    v = reg.register("job-aware", b"blob", {}, t_s=0.0)
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    holder = ctx.Process(target=_hold, args=(str(reg.path), ready, 1.0))
    holder.start()
    try:
        assert ready.wait(30.0)
        rec, blob = reg.load(v)  # the lock is held: the call waits for it instead of failing
        assert blob == b"blob" and rec.version == v
    finally:
        holder.join(30.0)
