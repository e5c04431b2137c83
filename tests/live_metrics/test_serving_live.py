"""The health check's live sources against a real ``tf-serving-local`` exporting TF Serving's
metrics (``--monitoring_config_file=docker/serving/monitoring.config``, as both stacks start it),
with known traffic: 30 REST and 10 gRPC predicts, 4 REST requests the server refuses
(INVALID_ARGUMENT). Scraped: the monitor's counts are exactly the counters' deltas. Through a real
Prometheus (Debian's binary, scraping every second): the monitor's numbers are Prometheus' own
answers to the equivalent PromQL, and Prometheus' stored counters grew by the traffic sent."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import requests

from serving import models
from serving._proc import ServerProcess
from tfmlops.deploy import live_metrics
from tfmlops.deploy.endpoint import Endpoint
from tfmlops.deploy.live_metrics import PrometheusClient, scrape, traffic_between
from tfmlops.monitoring import live_health

from .conftest import ROOT, prometheus_process, wait_for

pytestmark = pytest.mark.e2e

MODEL = "mlp"
MONITORING_CONFIG = ROOT / "docker" / "serving" / "monitoring.config"
COUNT = ":tensorflow:serving:request_count"
LATENCY = ":tensorflow:serving:request_latency"
REST_OK, GRPC_OK, REFUSED = 30, 10, 4


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("live_models")
    models.build_mlp(str(base / MODEL / "1"), seed=1)
    with ServerProcess.running([f"--model_name={MODEL}", f"--model_base_path={base / MODEL}",
                                f"--monitoring_config_file={MONITORING_CONFIG}"]) as srv:
        yield srv


@pytest.fixture
def endpoint(server):
    ep = Endpoint(name="local", host="127.0.0.1", rest_port=server.rest_port, grpc_port=server.grpc_port, timeout=30)
    yield ep
    ep.close()


def send_known_traffic(ep: Endpoint) -> None:
    x = np.ones((1, 4), np.float32)
    for _ in range(REST_OK):
        ep.client.predict_rest(MODEL, x.tolist())
    for _ in range(GRPC_OK):
        ep.client.predict_grpc(MODEL, x)
    for _ in range(REFUSED):  # an input the signature does not have: INVALID_ARGUMENT (HTTP 400)
        answer = requests.post(f"http://{ep.instance}/v1/models/{MODEL}:predict",
                               json={"inputs": {"no_such_input": [[1.0, 2.0, 3.0, 4.0]]}}, timeout=30)
        assert answer.status_code == 400, answer.text


def counters(exposition) -> dict[str, float]:
    out = {f"status:{s.labels['status']}": s.value for s in exposition.series(COUNT, model_name=MODEL)}
    out.update({f"latency:{s.labels['API']}/{s.labels['entrypoint']}": s.value
                for s in exposition.series(f"{LATENCY}_count", model_name=MODEL)})
    return out


def test_scraped_traffic_is_the_counters_deltas(endpoint):
    endpoint.client.predict_rest(MODEL, np.ones((1, 4), np.float32).tolist())  # every series exists from here on
    before = scrape(endpoint.metrics_url)
    send_known_traffic(endpoint)
    after = scrape(endpoint.metrics_url)
    deltas = {k: v - counters(before).get(k, 0.0) for k, v in counters(after).items()}
    assert deltas == {"status:OK": REST_OK + GRPC_OK, "status:INVALID_ARGUMENT": REFUSED,
                      "latency:predict/REST": REST_OK, "latency:Predict/GRPC": GRPC_OK}
    t = traffic_between(before, after, MODEL)
    assert (t.requests, t.errors) == (REST_OK + GRPC_OK + REFUSED, REFUSED)
    assert t.error_rate == pytest.approx(REFUSED / (REST_OK + GRPC_OK + REFUSED))
    assert 0 < t.p50_ms <= t.p95_ms <= t.p99_ms < 10_000 and set(t.by_entrypoint) == {"REST", "GRPC"}


def test_monitor_scrapes_the_live_traffic_of_the_window(endpoint, monkeypatch):
    """The health check (no Prometheus) with the traffic sent between its two scrapes: live, not probed."""
    first_scrape = threading.Event()
    real_scrape = live_metrics.scrape

    def scrape_and_signal(*args, **kwargs):
        try:
            return real_scrape(*args, **kwargs)
        finally:
            first_scrape.set()

    monkeypatch.setattr(live_metrics, "scrape", scrape_and_signal)
    sender = threading.Thread(target=lambda: first_scrape.wait(30) and send_known_traffic(endpoint))
    sender.start()
    result, sources = live_health([endpoint], MODEL, probe_row=lambda: pytest.fail("probed"), scrape_window_s=6)
    sender.join()
    assert sources["local"]["source"] == "scrape", sources
    live = result["local"]["live"]["all"]
    assert (live["requests"], live["errors"]) == (REST_OK + GRPC_OK + REFUSED, REFUSED)
    assert live["last_error"] == f"INVALID_ARGUMENT ×{REFUSED}"


def test_monitor_numbers_are_prometheus_answers(endpoint, tmp_path):
    with prometheus_process(tmp_path, [endpoint.instance], "/monitoring/prometheus/metrics") as url:
        prom = PrometheusClient(url, timeout=10)
        endpoint.client.predict_rest(MODEL, np.ones((1, 4), np.float32).tolist())
        total = f'sum({COUNT}{{model_name="{MODEL}"}})'
        wait_for(lambda: prom.query(total), 30, "a scrape with request_count")
        before_scrape = scrape(endpoint.metrics_url)
        wait_for(lambda: prom.query(total)[0][1] == sum(counters(before_scrape)[k] for k in counters(before_scrape)
                                                         if k.startswith("status:")), 30, "Prometheus up to date")
        before = prom.query(total)[0][1]
        send_known_traffic(endpoint)
        sent = REST_OK + GRPC_OK + REFUSED
        wait_for(lambda: prom.query(total)[0][1] == before + sent, 30, "a scrape after the traffic")
        at = time.time()
        window = 30
        after = prom.query(total, at)[0][1]
        assert after - before == sent  # what Prometheus stored grew by the traffic sent

        result, sources = live_health([endpoint], MODEL, probe_row=lambda: pytest.fail("probed"), prometheus=prom,
                                      window_s=window, at=at)
        assert sources["local"] == {"source": "prometheus", "reason": "", "window_s": float(window)}, sources
        live = result["local"]["live"]["all"]

        def one(promql: str) -> float:
            (sample,) = prom.query(promql, at)
            return sample[1]

        sel = f'{{model_name="{MODEL}"}}'
        assert live["throughput_rps"] == pytest.approx(one(f"sum(rate({COUNT}{sel}[{window}s]))"))
        assert live["requests"] == pytest.approx(one(f"sum(increase({COUNT}{sel}[{window}s]))"))
        assert live["error_rate"] == pytest.approx(one(
            f'sum(rate({COUNT}{{model_name="{MODEL}",status!="OK"}}[{window}s])) / sum(rate({COUNT}{sel}[{window}s]))'))
        assert live["error_rate"] > 0 and live["last_error"].startswith("INVALID_ARGUMENT ×")
        for q, key in ((0.5, "p50_ms"), (0.95, "p95_ms"), (0.99, "p99_ms")):
            expected = one(f"histogram_quantile({q}, sum by (le) (rate({LATENCY}_bucket{sel}[{window}s])))")
            assert live[key] == pytest.approx(expected / 1000.0), key
        for entrypoint in ("REST", "GRPC"):
            expected = one(f'histogram_quantile(0.99, sum by (le) (rate({LATENCY}_bucket{{model_name="{MODEL}",'
                           f'entrypoint="{entrypoint}"}}[{window}s])))')
            assert live["by_entrypoint"][entrypoint]["p99_ms"] == pytest.approx(expected / 1000.0), entrypoint
        prom.close()
