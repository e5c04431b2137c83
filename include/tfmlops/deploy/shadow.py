"""Shadow release: the challenger answers a share of the live requests next to the champion, and
no client ever sees its answers; a report decides ``promote`` or ``hold``.

``shadow_release`` of version N, with the router's ``stable`` group serving the champion and its
``canary`` group free (both behind the router, :mod:`.router`; the router's request mirror on,
:mod:`.mirror_sink`):

1. N is rolled onto the canary group with the router's canary share at 0 % (the ``replace``
   rollout with smoke parity of every release through the router,
   :class:`~.progressive.RouterRelease`): the router sends it no client request, so whatever it
   answers reaches nobody;
2. for ``window_s`` the sampled live Predict requests the router mirrored (the sink's ring of its latest
   records, ``GET /v1/mirror/records``: each one a TF Serving ``PredictionLog`` with the request
   and the champion's answer) are **replayed** to the canary replicas, with version N named in
   the request, over the protocol the client used (gRPC: the ``PredictRequest``; REST: the same
   inputs as ``{"inputs": …}`` JSON), by a bounded pool (``replay_threads``; at most
   ``max_pending`` waiting, more — and those still waiting when the window ends — are skipped
   and counted) with the request id
   ``tfmlops-shadow-<client's id>`` (the project's own traffic: live drift leaves it out);
3. each challenger answer is compared with the champion's answer *to the same request*: top-1
   agreement (argmax of the last axis, rows of every output that has classes; for one value per
   row — a regression — agreement is |diff| <= ``value_tolerance`` relative), the largest and
   the mean |difference| of the output values; challenger errors are counted;
4. the two groups' latency and error rate over the window come from the replicas' own TF
   Serving metrics, as gray judges them (:meth:`~.progressive.RouterRelease._traffic`,
   :func:`~.progressive.compare`): the champion's on the live traffic, the challenger's on the
   replays alone;
5. ``promote`` when at least ``min_compared`` requests were compared, agreement ≥
   ``min_agreement``, max |diff| ≤ ``max_abs_diff`` (when set) and no metric breach; else ``hold``
   with the reasons. ``apply`` (default): promote → N rolled onto the stable group (the share stays
   0 %); hold → the canary group back on the version(s) it served before. With
   ``hold_for_approval`` a promote waits for a person instead (``awaiting_approval``: N stays on
   the canary group at 0 %) and ends through :func:`.progressive.conclude_held`.

Every number is kept in :class:`ShadowResult` (JSON-safe) for the caller to record.
No Airflow import.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np

from .endpoint import Endpoint
from .live_metrics import MetricsError
from .progressive import GrayThresholds, RouterRelease, compare
from .rollout import PROMOTED, ROLLED_BACK, Candidate
from .router import CANARY, STABLE, Router

log = logging.getLogger("tfmlops.rollout")

PROMOTE, HOLD = "promote", "hold"
SHADOW_ID_PREFIX = "tfmlops-shadow-"


@dataclass
class ShadowThresholds:
    min_agreement: float = 0.99  # top-1 agreement (classes) or values within value_tolerance (regression)
    # a regressed value agrees when |challenger − champion| <= value_tolerance · max(1, |champion|)
    value_tolerance: float = 0.01
    max_abs_diff: float | None = None  # largest |challenger − champion| output value; None: not judged
    max_error_rate_increase: float = 0.01  # challenger's error rate − champion's (replica metrics)
    max_p99_increase_ms: float = 25.0  # challenger's p99 − champion's (replica metrics)
    min_compared: int = 50  # fewer compared requests: no verdict → hold

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ShadowResult:
    model: str
    version: int
    decision: str  # promote | hold
    outcome: str  # promoted (N on both groups) | rolled_back (canary group back on the old version)
    reason: str = ""
    report: dict = field(default_factory=dict)
    seconds: float = 0.0
    canary_rollout: dict = field(default_factory=dict)
    stable_rollout: dict = field(default_factory=dict)
    held_share_pct: float | None = None  # awaiting approval (hold_for_approval): 0, the challenger on the canary group
    canary_old: list = field(default_factory=list)  # the canary group's versions before (what a rollback restores)

    @property
    def ok(self) -> bool:
        return self.decision == PROMOTE

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------- the sink's ring
def read_ring(sink_url: str, after: int, max_records: int = 500, timeout_s: float = 10.0) -> list[tuple[dict, bytes]]:
    """The sink's records after ``after``: ``[(meta, serialized PredictionLog)]``."""
    from .mirror_sink import unpack_frames

    url = f"{sink_url.rstrip('/')}/v1/mirror/records?after={int(after)}&max={int(max_records)}"
    with urllib.request.urlopen(url, timeout=timeout_s) as resp:
        body = resp.read(64 << 20)
    return [(json.loads(meta), data) for meta, data in unpack_frames(body, 2)]


