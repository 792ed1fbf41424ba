"""Notification: routing by severity, grouping, repeat intervals, and the notifiers (email, IM webhooks, phone,
Alertmanager), all delivered through the durable :class:`~powerplane.ops.outbox.Outbox`.

Default routing (``NotifyConfig.default``): warning -> email, critical -> instant messaging, emergency -> phone
escalation (and IM); every firing alert may also be pushed to Prometheus Alertmanager's ``POST /api/v2/alerts``.
The router groups alerts Alertmanager's way: the first notification of a group waits ``group_wait``, changes go
out at most every ``group_interval``, an unchanged firing group is repeated every ``repeat_interval``. Silenced,
inhibited and acknowledged alerts are held back.

Payload shapes: WeCom and DingTalk group robots (``msgtype: markdown``; DingTalk's optional HMAC-SHA256
signature), Slack incoming webhooks (``text`` + ``blocks``), a phone-escalation webhook (JSON with the alerts
and the escalation chain), Alertmanager v2 alerts (``labels``, ``annotations``, ``startsAt``, ``endsAt``).

A configuration file (``powerplane alerts test --notify notify.yaml``)::

    receivers:
      - {name: ops-mail, email: {host: 127.0.0.1, port: 25, from: powerplane@site, to: [ops@site]}}
      - {name: wecom, webhook: {kind: wecom, url: "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=KEY"}}
      - {name: dingtalk, webhook: {kind: dingtalk, url: "https://oapi.dingtalk.com/robot/send?access_token=T",
                                   secret: SEC}}
      - {name: slack, webhook: {kind: slack, url: "https://hooks.slack.com/services/X/Y/Z"}}
      - {name: phone, webhook: {kind: phone, url: "http://127.0.0.1:9099/escalate", escalation: [primary, backup]}}
      - {name: am, alertmanager: {url: "http://127.0.0.1:9093"}}
    routes:
      - {match: {}, receivers: [am], continue: true, group_wait: 0s, repeat_interval: 60s}
      - {match: {severity: warning}, receivers: [ops-mail]}
      - {match: {severity: critical}, receivers: [wecom, dingtalk, slack]}
      - {match: {severity: emergency}, receivers: [phone, wecom], group_wait: 0s}
    retry: {base_s: 2, max_s: 300, give_up_after_s: 86400}
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import smtplib
import threading
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any, Literal, Protocol

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from powerplane.core.clock import Clock
from powerplane.ops.outbox import DeliveryError, Message, Outbox, RetryPolicy, Sender
from powerplane.ops.rules import Defaults, Duration


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class EmailReceiver(_Strict):
    host: str = "127.0.0.1"
    port: int = 25
    sender: str = Field(alias="from")
    to: list[str] = Field(min_length=1)
    starttls: bool = False
    username: str | None = None
    password: str | None = None
    timeout_s: float = 10.0


class WebhookReceiver(_Strict):
    kind: Literal["wecom", "dingtalk", "slack", "phone"]
    url: str = Field(pattern=r"^https?://")
    secret: str | None = Field(default=None, description="DingTalk signing secret")
    escalation: list[str] = Field(default_factory=list, description="phone: who to call, in order")
    timeout_s: float = 10.0


class AlertmanagerReceiver(_Strict):
    url: str = Field(pattern=r"^https?://", description="base URL; alerts go to {url}/api/v2/alerts")
    generator_url: str = ""
    timeout_s: float = 10.0


class Receiver(_Strict):
    name: str
    email: EmailReceiver | None = None
    webhook: WebhookReceiver | None = None
    alertmanager: AlertmanagerReceiver | None = None

    @model_validator(mode="after")
    def _one(self) -> Receiver:
        if sum(x is not None for x in (self.email, self.webhook, self.alertmanager)) != 1:
            raise ValueError(f"receiver {self.name!r} needs exactly one of email, webhook, alertmanager")
        return self

    @property
    def kind(self) -> str:
        if self.email is not None:
            return "email"
        if self.webhook is not None:
            return self.webhook.kind
        return "alertmanager"


class Route(_Strict):
    match: dict[str, str] = Field(default_factory=dict)
    receivers: list[str] = Field(min_length=1)
    group_by: list[str] | None = None
    group_wait_s: Duration | None = Field(default=None, alias="group_wait")
    group_interval_s: Duration | None = Field(default=None, alias="group_interval")
    repeat_interval_s: Duration | None = Field(default=None, alias="repeat_interval")
    continue_: bool = Field(default=False, alias="continue")


class NotifyConfig(_Strict):
    receivers: list[Receiver]
    routes: list[Route]
    retry: RetryPolicy = RetryPolicy()
    group_wait_s: Duration = Field(default=30.0, alias="group_wait")
    group_interval_s: Duration = Field(default=300.0, alias="group_interval")
    repeat_interval_s: Duration = Field(default=4 * 3600.0, alias="repeat_interval")
    group_by: list[str] = Field(default_factory=lambda: ["alertname"])

    @model_validator(mode="after")
    def _known(self) -> NotifyConfig:
        names = [r.name for r in self.receivers]
        if len(set(names)) != len(names):
            raise ValueError(f"receiver names must be unique: {names}")
        for i, route in enumerate(self.routes):
            unknown = [r for r in route.receivers if r not in names]
            if unknown:
                raise ValueError(f"route {i} names unknown receivers {unknown}; receivers: {names}")
        return self

    @classmethod
    def load(cls, path: str | Path) -> NotifyConfig:
        p = Path(path)
        try:
            data = yaml.safe_load(p.read_text())
            return cls.model_validate(data)
        except FileNotFoundError:
            raise ValueError(f"{p}: no such notification config") from None
        except yaml.YAMLError as e:
            raise ValueError(f"{p}: not valid YAML: {e}") from None
        except ValidationError as e:
            msgs = "; ".join(f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}" for err in e.errors())
            raise ValueError(f"{p}: {msgs}") from None

    @classmethod
    def default(cls, smtp_port: int, webhook_base: str, alertmanager_url: str | None = None) -> NotifyConfig:
        """warning -> email, critical -> IM (WeCom, DingTalk, Slack), emergency -> phone + IM; all -> Alertmanager."""
        receivers: list[dict[str, Any]] = [
            {"name": "email", "email": {"port": smtp_port, "from": "powerplane@localhost", "to": ["ops@localhost"]}},
            {"name": "wecom", "webhook": {"kind": "wecom", "url": f"{webhook_base}/wecom"}},
            {"name": "dingtalk", "webhook": {"kind": "dingtalk", "url": f"{webhook_base}/dingtalk"}},
            {"name": "slack", "webhook": {"kind": "slack", "url": f"{webhook_base}/slack"}},
            {"name": "phone", "webhook": {"kind": "phone", "url": f"{webhook_base}/phone", "escalation": ["on-call"]}},
        ]
        routes: list[dict[str, Any]] = []
        if alertmanager_url:
            receivers.append({"name": "alertmanager", "alertmanager": {"url": alertmanager_url}})
            # Alertmanager resolves an alert not re-sent within its resolve_timeout (5 m): re-send every minute.
            routes.append(
                {"match": {}, "receivers": ["alertmanager"], "continue": True, "group_wait": "0s",
                 "group_interval": "10s", "repeat_interval": "60s"}
            )  # fmt: skip
        routes += [
            {"match": {"severity": "warning"}, "receivers": ["email"]},
            {"match": {"severity": "critical"}, "receivers": ["wecom", "dingtalk", "slack"]},
            {"match": {"severity": "emergency"}, "receivers": ["phone", "wecom"], "group_wait": "0s"},
        ]
        return cls.model_validate({"receivers": receivers, "routes": routes})


# ------------------------------------------------------------------------------------------- payloads


def _iso(t_s: float | None) -> str:
    if t_s is None:
        return "0001-01-01T00:00:00Z"
    return dt.datetime.fromtimestamp(t_s, dt.UTC).isoformat().replace("+00:00", "Z")


def _line(a: dict[str, Any]) -> str:
    summary = a.get("annotations", {}).get("summary") or a["rule"]
    state = "RESOLVED" if a["state"] == "resolved" else a["severity"].upper()
    return f"[{state}] {summary}"


def _title(alerts: list[dict[str, Any]], repeat: bool) -> str:
    firing = [a for a in alerts if a["state"] != "resolved"]
    names = sorted({a["rule"] for a in alerts})
    head = f"{len(firing)} firing" if firing else "resolved"
    return f"PowerPlane {'(repeat) ' if repeat else ''}{head}: {', '.join(names)}"


def _am_alert(a: dict[str, Any], generator_url: str) -> dict[str, Any]:
    """One alert in Alertmanager's v2 shape; ``endsAt`` only once resolved (Alertmanager then closes it)."""
    out: dict[str, Any] = {
        "labels": {k: str(v) for k, v in a["labels"].items()},
        "annotations": {k: str(v) for k, v in a.get("annotations", {}).items()},
        "startsAt": _iso(a.get("fired_s") or a["since_s"]),
    }
    if a["state"] == "resolved":
        out["endsAt"] = _iso(a.get("resolved_s"))
    if generator_url:
        out["generatorURL"] = generator_url
    return out


