"""The receiver of MLflow's registry webhooks, served by Airflow's API server (a plugin FastAPI
app, :mod:`tfmlops_plugin`): ``POST /tfmlops/webhooks/mlflow``.

A delivery is verified first (:class:`tfmlops.webhooks.Verifier`: HMAC signature with the shared
secret, timestamp within 5 minutes, delivery id never seen before — a forged, altered, stale or
replayed call is refused with 401/409 and changes nothing). A verified ``champion`` alias event
(``model_version_alias.created`` / ``.deleted``) wakes the reconciler: an event on the
``SERVING_INTENT`` asset, which schedules ``tf_serving_reconcile``. When the alias now names the
version the model's rollouts already serve (a DAG's own promotion records what it served before it
moves the alias), nothing is to be done and no event is made. Any other event is acknowledged and
ignored.

Configuration (``[tfmlops]`` in airflow.cfg or ``AIRFLOW__TFMLOPS__…``; ``_cmd`` / ``_secret``
variants work as for any Airflow option): ``mlflow_webhook_secret`` (required: without it every
delivery is refused), ``mlflow_webhook_tolerance_s`` (300), ``mlflow_webhook_seen_dir`` (delivery
ids already received; default ``$AIRFLOW_HOME/tfmlops-webhook-deliveries``), and the
``mlflow_conn_id`` connection (``mlflow_default``) the served version is read from.
"""

from __future__ import annotations

import logging
import os
from functools import lru_cache

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from tfmlops_airflow.assets import SERVING_INTENT
from tfmlops_airflow.config import option

log = logging.getLogger(__name__)
PATH = "/webhooks/mlflow"

app = FastAPI(title="tfmlops webhooks", description="MLflow registry webhooks → the serving reconciler")


@lru_cache(maxsize=1)
def _verifier(secret: str, seen_dir: str, tolerance_s: float):
    from tfmlops.steps.reconcile import Verifier

    return Verifier(secret, seen_dir, tolerance_s)


def verifier():
    """The verifier of the configured secret; None when no secret is configured."""
    secret = option("mlflow_webhook_secret")
    if not secret:
        return None
    home = os.environ.get("AIRFLOW_HOME", os.path.expanduser("~/airflow"))
    return _verifier(secret, option("mlflow_webhook_seen_dir", os.path.join(home, "tfmlops-webhook-deliveries")),
                     float(option("mlflow_webhook_tolerance_s", "300")))


def already_served(model: str, version) -> bool:
    """Whether ``version`` is what ``model``'s rollouts recorded as served (a DAG's own alias move)."""
    from tfmlops.steps.reconcile import served_version
    from tfmlops_airflow.hooks import MLflowHook

    served = served_version(MLflowHook(option("mlflow_conn_id", "mlflow_default")).tracking_uri, model)
    return served is not None and str(served) == str(version)


def wake_reconciler(extra: dict) -> bool:
    """An event on the ``SERVING_INTENT`` asset (as Airflow's ``POST /assets/events`` makes one);
    False when no DAG has declared the asset yet (the reconciler is not loaded)."""
    from sqlalchemy import and_, select

    from airflow.assets.manager import asset_manager
    from airflow.models.asset import AssetActive, AssetModel
    from airflow.utils.session import create_session

    with create_session() as session:
        asset = session.scalar(select(AssetModel).join(AssetActive, and_(
            AssetActive.name == AssetModel.name, AssetActive.uri == AssetModel.uri)).where(
            AssetModel.name == SERVING_INTENT.name).limit(1))
        if asset is None:
            return False
        return asset_manager.register_asset_change(asset=asset, extra=extra, session=session) is not None


@app.post(PATH)
async def mlflow_webhook(request: Request) -> JSONResponse:
    from asgiref.sync import sync_to_async

    from tfmlops.steps.reconcile import DELIVERY_HEADER, MAX_BODY_BYTES, WebhookRefused, champion_event

    check = verifier()
    if check is None:
        return JSONResponse({"detail": "no mlflow_webhook_secret is configured: deliveries are refused"}, 503)
    too_large = JSONResponse({"detail": f"body over {MAX_BODY_BYTES} bytes"}, 413)
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > MAX_BODY_BYTES:
        return too_large
    body = b""
    async for chunk in request.stream():  # bounded whatever the header said
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            return too_large
    try:
        payload = check.verify(request.headers, body)
    except WebhookRefused as exc:
        log.warning("MLflow webhook refused: %s", exc)
        return JSONResponse({"detail": str(exc)}, exc.status)
    event = champion_event(payload)
    if event is None:
        return JSONResponse({"detail": "ignored: not a champion alias event"}, 200)
    if event["action"] == "created" and await sync_to_async(already_served)(event["model"], event["version"]):
        return JSONResponse({"detail": f"{event['model']} version {event['version']} is already served"}, 200)
    extra = {**event, "source": "mlflow webhook", "delivery_id": request.headers.get(DELIVERY_HEADER)}
    if not await sync_to_async(wake_reconciler)(extra):
        return JSONResponse({"detail": f"asset {SERVING_INTENT.name} is not declared by any DAG"}, 503)
    return JSONResponse({"detail": "reconciler woken", "event": event}, 202)
