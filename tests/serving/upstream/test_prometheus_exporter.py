"""Port of TF Serving's ``tensorflow_serving/util/prometheus_exporter_test.cc`` (commit in
``testdata/README.md``): the same metrics, the same expected pages, on a registry of the test's
own (upstream uses the process-wide one and looks for its metric as a substring; so does this).
Not ported: the Gauge case (TF Serving's own metrics have no gauge, so neither does
:mod:`tfmlops.serving.util.monitoring`)."""

from __future__ import annotations

from tfmlops.serving.util import monitoring
from tfmlops.serving.util.prometheus_exporter import generate_page


def _page(*metrics) -> str:
    registry = monitoring.CollectionRegistry()
    for m in metrics:
        registry.register(m)
    return generate_page(registry)


def test_counter():
    counter = monitoring.Counter("/test/path/total", "A counter.", ("name",))
    counter.get_cell("abc").increment_by(2)
    expected = "\n".join(["# TYPE :test:path:total counter", ':test:path:total{name="abc"} 2']) + "\n"
    assert expected in _page(counter)


def test_histogram():
    histogram = monitoring.Sampler("/test/path/histogram", "A histogram.", ("status",),
                                   monitoring.exponential_buckets(1, 2, 10))
    for v in (2, 20, 200):
        histogram.get_cell("good").add(v)
    expected = "\n".join([
        "# TYPE :test:path:histogram histogram",
        ':test:path:histogram_bucket{status="good",le="1"} 0',
        ':test:path:histogram_bucket{status="good",le="2"} 0',
        ':test:path:histogram_bucket{status="good",le="4"} 1',
        ':test:path:histogram_bucket{status="good",le="8"} 1',
        ':test:path:histogram_bucket{status="good",le="16"} 1',
        ':test:path:histogram_bucket{status="good",le="32"} 2',
        ':test:path:histogram_bucket{status="good",le="64"} 2',
        ':test:path:histogram_bucket{status="good",le="128"} 2',
        ':test:path:histogram_bucket{status="good",le="256"} 3',
        ':test:path:histogram_bucket{status="good",le="512"} 3',
        ':test:path:histogram_bucket{status="good",le="+Inf"} 3',
        ':test:path:histogram_sum{status="good"} 222',
        ':test:path:histogram_count{status="good"} 3']) + "\n"
    assert expected in _page(histogram)


def test_sanitize_label_value():
    counter = monitoring.Counter("/test/path/total", "A counter.", ("name",))
    counter.get_cell('"abc\\"').increment_by(2)
    expected = "\n".join(["# TYPE :test:path:total counter", ':test:path:total{name="\\"abc\\\\\\""} 2']) + "\n"
    assert expected in _page(counter)


def test_sanitize_label_name():
    counter = monitoring.Counter("/test/path/total", "A counter.", ("my-name+1",))
    counter.get_cell("abc").increment_by(2)
    expected = "\n".join(["# TYPE :test:path:total counter", ':test:path:total{my_name_1="abc"} 2']) + "\n"
    assert expected in _page(counter)


def test_sanitize_metric_name():
    counter = monitoring.Counter("0/path-total_count", "A counter.", ("name",))
    counter.get_cell("abc").increment_by(2)
    expected = "\n".join(["# TYPE _0:path:total_count counter", '_0:path:total_count{name="abc"} 2']) + "\n"
    assert expected in _page(counter)
