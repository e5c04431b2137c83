"""Notifications of the events people act on, through Airflow's notifiers; off by default.

Events: ``gate_rejected`` (a candidate stopped at its gate), ``promotion`` (a version took all
traffic), ``rollback`` (a rollout rolled back, held or lost its A/B test), ``drift_alarm`` (a
monitor asks for a retrain), ``approval_requested``, ``run_failed`` (a task failed for good: the
``on_failure_callback`` of every DAG) and ``deadline_missed`` (a DAG's ``DeadlineAlert``, an async
callback run by the triggerer). Each names the model, the version, the reason and links to the
Airflow run and the MLflow version.

Channels, configured in ``[tfmlops]`` (``AIRFLOW__TFMLOPS__...``) by connection id; none is set by
default and then nothing is sent:

=========================== =============================================================
``notify_smtp_conn_id``     an SMTP connection: mail through the SMTP provider's
                            :class:`SmtpNotifier` to ``notify_email_to`` (comma-separated),
                            from ``notify_email_from`` (else the connection's ``from_email``)
``notify_webhook_conn_id``  an HTTP connection (host with or without ``https://``, port,
                            ``extra.endpoint``): a JSON POST (:class:`WebhookNotifier`) whose
                            ``text`` field chat tools' incoming webhooks show as is; with a
                            password, signed (HMAC-SHA256 of ``<timestamp>.<body>``)
``notify_events``           the events to send (comma-separated; default all)
=========================== =============================================================

Links use ``[api] base_url`` (Airflow) and ``[tfmlops] mlflow_ui_url`` (else the MLflow
connection's URI). A channel that fails is logged and does not fail the task that notifies: a
rollout's outcome never depends on a mail server.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import html
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from typing import Any

from airflow.sdk import AsyncCallback, DeadlineAlert, DeadlineReference
from airflow.sdk.bases.notifier import BaseNotifier

from tfmlops_airflow.config import option

log = logging.getLogger("tfmlops.notifications")

EVENTS = {
    "gate_rejected": "candidate rejected at the gate",
    "promotion": "promoted",
    "rollback": "rolled back",
    "drift_alarm": "drift alarm: retrain asked",
    "approval_requested": "approval requested",
    "run_failed": "run failed",
    "deadline_missed": "deadline missed",
}
SIGNATURE_HEADER = "X-TFMLOps-Signature"
TIMESTAMP_HEADER = "X-TFMLOps-Timestamp"
TIMEOUT_S = 10.0


@dataclass
class Event:
    """One notification's facts, the same in every channel."""

    event: str
    model: str | None = None
    version: str | None = None
    reason: str = ""
    dag_id: str | None = None
    run_id: str | None = None
    task_id: str | None = None
    links: dict[str, str] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    time: float = field(default_factory=time.time)

    def __post_init__(self):
        if self.event not in EVENTS:
            raise ValueError(f"unknown notification event {self.event!r}; known: {', '.join(EVENTS)}")

    @property
    def title(self) -> str:
        subject = self.model or self.dag_id or "tfmlops"
        if self.version is not None:
            subject += f" version {self.version}"
        return f"[tfmlops] {subject}: {EVENTS[self.event]}"

    @property
    def text(self) -> str:
        lines = [self.title]
        if self.reason:
            lines.append(f"Reason: {self.reason}")
        if self.dag_id:
            lines.append(f"Run: {self.dag_id} / {self.run_id}" + (f" (task {self.task_id})" if self.task_id else ""))
        lines += [f"{name}: {url}" for name, url in self.links.items()]
        return "\n".join(lines)

    def payload(self) -> dict[str, Any]:
        return {**asdict(self), "title": self.title, "text": self.text}

    def html(self) -> str:
        rows = [("Event", EVENTS[self.event]), ("Model", self.model), ("Version", self.version),
                ("Reason", self.reason), ("DAG", self.dag_id), ("Run", self.run_id), ("Task", self.task_id),
                *((k, v) for k, v in self.details.items())]
        cells = "".join(f"<tr><th align='left'>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
                        for k, v in rows if v not in (None, ""))
        links = "".join(f"<li><a href='{html.escape(url)}'>{html.escape(name)}</a></li>"
                        for name, url in self.links.items())
        # the notifier renders its fields with Jinja: nothing in a reason may be taken for a template
        return f"{{% raw %}}<h3>{html.escape(self.title)}</h3><table>{cells}</table><ul>{links}</ul>{{% endraw %}}"


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """``sha256=<hex>`` of ``<timestamp>.<body>``: what a receiver recomputes to trust a delivery."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


class WebhookNotifier(BaseNotifier):
    """POST an :class:`Event` as JSON to the URL of an HTTP connection (``host`` — with its
    scheme, or ``schema`` — ``port`` and ``extra.endpoint``); the connection's password, when
    set, signs it (:func:`signature`, headers ``X-TFMLOps-Timestamp`` / ``X-TFMLOps-Signature``).

    :param event: the notification.
    :param http_conn_id: the receiver's connection.
    """

    def __init__(self, event: Event, http_conn_id: str, **kwargs):
        super().__init__(**kwargs)
        self.event = event
        self.http_conn_id = http_conn_id

    def _request(self, conn) -> tuple[str, bytes, dict[str, str]]:
        host = (conn.host or "").rstrip("/")
        if not host:
            raise ValueError(f"connection {self.http_conn_id!r} has no host")
        if "://" not in host:
            host = f"{conn.schema or 'http'}://{host}"
        endpoint = str(conn.extra_dejson.get("endpoint", "")).lstrip("/")
        url = host + (f":{conn.port}" if conn.port else "") + "/" + endpoint
        body = json.dumps(self.event.payload(), default=str).encode()
        headers = {"Content-Type": "application/json"}
        if conn.password:
            stamp = str(int(time.time()))
            headers |= {TIMESTAMP_HEADER: stamp, SIGNATURE_HEADER: signature(conn.password, stamp, body)}
        return url, body, headers

    def notify(self, context) -> None:
        import requests

        from airflow.sdk import BaseHook

        url, body, headers = self._request(BaseHook.get_connection(self.http_conn_id))
        requests.post(url, data=body, headers=headers, timeout=TIMEOUT_S).raise_for_status()

    async def async_notify(self, context) -> None:
        import aiohttp

        from airflow.sdk import BaseHook

        url, body, headers = self._request(await BaseHook.aget_connection(self.http_conn_id))
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT_S)) as session:
            async with session.post(url, data=body, headers=headers) as answer:
                answer.raise_for_status()


def wanted(event: str) -> bool:
    listed = [e.strip() for e in option("notify_events").split(",") if e.strip()]
    return not listed or event in listed


def notifiers(event: Event) -> list[BaseNotifier]:
    """The configured channels' notifiers for ``event``; empty when none is configured."""
    if not wanted(event.event):
        return []
    chosen: list[BaseNotifier] = []
    smtp = option("notify_smtp_conn_id")
    if smtp:
        from airflow.providers.smtp.notifications.smtp import SmtpNotifier

        to = [a.strip() for a in option("notify_email_to").split(",") if a.strip()]
        if not to:
            log.error("notify_smtp_conn_id is set but notify_email_to is empty: no mail for %s", event.title)
        else:
            chosen.append(SmtpNotifier(to=to, from_email=option("notify_email_from") or None, subject=event.title,
                                       html_content=event.html(), smtp_conn_id=smtp))
    webhook = option("notify_webhook_conn_id")
    if webhook:
        chosen.append(WebhookNotifier(event, webhook))
    return chosen


