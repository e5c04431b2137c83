"""A/B test of a challenger version against the champion on live traffic through the router
(:mod:`.router`): a fixed split held for one window, decided on labeled feedback.

``ab_test`` of version N (the challenger), with the ``stable`` replica group serving the champion
and the ``canary`` group (both behind the router):

1. N is rolled onto the canary group at 0 % (as a gray release does; a failure there ends the
   test: ``keep``);
2. the router sends ``share_pct`` % of the live requests to the canary group for ``window_s``
   (:meth:`.progressive.RouterRelease._watch`: requests, errors and p99 per variant from the
   replicas' TF Serving metrics, a canary replica marked DOWN or an error rate over its limit
   ends the window early), then the share goes back to 0 %;
3. each variant's logged predictions of the window (users' requests, :mod:`.prediction_logs`)
   are joined with the labels that came back for their request ids (JSON-lines files in
   :func:`tfmlops.feedback.read_labels`' format; waited for up to ``labels_wait_s``) →
   accuracy per variant, and a two-sided two-proportion z-test of the difference (a regression —
   one logged value per row, numeric labels —: squared errors per variant and Welch's two-sided
   t-test of their means, lower is better);
4. the decision: ``keep`` when the challenger breached the error-rate / p99 limits of
   :class:`.progressive.GrayThresholds` (or did not load) or the champion is significantly
   better; ``promote`` when the challenger is significantly better (``p < alpha``, at least
   ``min_samples`` labeled rows per variant); else ``inconclusive``. Only ``promote`` rolls N onto
   the stable group; otherwise the canary group goes back to the champion's version (the gray
   release's restore) — the champion stays. With ``hold_for_approval`` a ``promote`` waits for a
   person instead (``awaiting_approval``, share 0 %, N kept on the canary group) and ends through
   :func:`.progressive.conclude_held`.

Every number is in :class:`ABResult` (``variants``, ``test``, ``window``) for the caller to record.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .endpoint import Endpoint
from .prediction_logs import LoggedPrediction
from .progressive import RouterRelease
from .rollout import PROMOTED, ROLLED_BACK, Candidate
from .router import CANARY, STABLE, Router

PROMOTE, KEEP, INCONCLUSIVE = "promote", "keep", "inconclusive"


@dataclass
class ABSettings:
    share_pct: float = 50.0  # of the live requests to the challenger (canary group)
    alpha: float = 0.05  # significance level of the two-sided test
    min_samples: int = 200  # labeled rows per variant, fewer: inconclusive
    labels_wait_s: float = 0.0  # after the window, how long labels may take to come back

    def __post_init__(self):
        if not 0 < self.share_pct < 100:
            raise ValueError(f"A/B share_pct must be in (0, 100) % (both variants need traffic), got {self.share_pct}")
        if not 0 < self.alpha < 1:
            raise ValueError(f"A/B alpha must be in (0, 1), got {self.alpha}")
        if not self.min_samples >= 1:
            raise ValueError(f"A/B min_samples must be >= 1, got {self.min_samples}")
        if not self.labels_wait_s >= 0:
            raise ValueError(f"A/B labels_wait_s must be >= 0, got {self.labels_wait_s}")


@dataclass
class ABResult:
    model: str
    version: int
    outcome: str  # promoted (the challenger serves everywhere) or rolled_back (the champion does)
    decision: str  # promote, keep or inconclusive
    reason: str = ""
    challenger_failed: bool = False  # it did not load, or breached the error-rate / p99 / health limits
    champion_versions: list = field(default_factory=list)
    window: dict = field(default_factory=dict)
    variants: dict = field(default_factory=dict)
    test: dict = field(default_factory=dict)
    seconds: float = 0.0
    canary_rollout: dict = field(default_factory=dict)
    stable_rollout: dict = field(default_factory=dict)
    held_share_pct: float | None = None  # awaiting approval (hold_for_approval): 0, the challenger on the canary group
    canary_old: list = field(default_factory=list)  # the canary group's versions before (what a rollback restores)

    def to_dict(self) -> dict:
        return asdict(self)


def two_proportion_z_test(correct_a: int, n_a: int, correct_b: int, n_b: int) -> tuple[float, float]:
    """``(z, two-sided p)`` of accuracy b − accuracy a with the pooled standard error; equal
    proportions with no variance (all right or all wrong on both sides) give ``(0, 1)``."""
    from scipy.stats import norm

    if n_a < 1 or n_b < 1:
        raise ValueError(f"both samples need at least one row, got {n_a} and {n_b}")
    pooled = (correct_a + correct_b) / (n_a + n_b)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    if se == 0:
        return 0.0, 1.0
    z = (correct_b / n_b - correct_a / n_a) / se
    return z, float(2 * norm.sf(abs(z)))


def label_files(sources: str | list[str]) -> list[str]:
    """The ``*.jsonl`` label files of files and folders (folders recursively: ``labels/`` and the
    feedback join's ``joined/`` alike); local paths only."""
    sources = [sources] if isinstance(sources, str) else list(sources)
    if not sources:
        raise ValueError("an A/B test needs labels: give label files or folders of *.jsonl files")
    files = []
    for src in sources:
        if str(src).startswith("s3://"):
            raise ValueError(f"A/B labels are read from local files and folders; s3:// is not supported: {src}")
        if os.path.isdir(src):
            files += sorted(str(p) for p in Path(src).rglob("*.jsonl"))
        elif os.path.isfile(src):
            files.append(str(src))
    return files


def read_label_files(sources: str | list[str], numeric: bool = False) -> tuple[dict[str, list], list[str]]:
    from tfmlops.feedback import read_labels

    labels, problems, files = {}, [], label_files(sources)
    if not files:
        problems.append(f"no *.jsonl label files in {sources}")
    for path in files:
        got, bad = read_labels(path, numeric=numeric)
        labels.update(got)
        problems += bad
    return labels, problems


def welch_t_test(a: list[float], b: list[float]) -> tuple[float, float]:
    """Welch's two-sided t-test of the means of ``b`` and ``a`` (unequal variances): (t, p)."""
    from scipy.stats import ttest_ind

    if len(a) < 2 or len(b) < 2:
        return 0.0, 1.0
    test = ttest_ind(b, a, equal_var=False)
    t, p = float(test.statistic), float(test.pvalue)
    return (0.0, 1.0) if math.isnan(t) else (t, p)


def labeled_errors(predictions: list[LoggedPrediction], labels: dict[str, list]) -> dict:
    """A regression's squared errors on the labeled rows of ``predictions`` (one label per row)."""
    errors, requests, refused = [], 0, 0
    for p in predictions:
        truth = labels.get(p.request_id)
        if truth is None:
            continue
        if p.values is None or len(truth) != len(p.values):
            refused += 1
            continue
        requests += 1
        errors += [float(v - t) ** 2 for v, t in zip(p.values, truth)]
    mse = sum(errors) / len(errors) if errors else None
    return {"logged_requests": len(predictions), "labeled_requests": requests, "labeled_rows": len(errors),
            "mse": mse, "rmse": math.sqrt(mse) if mse is not None else None, "refused_labels": refused,
            "squared_errors": errors}


def labeled_accuracy(predictions: list[LoggedPrediction], labels: dict[str, list[int]]) -> dict:
    """Accuracy of the labeled rows of ``predictions`` (a label list must have one label per row)."""
    rows = correct = requests = refused = 0
    for p in predictions:
        truth = labels.get(p.request_id)
        if truth is None:
            continue
        if len(truth) != len(p.classes):
            refused += 1
            continue
        requests += 1
        rows += len(truth)
        correct += int(sum(int(c) == int(t) for c, t in zip(p.classes, truth)))
    return {"logged_requests": len(predictions), "labeled_requests": requests, "labeled_rows": rows,
            "correct": correct, "accuracy": correct / rows if rows else None, "refused_labels": refused}


class ABTest(RouterRelease):
    def __init__(self, candidate: Candidate, router: Router, groups: dict[str, list[Endpoint]],
                 labels: str | list[str], settings: ABSettings | None = None, **kwargs):
        label_files(labels)  # bad sources fail before anything changes
        super().__init__(candidate, router, groups, **kwargs)
        missing = [g for g in (STABLE, CANARY) if not self.log_prefixes.get(g)]
        if missing:
            raise ValueError(f"an A/B test joins labels with logged predictions, and the {' and '.join(missing)} "
                             "group logs none: give its endpoints a request_log_prefix, or log_prefixes")
        self.labels, self.settings = labels, settings or ABSettings()

    def _variants(self, step: dict) -> tuple[dict | None, list[str]]:
        """Per-variant accuracy, waiting up to ``labels_wait_s`` for ``min_samples`` labeled rows
        each; None and why when the logs cannot be read."""
        deadline = time.monotonic() + self.settings.labels_wait_s
        while True:
            logged, why = self._logged(step["since"], step["until"])
            if logged is None:
                return None, [why]
            regression = any(p.values is not None for g in (STABLE, CANARY) for p in logged[g])
            labels, problems = read_label_files(self.labels, numeric=regression)
            score = labeled_errors if regression else labeled_accuracy
            acc = {g: score(logged[g], labels) for g in (STABLE, CANARY)}
            enough = min(a["labeled_rows"] for a in acc.values()) >= self.settings.min_samples
            if enough or time.monotonic() >= deadline:
                return acc, problems
            time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))

    def _decide(self, step: dict, acc: dict | None, problems: list[str]) -> tuple[str, str, dict]:
        s = self.settings
        test = {"method": "two-proportion z-test, two-sided, pooled", "alpha": s.alpha,
                "min_samples": s.min_samples, "z": None, "p_value": None, "difference": None}
        requests = step.get(CANARY, {}).get("requests")
        # too few challenger requests is the one breach that says nothing against the challenger
        starved = requests is not None and requests < self.thresholds.min_requests and len(step["breaches"]) == 1
        if step["breaches"]:
            return (INCONCLUSIVE if starved else KEEP), "challenger: " + "; ".join(step["breaches"]), test
        if acc is None:
            return INCONCLUSIVE, f"no logged predictions to join labels with: {problems[0]}", test
        champ, chall = acc[STABLE], acc[CANARY]
        if min(champ["labeled_rows"], chall["labeled_rows"]) < s.min_samples:
            why = f"; {len(problems)} label problem(s), first: {problems[0]}" if problems else ""
            return INCONCLUSIVE, (f"{champ['labeled_rows']} champion and {chall['labeled_rows']} challenger labeled "
                                  f"rows (each needs >= {s.min_samples}){why}"), test
        if "mse" in chall:  # a regression: squared errors, Welch's t-test; lower is better
            t, p = welch_t_test(champ.pop("squared_errors"), chall.pop("squared_errors"))
            z = -t  # the challenger wins when its mean squared error is the lower
            test.update(method="Welch's t-test of the squared errors, two-sided", t=t, p_value=p,
                        difference=chall["mse"] - champ["mse"])
            numbers = (f"challenger RMSE {chall['rmse']:.4g} ({chall['labeled_rows']} rows) vs champion "
                       f"{champ['rmse']:.4g} ({champ['labeled_rows']} rows), p={p:.3g}")
        else:
            z, p = two_proportion_z_test(champ["correct"], champ["labeled_rows"], chall["correct"],
                                         chall["labeled_rows"])
            test.update(z=z, p_value=p, difference=chall["accuracy"] - champ["accuracy"])
            numbers = (f"challenger accuracy {chall['accuracy']:.4f} ({chall['labeled_rows']} rows) vs champion "
                       f"{champ['accuracy']:.4f} ({champ['labeled_rows']} rows), p={p:.3g}")
        if p >= s.alpha:
            return INCONCLUSIVE, f"no significant difference: {numbers} >= alpha {s.alpha:g}", test
        if z > 0:
            return PROMOTE, f"challenger significantly better: {numbers} < alpha {s.alpha:g}", test
        return KEEP, f"champion significantly better: {numbers} < alpha {s.alpha:g}", test

    def run(self) -> ABResult:
        t0 = time.monotonic()
        model, n = self.cand.model, self.cand.version
        res = ABResult(model, n, ROLLED_BACK, KEEP)
        loaded, old = self._onto_canary(res)
        res.champion_versions = old
        if not loaded:
            res.challenger_failed = True
            res.seconds = round(time.monotonic() - t0, 3)
            return res
        try:
            step = self._watch(self.settings.share_pct)
        finally:
            self.router.set_share(0)
        step["predictions"] = self._prediction_check(step)  # reported: a better model may predict otherwise
        acc, problems = self._variants(step)
        res.decision, res.reason, res.test = self._decide(step, acc, problems)
        res.challenger_failed = res.decision == KEEP and bool(step["breaches"])
        res.window = {k: step[k] for k in ("share_pct", "seconds", "since", "until", "breaches", "predictions")}
        res.window["label_problems"] = problems[:20]
        acc = acc or {STABLE: {}, CANARY: {}}
        res.variants = {"champion": {"group": STABLE, "versions": old, **step.get(STABLE, {}), **acc[STABLE]},
                        "challenger": {"group": CANARY, "versions": [n], **step.get(CANARY, {}), **acc[CANARY]}}
        self._event(f"A/B {model} v{n} vs {old} at {self.settings.share_pct:g} %: {res.decision} ({res.reason})")
        if res.decision == PROMOTE and self.hold_for_approval:
            self.hold(res, old)
            res.seconds = round(time.monotonic() - t0, 3)
            return res
        if res.decision == PROMOTE:
            stable = self._rollout(STABLE, self.cand)
            res.stable_rollout = stable.to_dict()
            if stable.ok:
                res.outcome = PROMOTED
            else:
                res.decision, res.challenger_failed = KEEP, True
                res.reason = f"{res.reason}; but the stable group: {stable.reason}"
        if res.outcome != PROMOTED:
            self._restore_canary(old, res)
        res.seconds = round(time.monotonic() - t0, 3)
        return res


def ab_test(candidate: Candidate, router: Router, groups: dict[str, list[Endpoint]], labels: str | list[str],
            settings: ABSettings | None = None, **kwargs) -> ABResult:
    """See the module docstring; never raises for a lost or undecided test (``decision`` says)."""
    return ABTest(candidate, router, groups, labels, settings, **kwargs).run()
