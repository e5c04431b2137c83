"""Live serving metrics of TF Serving replicas: what the served model really got, from the
metrics the server exports (no Airflow, no MLflow, no TensorFlow import).

TF Serving exports its metrics in Prometheus' text format on the REST port when
``--monitoring_config_file`` enables ``prometheus_config`` (``util/prometheus_exporter.cc``; names
such as ``:tensorflow:serving:request_count{model_name,status}`` and the latency histogram
``:tensorflow:serving:request_latency{model_name,API,entrypoint}`` in microseconds, successful
requests only). Two ways to read them, one result (:class:`Traffic`: request rate, error rate,
latency p50/p95/p99, examples):

- **scrape** — :func:`scrape` each replica's metrics path (:func:`parse_exposition`), twice over a
  window, and :func:`traffic_between` the two expositions (counter deltas; a counter that went
  down is a restarted server, counted from zero like Prometheus' ``rate``);
- **Prometheus** — :class:`PrometheusClient` asks a Prometheus server that scrapes the replicas
  (``/api/v1/query``): ``rate()`` of the counters and ``histogram_quantile()`` of the latency
  buckets over the window, per ``instance`` (``host:port`` of the replica's REST port).

Quantiles are estimated from the histogram buckets as Prometheus' ``histogram_quantile`` does
(:func:`histogram_quantile`: linear interpolation inside the bucket holding the rank; the
highest finite bound when the rank falls in ``+Inf``), so both ways give the same numbers.

Every network read has a timeout, a deadline for the whole answer and a size cap; bad text or a
bad answer raises :class:`MetricsError` naming the URL, the line or the query.
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import asdict, dataclass, field
from typing import Iterable

import requests

__all__ = ["DEFAULT_METRICS_PATH", "Exposition", "MetricsError", "PrometheusClient", "Sample", "Traffic",
           "histogram_quantile", "parse_exposition", "scrape", "scrape_traffic", "traffic_between"]

DEFAULT_METRICS_PATH = "/monitoring/prometheus/metrics"  # PrometheusExporter::kPrometheusPath
REQUEST_COUNT = ":tensorflow:serving:request_count"  # {model_name, status}
REQUEST_LATENCY = ":tensorflow:serving:request_latency"  # histogram, µs {model_name, API, entrypoint}
EXAMPLE_COUNT_TOTAL = ":tensorflow:serving:request_example_count_total"  # {model}
QUANTILES = (0.5, 0.95, 0.99)
MAX_RESPONSE_BYTES = 16 * 1024 * 1024
MAX_SAMPLES = 500_000


class MetricsError(RuntimeError):
    """Metrics could not be read: unreachable or failing endpoint, bad exposition text, an error
    answer of Prometheus' API, an answer over the size cap. The message names where."""


# ----------------------------------------------------------------------------- exposition
@dataclass(frozen=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float


@dataclass
class Exposition:
    """One scrape: its samples, the ``# TYPE`` of each metric family, and when it was taken
    (``time.monotonic()``: only differences between scrapes mean something)."""

    samples: list[Sample]
    types: dict[str, str] = field(default_factory=dict)
    taken_at: float = 0.0

    def series(self, name: str, **match: str) -> Iterable[Sample]:
        for s in self.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in match.items()):
                yield s


_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LINE = re.compile(rf"^({_NAME})(?:\{{(.*)\}})?[ \t]+(\S+)(?:[ \t]+(-?\d+))?[ \t]*$")
_LABEL = re.compile(r'[ \t]*([a-zA-Z_][a-zA-Z0-9_]*)[ \t]*=[ \t]*"((?:[^"\\\n]|\\.)*)"[ \t]*(,|$)')
_VALUE = re.compile(r"^[+-]?(?:\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?|Inf|inf|NaN|nan)$")
_ESCAPES = {"\\": "\\", '"': '"', "n": "\n"}
_TYPES = {"counter", "gauge", "histogram", "summary", "untyped"}