def sink_last_seq(sink_url: str, timeout_s: float = 10.0) -> int:
    with urllib.request.urlopen(f"{sink_url.rstrip('/')}/v1/mirror/stats", timeout=timeout_s) as resp:
        return int(json.loads(resp.read(1 << 20))["last_seq"])


# ---------------------------------------------------------------------------- comparing answers
class Agreement:
    """Running comparison of challenger vs champion outputs (thread-safe)."""

    def __init__(self, value_tolerance: float = 0.01):
        self.value_tolerance = value_tolerance
        self.compared = self.rows = self.agree_rows = self.mismatched = 0
        self.max_abs_diff = 0.0
        self._sum_abs, self._n_values = 0.0, 0
        self._lock = threading.Lock()

    def add(self, champion: dict[str, np.ndarray], challenger: dict[str, np.ndarray]) -> None:
        rows = agree = n = 0
        max_diff, sum_abs, mismatched = 0.0, 0.0, False
        for name, a in champion.items():
            b = challenger.get(name)
            if b is None or np.shape(a) != np.shape(b):
                mismatched = True
                continue
            if a.dtype.kind not in "fiub" or b.dtype.kind not in "fiub":
                mismatched = mismatched or not np.array_equal(a, b)
                continue
            a64, b64 = a.astype(np.float64), b.astype(np.float64)
            diff = np.abs(a64 - b64)
            if diff.size:
                max_diff = max(max_diff, float(np.nanmax(diff)))
                sum_abs += float(np.nansum(diff))
                n += diff.size
            if a.ndim >= 2 and a.shape[-1] > 1:  # classes on the last axis: top-1 per row
                top_a = a64.reshape(-1, a.shape[-1]).argmax(axis=1)
                top_b = b64.reshape(-1, b.shape[-1]).argmax(axis=1)
                rows += len(top_a)
                agree += int(np.sum(top_a == top_b))
            elif a.dtype.kind == "f" and a.ndim <= 2 and (a.ndim < 2 or a.shape[-1] == 1):
                # one value per row (a regression's outputs [B] or [B, 1]): agreement within the tolerance
                within = diff.reshape(-1) <= self.value_tolerance * np.maximum(1.0, np.abs(a64.reshape(-1)))
                rows += within.size
                agree += int(np.sum(within))
        with self._lock:
            self.compared += 1
            self.mismatched += int(mismatched)
            if mismatched and rows == 0:  # nothing comparable: counts as one disagreeing row
                rows = 1
            self.rows += rows
            self.agree_rows += agree
            self.max_abs_diff = max(self.max_abs_diff, max_diff)
            self._sum_abs += sum_abs
            self._n_values += n

    def to_dict(self) -> dict:
        with self._lock:
            return {"compared": self.compared, "rows": self.rows, "agree_rows": self.agree_rows,
                    "agreement": self.agree_rows / self.rows if self.rows else None,
                    "max_abs_diff": self.max_abs_diff if self._n_values else None,
                    "mean_abs_diff": self._sum_abs / self._n_values if self._n_values else None,
                    "output_mismatches": self.mismatched}


def _outputs_of(response) -> dict[str, np.ndarray]:
    from tfmlops.serving.tensors import make_ndarray

    return {k: make_ndarray(v, k) for k, v in response.outputs.items()}


