"""tfmlops.deploy.live_metrics: the text exposition parser, histogram_quantile as Prometheus
computes it, traffic between two scrapes, scraping over HTTP (bounded), and Prometheus' query API
(answers recorded from Prometheus' documented format, served by a loopback server)."""

from __future__ import annotations

import json
import math

import pytest

from tfmlops.deploy.live_metrics import (MetricsError, PrometheusClient, histogram_quantile, parse_exposition,
                                         scrape, scrape_traffic, traffic_between)

from .exposition import LIMITS, page

PRINTED = [float(f"{limit:g}") for limit in LIMITS]  # the bounds as the page prints them


def bound_below(value: float) -> tuple[float, float]:
    """(lower, upper) printed bounds of the TF bucket holding ``value`` (values strictly below the upper)."""
    i = next(i for i, limit in enumerate(PRINTED) if value < limit)
    return (PRINTED[i - 1] if i else 0.0), PRINTED[i]


# ------------------------------------------------------------------------------------ parser
def test_parses_a_tf_serving_page():
    text = page("mnist", {"OK": 12, "INVALID_ARGUMENT": 1}, {("predict", "REST"): [500.0] * 12}, examples=30)
    exp = parse_exposition(text)
    assert exp.types[":tensorflow:serving:request_count"] == "counter"
    assert exp.types[":tensorflow:serving:request_latency"] == "histogram"
    counts = {s.labels["status"]: s.value for s in exp.series(":tensorflow:serving:request_count", model_name="mnist")}
    assert counts == {"OK": 12.0, "INVALID_ARGUMENT": 1.0}
    buckets = list(exp.series(":tensorflow:serving:request_latency_bucket", API="predict", entrypoint="REST"))
    assert len(buckets) == len(LIMITS) + 1 and buckets[-1].labels["le"] == "+Inf" and buckets[-1].value == 12
    assert [s.labels["le"] for s in buckets][20] == "1.27482e+06"
    assert next(exp.series(":tensorflow:serving:request_example_count_total", model="mnist")).value == 30


def test_parses_escapes_special_values_timestamps_and_comments():
    exp = parse_exposition('# HELP x anything at all\n# a comment\n\n'
                           'x{path="C:\\\\m\\"q\\"\\nend",b="}, {"} +Inf 1712345678000\n'
                           "y NaN\nz{} -1.5e-3\nw{a=\"1\",} 7\n")
    values = {s.name: s for s in exp.samples}
    assert values["x"].labels == {"path": 'C:\\m"q"\nend', "b": "}, {"} and math.isinf(values["x"].value)
    assert math.isnan(values["y"].value) and values["z"].value == -0.0015 and values["w"].labels == {"a": "1"}


@pytest.mark.parametrize("line, message", [
    ("x 1_000", "bad sample value '1_000'"),
    ("x one", "bad sample value 'one'"),
    ('x{a="1" b="2"} 1', "bad label set"),
    ('x{a="1",a="2"} 1', "label 'a' given twice"),
    ('x{a="\\t"} 1', "invalid escape \\t"),
    ("0x 1", "not a sample line"),
    ("x", "not a sample line"),
    ("# TYPE x flavour", "bad TYPE line"),
])
def test_malformed_lines_are_refused_by_line_number(line, message):
    with pytest.raises(MetricsError, match="page line 2") as err:
        parse_exposition(f"ok 1\n{line}\n", source="page")
    assert message in str(err.value)


def test_sample_count_is_capped():
    with pytest.raises(MetricsError, match="more than 3 samples"):
        parse_exposition("a 1\nb 2\nc 3\nd 4\n", max_samples=3)


# ------------------------------------------------------------------------------- quantiles
def test_histogram_quantile_interpolates_inside_the_bucket_like_prometheus():
    buckets = [(10.0, 0), (20.0, 40), (40.0, 90), (math.inf, 100)]
    # rank 50 falls in (20, 40] holding 50 observations, 10 of them below the rank
    assert histogram_quantile(0.5, buckets) == pytest.approx(20 + 20 * (50 - 40) / 50)
    # rank 20 in the second bucket (10, 20]: 20 of its 40
    assert histogram_quantile(0.2, buckets) == pytest.approx(10 + 10 * 20 / 40)
    # rank 95 in +Inf: the highest finite bound
    assert histogram_quantile(0.95, buckets) == 40.0
    # first bucket: interpolated from 0
    assert histogram_quantile(0.1, [(8.0, 10), (math.inf, 10)]) == pytest.approx(0.8)


