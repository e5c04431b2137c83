"""TF Serving metrics pages, in the exact format of ``util/prometheus_exporter.cc`` (``# TYPE``
lines, no ``# HELP``, ``le`` with %g, cumulative buckets, ``+Inf`` last), built from counts so
that tests can state what they expect."""

from __future__ import annotations

LIMITS = [10 * 1.8 ** i for i in range(33)]  # Buckets::Exponential(10, 1.8, 33), µs


def histogram_lines(name: str, labels: str, latencies_us: list[float]) -> list[str]:
    """Cumulative buckets of values strictly below each limit (TF's histogram), then +Inf, sum, count."""
    lines = [f'{name}_bucket{{{labels},le="{limit:g}"}} {sum(1 for v in latencies_us if v < limit)}'
             for limit in LIMITS]
    lines.append(f'{name}_bucket{{{labels},le="+Inf"}} {len(latencies_us)}')
    lines.append(f"{name}_sum{{{labels}}} {sum(latencies_us):g}")
    lines.append(f"{name}_count{{{labels}}} {len(latencies_us)}")
    return lines


def page(model: str, statuses: dict[str, int], latencies: dict[tuple[str, str], list[float]],
         examples: int | None = None) -> str:
    """``statuses``: request_count per status; ``latencies``: ``{(API, entrypoint): [µs, ...]}``."""
    lines = ["# TYPE :tensorflow:cc:saved_model:load_attempt_count counter",
             f':tensorflow:cc:saved_model:load_attempt_count{{model_path="/models/{model}/1",status="success"}} 1',
             "# TYPE :tensorflow:serving:request_count counter"]
    lines += [f':tensorflow:serving:request_count{{model_name="{model}",status="{s}"}} {n}'
              for s, n in statuses.items()]
    lines.append("# TYPE :tensorflow:serving:request_latency histogram")
    for (api, entrypoint), values in latencies.items():
        lines += histogram_lines(":tensorflow:serving:request_latency",
                                 f'model_name="{model}",API="{api}",entrypoint="{entrypoint}"', values)
    if examples is not None:
        lines += ["# TYPE :tensorflow:serving:request_example_count_total counter",
                  f':tensorflow:serving:request_example_count_total{{model="{model}"}} {examples}']
    return "\n".join(lines) + "\n"
