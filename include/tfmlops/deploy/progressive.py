"""Gray (progressive) release on live traffic through the router (:mod:`.router`), decided from
the replicas' own metrics.

``gray_release`` of version N, with a ``stable`` replica group serving the old version and a
``canary`` group (both behind the router):

1. N is rolled onto the canary group with the router's canary share at 0 % (a ``replace``
   rollout: published, loaded, smoke parity over REST and gRPC; a failure there rolls the canary
   group back and ends the release — no client saw N);
2. for each step (default 5 → 25 → 50 → 100 %) the router sends that share of the live requests
   to the canary group, for ``window_s``; the two groups' traffic over the window comes from
   their replicas' TF Serving metrics (request count by status, latency histogram;
   :mod:`.live_metrics`) and is compared: the canary's error rate may exceed the stable's by at
   most ``max_error_rate_increase``, its p99 the stable's by at most ``max_p99_increase_ms``; a
   canary replica the router marks DOWN, or a canary group that got no request, is a breach too.
   The router and the replicas are polled every ``poll_s`` during a window, so a crash, or an
   error rate over its limit on ``min_requests`` canary requests, ends the step early. Then the
   two groups' predicted classes over the window (their logged predictions of users' requests,
   :mod:`.prediction_logs`) are compared: a canary that answers fast and without errors but with
   other classes than the stable group is a breach too. Where no request logs are configured, or
   too few predictions were logged, the step's ``predictions`` say ``not measured`` and why;
3. a breach → share back to 0 % at once, the canary group back to the old version, the reason;
4. every step passed → N is rolled onto the stable group (``replace``), then the share goes back
   to 0 % (both groups serve N; the canary group is ready for the next release).

With ``hold_for_approval`` the release stops before step 4: it runs the steps under 100 %, and
a candidate that passed them keeps the last one's share (``awaiting_approval``; the result
names the canary group's old versions) until :func:`conclude_held` promotes it (step 4, a
person approved) or rolls it back (share 0 %, canary group restored: rejected, timed out or
withdrawn). Nothing is ever half-promoted: the stable group serves the old version until the
promotion. The A/B test and the shadow release hold the same way where they would promote (at
share 0 %: the challenger stays loaded on the canary group), and end through the same function.

Every decision and number is kept in :class:`GrayResult` (``steps``: share, the two groups'
numbers, the verdict, time) for the caller to record (MLflow, task log).

:class:`RouterRelease` is what every release through the router does (the canary group's
rollout and restore, a watched window at a share, the groups' logged predictions); the gray
release is one, the A/B test (:mod:`.abtest`) and the shadow release (:mod:`.shadow`) the others.
"""

from __future__ import annotations

import logging
import time

import numpy as np
from dataclasses import asdict, dataclass, field
from typing import Callable

from .endpoint import Endpoint
from .live_metrics import MetricsError, Traffic, scrape, traffic_between
from .rollout import PROMOTED, ROLLED_BACK, Candidate, rollout
from .prediction_logs import (LoggedPrediction, class_counts, compare_distributions, compare_value_distributions,
                              log_files, logged_predictions, predicted_values)
from .router import CANARY, STABLE, Router

log = logging.getLogger("tfmlops.rollout")

DEFAULT_STEPS = (5.0, 25.0, 50.0, 100.0)
AWAITING_APPROVAL = "awaiting_approval"


