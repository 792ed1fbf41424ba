"""Notification against real servers on loopback: SMTP (aiosmtpd), webhooks and Alertmanager (http.server);
routing by severity, grouping and repeat, and the outbox surviving a notifier being down and a restart."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from powerplane.ops.notify import Notifier, NotifyConfig, dingtalk_signed_url, render
from powerplane.ops.outbox import Outbox, RetryPolicy

T0 = 1_732_390_200.0


def alert(rule: str, severity: str, state: str = "firing", target: str = "gpu-1", t: float = T0) -> dict[str, Any]:
    return {
        "id": f"{rule}:gpu:{target}",
        "rule": rule,
        "severity": severity,
        "state": state,
        "transition": state,
        "labels": {"alertname": rule, "severity": severity, "target": target},
        "annotations": {"summary": f"{rule} on {target}"},
        "since_s": t,
        "fired_s": t,
        "resolved_s": t if state == "resolved" else None,
        "value": 1.0,
    }


def test_routes_by_severity_to_real_servers(
    tmp_path: Path, smtp: tuple[int, Any], hook_server: Callable[..., Any]
) -> None:
    port, box = smtp
    hooks = hook_server()
    try:
        base = f"http://127.0.0.1:{hooks.port}"
        cfg = NotifyConfig.default(port, base, alertmanager_url=base + "/am")
        n = Notifier(cfg, Outbox(tmp_path / "outbox.sqlite"))
        n.step([alert("Hot", "warning"), alert("Xid", "critical"), alert("Islanded", "emergency")], T0)
        # Emergency and Alertmanager (one post per group: by alertname) go at once; the others wait group_wait.
        assert sorted(hooks.paths()) == ["/am/api/v2/alerts"] * 3 + ["/phone", "/wecom"]
        assert box.messages == []
        n.step([], T0 + 31)
        assert len(box.messages) == 1
        mail = box.messages[0].content.decode()
        assert "Hot on gpu-1" in mail and "Subject: PowerPlane 1 firing: Hot" in mail
        paths = hooks.paths()
        assert {"/wecom", "/dingtalk", "/slack"} <= set(paths) and paths.count("/wecom") == 2
        by_path = {p: body for p, body in hooks.posts}
        assert by_path["/wecom"]["msgtype"] == "markdown" and "Xid on gpu-1" in by_path["/wecom"]["markdown"]["content"]
        assert by_path["/dingtalk"]["markdown"]["title"].startswith("PowerPlane 1 firing")
        assert by_path["/slack"]["blocks"][0]["text"]["type"] == "mrkdwn"
        assert by_path["/phone"]["escalation"] == ["on-call"] and by_path["/phone"]["alerts"][0]["id"]
        am = by_path["/am/api/v2/alerts"]
        assert isinstance(am, list) and am[0]["labels"]["alertname"] in {"Hot", "Xid", "Islanded"}
        assert am[0]["startsAt"] == "2024-11-23T19:30:00Z" and "endsAt" not in am[0]
        # Resolution follows the group interval; the email says RESOLVED.
        n.step([alert("Hot", "warning", "resolved", t=T0 + 40)], T0 + 40)
        n.step([], T0 + 31 + 301)
        assert "[RESOLVED] Hot on gpu-1" in box.messages[-1].content.decode()
        resolved = [b for p, b in hooks.posts if p.startswith("/am/") and "endsAt" in b[0]]
        assert resolved and resolved[0][0]["labels"]["alertname"] == "Hot"
        assert resolved[0][0]["endsAt"] == "2024-11-23T19:30:40Z"
        assert n.outbox.pending() == 0
    finally:
        hooks.close()


def test_grouping_and_repeat(tmp_path: Path, hook_server: Callable[..., Any]) -> None:
    hooks = hook_server()
    try:
        cfg = NotifyConfig.model_validate(
            {
                "receivers": [
                    {"name": "slack", "webhook": {"kind": "slack", "url": f"http://127.0.0.1:{hooks.port}/s"}}
                ],
                "routes": [{"match": {}, "receivers": ["slack"], "group_wait": "10s", "repeat_interval": "1h"}],
            }
        )
        n = Notifier(cfg, Outbox(tmp_path / "o.sqlite"))
        n.step([alert("Hot", "warning", target=f"gpu-{i}") for i in range(50)], T0)
        n.step([], T0 + 10)
        assert len(hooks.posts) == 1  # 50 alerts of one rule: one grouped message
        assert hooks.posts[0][1]["text"] == "PowerPlane 50 firing: Hot"
        n.step([], T0 + 1800)
        assert len(hooks.posts) == 1
        n.step([], T0 + 3611)
        assert len(hooks.posts) == 2 and "(repeat)" in hooks.posts[1][1]["text"]
    finally:
        hooks.close()


def test_outbox_survives_a_notifier_down_and_a_restart(
    tmp_path: Path, hook_server: Callable[..., Any], free_port: Callable[[], int]
) -> None:
    port = free_port()  # nothing listens here yet
    cfg = NotifyConfig.model_validate(
        {
            "receivers": [
                {"name": "wecom", "webhook": {"kind": "wecom", "url": f"http://127.0.0.1:{port}/w", "timeout_s": 2}}
            ],
            "routes": [{"match": {}, "receivers": ["wecom"], "group_wait": "0s"}],
            "retry": {"base_s": 2, "max_s": 60},
        }
    )
    path = tmp_path / "outbox.sqlite"
    n = Notifier(cfg, Outbox(path, cfg.retry))
    counts = n.step([alert("Xid", "critical")], T0)
    assert counts["failed"] == 1 and n.outbox.pending() == 1
    assert n.deliver(T0 + 1) == {"delivered": 0, "failed": 0, "dead": 0}  # backing off
    assert n.deliver(T0 + 3)["failed"] == 1  # second attempt, still down
    row = n.outbox.rows()[0]
    assert row["attempts"] == 2 and "Connection refused" in row["last_error"] and row["next_s"] >= T0 + 3 + 4
    n.outbox.close()  # PowerPlane stops
    hooks = hook_server(port)  # the notifier comes back
    try:
        n2 = Notifier(cfg, Outbox(path, cfg.retry))  # and PowerPlane restarts
        assert n2.outbox.pending() == 1
        assert n2.deliver(T0 + 100)["delivered"] == 1
        assert hooks.posts[0][1]["markdown"]["content"].startswith("**PowerPlane 1 firing: Xid**")
        assert n2.outbox.pending() == 0
        n2.outbox.close()
    finally:
        hooks.close()


def test_outbox_gives_up_after_its_limit(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite", RetryPolicy(base_s=1, max_s=1, give_up_after_s=10))
    box.put("nobody", "slack", {"text": "x"}, T0)
    assert box.deliver_due({}, T0)["failed"] == 1
    assert box.deliver_due({}, T0 + 11)["dead"] == 1
    assert box.pending() == 0 and box.rows()[0]["dead"] == 1 and "no receiver" in box.rows()[0]["last_error"]


def test_config_errors_are_clear(tmp_path: Path) -> None:
    p = tmp_path / "n.yaml"
    p.write_text("receivers: [{name: a, webhook: {kind: fax, url: 'http://x'}}]\nroutes: [{receivers: [a]}]\n")
    with pytest.raises(ValueError, match=r"receivers\.0\.webhook\.kind"):
        NotifyConfig.load(p)
    p.write_text("receivers: [{name: a, webhook: {kind: slack, url: 'http://x'}}]\nroutes: [{receivers: [b]}]\n")
    with pytest.raises(ValueError, match="unknown receivers"):
        NotifyConfig.load(p)


def test_dingtalk_signature_and_payloads() -> None:
    url = dingtalk_signed_url("https://oapi.dingtalk.com/robot/send?access_token=x", "SEC", T0)
    assert "&timestamp=1732390200000&sign=" in url
    cfg = NotifyConfig.default(25, "http://127.0.0.1:1")
    r = {x.name: x for x in cfg.receivers}
    assert render("email", [alert("A", "warning")], False, r["email"])["subject"] == "PowerPlane 1 firing: A"


def test_the_documented_config_validates() -> None:
    import yaml

    from powerplane.ops import notify

    doc = notify.__doc__ or ""
    text = "\n".join(line[4:] for line in doc.split("::\n\n", 1)[1].splitlines())
    cfg = NotifyConfig.model_validate(yaml.safe_load(text))
    assert [r.kind for r in cfg.receivers] == ["email", "wecom", "dingtalk", "slack", "phone", "alertmanager"]


def test_rule_defaults_and_a_rules_own_repeat(tmp_path: Path, hook_server: Callable[..., Any]) -> None:
    from powerplane.ops.rules import load_rule_file

    hooks = hook_server()
    rules = load_rule_file(text="defaults: {group_wait: 5s}\ngroups: [{name: g, rules: [{alert: A, expr: '1', "
                           "severity: warning, repeat_interval: 100s}]}]")  # fmt: skip
    cfg = NotifyConfig.model_validate(
        {
            "receivers": [{"name": "s", "webhook": {"kind": "slack", "url": f"http://127.0.0.1:{hooks.port}/s"}}],
            "routes": [{"match": {}, "receivers": ["s"]}],
        }
    )
    n = Notifier(cfg, Outbox(tmp_path / "o.sqlite"), rule_defaults=rules.defaults)
    a = alert("A", "warning")
    a["repeat_interval_s"] = rules.rules()[0].repeat_interval_s
    n.step([a], T0)
    n.step([], T0 + 4)
    assert hooks.posts == []
    n.step([], T0 + 5)  # the rule file's group_wait, not Alertmanager's 30 s
    assert len(hooks.posts) == 1
    n.step([], T0 + 104)
    assert len(hooks.posts) == 1
    n.step([], T0 + 105)  # the rule's own repeat interval, not 4 h
    assert len(hooks.posts) == 2