def _unescape(value: str, where: str) -> str:
    out, i = [], 0
    while i < len(value):
        c = value[i]
        if c == "\\":
            nxt = value[i + 1:i + 2]
            if nxt not in _ESCAPES:
                raise MetricsError(f"{where}: invalid escape \\{nxt} in a label value")
            out.append(_ESCAPES[nxt])
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _labels(text: str, where: str) -> dict[str, str]:
    labels, pos = {}, 0
    while pos < len(text) and text[pos:].strip():
        m = _LABEL.match(text, pos)
        if m is None:
            raise MetricsError(f"{where}: bad label set {{{text[:120]}}}")
        if m.group(1) in labels:
            raise MetricsError(f"{where}: label {m.group(1)!r} given twice")
        labels[m.group(1)] = _unescape(m.group(2), where)
        pos = m.end()
    return labels


def _float(text: str, where: str) -> float:
    if not _VALUE.match(text):
        raise MetricsError(f"{where}: bad sample value {text[:40]!r}")
    return float(text)


def parse_exposition(text: str, source: str = "exposition", max_samples: int = MAX_SAMPLES) -> Exposition:
    """Prometheus' text exposition format (0.0.4) → :class:`Exposition`. ``# HELP`` and other
    comments are skipped; a malformed line raises :class:`MetricsError` naming ``source`` and the
    line number."""
    samples, types = [], {}
    for number, line in enumerate(text.splitlines(), 1):
        where = f"{source} line {number}"
        if not line.strip():
            continue
        if line.startswith("#"):
            parts = line.split(None, 3)
            if len(parts) >= 3 and parts[1] == "TYPE":
                kind = parts[3].strip() if len(parts) > 3 else ""
                if kind not in _TYPES or not re.fullmatch(_NAME, parts[2]):
                    raise MetricsError(f"{where}: bad TYPE line {line[:120]!r}")
                types[parts[2]] = kind
            continue
        m = _LINE.match(line)
        if m is None:
            raise MetricsError(f"{where}: not a sample line: {line[:120]!r}")
        if len(samples) >= max_samples:
            raise MetricsError(f"{source}: more than {max_samples} samples")
        samples.append(Sample(m.group(1), _labels(m.group(2) or "", where), _float(m.group(3), where)))
    return Exposition(samples, types)


def _read_capped(resp: requests.Response, url: str, max_bytes: int, deadline: float) -> bytes:
    chunks, size = [], 0
    for chunk in resp.iter_content(64 * 1024):
        size += len(chunk)
        if size > max_bytes:
            raise MetricsError(f"{url}: answer larger than {max_bytes} bytes")
        if time.monotonic() > deadline:
            raise MetricsError(f"{url}: answer not complete within the deadline")
        chunks.append(chunk)
    return b"".join(chunks)


def _get(session: requests.Session, url: str, timeout: float, max_bytes: int, **kwargs) -> tuple[int, bytes]:
    """GET with a connect/read timeout, a deadline of 2 × ``timeout`` for the whole body and a size cap."""
    deadline = time.monotonic() + 2 * timeout
    try:
        with session.get(url, timeout=timeout, stream=True, **kwargs) as resp:
            declared = resp.headers.get("Content-Length")
            if declared and declared.isdigit() and int(declared) > max_bytes:
                raise MetricsError(f"{url}: answer of {declared} bytes is over the cap of {max_bytes}")
            return resp.status_code, _read_capped(resp, url, max_bytes, deadline)
    except requests.RequestException as exc:
        raise MetricsError(f"{url}: {type(exc).__name__}: {exc}") from exc


def scrape(url: str, timeout: float = 10.0, max_bytes: int = MAX_RESPONSE_BYTES,
           session: requests.Session | None = None) -> Exposition:
    """One scrape of a metrics URL (``http://host:8501/monitoring/prometheus/metrics``)."""
    own = session is None
    session = session or requests.Session()
    try:
        status, body = _get(session, url, timeout, max_bytes)
    finally:
        if own:
            session.close()
    taken = time.monotonic()
    if status == 404:
        raise MetricsError(f"{url}: HTTP 404: no metrics at this path (is --monitoring_config_file enabling "
                           f"prometheus_config with this path?)")
    if status != 200:
        raise MetricsError(f"{url}: HTTP {status}: {body[:200].decode('utf-8', 'replace')}")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MetricsError(f"{url}: not UTF-8 text ({exc})") from exc
    exposition = parse_exposition(text, source=url)
    exposition.taken_at = taken
    return exposition