# ---------------------------------------------------------------------------- replaying
class Replayer:
    """A bounded pool replaying champion-answered requests to the challenger's replicas."""

    def __init__(self, endpoints: list[Endpoint], model: str, version: int, agreement: Agreement,
                 threads: int = 2, max_pending: int = 200, timeout_s: float = 10.0):
        self.endpoints, self.model, self.version, self.agreement = endpoints, model, version, agreement
        self.timeout_s = timeout_s
        self._queue: queue.Queue = queue.Queue(maxsize=max_pending)
        self._lock = threading.Lock()
        self.replayed = self.errors = self.skipped = 0
        self.latency_ms: list[float] = []
        self.error_samples: list[str] = []
        self._threads = [threading.Thread(target=self._run, args=(i,), name=f"shadow_replay_{i}", daemon=True)
                         for i in range(max(1, threads))]
        for t in self._threads:
            t.start()

    def submit(self, meta: dict, plog) -> None:
        try:
            self._queue.put_nowait((meta, plog))
        except queue.Full:
            with self._lock:
                self.skipped += 1

    def close(self) -> None:
        """Stop at the window's end: what still waits is not replayed (counted in ``skipped``),
        so a slow challenger cannot stretch the window by the backlog it made."""
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
            with self._lock:
                self.skipped += 1
        for _ in self._threads:
            self._queue.put((None, None))
        for t in self._threads:
            t.join(self.timeout_s + 5)

    def _run(self, worker: int) -> None:
        import requests

        session, channels = requests.Session(), {}
        turn = worker
        try:
            while True:
                meta, plog = self._queue.get()
                if plog is None:
                    return
                ep = self.endpoints[turn % len(self.endpoints)]
                turn += 1
                try:
                    t0 = time.perf_counter()
                    if meta.get("protocol") == "rest":
                        got = self._rest(session, ep, meta, plog)
                    else:
                        got = self._grpc(channels, ep, meta, plog)
                    dt = (time.perf_counter() - t0) * 1000
                except Exception as exc:  # noqa: BLE001 - a challenger failure is a measured error
                    with self._lock:
                        self.errors += 1
                        if len(self.error_samples) < 5:
                            self.error_samples.append(f"{type(exc).__name__}: {str(exc)[:200]}")
                    continue
                self.agreement.add(_outputs_of(plog.predict_log.response), got)
                with self._lock:
                    self.replayed += 1
                    if len(self.latency_ms) < 100_000:
                        self.latency_ms.append(dt)
        finally:
            session.close()
            for ch in channels.values():
                ch.close()

    def _request(self, plog):
        from tensorflow_serving.apis import predict_pb2

        req = predict_pb2.PredictRequest()
        req.CopyFrom(plog.predict_log.request)
        sig = req.model_spec.signature_name
        req.model_spec.Clear()
        req.model_spec.name, req.model_spec.version.value = self.model, self.version
        if sig:
            req.model_spec.signature_name = sig
        return req

    def _grpc(self, channels: dict, ep: Endpoint, meta: dict, plog) -> dict:
        import grpc
        from tensorflow_serving.apis import prediction_service_pb2_grpc

        key = (ep.host, ep.grpc_port)
        if key not in channels:
            channels[key] = grpc.insecure_channel(f"{ep.host}:{ep.grpc_port}")
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channels[key])
        resp = stub.Predict(self._request(plog), timeout=self.timeout_s,
                            metadata=(("x-request-id", SHADOW_ID_PREFIX + meta.get("request_id", "")[:100]),))
        return _outputs_of(resp)

    def _rest(self, session, ep: Endpoint, meta: dict, plog) -> dict:
        from tfmlops.serving import json_tensor as J
        from tfmlops.serving.tensors import make_ndarray

        req = plog.predict_log.request
        doc = {"inputs": {k: J.to_jsonable(make_ndarray(v, k), k) for k, v in req.inputs.items()}}
        if req.model_spec.signature_name:
            doc["signature_name"] = req.model_spec.signature_name
        r = session.post(f"http://{ep.host}:{ep.rest_port}/v1/models/{self.model}/versions/{self.version}:predict",
                         data=J.dumps(doc), timeout=self.timeout_s,
                         headers={"Content-Type": "application/json",
                                  "X-Request-Id": SHADOW_ID_PREFIX + meta.get("request_id", "")[:100]})
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}: {r.text[:200]}")
        outputs = r.json()["outputs"]
        champion = plog.predict_log.response.outputs
        if not isinstance(outputs, dict):  # one output: its name is the champion's
            if len(champion) != 1:
                raise RuntimeError(f"one unnamed output, the champion answered {sorted(champion)}")
            outputs = {next(iter(champion)): outputs}
        return {k: np.asarray(v, dtype=make_ndarray(champion[k], k).dtype if k in champion else None)
                for k, v in outputs.items()}