def _airflow_link(dag_id: str | None, run_id: str | None) -> dict[str, str]:
    if not dag_id:
        return {}
    from airflow.configuration import conf

    base = (conf.get("api", "base_url", fallback="") or "http://localhost:8080").rstrip("/")
    return {"Airflow run": f"{base}/dags/{dag_id}/runs/{run_id}" if run_id else f"{base}/dags/{dag_id}"}


def mlflow_ui_url(mlflow_conn_id: str = "mlflow_default") -> str | None:
    """The MLflow UI as people reach it: ``[tfmlops] mlflow_ui_url``, else the connection's URI
    (None without one)."""
    base = option("mlflow_ui_url")
    if base:
        return base
    try:
        from tfmlops_airflow.hooks import MLflowHook

        return MLflowHook(mlflow_conn_id).tracking_uri
    except Exception:  # noqa: BLE001 - no MLflow connection: no link
        return None


def _mlflow_link(model: str | None, version) -> dict[str, str]:
    base = mlflow_ui_url() if model else None
    if not base:
        return {}
    path = f"/#/models/{model}" + (f"/versions/{version}" if version is not None else "")
    return {"MLflow model": base.rstrip("/") + path}


def event_from(context, event: str, *, model=None, version=None, reason: str = "", **details) -> Event:
    """An :class:`Event` of a task's ``context`` (its DAG, run and task; links to both systems)."""
    ti = context.get("ti") or context.get("task_instance")
    dag_id, run_id = getattr(ti, "dag_id", None), context.get("run_id")
    version = None if version is None else str(version)
    return Event(event, model=None if model is None else str(model), version=version, reason=str(reason),
                 dag_id=dag_id, run_id=run_id, task_id=getattr(ti, "task_id", None),
                 links={**_airflow_link(dag_id, run_id), **_mlflow_link(model, version)},
                 details={k: v for k, v in details.items() if v is not None})


