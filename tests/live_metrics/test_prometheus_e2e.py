"""The live-metrics reader against a real Prometheus (Debian's binary, on loopback, scraping every
second): the monitor's numbers for a model are the PromQL answers (rate, error share,
histogram_quantile) evaluated at one time; histogram_quantile here gives what Prometheus gives on
the same buckets; the counters' increase Prometheus stored is the traffic that was sent. The
scraped replica is a page in TF Serving's exporter format that the test updates as it "serves"
known requests."""

from __future__ import annotations

import math
import time

import pytest

from tfmlops.deploy.live_metrics import PrometheusClient, histogram_quantile

from .conftest import prometheus_process, wait_for
from .exposition import page

pytestmark = pytest.mark.e2e

PATH = "/monitoring/prometheus/metrics"
COUNT = ":tensorflow:serving:request_count"
BUCKET = ":tensorflow:serving:request_latency_bucket"


class Replica:
    """What a TF Serving replica would export after serving these requests."""

    def __init__(self, server, model: str):
        self.server, self.model = server, model
        self.statuses = {"OK": 1, "INVALID_ARGUMENT": 1}  # both series exist before the measured traffic
        self.latencies = {("predict", "REST"): [300.0], ("Predict", "GRPC"): []}
        self.publish()

    def serve(self, status: str, latency_us: float, api=("predict", "REST")):
        self.statuses[status] = self.statuses.get(status, 0) + 1
        if status == "OK":  # TF Serving records latency for successful requests only
            self.latencies[api].append(latency_us)
        self.publish()

    def publish(self):
        self.server.pages[PATH] = (200, page(self.model, self.statuses, self.latencies).encode())


def test_monitor_numbers_are_prometheus_queries(text_server, tmp_path):
    replica = Replica(text_server, "mnist")
    instance = text_server.url.removeprefix("http://")
    with prometheus_process(tmp_path, [instance], PATH) as url:
        prom = PrometheusClient(url, timeout=10)
        wait_for(lambda: prom.targets_up().get(instance) == 1.0, 30, f"a successful scrape of {instance}")
        total = f'sum({COUNT}{{model_name="mnist"}})'
        wait_for(lambda: prom.query(total), 30, "the first request_count sample")
        before_at = time.time()
        before = prom.query(total, before_at)[0][1]
        # known traffic over ~3 s: 60 OK (REST 200–9000 µs, gRPC 150 µs) and 6 INVALID_ARGUMENT
        for i in range(60):
            replica.serve("OK", 200.0 + 150 * i) if i % 3 else replica.serve("OK", 150.0, ("Predict", "GRPC"))
            if i % 10 == 0:
                replica.serve("INVALID_ARGUMENT", 0.0)
            time.sleep(0.05)
        wait_for(lambda: prom.query(total) and prom.query(total)[0][1] == before + 66, 30,
                 "a scrape after the traffic")
        at = time.time()
        window = 20
        got = prom.traffic("mnist", window_s=window, at=at)[instance]
        after = prom.query(total, at)[0][1]
        prom.close()
        assert after - before == 66  # the counters Prometheus stored: every request sent

        def one(promql: str) -> float:
            (sample,) = PrometheusClient(url).query(promql, at)
            return sample[1]

        sel = '{model_name="mnist"}'
        assert got.source == "prometheus" and got.window_s == window and not got.idle
        assert got.request_rate == pytest.approx(one(f"sum(rate({COUNT}{sel}[{window}s]))"))
        assert got.error_rate == pytest.approx(one(f'sum(rate({COUNT}{{model_name="mnist",status!="OK"}}'
                                                   f"[{window}s])) / sum(rate({COUNT}{sel}[{window}s]))"))
        assert got.requests == pytest.approx(one(f"sum(increase({COUNT}{sel}[{window}s]))"))
        rates = PrometheusClient(url).query(f"sum by (le) (rate({BUCKET}{sel}[{window}s]))", at)
        buckets = [(float(labels["le"]), value) for labels, value in rates]
        for q, key in ((0.5, "p50_ms"), (0.95, "p95_ms"), (0.99, "p99_ms")):
            expected = one(f"histogram_quantile({q}, sum by (le) (rate({BUCKET}{sel}[{window}s])))")
            assert getattr(got, key) == pytest.approx(expected / 1000.0), key
            # the reader's own histogram_quantile agrees with Prometheus' on the same buckets
            assert histogram_quantile(q, buckets) == pytest.approx(expected), q
            assert math.isfinite(expected)
        rest_p99 = one(f'histogram_quantile(0.99, sum by (le) (rate({BUCKET}{{model_name="mnist",'
                       f'entrypoint="REST"}}[{window}s])))')
        assert got.by_entrypoint["REST"]["p99_ms"] == pytest.approx(rest_p99 / 1000.0)
        assert got.by_entrypoint["GRPC"]["p50_ms"] < got.by_entrypoint["REST"]["p50_ms"]
        # the stack's recording rule (docker/prometheus/rules.yml) evaluates on the same series
        ratio = wait_for(lambda: PrometheusClient(url).query("tfserving:request_error_ratio:rate5m"), 30,
                         "the error-ratio recording rule")
        assert ratio[0][0]["instance"] == instance and 0 < ratio[0][1] < 1