@dataclass
class GrayThresholds:
    max_error_rate_increase: float = 0.01  # canary error rate − stable error rate
    max_p99_increase_ms: float = 25.0  # canary p99 − stable p99
    min_requests: int = 20  # fewer canary requests in a window: no verdict → breach (nothing learned)
    # predictions, canary vs stable: a breach needs both (see .prediction_logs)
    max_prediction_tvd: float = 0.1  # distance of the two class histograms (TVD), or of a regression's values (KS)
    prediction_alpha: float = 0.001  # chi-square (classes) or KS (values) test (a false breach: 1 in 1000 windows)
    min_predictions: int = 50  # logged rows per group and window; fewer: "not measured"

    def __post_init__(self):
        for name in ("max_error_rate_increase", "max_prediction_tvd", "prediction_alpha"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not self.max_p99_increase_ms >= 0:
            raise ValueError(f"max_p99_increase_ms must be >= 0, got {self.max_p99_increase_ms}")
        for name in ("min_requests", "min_predictions"):
            if not getattr(self, name) >= 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class GrayResult:
    model: str
    version: int
    outcome: str
    reason: str = ""
    steps: list = field(default_factory=list)
    seconds: float = 0.0
    canary_rollout: dict = field(default_factory=dict)
    stable_rollout: dict = field(default_factory=dict)
    held_share_pct: float | None = None  # awaiting approval: the share the candidate keeps meanwhile
    canary_old: list = field(default_factory=list)  # the canary group's versions before (what a rollback restores)

    @property
    def ok(self) -> bool:
        return self.outcome == PROMOTED

    def to_dict(self) -> dict:
        return asdict(self)


def _group_traffic(parts: list[Traffic]) -> dict:
    """A group's numbers (JSON-safe: None where there is nothing to measure)."""
    requests = sum(t.requests for t in parts)
    errors = sum(t.errors for t in parts)
    p99 = max((t.p99_ms for t in parts if t.requests > t.errors and t.p99_ms == t.p99_ms), default=None)
    return {"requests": requests, "errors": errors, "error_rate": errors / requests if requests else None,
            "p99_ms": p99}


def compare(stable: dict, canary: dict, thresholds: GrayThresholds) -> list[str]:
    """The breaches of the canary group's numbers against the stable group's (same window)."""
    breaches = []
    if canary["requests"] < thresholds.min_requests:
        return [f"canary group got {canary['requests']:.0f} requests in the window "
                f"(< {thresholds.min_requests}): nothing to judge on"]
    base_err = stable["error_rate"] or 0.0
    if canary["error_rate"] - base_err > thresholds.max_error_rate_increase:
        breaches.append(f"error rate {canary['error_rate']:.2%} vs stable {base_err:.2%} "
                        f"(allowed +{thresholds.max_error_rate_increase:.2%})")
    base_p99 = stable["p99_ms"] or 0.0
    if canary["p99_ms"] is not None and canary["p99_ms"] - base_p99 > thresholds.max_p99_increase_ms:
        breaches.append(f"p99 {canary['p99_ms']:.1f} ms vs stable {base_p99:.1f} ms "
                        f"(allowed +{thresholds.max_p99_increase_ms:.0f} ms)")
    return breaches


def default_log_prefixes(groups: dict[str, list[Endpoint]], model: str) -> dict[str, list[str]]:
    """Each group's request-log ``filename_prefix`` es, from its endpoints' ``request_log_prefix``
    (as :func:`.model_config.with_request_logging` sets them; the path as the server sees it)."""
    return {g: [f"{ep.request_log_prefix.rstrip('/')}/{model}/requests" for ep in eps if ep.request_log_prefix]
            for g, eps in groups.items()}


class RouterRelease:
    """A candidate on the router's canary replica group, judged on live traffic. ``log_prefixes``
    (``{group: [filename_prefix, ...]}`` as this process reads them; default: the endpoints'
    request logs; the router mirror's per-group logs: :func:`.mirror_sink.group_log_prefix`) hold
    each group's logged predictions; a prefix both groups log to is split by the version that
    answered (the candidate's: canary)."""

    def __init__(self, candidate: Candidate, router: Router, groups: dict[str, list[Endpoint]],
                 window_s: float = 30.0, thresholds: GrayThresholds | None = None, poll_s: float = 0.5,
                 timeout_s: float = 120.0, s3_client=None, on_event: Callable[[str], None] | None = None,
                 log_prefixes: dict[str, list[str]] | None = None, output: str | None = None,
                 hold_for_approval: bool = False):
        if not groups.get(STABLE) or not groups.get(CANARY):
            raise ValueError("a release through the router needs a stable and a canary replica group")
        if not window_s > 0 or not poll_s > 0:
            raise ValueError(f"window_s and poll_s must be > 0, got {window_s} and {poll_s}")
        self.cand, self.router, self.groups = candidate, router, groups
        self.window_s, self.poll_s = float(window_s), float(poll_s)
        self.thresholds = thresholds or GrayThresholds()
        self.timeout_s, self.s3_client, self.on_event = timeout_s, s3_client, on_event
        self.log_prefixes = default_log_prefixes(groups, candidate.model) if log_prefixes is None else log_prefixes
        self.output = output
        self.hold_for_approval = hold_for_approval
        self._canary_names = {r.name for r in router.replicas if r.group == CANARY}
        self._baseline: dict | None = None  # the stable group's numbers of the last window it had traffic
        self._baseline_classes: dict | None = None  # and its predicted classes
        self._baseline_values = None  # or values (a regression)

    def _event(self, msg: str) -> None:
        log.info(msg)
        if self.on_event is not None:
            self.on_event(msg)

    def _rollout(self, group: str, candidate: Candidate):
        # nothing is retired while the canary is judged: the stable version must stay loadable there
        keep = 2 if group == STABLE else 1_000_000
        return rollout(candidate, self.groups[group], "replace", keep=keep, timeout_s=self.timeout_s,
                       s3_client=self.s3_client, on_event=self.on_event)

    def _scrape(self) -> dict:
        return {ep.name: scrape(ep.metrics_url) for g in (STABLE, CANARY) for ep in self.groups[g]}

    def _traffic(self, before: dict, after: dict) -> dict[str, dict]:
        return {g: _group_traffic([traffic_between(before[ep.name], after[ep.name], self.cand.model, ep.name)
                                   for ep in self.groups[g]]) for g in (STABLE, CANARY)}

    def _judge(self, before: dict, after: dict) -> tuple[dict, list[str]]:
        groups = self._traffic(before, after)
        if groups[STABLE]["requests"] > 0:
            self._baseline = groups[STABLE]
        # at 100 % the stable group gets nothing: the canary is compared with its last numbers
        baseline = groups[STABLE] if groups[STABLE]["requests"] > 0 else (self._baseline or groups[STABLE])
        return groups, compare(baseline, groups[CANARY], self.thresholds)

    def _watch(self, share: float) -> dict:
        """One step: the share for ``window_s``. Ended early by a canary replica marked DOWN, or by
        an error rate already over its limit on at least ``min_requests`` canary requests (errors
        are unambiguous; latency is judged on the whole window only)."""
        self.router.set_share(share)
        t0, since = time.monotonic(), time.time()
        before = self._scrape()
        down: list[str] = []
        while time.monotonic() - t0 < self.window_s:
            time.sleep(min(self.poll_s, max(0.0, self.window_s - (time.monotonic() - t0))))
            down = [d for d in self.router.down() if d.split("/", 1)[1] in self._canary_names]
            if down:
                break
            try:
                groups, breaches = self._judge(before, self._scrape())
            except MetricsError:
                continue  # judged (and reported) at the end of the window
            if groups[CANARY]["requests"] >= self.thresholds.min_requests and any(
                    b.startswith("error rate") for b in breaches):
                break
        try:
            groups, breaches = self._judge(before, self._scrape())
        except MetricsError as exc:  # a canary replica that died cannot be scraped
            groups, breaches = {}, [f"metrics unreadable: {exc}"]
        if down:
            breaches.insert(0, f"canary replica(s) down: {', '.join(down)}")
        return {"share_pct": share, "seconds": round(time.monotonic() - t0, 3), "since": since, "until": time.time(),
                **groups, "breaches": breaches}

    def _logged(self, since: float, until: float) -> tuple[dict[str, list[LoggedPrediction]] | None, str]:
        """Each group's logged predictions of users' requests in ``[since, until]``, or None and why."""
        missing = [g for g in (STABLE, CANARY) if not self.log_prefixes.get(g)]
        if missing:
            return None, f"no request logs configured for the {' and '.join(missing)} group"
        remote = [p for g in (STABLE, CANARY) for p in self.log_prefixes[g] if str(p).startswith("s3://")]
        if remote:
            return None, f"request logs are read from local paths; s3:// is not supported: {remote[0]}"
        shared = set(self.log_prefixes[STABLE]) & set(self.log_prefixes[CANARY])
        read: dict[str, list[LoggedPrediction]] = {}
        out = {}
        try:
            for g in (STABLE, CANARY):
                for prefix in self.log_prefixes[g]:
                    if prefix not in read:
                        read[prefix] = logged_predictions(log_files(prefix, since), since, until, self.output,
                                                          model=self.cand.model)
                preds = [p for prefix in self.log_prefixes[g] for p in read[prefix]]
                if shared:  # one log for both groups: told apart by the version that answered
                    preds = [p for p in preds if (p.version == self.cand.version) == (g == CANARY)]
                out[g] = preds
        except Exception as exc:  # noqa: BLE001 - an unreadable log is reported, it never ends the release
            return None, f"request logs unreadable: {type(exc).__name__}: {exc}"
        return out, ""

    def _prediction_check(self, step: dict) -> dict:
        """The groups' predicted-class distributions over the step's window; at 100 % (no stable
        traffic) the canary's are compared with the stable group's of its last measured window."""
        t = self.thresholds
        logged, why = self._logged(step["since"], step["until"])
        if logged is None:
            return {"status": "not measured", "reason": why}
        values = {g: predicted_values(logged[g]) for g in (STABLE, CANARY)}
        if values[CANARY] is not None:  # a regression: its values' distributions, not classes
            if values[STABLE] is not None and len(values[STABLE]) >= t.min_predictions:
                self._baseline_values = values[STABLE]
            elif self._baseline_values is not None:
                values[STABLE] = self._baseline_values
            return compare_value_distributions(np.zeros(0) if values[STABLE] is None else values[STABLE],
                                               values[CANARY], t.max_prediction_tvd, t.prediction_alpha,
                                               t.min_predictions)
        stable, canary = class_counts(logged[STABLE]), class_counts(logged[CANARY])
        if sum(stable.values()) >= t.min_predictions:
            self._baseline_classes = stable
        elif self._baseline_classes is not None:
            stable = self._baseline_classes
        return compare_distributions(stable, canary, t.max_prediction_tvd, t.prediction_alpha, t.min_predictions)

    def _onto_canary(self, res) -> tuple[bool, list[int]]:
        """The candidate rolled onto the canary group at share 0 % (``res.canary_rollout``; on a
        failure ``res.reason`` says why): whether it loaded, and the version(s) the group served
        before (what :meth:`_restore_canary` puts back)."""
        self.router.set_share(0)
        canary = self._rollout(CANARY, self.cand)
        res.canary_rollout = canary.to_dict()
        if not canary.ok:
            res.reason = f"canary group: {canary.reason}"
        return canary.ok, sorted({v for vs in canary.old_versions.values() for v in vs})

    def _restore_canary(self, old: list[int], res) -> None:
        """The canary group back to the version(s) it served before (config only: still published).
        It takes no traffic meanwhile (share 0 %); a replica that cannot be restored (crashed) is
        named in the result's reason — its config file already says ``old`` for its restart."""
        for ep in self.groups[CANARY]:
            try:
                self._restore(ep, old)
            except Exception as exc:  # noqa: BLE001 - a dead replica must not hide the rollback's outcome
                res.reason += f"; {ep.name} not restored yet: {exc}"
                self._event(f"{ep.name}: not restored to {old}: {exc}")

    def _restore(self, ep: Endpoint, old: list[int]) -> None:
        from .model_config import apply_config, find_entry, read_config, with_versions
        from .status import wait_available, wait_unloaded

        if not old:
            return
        model, n = self.cand.model, self.cand.version
        cfg = read_config(ep)
        entry = find_entry(cfg, model)
        labels = {k: v for k, v in entry.version_labels.items() if v in old} if entry is not None else {}
        try:
            apply_config(ep, with_versions(cfg, model, ep.base_path(model), set(old) | {n}, labels))
            for v in old:
                wait_available(ep.client, model, v, self.timeout_s, f"{ep.name}: restore version {v}")
        finally:  # reachable or not, the replica's config says ``old`` (what a restart serves)
            final = with_versions(read_config(ep), model, ep.base_path(model), old, labels)
            if ep.model_config_file:
                from tfmlops.serving.config import write_config

                write_config(ep.model_config_file, final)
        apply_config(ep, final)
        wait_unloaded(ep.client, model, [n], self.timeout_s)
        self._event(f"{ep.name}: canary group back on {old}")

    def promote(self, res, old: list[int]) -> None:
        """The candidate onto the stable group, share back to 0 % (a failure: rolled back); ``res``:
        the release's result (``outcome``, ``reason``, ``stable_rollout``)."""
        stable = self._rollout(STABLE, self.cand)
        res.stable_rollout = stable.to_dict()
        self.router.set_share(0)
        if not stable.ok:
            res.outcome, res.reason = ROLLED_BACK, f"stable group: {stable.reason}"
            self._restore_canary(old, res)

    def rollback(self, res, old: list[int], reason: str) -> None:
        """Share 0 % at once, then the canary group back to ``old``."""
        self.router.set_share(0)
        res.outcome, res.reason = ROLLED_BACK, reason
        self._event(f"release of {self.cand.model} version {self.cand.version} rolled back ({reason}); share 0 %")
        self._restore_canary(old, res)

    def hold(self, res, old: list[int]) -> None:
        """A candidate that would be promoted waits for a person: it keeps the canary group and the
        router's share now (``awaiting_approval``; ``canary_old``: what a rollback restores)."""
        res.outcome, res.held_share_pct, res.canary_old = AWAITING_APPROVAL, self.router.share_pct, list(old)
        self._event(f"{self.cand.model} version {self.cand.version} holds {res.held_share_pct:g} % of the traffic "
                    "awaiting approval")


class GrayRelease(RouterRelease):
    def __init__(self, candidate: Candidate, router: Router, groups: dict[str, list[Endpoint]],
                 steps=DEFAULT_STEPS, hold_for_approval: bool = False, **kwargs):
        steps = [float(s) for s in steps]
        if not steps or any(not 0 < s <= 100 for s in steps) or steps != sorted(steps) or steps[-1] != 100:
            raise ValueError(f"gray steps must be increasing shares in (0, 100] ending at 100, got {steps}")
        if hold_for_approval and len(steps) < 2:
            raise ValueError("a gray release awaiting approval holds the candidate at a step under 100 %: "
                             f"give one before 100, got {steps}")
        super().__init__(candidate, router, groups, hold_for_approval=hold_for_approval, **kwargs)
        self.steps = steps[:-1] if hold_for_approval else steps

    def run(self) -> GrayResult:
        t0 = time.monotonic()
        model, n = self.cand.model, self.cand.version
        res = GrayResult(model, n, PROMOTED)
        loaded, old = self._onto_canary(res)
        if not loaded:
            res.outcome = ROLLED_BACK
            self._event(f"gray release of {model} version {n}: {res.reason}")
            res.seconds = round(time.monotonic() - t0, 3)
            return res
        for share in self.steps:
            step = self._watch(share)
            step["predictions"] = self._prediction_check(step)
            if step["predictions"]["status"] == "breach":
                step["breaches"].append(step["predictions"]["reason"])
            res.steps.append(step)
            self._event(f"gray {model} v{n} at {share:g} %: {step.get(CANARY)} vs stable {step.get(STABLE)}; "
                        f"predictions {step['predictions']['status']} (TVD {step['predictions'].get('tvd')})"
                        f"{' BREACH ' + '; '.join(step['breaches']) if step['breaches'] else ''}")
            if step["breaches"]:
                self.rollback(res, old, f"at {share:g} %: " + "; ".join(step["breaches"]))
                break
        else:
            if self.hold_for_approval:
                self.hold(res, old)
            else:
                self.promote(res, old)
        res.seconds = round(time.monotonic() - t0, 3)
        return res


def gray_release(candidate: Candidate, router: Router, groups: dict[str, list[Endpoint]], **kwargs) -> GrayResult:
    """See the module docstring; never raises for a breach (the result says ``rolled_back``)."""
    return GrayRelease(candidate, router, groups, **kwargs).run()


def conclude_held(candidate: Candidate, router: Router, groups: dict[str, list[Endpoint]], approved: bool,
                  canary_old: list[int], reason: str = "", **kwargs) -> GrayResult:
    """The end of a release that awaited approval (``hold_for_approval`` of a gray release, an A/B
    test or a shadow release): ``approved`` → the candidate onto the stable group and share 0 %
    (``promoted``); otherwise share 0 % and the canary group back to ``canary_old``
    (``rolled_back`` with ``reason``). ``kwargs``: as :class:`RouterRelease` (timeout, S3 client,
    events)."""
    t0 = time.monotonic()
    release = RouterRelease(candidate, router, groups, **kwargs)
    res = GrayResult(candidate.model, candidate.version, PROMOTED)
    if approved:
        release.promote(res, list(canary_old))
    else:
        release.rollback(res, list(canary_old), reason)
    res.seconds = round(time.monotonic() - t0, 3)
    return res