def test_histogram_quantile_edge_cases():
    assert math.isnan(histogram_quantile(0.5, [(10.0, 1), (20.0, 2)]))  # no +Inf bucket
    assert math.isnan(histogram_quantile(0.5, [(10.0, 0), (math.inf, 0)]))  # no observation
    assert math.isnan(histogram_quantile(0.5, []))
    assert histogram_quantile(-0.1, [(1.0, 1), (math.inf, 1)]) == -math.inf
    assert histogram_quantile(1.1, [(1.0, 1), (math.inf, 1)]) == math.inf
    # unordered and duplicated bounds are sorted and merged; a decreasing count is made monotonic
    assert histogram_quantile(0.5, [(math.inf, 4), (2.0, 1), (1.0, 2), (2.0, 1)]) == pytest.approx(1.0)
    assert histogram_quantile(0.5, [(1.0, 2), (2.0, 1), (math.inf, 4)]) == pytest.approx(1.0)


# --------------------------------------------------------------------------------- traffic
def test_traffic_between_two_scrapes_is_the_counter_deltas():
    before = parse_exposition(page("mnist", {"OK": 100}, {("predict", "REST"): [500.0] * 100}, examples=100))
    rest = [500.0] * 90 + [5000.0] * 10
    grpc = [20000.0] * 20
    after = parse_exposition(page("mnist", {"OK": 220, "INVALID_ARGUMENT": 3, "NOT_FOUND": 2},
                                  {("predict", "REST"): [500.0] * 100 + rest, ("Predict", "GRPC"): grpc},
                                  examples=100 + 150))
    before.taken_at, after.taken_at = 10.0, 15.0
    t = traffic_between(before, after, "mnist")
    assert (t.requests, t.errors) == (125, 5) and t.by_status == {"OK": 120, "INVALID_ARGUMENT": 3, "NOT_FOUND": 2}
    assert t.window_s == 5.0 and t.request_rate == pytest.approx(125 / 5) and t.error_rate == pytest.approx(5 / 125)
    assert t.examples == 150 and not t.idle
    # 120 successful: 90 at 500 µs, 10 at 5000 µs (REST), 20 at 20000 µs (gRPC)
    lo, hi = bound_below(500.0)
    assert t.p50_ms * 1000 == pytest.approx(lo + (hi - lo) * 60 / 90)
    lo, hi = bound_below(20000.0)
    assert t.p95_ms * 1000 == pytest.approx(lo + (hi - lo) * (0.95 * 120 - 100) / 20)
    assert set(t.by_entrypoint) == {"REST", "GRPC"}
    lo, hi = bound_below(5000.0)
    assert t.by_entrypoint["REST"]["p99_ms"] * 1000 == pytest.approx(lo + (hi - lo) * (99 - 90) / 10)


def test_a_restarted_server_counts_from_zero_and_an_idle_model_is_idle():
    before = parse_exposition(page("mnist", {"OK": 500}, {("predict", "REST"): [500.0] * 500}))
    restarted = parse_exposition(page("mnist", {"OK": 4}, {("predict", "REST"): [500.0] * 4}))
    t = traffic_between(before, restarted, "mnist")
    assert t.requests == 4 and t.error_rate == 0
    idle = traffic_between(before, before, "mnist")
    assert idle.idle and idle.error_rate is None and math.isnan(idle.p99_ms)
    assert traffic_between(None, before, "other").idle  # a model the server never served


def test_cumulative_traffic_from_one_scrape():
    t = traffic_between(None, parse_exposition(page("m", {"OK": 7, "INTERNAL": 1}, {("predict", "REST"): [50.0] * 7})),
                        "m")
    assert (t.requests, t.errors, t.window_s, t.request_rate) == (8, 1, None, None)


# ---------------------------------------------------------------------------------- scraping
def test_scrape_over_http_and_traffic_over_a_window(text_server):
    path = "/monitoring/prometheus/metrics"
    text_server.pages[path] = (200, page("mnist", {"OK": 10}, {("predict", "REST"): [100.0] * 10}).encode())
    exp = scrape(text_server.url + path, timeout=5)
    assert next(exp.series(":tensorflow:serving:request_count")).value == 10
    # the page changes while scrape_traffic waits: 6 more requests, one failed
    import threading

    later = page("mnist", {"OK": 15, "UNAVAILABLE": 1}, {("predict", "REST"): [100.0] * 15})
    timer = threading.Timer(0.3, lambda: text_server.pages.__setitem__(path, (200, later.encode())))
    timer.start()
    got = scrape_traffic({"a": text_server.url + path, "down": "http://127.0.0.1:9/metrics"}, "mnist", window_s=1.0,
                         timeout=2)
    timer.join()
    assert isinstance(got["down"], MetricsError) and "127.0.0.1:9" in str(got["down"])
    t = got["a"]
    assert (t.requests, t.errors) == (6, 1) and 0.9 < t.window_s < 3 and t.request_rate == pytest.approx(6 / t.window_s)