# ---------------------------------------------------------------------------- the release
def _quantiles(values: list[float]) -> dict:
    if not values:
        return {"n": 0, "p50_ms": None, "p99_ms": None}
    arr = np.asarray(values)
    return {"n": len(values), "p50_ms": round(float(np.percentile(arr, 50)), 3),
            "p99_ms": round(float(np.percentile(arr, 99)), 3)}


class ShadowRelease(RouterRelease):
    """A release through the router (canary rollout, the groups' metrics, restore) judged in one
    shadow window at share 0 % instead of shares of live traffic."""

    def __init__(self, candidate: Candidate, router: Router, groups: dict[str, list[Endpoint]], sink_url: str,
                 window_s: float = 60.0, thresholds: ShadowThresholds | None = None, poll_s: float = 0.25,
                 replay_threads: int = 2, max_pending: int = 200, replay_fraction: float = 1.0,
                 apply: bool = True, timeout_s: float = 120.0, s3_client=None,
                 on_event: Callable[[str], None] | None = None, hold_for_approval: bool = False):
        self.shadow = thresholds or ShadowThresholds()
        super().__init__(candidate, router, groups, window_s=window_s, poll_s=poll_s,
                         thresholds=GrayThresholds(max_error_rate_increase=self.shadow.max_error_rate_increase,
                                                   max_p99_increase_ms=self.shadow.max_p99_increase_ms,
                                                   min_requests=self.shadow.min_compared),
                         timeout_s=timeout_s, s3_client=s3_client, on_event=on_event,
                         hold_for_approval=hold_for_approval)
        if not 0 < replay_fraction <= 1:
            raise ValueError(f"replay_fraction must be in (0, 1], got {replay_fraction}")
        self.sink_url, self.replay_threads, self.max_pending = sink_url, replay_threads, max_pending
        self.replay_fraction, self.apply = replay_fraction, apply

    def _window(self) -> dict:
        from tensorflow_serving.apis import prediction_log_pb2

        agreement = Agreement(self.shadow.value_tolerance)
        replayer = Replayer(self.groups[CANARY], self.cand.model, self.cand.version, agreement,
                            threads=self.replay_threads, max_pending=self.max_pending)
        rng = np.random.default_rng()
        seq = sink_last_seq(self.sink_url)
        mirrored = eligible = missed = 0
        champion_latency: list[float] = []
        served_before = self.router.served()
        before = self._scrape()
        t0 = time.monotonic()
        try:
            while time.monotonic() - t0 < self.window_s:
                records = read_ring(self.sink_url, seq)
                if records:
                    first = records[0][0].get("first_seq", seq + 1)
                    missed += max(0, first - seq - 1) if first > seq + 1 else 0
                for meta, data in records:
                    seq = max(seq, int(meta["seq"]))
                    mirrored += 1
                    if meta.get("group") != STABLE or meta.get("kind") != "predict_log":
                        continue
                    plog = prediction_log_pb2.PredictionLog.FromString(data)
                    if plog.log_metadata.model_spec.name != self.cand.model:
                        continue
                    eligible += 1
                    if isinstance(meta.get("latency_ms"), (int, float)) and len(champion_latency) < 100_000:
                        champion_latency.append(float(meta["latency_ms"]))
                    if self.replay_fraction >= 1 or rng.random() < self.replay_fraction:
                        replayer.submit(meta, plog)
                time.sleep(self.poll_s)
        finally:
            replayer.close()
        try:
            groups = self._traffic(before, self._scrape())
            breaches = compare(groups[STABLE], groups[CANARY], self.thresholds)
        except MetricsError as exc:
            groups, breaches = {}, [f"metrics unreadable: {exc}"]
        served_after = self.router.served()
        agree = agreement.to_dict()
        return {"seconds": round(time.monotonic() - t0, 3), "mirrored": mirrored, "eligible": eligible,
                "missed_in_ring": missed, "replayed": replayer.replayed, "challenger_errors": replayer.errors,
                "skipped": replayer.skipped, "error_samples": replayer.error_samples,
                **agree,
                "latency": {"champion_at_router": _quantiles(champion_latency),
                            "challenger_at_shadow_client": _quantiles(replayer.latency_ms)},
                "metrics": groups, "metric_breaches": breaches,
                # responses the router took from each group during the window (the canary's must be 0)
                "router_served": {g: served_after[g] - served_before[g] for g in served_after}}

    def _decide(self, report: dict) -> list[str]:
        t, reasons = self.shadow, []
        if report["compared"] < t.min_compared:
            reasons.append(f"{report['compared']} requests compared (< {t.min_compared}): nothing to judge on")
        if report["agreement"] is not None and report["agreement"] < t.min_agreement:
            reasons.append(f"agreement {report['agreement']:.2%} with the champion (top-1 class, or value within "
                           f"{t.value_tolerance:g} relative) (at least {t.min_agreement:.2%})")
        if report["output_mismatches"]:
            reasons.append(f"{report['output_mismatches']} answers with other outputs/shapes than the champion's")
        diff = report["max_abs_diff"]
        if t.max_abs_diff is not None and diff is not None and diff > t.max_abs_diff:
            reasons.append(f"max |diff| {report['max_abs_diff']:.4g} (at most {t.max_abs_diff:g})")
        attempted = report["replayed"] + report["challenger_errors"]
        if attempted and report["challenger_errors"] / attempted > t.max_error_rate_increase:
            reasons.append(f"challenger failed {report['challenger_errors']} of {attempted} replays")
        reasons += [b for b in report["metric_breaches"] if not b.startswith("canary group got")]
        if report["router_served"].get(CANARY):
            reasons.append(f"the router sent {report['router_served'][CANARY]} client requests to the canary group")
        return reasons

    def run(self) -> ShadowResult:
        t0 = time.monotonic()
        model, n = self.cand.model, self.cand.version
        res = ShadowResult(model, n, HOLD, ROLLED_BACK)
        loaded, old = self._onto_canary(res)
        if not loaded:
            self._event(f"shadow release of {model} version {n}: {res.reason}")
            res.seconds = round(time.monotonic() - t0, 3)
            return res
        try:
            report = self._window()
        except Exception as exc:  # noqa: BLE001 - the sink unreachable etc.: hold, and say why
            report, reasons = {}, [f"shadow window failed: {type(exc).__name__}: {exc}"]
        else:
            reasons = self._decide(report)
        res.report = {**report, "thresholds": self.shadow.to_dict()}
        res.decision = HOLD if reasons else PROMOTE
        res.reason = "; ".join(reasons)
        self._event(f"shadow {model} v{n}: {res.decision}"
                    f" (compared {report.get('compared')}, agreement {report.get('agreement')}, "
                    f"max |diff| {report.get('max_abs_diff')}){': ' + res.reason if reasons else ''}")
        if not self.apply:
            res.outcome = ""
        elif res.decision == PROMOTE and self.hold_for_approval:
            self.hold(res, old)
        elif res.decision == PROMOTE:
            res.outcome = PROMOTED
            self.promote(res, old)
        else:
            self._restore_canary(old, res)
        res.seconds = round(time.monotonic() - t0, 3)
        return res


def shadow_release(candidate: Candidate, router: Router, groups: dict[str, list[Endpoint]], sink_url: str,
                   **kwargs) -> ShadowResult:
    """See the module docstring; never raises for a hold (the result says why)."""
    return ShadowRelease(candidate, router, groups, sink_url, **kwargs).run()


__all__ = ["PROMOTE", "HOLD", "ShadowThresholds", "ShadowResult", "ShadowRelease", "shadow_release", "Agreement",
           "read_ring"]