# ---------------------------------------------------------------------------------- quantile
def histogram_quantile(q: float, buckets: Iterable[tuple[float, float]]) -> float:
    """The ``q`` quantile of cumulative ``(upper_bound, count)`` buckets, as Prometheus'
    ``histogram_quantile`` (``promql/quantile.go``, ``bucketQuantile``) estimates it: NaN without
    a ``+Inf`` bucket or observations; linear interpolation inside the bucket where the rank
    falls (from 0 for the first bucket when its bound is positive); the highest finite bound when
    it falls in ``+Inf``. Counts that decrease with the bound are raised to be monotonic."""
    if math.isnan(q):
        return math.nan
    if q < 0:
        return -math.inf
    if q > 1:
        return math.inf
    merged: dict[float, float] = {}
    for bound, count in buckets:  # coalesceBuckets: same bound → counts added
        merged[bound] = merged.get(bound, 0.0) + count
    ordered = sorted(merged.items())
    if not ordered or not math.isinf(ordered[-1][0]) or ordered[-1][0] < 0:
        return math.nan
    bounds = [b for b, _ in ordered]
    counts, highest = [], -math.inf
    for _, c in ordered:  # ensureMonotonic
        highest = max(highest, c)
        counts.append(highest)
    if len(bounds) < 2 or counts[-1] == 0:
        return math.nan
    rank = q * counts[-1]
    b = next((i for i in range(len(bounds) - 1) if counts[i] >= rank), len(bounds) - 1)
    if b == len(bounds) - 1:
        return bounds[-2]
    if b == 0 and bounds[0] <= 0:
        return bounds[0]
    start, end, count = 0.0, bounds[b], counts[b]
    if b > 0:
        start = bounds[b - 1]
        count -= counts[b - 1]
        rank -= counts[b - 1]
    if count == 0:  # q = 0 on an empty first bucket: Go's 0/0, NaN
        return math.nan
    return start + (end - start) * (rank / count)


# ------------------------------------------------------------------------------------ traffic
@dataclass
class Traffic:
    """What one replica served of one model over a window (``window_s``; None: since the server
    started). ``requests``/``errors`` are counted requests (Prometheus: extrapolated, so not
    whole numbers), ``error_rate`` the non-OK share (None without requests), latencies in ms over
    the successful requests (NaN without any), ``by_entrypoint`` the latencies of REST and GRPC
    apart. ``idle``: no request at all in the window."""

    model: str
    source: str
    window_s: float | None
    requests: float
    errors: float
    by_status: dict[str, float]
    request_rate: float | None
    error_rate: float | None
    p50_ms: float
    p95_ms: float
    p99_ms: float
    by_entrypoint: dict[str, dict[str, float]]
    examples: float | None
    target: str = ""

    @property
    def idle(self) -> bool:
        return not self.requests > 0

    def to_dict(self) -> dict:
        return {**asdict(self), "idle": self.idle}


def _percentiles_ms(buckets: list[tuple[float, float]]) -> dict[str, float]:
    return {f"p{round(q * 100)}_ms": histogram_quantile(q, buckets) / 1000.0 for q in QUANTILES}


def _delta(after: float, before: float | None) -> float:
    """Counter increase between two scrapes; a counter that went down was reset (restart)."""
    if before is None or after < before:
        return after
    return after - before


def _le(sample: Sample, where: str) -> float:
    try:
        return float(sample.labels["le"])
    except (KeyError, ValueError) as exc:
        raise MetricsError(f"{where}: histogram bucket without a numeric le label: {sample}") from exc


