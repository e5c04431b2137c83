"""MLflow webhook verification (``tfmlops.webhooks``) against deliveries signed the way MLflow
signs them: ``mlflow.webhooks.delivery._generate_hmac_signature`` itself, not our copy of it."""

from __future__ import annotations

import json
import time

import pytest

from tfmlops.webhooks import (DELIVERY_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, Verifier, WebhookRefused,
                              champion_event, signature)

SECRET = "webhook-secret"
PAYLOAD = {"entity": "model_version_alias", "action": "created", "timestamp": "2026-12-06T00:00:00+00:00",
           "data": {"name": "churn", "alias": "champion", "version": "3"}}


def delivery(body: bytes, secret: str = SECRET, delivery_id: str = "d-1", at: float | None = None) -> dict:
    from mlflow.webhooks.delivery import _generate_hmac_signature

    stamp = str(int(time.time() if at is None else at))
    return {DELIVERY_HEADER: delivery_id, TIMESTAMP_HEADER: stamp,
            SIGNATURE_HEADER: _generate_hmac_signature(secret, delivery_id, stamp, body.decode())}


@pytest.fixture
def verifier(tmp_path):
    return Verifier(SECRET, tmp_path / "seen", tolerance_s=300)


def test_our_signature_is_mlflows():
    body = json.dumps(PAYLOAD).encode()
    headers = delivery(body)
    assert signature(SECRET, "d-1", headers[TIMESTAMP_HEADER], body) == headers[SIGNATURE_HEADER]


def test_a_genuine_delivery_is_accepted_once(verifier):
    body = json.dumps(PAYLOAD).encode()
    headers = delivery(body)
    assert verifier.verify({k.lower(): v for k, v in headers.items()}, body) == PAYLOAD  # headers any case
    with pytest.raises(WebhookRefused, match="already received") as replay:
        verifier.verify(headers, body)
    assert replay.value.status == 409


def test_replays_are_refused_across_verifiers_sharing_the_folder(tmp_path):
    """Every process of the API server has its own verifier; the seen ids are shared marker files."""
    body = json.dumps(PAYLOAD).encode()
    headers = delivery(body, delivery_id="shared")
    Verifier(SECRET, tmp_path / "seen").verify(headers, body)
    with pytest.raises(WebhookRefused, match="already received"):
        Verifier(SECRET, tmp_path / "seen").verify(headers, body)


@pytest.mark.parametrize("case", ["wrong secret", "altered body", "stale", "future", "unsigned", "not json",
                                  "huge"])
def test_forged_altered_stale_or_unsigned_deliveries_are_refused(verifier, case):
    body = json.dumps(PAYLOAD).encode()
    headers, sent = delivery(body), body
    if case == "wrong secret":
        headers = delivery(body, secret="guess")
    elif case == "altered body":
        sent = body.replace(b'"3"', b'"4"')
    elif case == "stale":
        headers = delivery(body, at=time.time() - 3600)
    elif case == "future":
        headers = delivery(body, at=time.time() + 3600)
    elif case == "unsigned":
        headers = {k: v for k, v in headers.items() if k != SIGNATURE_HEADER}
    elif case == "not json":
        sent = b"not json"
        headers = delivery(sent)
    elif case == "huge":
        sent = b" " * (65 * 1024)
        headers = delivery(sent)
    with pytest.raises(WebhookRefused) as refused:
        verifier.verify(headers, sent)
    assert refused.value.status in (400, 401, 413)
    # a refused delivery is not remembered: the genuine one still goes through
    assert verifier.verify(delivery(body, delivery_id="genuine"), body) == PAYLOAD


def test_no_secret_no_verifier(tmp_path):
    with pytest.raises(ValueError, match="secret is required"):
        Verifier("", tmp_path)


def test_only_champion_alias_events_matter():
    assert champion_event(PAYLOAD) == {"model": "churn", "alias": "champion", "version": "3", "action": "created"}
    deleted = {**PAYLOAD, "action": "deleted", "data": {"name": "churn", "alias": "champion"}}
    assert champion_event(deleted)["action"] == "deleted"
    assert champion_event({**PAYLOAD, "data": {**PAYLOAD["data"], "alias": "challenger"}}) is None
    assert champion_event({**PAYLOAD, "entity": "model_version_tag", "action": "set"}) is None