def render(kind: str, alerts: list[dict[str, Any]], repeat: bool, receiver: Receiver) -> dict[str, Any]:
    """The payload a receiver of ``kind`` gets for one group of alerts."""
    title = _title(alerts, repeat)
    lines = [_line(a) for a in alerts]
    md = f"**{title}**\n\n" + "\n".join(f"- {x}" for x in lines)
    if kind == "email":
        return {"subject": title, "body": "\n".join(lines) + "\n"}
    if kind == "wecom":
        return {"msgtype": "markdown", "markdown": {"content": md}}
    if kind == "dingtalk":
        return {"msgtype": "markdown", "markdown": {"title": title, "text": md}}
    if kind == "slack":
        return {"text": title, "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": "\n".join(lines)}}]}
    if kind == "phone":
        esc = receiver.webhook.escalation if receiver.webhook else []
        return {
            "event": "escalate",
            "severity": "emergency",
            "message": title,
            "escalation": esc,
            "alerts": [{"id": a["id"], "summary": _line(a), "labels": a["labels"]} for a in alerts],
        }
    if kind == "alertmanager":
        gen = receiver.alertmanager.generator_url if receiver.alertmanager else ""
        return {"alerts": [_am_alert(a, gen) for a in alerts]}
    raise ValueError(f"unknown receiver kind {kind!r}")