def traffic_between(before: Exposition | None, after: Exposition, model: str, target: str = "") -> Traffic:
    """The traffic of ``model`` between two scrapes of one replica (``before=None``: everything
    since the server started, as one cumulative scrape shows it)."""
    old = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in before.samples} if before else {}

    def delta(sample: Sample) -> float:
        return _delta(sample.value, old.get((sample.name, tuple(sorted(sample.labels.items())))) if before else None)

    by_status: dict[str, float] = {}
    for s in after.series(REQUEST_COUNT, model_name=model):
        by_status[s.labels.get("status", "")] = by_status.get(s.labels.get("status", ""), 0.0) + delta(s)
    requests_ = sum(by_status.values())
    errors = sum(v for status, v in by_status.items() if status != "OK")
    buckets: list[tuple[float, float]] = []
    per_entrypoint: dict[str, list[tuple[float, float]]] = {}
    for s in after.series(f"{REQUEST_LATENCY}_bucket", model_name=model):
        bucket = (_le(s, target or "exposition"), delta(s))
        buckets.append(bucket)
        per_entrypoint.setdefault(s.labels.get("entrypoint", ""), []).append(bucket)
    examples = [delta(s) for s in after.series(EXAMPLE_COUNT_TOTAL, model=model)]
    window = after.taken_at - before.taken_at if before else None
    return Traffic(model=model, source="scrape", window_s=window, requests=requests_, errors=errors,
                   by_status=by_status, request_rate=requests_ / window if window else None,
                   error_rate=errors / requests_ if requests_ > 0 else None, **_percentiles_ms(buckets),
                   by_entrypoint={e: _percentiles_ms(b) for e, b in sorted(per_entrypoint.items())},
                   examples=sum(examples) if examples else None, target=target)


def scrape_traffic(urls: dict[str, str], model: str, window_s: float, timeout: float = 10.0,
                   max_bytes: int = MAX_RESPONSE_BYTES) -> dict[str, Traffic | MetricsError]:
    """Scrape every URL (``{name: metrics URL}``), wait ``window_s``, scrape them again: the
    traffic of ``model`` on each over that window, or the :class:`MetricsError` of a replica whose
    metrics could not be read (the others are still measured)."""
    out: dict[str, Traffic | MetricsError] = {}
    first: dict[str, Exposition] = {}
    with requests.Session() as session:
        for name, url in urls.items():
            try:
                first[name] = scrape(url, timeout, max_bytes, session)
            except MetricsError as exc:
                out[name] = exc
        if first:
            time.sleep(max(0.0, float(window_s)))
        for name, before in first.items():
            try:
                out[name] = traffic_between(before, scrape(urls[name], timeout, max_bytes, session), model,
                                            target=urls[name])
            except MetricsError as exc:
                out[name] = exc
    return {name: out[name] for name in urls}


# --------------------------------------------------------------------------------- Prometheus
def _promql_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _window(window_s: float) -> str:
    seconds = int(window_s)
    if seconds != window_s or seconds < 1:
        raise ValueError(f"window must be a whole number of seconds >= 1, got {window_s!r}")
    return f"{seconds}s"


