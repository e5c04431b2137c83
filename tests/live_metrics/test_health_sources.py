"""Where the health check's numbers come from (tfmlops.monitoring.live_health and the
check_health step): Prometheus when given, else two scrapes of each replica's metrics, and the
probe only for a replica that got no live traffic in the window or whose metrics cannot be read.
Replicas' metrics pages are served by a loopback server; the probe goes to a recording client."""

from __future__ import annotations

import math
import threading
from unittest import mock

import numpy as np
import pytest

from tfmlops.deploy.endpoint import Endpoint
from tfmlops.deploy.live_metrics import MetricsError, Traffic
from tfmlops.monitoring import Thresholds, health_breaches, health_metrics, live_health

from .conftest import TextServer
from .exposition import page

PATH = "/monitoring/prometheus/metrics"


class ProbedClient:
    """A ServingClient stand-in that records the probe's requests (one AVAILABLE version, 7)."""

    def __init__(self):
        self.calls = []

    def status(self, model):
        return {"model_version_status": [{"version": "7", "state": "AVAILABLE"}]}

    def predict_rest(self, model, rows, version=None, label=None):
        self.calls.append(("rest", version))
        return [[0.0]]

    def predict_grpc(self, model, rows, version=None):
        self.calls.append(("grpc", version))
        return {"y": np.zeros((1, 1))}

    def close(self):
        pass


def endpoint(name: str, server: TextServer | None, path: str = PATH) -> Endpoint:
    port = int(server.url.rsplit(":", 1)[1]) if server else 9  # 9: nothing listens (discard)
    return Endpoint(name=name, host="127.0.0.1", rest_port=port, metrics_path=path, _client=ProbedClient())


def traffic(instance: str, requests: float, errors: float = 0, p99_ms: float = 2.0) -> Traffic:
    statuses = {"OK": requests - errors, **({"INVALID_ARGUMENT": errors} if errors else {})}
    return Traffic(model="m", source="prometheus", window_s=300.0, requests=requests, errors=errors,
                   by_status=statuses, request_rate=requests / 300, error_rate=errors / requests if requests else None,
                   p50_ms=1.0, p95_ms=1.5, p99_ms=p99_ms, by_entrypoint={}, examples=None, target=instance)


class StubPrometheus:
    """The hook's API (targets_up, traffic) with fixed answers; records the evaluation times."""

    def __init__(self, up: dict[str, float], seen: dict[str, Traffic], fail: str = ""):
        self.up, self.seen, self.fail, self.times = up, seen, fail, []

    def targets_up(self, at=None):
        if self.fail:
            raise MetricsError(self.fail)
        self.times.append(at)
        return self.up

    def traffic(self, model, window_s, at=None):
        self.times.append(at)
        return self.seen


@pytest.fixture
def replicas():
    servers = [TextServer(), TextServer()]
    yield servers
    for s in servers:
        s.close()


def serve_traffic_during_window(server: TextServer, before: str, after: str, delay: float = 0.2) -> threading.Timer:
    server.pages[PATH] = (200, before.encode())
    timer = threading.Timer(delay, lambda: server.pages.__setitem__(PATH, (200, after.encode())))
    timer.start()
    return timer


def row():
    return np.zeros(4, np.float32)


def test_scraped_traffic_where_there_is_some_probe_where_idle(replicas):
    busy, idle = replicas
    timer = serve_traffic_during_window(
        busy, page("m", {"OK": 10}, {("predict", "REST"): [400.0] * 10}),
        page("m", {"OK": 28, "INVALID_ARGUMENT": 2}, {("predict", "REST"): [400.0] * 28}))
    idle.pages[PATH] = (200, page("m", {"OK": 5}, {("predict", "REST"): [400.0] * 5}).encode())
    eps = [endpoint("busy", busy), endpoint("idle", idle)]
    result, sources = live_health(eps, "m", row, requests=3, scrape_window_s=1.0, timeout=5)
    timer.join()
    assert sources["busy"]["source"] == "scrape" and sources["busy"]["reason"] == ""
    live = result["busy"]["live"]["all"]
    assert (live["requests"], live["errors"], live["last_error"]) == (20, 2, "INVALID_ARGUMENT ×2")
    assert live["error_rate"] == pytest.approx(0.1) and live["throughput_rps"] == pytest.approx(20 / live["window_s"])
    assert eps[0].client.calls == []  # not probed
    assert sources["idle"]["source"] == "probe" and "no request for m in" in sources["idle"]["reason"]
    assert set(result["idle"]) == {7} and eps[1].client.calls.count(("rest", 7)) == 3 + 1  # + the untimed warm-up
    breaches = health_breaches(result, Thresholds(max_error_rate=0.05))
    assert breaches == [f"busy live traffic (scrape, {live['window_s']:.0f}s): error rate 10.00% > 5.00% "
                        "(2/20 requests; non-OK: INVALID_ARGUMENT ×2)"]
    flat = health_metrics(result)
    assert flat["health.busy.live.all.error_rate"] == pytest.approx(0.1) and "health.idle.v7.grpc.p99_ms" in flat


