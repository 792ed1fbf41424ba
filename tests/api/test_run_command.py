"""`powerplane run` as a real process: prints the URL and a working admin token, serves https with a certificate,
and stops cleanly on Ctrl-C (SIGINT) and SIGTERM."""

from __future__ import annotations

import re
import shutil
import signal
import ssl
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.slow


def start(powerplane_run: Any, tmp: Path, *extra: str) -> tuple[subprocess.Popen[str], str, str]:
    r = powerplane_run(["--scenario", "small", "--speed", "30", "--state-dir", str(tmp / "state"), *extra])
    return r.proc, r.url, r.token


def stop(proc: subprocess.Popen[str], sig: int) -> str:
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    return out


def test_run_prints_url_and_token_and_stops_on_ctrl_c(tmp_path: Path, powerplane_run: Any) -> None:
    proc, url, token = start(powerplane_run, tmp_path)
    try:
        assert url.startswith("http://127.0.0.1:")
        r = httpx.get(f"{url}api/whoami", headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert r.json() == {"name": "admin", "role": "admin"}
        assert httpx.get(f"{url}api/whoami", timeout=10).status_code == 401
        assert token not in (tmp_path / "state" / "tokens.json").read_text()
    finally:
        out = stop(proc, signal.SIGINT)
    assert "stopped" in out
    audit = (tmp_path / "state" / "audit.jsonl").read_text()
    assert "admin token created at start" in audit


def test_run_serves_tls_and_stops_on_sigterm(tmp_path: Path, powerplane_run: Any) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail("openssl is needed to make the test certificate (apt-get install -y openssl)")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    proc, url, token = start(powerplane_run, tmp_path, "--cert", str(cert), "--key", str(key))
    try:
        assert url.startswith("https://")
        r = httpx.get(
            f"{url}api/whoami",
            headers={"Authorization": f"Bearer {token}"},
            verify=ssl.create_default_context(cafile=str(cert)),
            timeout=10,
        )
        assert r.status_code == 200
    finally:
        out = stop(proc, signal.SIGTERM)
    assert "stopped" in out


def test_run_refuses_bad_options(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from powerplane.cli import app

    runner = CliRunner()
    r = runner.invoke(app, ["run", "--speed", "5000", "--state-dir", str(tmp_path)])
    assert r.exit_code == 2 and "between 1 and 600" in r.output
    r = runner.invoke(app, ["run", "--cert", str(tmp_path / "c.pem"), "--state-dir", str(tmp_path)])
    assert r.exit_code == 2 and "both --cert and --key" in r.output


def test_tokens_command_creates_lists_and_revokes(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from powerplane.api.auth import TokenStore
    from powerplane.cli import app

    runner = CliRunner()
    r = runner.invoke(app, ["tokens", "create", "grafana", "--role", "viewer", "--state-dir", str(tmp_path)])
    assert r.exit_code == 0, r.output
    token = r.output.strip()
    store = TokenStore(tmp_path / "tokens.json")
    p = store.verify(token)
    assert p is not None and (p.name, p.role) == ("grafana", "viewer")
    r = runner.invoke(app, ["tokens", "list", "--state-dir", str(tmp_path)])
    assert re.search(r"grafana\s+viewer", r.output) and token not in r.output
    r = runner.invoke(app, ["tokens", "create", "x", "--role", "root", "--state-dir", str(tmp_path)])
    assert r.exit_code == 2 and "unknown role" in r.output
    assert runner.invoke(app, ["tokens", "revoke", "grafana", "--state-dir", str(tmp_path)]).exit_code == 0
    assert TokenStore(tmp_path / "tokens.json").verify(token) is None
    assert runner.invoke(app, ["tokens", "revoke", "grafana", "--state-dir", str(tmp_path)]).exit_code == 1