class PrometheusClient:
    """Prometheus' HTTP API (``/api/v1/query``), bounded: ``timeout`` per request (also passed to
    Prometheus as the query timeout), answers capped at ``max_bytes``.

    :param base_url: ``http://prometheus:9090`` (a path prefix is kept).
    :param auth: ``(user, password)`` for basic auth, or None.
    :param selector: extra label matchers added to every series selector, e.g. ``job="tf-serving"``.
    """

    def __init__(self, base_url: str, timeout: float = 10.0, max_bytes: int = MAX_RESPONSE_BYTES,
                 auth: tuple[str, str] | None = None, selector: str = "", headers: dict | None = None):
        self.base_url = base_url.rstrip("/")
        self.timeout = float(timeout)
        self.max_bytes = max_bytes
        self.selector = selector.strip().strip(",")
        self._session = requests.Session()
        self._session.auth = auth
        self._session.headers.update(headers or {})

    def close(self) -> None:
        self._session.close()

    def __repr__(self) -> str:
        return f"PrometheusClient({self.base_url!r})"

    def query(self, promql: str, at: float | None = None) -> list[tuple[dict[str, str], float]]:
        """An instant query → ``[(labels, value)]`` (a scalar answer is one sample without labels)."""
        url = f"{self.base_url}/api/v1/query"
        params = {"query": promql, "timeout": f"{self.timeout:g}s"}
        if at is not None:
            params["time"] = f"{at:.3f}"
        status, body = _get(self._session, url, self.timeout, self.max_bytes, params=params)
        try:
            answer = json.loads(body)
        except ValueError as exc:
            raise MetricsError(f"{url}: HTTP {status}, not JSON: {body[:200]!r} (query {promql})") from exc
        if not isinstance(answer, dict) or answer.get("status") != "success":
            err = answer.get("errorType", "?") if isinstance(answer, dict) else "?"
            msg = answer.get("error", body[:200]) if isinstance(answer, dict) else body[:200]
            raise MetricsError(f"{url}: HTTP {status}, {err}: {msg} (query {promql})")
        data = answer.get("data") or {}
        kind, result = data.get("resultType"), data.get("result")
        try:
            if kind == "vector":
                return [(dict(r["metric"]), float(r["value"][1])) for r in result]
            if kind == "scalar":
                return [({}, float(result[1]))]
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise MetricsError(f"{url}: malformed {kind} result {str(result)[:200]} (query {promql})") from exc
        raise MetricsError(f"{url}: expected an instant vector, got {kind!r} (query {promql})")

    def _series(self, name: str, **labels: str) -> str:
        matchers = [f"{k}={_promql_string(v)}" for k, v in labels.items()]
        if self.selector:
            matchers.append(self.selector)
        return f"{name}{{{','.join(matchers)}}}" if matchers else name

    def by_instance(self, promql: str, at: float, *keys: str) -> dict[str, dict[tuple, float]]:
        out: dict[str, dict[tuple, float]] = {}
        for labels, value in self.query(promql, at):
            out.setdefault(labels.get("instance", ""), {})[tuple(labels.get(k, "") for k in keys)] = value
        return out

    def traffic(self, model: str, window_s: float, at: float | None = None) -> dict[str, Traffic]:
        """The traffic of ``model`` on every replica (``instance``) Prometheus scrapes, over the
        ``window_s`` seconds before ``at`` (now): every query is evaluated at the same time."""
        at = time.time() if at is None else at
        w = _window(window_s)
        count = self._series(REQUEST_COUNT, model_name=model)
        bucket = self._series(f"{REQUEST_LATENCY}_bucket", model_name=model)
        rates = self.by_instance(f"sum by (instance, status) (rate({count}[{w}]))", at, "status")
        quantiles = {q: self.by_instance(f"histogram_quantile({q}, sum by (instance, le) (rate({bucket}[{w}])))",
                                         at) for q in QUANTILES}
        per_entrypoint = {q: self.by_instance(
            f"histogram_quantile({q}, sum by (instance, entrypoint, le) (rate({bucket}[{w}])))", at, "entrypoint")
            for q in QUANTILES}
        examples = self.by_instance(
            f"sum by (instance) (increase({self._series(EXAMPLE_COUNT_TOTAL, model=model)}[{w}]))", at)
        out = {}
        for instance, per_status in rates.items():
            by_status = {status: rate * window_s for (status,), rate in per_status.items()}
            total = sum(by_status.values())
            errors = sum(v for status, v in by_status.items() if status != "OK")
            latency = {f"p{round(q * 100)}_ms": quantiles[q].get(instance, {}).get((), math.nan) / 1000.0
                       for q in QUANTILES}
            entrypoints = sorted({e for q in QUANTILES for (e,) in per_entrypoint[q].get(instance, {})})
            out[instance] = Traffic(
                model=model, source="prometheus", window_s=float(window_s), requests=total, errors=errors,
                by_status=by_status, request_rate=sum(per_status.values()),
                error_rate=errors / total if total > 0 else None, **latency,
                by_entrypoint={e: {f"p{round(q * 100)}_ms": per_entrypoint[q][instance][(e,)] / 1000.0
                                   for q in QUANTILES if (e,) in per_entrypoint[q].get(instance, {})}
                               for e in entrypoints},
                examples=examples.get(instance, {}).get(()), target=instance)
        return out

    def targets_up(self, at: float | None = None) -> dict[str, float]:
        """``up`` of every scraped instance (1: the last scrape worked, 0: it failed)."""
        return {inst: v[()] for inst, v in self.by_instance(self._series("up"), time.time() if at is None else at)
                .items()}
