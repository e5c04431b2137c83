"""Verifying MLflow's webhook deliveries before anything acts on them.

MLflow 3.x signs each delivery the Standard Webhooks way (read in ``mlflow/webhooks/delivery.py``):
headers ``X-MLflow-Delivery-Id``, ``X-MLflow-Timestamp`` (Unix seconds) and ``X-MLflow-Signature``
= ``v1,`` + base64(HMAC-SHA256(secret, "<delivery id>.<timestamp>.<body>")). A delivery is accepted
only when its signature matches (compared in constant time), its timestamp is within
``tolerance_s`` of now (an old capture is refused) and its delivery id was not seen before (a
replay inside the window is refused: ids are remembered as marker files created with ``O_EXCL``,
so every process of a server shares them). Bodies are bounded; nothing in one is executed.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import time
from pathlib import Path
from typing import Mapping

SIGNATURE_HEADER = "X-MLflow-Signature"
TIMESTAMP_HEADER = "X-MLflow-Timestamp"
DELIVERY_HEADER = "X-MLflow-Delivery-Id"
SIGNATURE_VERSION = "v1"
MAX_BODY_BYTES = 64 * 1024


class WebhookRefused(Exception):
    """A delivery that is not acted on; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 401):
        super().__init__(message)
        self.status = status


def signature(secret: str, delivery_id: str, timestamp: str, body: bytes) -> str:
    signed = f"{delivery_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).digest()
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode()}"


class SeenDeliveries:
    """Delivery ids already accepted, as marker files in ``folder`` (kept ``keep_s``)."""

    def __init__(self, folder: str | Path, keep_s: float):
        self.folder, self.keep_s = Path(folder), keep_s
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)

    def first_time(self, delivery_id: str, now: float) -> bool:
        marker = self.folder / hashlib.sha256(delivery_id.encode()).hexdigest()
        try:
            os.close(os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:
            return False
        self._prune(now)
        return True

    def _prune(self, now: float) -> None:
        for old in self.folder.iterdir():
            try:
                if now - old.stat().st_mtime > self.keep_s:
                    old.unlink()
            except FileNotFoundError:  # pruned by another process
                pass


class Verifier:
    """``verify(headers, body)`` → the delivery's JSON payload, or :class:`WebhookRefused`."""

    def __init__(self, secret: str, seen_folder: str | Path, tolerance_s: float = 300.0):
        if not secret:
            raise ValueError("a webhook secret is required: unsigned deliveries are never accepted")
        self.secret, self.tolerance_s = secret, tolerance_s
        self.seen = SeenDeliveries(seen_folder, keep_s=2 * tolerance_s)

    def verify(self, headers: Mapping[str, str], body: bytes, now: float | None = None) -> dict:
        now = time.time() if now is None else now
        lower = {k.lower(): v for k, v in headers.items()}
        delivery_id = lower.get(DELIVERY_HEADER.lower(), "")
        timestamp = lower.get(TIMESTAMP_HEADER.lower(), "")
        signatures = lower.get(SIGNATURE_HEADER.lower(), "")
        if not (delivery_id and timestamp and signatures):
            raise WebhookRefused(f"unsigned delivery: {DELIVERY_HEADER}, {TIMESTAMP_HEADER} and "
                                 f"{SIGNATURE_HEADER} are all required")
        if len(body) > MAX_BODY_BYTES:
            raise WebhookRefused(f"body of {len(body)} bytes is over {MAX_BODY_BYTES}", status=413)
        expected = signature(self.secret, delivery_id, timestamp, body)
        # a header may carry several space-separated signatures (secret rotation)
        if not any(hmac.compare_digest(expected, s) for s in signatures.split()):
            raise WebhookRefused("signature does not match (wrong secret or altered body)")
        try:
            age = now - int(timestamp)
        except ValueError:
            raise WebhookRefused(f"{TIMESTAMP_HEADER} {timestamp!r} is not Unix seconds") from None
        if abs(age) > self.tolerance_s:
            raise WebhookRefused(f"delivery timestamp is {age:.0f}s from now (more than {self.tolerance_s:.0f}s): "
                                 "refused as a replay")
        try:
            payload = json.loads(body)
        except ValueError:
            raise WebhookRefused("body is not JSON", status=400) from None
        if not isinstance(payload, dict) or not isinstance(payload.get("data"), dict):
            raise WebhookRefused("payload has no 'data' object", status=400)
        if not self.seen.first_time(delivery_id, now):
            raise WebhookRefused(f"delivery {delivery_id} was already received: refused as a replay", status=409)
        return payload


def champion_event(payload: dict, alias: str = "champion") -> dict | None:
    """``{"model", "alias", "version", "action"}`` for an alias created on / deleted from a
    model version when the alias is ``alias``; None for any other event."""
    data = payload.get("data", {})
    if payload.get("entity") != "model_version_alias" or payload.get("action") not in ("created", "deleted"):
        return None
    if data.get("alias") != alias or not isinstance(data.get("name"), str):
        return None
    return {"model": data["name"], "alias": alias, "version": data.get("version"), "action": payload["action"]}