# ------------------------------------------------------------------------------------------- senders


def _post_json(url: str, body: Any, timeout_s: float, check_errcode: bool = False) -> None:
    data = json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            text = resp.read().decode(errors="replace")
    except OSError as e:  # URLError, HTTPError, timeouts, refused connections
        raise DeliveryError(f"POST {url}: {e}") from e
    if check_errcode and text:
        try:
            code = json.loads(text).get("errcode", 0)
        except (ValueError, AttributeError):
            code = 0
        if code:
            raise DeliveryError(f"POST {url}: errcode {code}: {text[:200]}")


def dingtalk_signed_url(url: str, secret: str, now_s: float) -> str:
    """DingTalk's signed robot URL: ``timestamp`` (ms) and ``sign`` = base64(HMAC-SHA256(ts + '\\n' + secret))."""
    ts = str(int(now_s * 1000))
    digest = hmac.new(secret.encode(), f"{ts}\n{secret}".encode(), hashlib.sha256).digest()
    sign = urllib.parse.quote_plus(base64.b64encode(digest))
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}timestamp={ts}&sign={sign}"


def make_sender(r: Receiver) -> Sender:
    if r.email is not None:
        cfg = r.email

        def send_email(m: Message, now_s: float) -> None:
            msg = EmailMessage()
            msg["Subject"] = m.payload["subject"]
            msg["From"] = cfg.sender
            msg["To"] = ", ".join(cfg.to)
            msg.set_content(m.payload["body"])
            try:
                with smtplib.SMTP(cfg.host, cfg.port, timeout=cfg.timeout_s) as s:
                    if cfg.starttls:
                        s.starttls()
                    if cfg.username:
                        s.login(cfg.username, cfg.password or "")
                    s.send_message(msg)
            except (OSError, smtplib.SMTPException) as e:
                raise DeliveryError(f"SMTP {cfg.host}:{cfg.port}: {e}") from e

        return send_email
    if r.webhook is not None:
        wh = r.webhook

        def send_webhook(m: Message, now_s: float) -> None:
            url = dingtalk_signed_url(wh.url, wh.secret, now_s) if wh.kind == "dingtalk" and wh.secret else wh.url
            _post_json(url, m.payload, wh.timeout_s, check_errcode=wh.kind in ("wecom", "dingtalk"))

        return send_webhook
    assert r.alertmanager is not None
    am = r.alertmanager

    def send_am(m: Message, now_s: float) -> None:
        _post_json(am.url.rstrip("/") + "/api/v2/alerts", m.payload["alerts"], am.timeout_s)

    return send_am


# ------------------------------------------------------------------------------------------- router


class MuteOracle(Protocol):
    def is_muted(self, alert_id: str) -> bool: ...


@dataclass
class _Group:
    route: int
    key: tuple[str, ...]
    alerts: dict[str, dict[str, Any]] = field(default_factory=dict)
    first_s: float = 0.0
    sent_s: float | None = None
    dirty: bool = True