def test_unreadable_metrics_are_probed_with_the_reason(replicas):
    no_metrics = replicas[0]  # answers 404 at the metrics path: monitoring not enabled
    eps = [endpoint("no_metrics", no_metrics), endpoint("down", None)]
    result, sources = live_health(eps, "m", row, requests=2, scrape_window_s=0.1, timeout=2)
    assert sources["no_metrics"]["source"] == "probe"
    assert "metrics not readable" in sources["no_metrics"]["reason"] and "HTTP 404" in sources["no_metrics"]["reason"]
    assert sources["down"]["source"] == "probe" and "ConnectionError" in sources["down"]["reason"]
    assert set(result["no_metrics"]) == {7} and eps[0].client.calls


def test_prometheus_first_then_scrape_for_replicas_it_does_not_scrape(replicas):
    scraped_only = replicas[0]
    timer = serve_traffic_during_window(scraped_only, page("m", {"OK": 1}, {("predict", "REST"): [50.0]}),
                                        page("m", {"OK": 4}, {("predict", "REST"): [50.0] * 4}))
    a, b, c = endpoint("a", None), endpoint("b", None), endpoint("c", scraped_only)
    a.host, b.host = "tf-serving-0", "tf-serving-1"  # instances as Prometheus labels them
    prom = StubPrometheus(up={"tf-serving-0:9": 1.0, "tf-serving-1:9": 0.0},
                          seen={"tf-serving-0:9": traffic("tf-serving-0:9", 3000, errors=60, p99_ms=800.0),
                                "tf-serving-1:9": traffic("tf-serving-1:9", 0)})
    result, sources = live_health([a, b, c], "m", row, requests=2, prometheus=prom, window_s=300,
                                  scrape_window_s=0.5, timeout=5)
    timer.join()
    assert len(set(prom.times)) == 1  # every query at one evaluation time
    assert sources["a"] == {"source": "prometheus", "reason": "", "window_s": 300.0}
    assert result["a"]["live"]["all"]["p99_ms"] == 800.0 and a._client.calls == []
    assert sources["b"]["source"] == "probe"
    assert sources["b"]["reason"] == "no request for m on tf-serving-1:9 in the last 300s (Prometheus, its last " \
                                     "scrape failed)"
    assert sources["c"]["source"] == "scrape" and "Prometheus scrapes no target 127.0.0.1:" in sources["c"]["reason"]
    assert result["c"]["live"]["all"]["requests"] == 3
    breaches = health_breaches(result, Thresholds(max_p99_ms=500, max_error_rate=0.01))
    assert "a live traffic (prometheus, 300s): error rate 2.00% > 1.00% (60/3000 requests; non-OK: " \
           "INVALID_ARGUMENT ×60)" in breaches
    assert "a live traffic (prometheus, 300s): p99 latency 800.0 ms > 500.0 ms (p50 1.0, p95 1.5, 3000 requests)" \
           in breaches


def test_an_unreachable_prometheus_falls_back_to_scraping(replicas):
    timer = serve_traffic_during_window(replicas[0], page("m", {"OK": 0}, {}), page("m", {"OK": 2}, {}))
    ep = endpoint("a", replicas[0])
    result, sources = live_health([ep], "m", row, prometheus=StubPrometheus({}, {}, fail="http://prom:9090: down"),
                                  scrape_window_s=0.5, timeout=5)
    timer.join()
    assert sources["a"]["source"] == "scrape"
    assert sources["a"]["reason"] == "Prometheus not used (http://prom:9090: down)"
    assert math.isnan(result["a"]["live"]["all"]["p99_ms"])  # no latency series on that page


def test_check_health_records_the_sources_and_keeps_the_thresholds(replicas):
    from tfmlops.steps import monitor

    timer = serve_traffic_during_window(replicas[0], page("m", {"OK": 0}, {}),
                                        page("m", {"OK": 9, "INTERNAL": 1}, {("predict", "REST"): [70.0] * 9}))
    with mock.patch.object(monitor, "monitoring_run", return_value="run1"), \
            mock.patch.object(monitor, "log_step", return_value=5) as log_step, \
            mock.patch.object(monitor.registry, "set_tags") as set_tags, \
            mock.patch.object(monitor, "log_trend_charts", return_value="runs:/run1/charts/x.png"), \
            mock.patch.object(monitor, "probe_features") as probe_features:
        out = monitor.check_health("http://mlflow", "m", [endpoint("a", replicas[0])], Thresholds(), requests=2,
                                   scrape_window_s=0.5)
    timer.join()
    probe_features.assert_not_called()  # nothing probed: no probe row loaded
    assert out["sources"]["a"]["source"] == "scrape"
    assert out["breaches"] and out["breaches"][0].startswith("a live traffic (scrape, ")
    assert "error rate 10.00% > 1.00%" in out["breaches"][0]
    assert log_step.call_args.args[2]["health.a.live.all.error_rate"] == pytest.approx(0.1)
    assert '"source": "scrape"' in set_tags.call_args.args[2]["last_health_sources"]