def test_scrape_errors_name_the_url_and_the_cause(text_server):
    with pytest.raises(MetricsError, match=r"HTTP 404: no metrics at this path .*monitoring_config_file"):
        scrape(text_server.url + "/monitoring/prometheus/metrics", timeout=5)
    text_server.pages["/big"] = (200, b"x 1\n" * 1000)
    with pytest.raises(MetricsError, match="over the cap of 100"):
        scrape(text_server.url + "/big", timeout=5, max_bytes=100)
    text_server.pages["/bad"] = (200, b"x 1\nnot a metric line\n")
    with pytest.raises(MetricsError, match=r"/bad line 2: not a sample line"):
        scrape(text_server.url + "/bad", timeout=5)
    text_server.pages["/err"] = (503, b"overloaded")
    with pytest.raises(MetricsError, match="HTTP 503: overloaded"):
        scrape(text_server.url + "/err", timeout=5)


# -------------------------------------------------------------------------------- Prometheus
def vector(*samples: tuple[dict, float]) -> bytes:
    return json.dumps({"status": "success", "data": {"resultType": "vector", "result": [
        {"metric": m, "value": [1712345678.0, "NaN" if math.isnan(v) else str(v)]} for m, v in samples]}}).encode()


def test_prometheus_traffic_queries_and_answers(text_server):
    ep0, ep1 = "tf-serving-0:8501", "tf-serving-1:8501"
    answers = {
        "sum by (instance, status) (rate(": vector(({"instance": ep0, "status": "OK"}, 9.5),
                                                  ({"instance": ep0, "status": "INVALID_ARGUMENT"}, 0.5),
                                                  ({"instance": ep1, "status": "OK"}, 2.0)),
        **{f"histogram_quantile({q}, sum by (instance, le)": vector(({"instance": ep0}, a), ({"instance": ep1}, b))
           for q, a, b in [(0.5, 1500.0, 800.0), (0.95, 4000.0, 900.0), (0.99, 9000.0, math.nan)]},
        "sum by (instance, entrypoint, le)": vector(({"instance": ep0, "entrypoint": "REST"}, 1200.0)),
        "increase(": vector(({"instance": ep0}, 3000.0)),
    }
    # answered by the fragment of the query each answer is for
    text_server.pages["/prefix/api/v1/query"] = lambda params: (
        200, next(a for key, a in answers.items() if key in params["query"][0]))
    client = PrometheusClient(text_server.url + "/prefix/", timeout=5, selector='job="tf-serving"')
    got = client.traffic("mn\"ist", window_s=300, at=1712345678.0)
    queries = [{k: v[0] for k, v in params.items()} for _, params in text_server.requests]
    assert {q["time"] for q in queries} == {"1712345678.000"} and {q["timeout"] for q in queries} == {"5s"}
    assert queries[0]["query"] == ('sum by (instance, status) (rate(:tensorflow:serving:request_count'
                                   '{model_name="mn\\"ist",job="tf-serving"}[300s]))')
    assert ('histogram_quantile(0.99, sum by (instance, le) (rate(:tensorflow:serving:request_latency_bucket'
            '{model_name="mn\\"ist",job="tf-serving"}[300s])))') in [q["query"] for q in queries]
    a, b = got[ep0], got[ep1]
    assert a.source == "prometheus" and a.request_rate == pytest.approx(10.0) and a.requests == pytest.approx(3000)
    assert a.error_rate == pytest.approx(0.05) and a.errors == pytest.approx(150)
    assert (a.p50_ms, a.p95_ms, a.p99_ms) == (1.5, 4.0, 9.0) and a.examples == 3000
    assert a.by_entrypoint == {"REST": {"p50_ms": 1.2, "p95_ms": 1.2, "p99_ms": 1.2}}
    assert b.error_rate == 0 and math.isnan(b.p99_ms) and b.examples is None and b.by_entrypoint == {}


def test_prometheus_errors_are_clear(text_server):
    client = PrometheusClient(text_server.url, timeout=5)
    text_server.pages["/api/v1/query"] = (400, json.dumps({"status": "error", "errorType": "bad_data",
                                                           "error": "parse error at char 5"}).encode())
    with pytest.raises(MetricsError, match=r"HTTP 400, bad_data: parse error at char 5 \(query up\)"):
        client.query("up")
    text_server.pages["/api/v1/query"] = (200, b"<html>a proxy page</html>")
    with pytest.raises(MetricsError, match="not JSON"):
        client.query("up")
    text_server.pages["/api/v1/query"] = (200, json.dumps({"status": "success", "data": {
        "resultType": "matrix", "result": []}}).encode())
    with pytest.raises(MetricsError, match="expected an instant vector, got 'matrix'"):
        client.query("up[5m]")
    with pytest.raises(ValueError, match="whole number of seconds"):
        client.traffic("m", window_s=0.5)
    with pytest.raises(MetricsError, match="ConnectionError"):
        PrometheusClient("http://127.0.0.1:9", timeout=2).query("up")
    text_server.pages["/api/v1/query"] = (200, vector(({"instance": "a:1", "job": "x"}, 1.0),
                                                      ({"instance": "b:1", "job": "x"}, 0.0)))
    assert client.targets_up() == {"a:1": 1.0, "b:1": 0.0}
    assert text_server.requests[-1][1]["query"] == ["up"]