def send(event: Event, context) -> list[str]:
    """Send ``event`` on every configured channel (synchronously); the channels that took it."""
    sent = []
    for notifier in notifiers(event):
        name = type(notifier).__name__
        try:
            notifier(context)
            sent.append(name)
        except Exception as exc:  # noqa: BLE001 - a channel down must not fail the task that reports
            log.error("notification %r through %s failed: %s", event.title, name, exc)
    return sent


def notify(context, event: str, **facts) -> list[str]:
    """Notify ``event`` of the running task (:func:`event_from` takes ``facts``); nothing to do,
    and nothing looked up, when no channel is configured."""
    if event not in EVENTS:
        raise ValueError(f"unknown notification event {event!r}; known: {', '.join(EVENTS)}")
    if not (option("notify_smtp_conn_id") or option("notify_webhook_conn_id")) or not wanted(event):
        return []
    return send(event_from(context, event, **facts), context)


def run_failed(context) -> None:
    """``on_failure_callback`` of every DAG's tasks (called once a task has failed for good): one
    ERROR line, and a ``run_failed`` notification — unless the failure already sent its own event
    (an exception with ``tfmlops_notified``, e.g. a rollback), or the DAG has a run guard, whose
    failure sends the one notification of the run."""
    from tfmlops_airflow.guard import GUARD_TASK_ID

    ti = context.get("ti") or context.get("task_instance")
    exc = context.get("exception")
    log.error("ALERT %s.%s failed: %s", getattr(ti, "dag_id", "?"), getattr(ti, "task_id", "?"), exc)
    if getattr(exc, "tfmlops_notified", False):
        return
    dag = context.get("dag")
    if dag is not None and GUARD_TASK_ID in dag.task_ids and getattr(ti, "task_id", None) != GUARD_TASK_ID:
        return  # the run guard's failure sends one notification for the run, naming every failed task
    params = context.get("params") or {}
    notify(context, "run_failed", model=params.get("model_name"), reason=f"{type(exc).__name__}: {exc}"
           if exc is not None else "the task failed")


async def deadline_missed(context: dict | None = None, **kwargs) -> str:
    """The ``AsyncCallback`` of :func:`deadline_alert` (run by the triggerer, with the scheduler's
    simple context: the DAG run and the deadline). Returns the channels that took it as one string
    (the triggerer stores it in a text column: anything else stops the triggerer)."""
    context = context or {}
    run = context.get("dag_run") or {}
    deadline = (context.get("deadline") or {}).get("deadline_time")
    model = (run.get("conf") or {}).get("model_name") or kwargs.get("model")
    reason = f"not finished {kwargs.get('interval', 'by its deadline')} after it was queued"
    if deadline:
        reason += f" (deadline {deadline})"
    event = Event("deadline_missed", model=model, reason=reason, dag_id=run.get("dag_id"), run_id=run.get("dag_run_id"),
                  links=_airflow_link(run.get("dag_id"), run.get("dag_run_id")),
                  details={"queued at": run.get("queued_at"), "state": run.get("state")})
    sent = []
    for notifier in notifiers(event):
        notifier.context = context
        try:
            await asyncio.wait_for(notifier, TIMEOUT_S * 3)
            sent.append(type(notifier).__name__)
        except Exception as exc:  # noqa: BLE001 - one channel down does not stop the others
            log.error("notification %r through %s failed: %s", event.title, type(notifier).__name__, exc)
    return ", ".join(sent) or "no channel"


def deadline_alert(env: str, default_minutes: float) -> DeadlineAlert:
    """A ``DeadlineAlert``: a run not finished ``$env`` minutes (``default_minutes`` when unset)
    after it was queued sends ``deadline_missed`` (read when the DAG is parsed)."""
    try:
        minutes = float(os.environ.get(env) or default_minutes)
    except ValueError:
        minutes = -1.0
    if not minutes > 0:
        raise ValueError(f"{env} must be a positive number of minutes, got {os.environ.get(env)!r}")
    interval = timedelta(minutes=minutes)
    return DeadlineAlert(reference=DeadlineReference.DAGRUN_QUEUED_AT, interval=interval,
                         callback=AsyncCallback(deadline_missed, kwargs={"interval": str(interval)}))