class Notifier:
    """Routes alert transitions into groups and puts each group's notifications in the outbox."""

    def __init__(
        self,
        config: NotifyConfig,
        outbox: Outbox,
        mutes: MuteOracle | None = None,
        rule_defaults: Defaults | None = None,
    ) -> None:
        self.config = config
        self.outbox = outbox
        self.mutes = mutes
        self.rule_defaults = rule_defaults  # the rule file's group_wait/group_interval/repeat_interval/group_by
        self.receivers = {r.name: r for r in config.receivers}
        self.senders = {r.name: make_sender(r) for r in config.receivers}
        self.groups: dict[tuple[int, tuple[str, ...]], _Group] = {}
        self.sent: list[tuple[float, str, int]] = []  # (t_s, receiver, outbox id) of this process
        self.worker_errors: list[str] = []
        self._worker: threading.Thread | None = None
        self._stop = threading.Event()

    def _routes_for(self, labels: dict[str, str]) -> list[int]:
        out = []
        for i, route in enumerate(self.config.routes):
            if all(labels.get(k) == v for k, v in route.match.items()):
                out.append(i)
                if not route.continue_:
                    break
        return out

    def _param(self, route: Route, name: str, alert_value: Any = None) -> Any:
        """A grouping setting: the route's, else the rule's (``group_by``, ``repeat_interval_s`` of the alert),
        else the notification config's when it sets it, else the rule file's defaults, else Alertmanager's."""
        v = getattr(route, name)
        if v is not None:
            return v
        if alert_value is not None:
            return alert_value
        if name in self.config.model_fields_set or self.rule_defaults is None:
            return getattr(self.config, name)
        return getattr(self.rule_defaults, name)

    def submit(self, transitions: list[dict[str, Any]], now_s: float) -> None:
        """Take this cycle's transitions (pending ones are not notified)."""
        for a in transitions:
            if a["state"] == "pending":
                continue
            for i in self._routes_for(a["labels"]):
                route = self.config.routes[i]
                key = tuple(a["labels"].get(k, "") for k in self._param(route, "group_by", a.get("group_by")))
                g = self.groups.get((i, key))
                if g is None:
                    if a["state"] == "resolved":
                        continue  # never notified as firing: nothing to resolve
                    g = self.groups[(i, key)] = _Group(i, key, first_s=now_s)
                if a["state"] == "resolved" and a["id"] not in g.alerts:
                    continue
                g.alerts[a["id"]] = a
                g.dirty = True

    def _muted(self, a: dict[str, Any]) -> bool:
        return a["state"] != "resolved" and self.mutes is not None and self.mutes.is_muted(a["id"])

    def flush(self, now_s: float) -> int:
        """Put due group notifications in the outbox; returns how many messages were queued."""
        queued = 0
        for gk, g in list(self.groups.items()):
            route = self.config.routes[g.route]
            if g.sent_s is None:
                due, repeat = now_s - g.first_s >= self._param(route, "group_wait_s"), False
            elif g.dirty:
                due, repeat = now_s - g.sent_s >= self._param(route, "group_interval_s"), False
            else:
                rule_repeat = [x["repeat_interval_s"] for x in g.alerts.values() if x.get("repeat_interval_s")]
                every = self._param(route, "repeat_interval_s", min(rule_repeat) if rule_repeat else None)
                due, repeat = now_s - g.sent_s >= every, True
            if not due:
                continue
            alerts = [a for a in g.alerts.values() if not self._muted(a)]
            if repeat:
                alerts = [a for a in alerts if a["state"] != "resolved"]
            if alerts:
                for name in route.receivers:
                    r = self.receivers[name]
                    mid = self.outbox.put(name, r.kind, render(r.kind, alerts, repeat, r), now_s)
                    self.sent.append((now_s, name, mid))
                    queued += 1
                g.sent_s = now_s
            elif g.sent_s is None and not any(a["state"] != "resolved" for a in g.alerts.values()):
                g.sent_s = now_s
            g.dirty = False
            for aid in [k for k, a in g.alerts.items() if a["state"] == "resolved"]:
                del g.alerts[aid]
            if not g.alerts:
                del self.groups[gk]
        return queued

    def deliver(self, now_s: float) -> dict[str, int]:
        return self.outbox.deliver_due(self.senders, now_s)

    def start(self, clock: Clock, interval_s: float = 1.0) -> None:
        """Deliver from a thread every ``interval_s`` (live use: a slow receiver never holds up the cycle)."""
        if self._worker is not None:
            return
        self._stop.clear()

        def run() -> None:
            while not self._stop.wait(interval_s):
                try:
                    self.deliver(clock.now_s())
                except Exception as e:  # the outbox keeps the messages; count and go on
                    self.worker_errors.append(f"{type(e).__name__}: {e}")

        self._worker = threading.Thread(target=run, name="notify-delivery", daemon=True)
        self._worker.start()

    def stop(self) -> None:
        if self._worker is not None:
            self._stop.set()
            self._worker.join()
            self._worker = None

    def step(self, transitions: list[dict[str, Any]], now_s: float) -> dict[str, int]:
        """One cycle: route, flush due groups, deliver due messages (here, unless the delivery thread runs)."""
        self.submit(transitions, now_s)
        queued = self.flush(now_s)
        counts = self.deliver(now_s) if self._worker is None else {}
        counts["queued"] = queued
        return counts
