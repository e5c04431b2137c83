"""Steps of ``tf_serving_rollout`` (and the rollout task of the retraining DAGs): a registered MLflow
version published to, and rolled out over, TF Serving endpoints with :mod:`tfmlops.deploy`, and
the outcome recorded in MLflow (aliases, ``serving.*`` tags). The only place where deployment
meets the registry.
"""

from __future__ import annotations

import io
import json
import tempfile
from pathlib import Path

import numpy as np

from tfmlops import registry
from tfmlops.deploy.abtest import ABSettings
from tfmlops.deploy.checks import CanaryChecks
from tfmlops.deploy.endpoint import Endpoint
from tfmlops.deploy.progressive import AWAITING_APPROVAL, GrayThresholds
from tfmlops.deploy.rollout import PROMOTED, Candidate, Rollout, RolloutBusy
from tfmlops.deploy.shadow import ShadowThresholds
from tfmlops.steps.retrain import download_serving_artifact, resolve

__all__ = ["ABSettings", "AWAITING_APPROVAL", "CanaryChecks", "Endpoint", "GrayThresholds", "PROMOTED", "RolloutBusy",
           "ShadowThresholds", "ab_test_registered", "approval_request", "champion_version", "conclude_registered",
           "decision_reason", "fleet_endpoints", "gray_release_registered", "load_canary_holdout",
           "publish_registered", "record_decision", "rollout_registered", "shadow_release_registered"]


def load_canary_holdout(uri: str, s3_client=None) -> tuple[np.ndarray | dict[str, np.ndarray], np.ndarray]:
    """The canary check's labelled holdout: an ``.npz``, local or ``s3://``, with ``x``/``y`` (or
    ``x_test``/``y_test``: the rows of a one-input model) or ``y`` and one array per input name
    (any model; string inputs as unicode arrays). No pickled arrays are read."""
    from tfmlops.storage import read_bytes

    with np.load(io.BytesIO(read_bytes(uri, s3_client=s3_client)), allow_pickle=False) as npz:
        if "x" in npz or "x_test" in npz:
            x = np.asarray(npz["x"] if "x" in npz else npz["x_test"], np.float32)
        else:
            x = {k: npz[k].astype(object) if npz[k].dtype.kind == "U" else npz[k] for k in npz.files if k != "y"}
        y = npz["y"] if "y" in npz else npz["y_test"]
    return x, np.asarray(y)


def fleet_endpoints(fleet: str) -> list[Endpoint]:
    """The endpoints of the running replicas of a docker SDK fleet (``docker:<fleet>`` targets)."""
    from tfmlops.deploy.fleet import DockerFleet

    return DockerFleet.from_env(fleet).endpoints()


def fetch_candidate(tracking_uri: str, model_name: str, version_or_alias, dst: str | Path) -> Candidate:
    """Resolve a registered version (number or alias) and download its serving artifact."""
    model = resolve(tracking_uri, model_name, version_or_alias)
    saved_model, smoke = download_serving_artifact(tracking_uri, model["serving_artifact_uri"], Path(dst))
    return Candidate(model_name, model["version"], str(saved_model), smoke)


def publish_registered(tracking_uri: str, model_name: str, version_or_alias, endpoints: list[Endpoint],
                       s3_client=None, on_event=None) -> dict:
    """Pin every endpoint to what it serves, then publish the version into every models root (see
    :meth:`tfmlops.deploy.rollout.Rollout.pin_and_publish`). Returns ``{published path: content hash}``
    with the model and version."""
    with tempfile.TemporaryDirectory() as tmp:
        cand = fetch_candidate(tracking_uri, model_name, version_or_alias, tmp)
        published = Rollout(cand, endpoints, s3_client=s3_client, on_event=on_event).pin_and_publish()
    return {"model_name": model_name, "version": cand.version, "published": published}


def fetch_challenger(tracking_uri: str, model_name: str, version_or_alias, dst: str | Path) -> Candidate:
    """:func:`fetch_candidate`, and the ``challenger`` alias on it unless it is the champion."""
    cand = fetch_candidate(tracking_uri, model_name, version_or_alias, dst)
    champion = registry.alias_version(tracking_uri, model_name, registry.CHAMPION)
    if champion is None or int(champion.version) != cand.version:
        registry.set_alias(tracking_uri, model_name, registry.CHALLENGER, cand.version)
    return cand


def _router_result(res: dict, strategy: str, groups: dict) -> dict:
    """A release through the router as :func:`registry.record_rollout` takes it."""
    names = [ep.name for g in ("stable", "canary") for ep in groups[g]]
    promoted = res["outcome"] == PROMOTED
    return {**res, "strategy": strategy, "endpoints": names if promoted else [],
            "rolled_back": [] if promoted else names}


def _recorded(tracking_uri: str, model_name: str, version: int, res: dict, result: dict, audit: dict | None) -> dict:
    """A router release's end in MLflow: held for approval → the version's ``serving.*`` tags say
    so (nothing recorded as served, no alias moves); otherwise :func:`registry.record_rollout`."""
    if res["outcome"] == AWAITING_APPROVAL:
        registry.set_version_tags(tracking_uri, model_name, version, {
            "serving.outcome": AWAITING_APPROVAL, "serving.strategy": result["strategy"],
            "serving.reason": f"holds {res['held_share_pct']:g} % of the traffic awaiting approval"})
        return {**result, "endpoints": [], "rolled_back": []}
    result["aliases"] = registry.record_rollout(tracking_uri, model_name, version, result, audit)
    return result


def _metrics(prefix: str, numbers: dict, keys) -> dict:
    """``{prefix.key: float}`` of the keys that have a number (None / NaN: nothing measured)."""
    return {f"{prefix}.{k}": float(numbers[k]) for k in keys
            if isinstance(numbers.get(k), (int, float)) and numbers[k] == numbers[k]}


def _log_report(tracking_uri: str, run_id: str, tmp: str, strategy: str, version: int, res: dict, metrics: dict,
                **dump) -> None:
    """``metrics`` and the whole result (``serving/<strategy>_v<N>.json``) on the version's run."""
    registry.log_metrics(tracking_uri, run_id, metrics)
    folder = Path(tmp) / f"{strategy}_report"
    folder.mkdir()
    (folder / f"{strategy}_v{version}.json").write_text(json.dumps(res, indent=1, **dump))
    registry.log_files(tracking_uri, run_id, folder, "serving")


def rollout_registered(tracking_uri: str, model_name: str, version_or_alias, endpoints: list[Endpoint],
                       strategy: str = "replace", checks: CanaryChecks | None = None, keep: int = 2,
                       timeout_s: float = 120.0, s3_client=None, on_event=None, audit: dict | None = None) -> dict:
    """Roll a registered MLflow version out and record the outcome in MLflow (tags, aliases, the
    model's audit trail with ``audit``'s reason and run: :func:`registry.record_rollout`).
    Returns the RolloutResult as a dict with ``aliases``; does not raise on a rollback (raises
    :class:`RolloutBusy`, recording nothing, when another rollout keeps an endpoint locked)."""
    with tempfile.TemporaryDirectory() as tmp:
        cand = fetch_challenger(tracking_uri, model_name, version_or_alias, tmp)
        result = Rollout(cand, endpoints, strategy, checks, keep, timeout_s, s3_client, on_event).run().to_dict()
    result["aliases"] = registry.record_rollout(tracking_uri, model_name, cand.version, result, audit)
    return result


def _gray_chart(result: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = result["steps"]
    ends = np.cumsum([s["seconds"] for s in steps])  # each window's numbers are plotted at its end
    fig, (a1, a2, a3) = plt.subplots(3, 1, figsize=(7, 7), sharex=True)
    shares = [s["share_pct"] for s in steps]
    a1.step(np.concatenate([[0.0], ends]), [*shares, shares[-1]], where="post")
    a1.set_ylabel("canary share (%)")
    a1.set_ylim(0, 105)

    def value(step: dict, group: str, key: str, scale: float = 1.0) -> float:
        v = step.get(group, {}).get(key)
        return float("nan") if v is None else v * scale  # no traffic in that window: no point

    for group in ("stable", "canary"):
        a2.plot(ends, [value(s, group, "error_rate", 100) for s in steps], marker="o", label=group)
        a3.plot(ends, [value(s, group, "p99_ms") for s in steps], marker="o", label=group)
    a2.set_ylabel("error rate (%)")
    a3.set_ylabel("p99 (ms)")
    a3.set_xlabel("seconds since the first step (points: end of each watch window)")
    a2.legend()
    fig.suptitle(f"gray release of version {result['version']}: {result['outcome']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def gray_release_registered(tracking_uri: str, model_name: str, version_or_alias, router, groups: dict,
                            steps=(5, 25, 50, 100), window_s: float = 60.0, thresholds: GrayThresholds | None = None,
                            timeout_s: float = 180.0, s3_client=None, on_event=None,
                            log_prefixes: dict | None = None, audit: dict | None = None,
                            hold_for_approval: bool = False) -> dict:
    """Gray release of a registered version through the router (:mod:`tfmlops.deploy.progressive`),
    recorded in MLflow: aliases and ``serving.*`` tags as any rollout, each step's share and the two
    groups' numbers as ``gray.*`` metrics of the version's run and a chart of share vs error rate
    and p99 (``serving/gray_v<N>.png``). ``log_prefixes``: the groups' request logs (default: the
    endpoints' own; the router mirror's per group). With ``hold_for_approval`` a candidate that
    passed the steps under 100 % holds the last one's share (``awaiting_approval``: nothing is
    recorded as served, no alias moves) until :func:`conclude_registered`."""
    from tfmlops.deploy.progressive import gray_release

    with tempfile.TemporaryDirectory() as tmp:
        cand = fetch_challenger(tracking_uri, model_name, version_or_alias, tmp)
        res = gray_release(cand, router, groups, steps=steps, window_s=window_s, thresholds=thresholds,
                           timeout_s=timeout_s, s3_client=s3_client, on_event=on_event,
                           log_prefixes=log_prefixes, hold_for_approval=hold_for_approval).to_dict()
        result = _router_result(res, "gray", groups)
        run_id = registry.get_version(tracking_uri, model_name, cand.version).run_id
        for i, step in enumerate(res["steps"]):
            metrics = {"gray.share_pct": step["share_pct"], "gray.breaches": len(step["breaches"]),
                       **_metrics("gray.prediction", step.get("predictions", {}), ("tvd", "psi", "p_value"))}
            for group in ("stable", "canary"):
                metrics.update(_metrics(f"gray.{group}", step.get(group, {}), ("requests", "error_rate", "p99_ms")))
            registry.log_metrics(tracking_uri, run_id, metrics, step=i)
        if res["steps"]:
            charts = Path(tmp) / "gray_charts"
            charts.mkdir()
            _gray_chart(res, charts / f"gray_v{cand.version}.png")
            registry.log_files(tracking_uri, run_id, charts, "serving")
    return _recorded(tracking_uri, model_name, cand.version, res, result, audit)


def conclude_registered(tracking_uri: str, model_name: str, version: int, router, groups: dict,
                        decision: dict, canary_old: list[int], strategy: str = "gray", timeout_s: float = 180.0,
                        s3_client=None, on_event=None, audit: dict | None = None) -> dict:
    """The end of a router release (``strategy``: gray, ab, shadow) that awaited approval:
    ``decision`` (``approved``: bool, ``decision``: approved / rejected / timed out / withdrawn,
    ``by``, ``note``, ``at``) is kept on the version (tag ``serving.approval``; the reviewer's
    note), then the candidate is promoted (approved) or rolled back — the reason names the
    decision, who took it and the note (:func:`decision_reason`) — and recorded as any rollout
    (:func:`registry.record_rollout`)."""
    from tfmlops.deploy.progressive import conclude_held

    version = int(version)
    record_decision(tracking_uri, model_name, version, decision)
    with tempfile.TemporaryDirectory() as tmp:
        cand = fetch_candidate(tracking_uri, model_name, version, tmp)
        res = conclude_held(cand, router, groups, bool(decision.get("approved")), canary_old,
                            decision_reason(decision), timeout_s=timeout_s, s3_client=s3_client,
                            on_event=on_event).to_dict()
    result = _router_result(res, strategy, groups)
    result["aliases"] = registry.record_rollout(tracking_uri, model_name, version, result, audit)
    return result


def record_decision(tracking_uri: str, model_name: str, version: int, decision: dict) -> None:
    """A person's decision on a version (tag ``serving.approval``: JSON with the note)."""
    registry.set_version_tags(tracking_uri, model_name, int(version),
                              {"serving.approval": json.dumps(decision, default=str)[:4000]})


def decision_reason(decision: dict) -> str:
    """``rejected by alice: too early`` — a person's decision as a rollout's reason."""
    reason = f"{decision.get('decision', 'rejected')}" + (f" by {decision['by']}" if decision.get("by") else "")
    return reason + (f": {decision['note']}" if decision.get("note") else "")


def ab_test_registered(tracking_uri: str, model_name: str, version_or_alias, router, groups: dict, labels,
                       settings: ABSettings | None = None, window_s: float = 600.0,
                       thresholds: GrayThresholds | None = None, timeout_s: float = 180.0, s3_client=None,
                       on_event=None, log_prefixes: dict | None = None, audit: dict | None = None,
                       hold_for_approval: bool = False) -> dict:
    """A/B test of a registered version (the challenger) against what the stable group serves
    (:mod:`tfmlops.deploy.abtest`), recorded in MLflow: ``ab.*`` metrics (per variant: requests,
    error rate, p99, labeled rows, accuracy; the test's z and p-value) and the whole report
    (``serving/ab_v<N>.json``) on the version's run; ``champion`` moves to it only on a
    significant win (``decision == "promote"``); otherwise ``challenger`` is dropped from it.
    ``log_prefixes``: the groups' request logs (default: the endpoints' own; the router mirror's per group).
    With ``hold_for_approval`` a win holds (``awaiting_approval``) until :func:`conclude_registered`."""
    from tfmlops.deploy.abtest import ab_test, label_files
    from tfmlops.deploy.progressive import default_log_prefixes

    label_files(labels)  # refused before anything is fetched, aliased or rolled
    prefixes = default_log_prefixes(groups, model_name) if log_prefixes is None else log_prefixes
    missing = [g for g in ("stable", "canary") if not prefixes.get(g)]
    if missing:
        raise ValueError(f"an A/B test joins labels with the groups' request logs; the {' and '.join(missing)} "
                         "group's endpoints have no request_log_prefix (and no router mirror logs were given)")
    with tempfile.TemporaryDirectory() as tmp:
        cand = fetch_challenger(tracking_uri, model_name, version_or_alias, tmp)
        res = ab_test(cand, router, groups, labels, settings, window_s=window_s, thresholds=thresholds,
                      timeout_s=timeout_s, s3_client=s3_client, on_event=on_event,
                      log_prefixes=log_prefixes, hold_for_approval=hold_for_approval).to_dict()
        result = _router_result(res, "ab", groups)
        run_id = registry.get_version(tracking_uri, model_name, cand.version).run_id
        metrics = _metrics("ab", {**res["window"], **res["test"]}, ("share_pct", "z", "p_value", "difference"))
        for variant, numbers in res["variants"].items():
            metrics.update(_metrics(f"ab.{variant}", numbers, ("requests", "error_rate", "p99_ms", "labeled_rows",
                                                               "accuracy")))
        _log_report(tracking_uri, run_id, tmp, "ab", cand.version, res, metrics, default=str)
    return _recorded(tracking_uri, model_name, cand.version, res, result, audit)


SHADOW_METRICS = ("compared", "agreement", "max_abs_diff", "mean_abs_diff", "challenger_errors", "skipped",
                  "mirrored", "eligible")


def shadow_release_registered(tracking_uri: str, model_name: str, version_or_alias, router, groups: dict,
                              sink_url: str, window_s: float = 60.0, thresholds: ShadowThresholds | None = None,
                              timeout_s: float = 180.0, s3_client=None, on_event=None,
                              audit: dict | None = None, hold_for_approval: bool = False) -> dict:
    """Shadow release of a registered version (:mod:`tfmlops.deploy.shadow`), recorded in MLflow:
    aliases and ``serving.*`` tags as any rollout (``promote`` → ``promoted``, ``hold`` →
    ``rolled_back``), the comparison as ``shadow.*`` metrics of the version's run (agreement,
    max/mean |diff|, challenger errors, each group's requests/error rate/p99) and the whole report
    as ``serving/shadow_v<N>.json``. With ``hold_for_approval`` a promote holds (``awaiting_approval``)
    until :func:`conclude_registered`."""
    from tfmlops.deploy.shadow import shadow_release

    with tempfile.TemporaryDirectory() as tmp:
        cand = fetch_challenger(tracking_uri, model_name, version_or_alias, tmp)
        res = shadow_release(cand, router, groups, sink_url, window_s=window_s, thresholds=thresholds,
                             timeout_s=timeout_s, s3_client=s3_client, on_event=on_event,
                             hold_for_approval=hold_for_approval).to_dict()
        result = _router_result(res, "shadow", groups)
        run_id = registry.get_version(tracking_uri, model_name, cand.version).run_id
        report = res["report"]
        metrics = {**_metrics("shadow", report, SHADOW_METRICS), "shadow.promote": float(res["decision"] == "promote")}
        for group, numbers in (report.get("metrics") or {}).items():
            metrics.update(_metrics(f"shadow.{group}", numbers, ("requests", "error_rate", "p99_ms")))
        _log_report(tracking_uri, run_id, tmp, "shadow", cand.version, res, metrics, allow_nan=False)
    return _recorded(tracking_uri, model_name, cand.version, res, result, audit)


def _num(value, spec: str) -> str:
    return format(value, spec) if isinstance(value, (int, float)) and value == value else "–"


def _evidence(held: dict) -> list[str]:
    """The live numbers of a held release, by strategy, as Markdown lines."""
    strategy = held.get("strategy", "gray")
    if strategy == "gray":
        lines = ["| share | canary requests | canary errors | canary p99 ms | stable p99 ms | predictions |",
                 "|---|---|---|---|---|---|"]
        for step in held.get("steps", []):
            canary, stable, pred = step.get("canary", {}), step.get("stable", {}), step.get("predictions", {})
            lines.append(f"| {step['share_pct']:g} % | {_num(canary.get('requests'), '.0f')} "
                         f"| {_num(canary.get('error_rate'), '.3g')} | {_num(canary.get('p99_ms'), '.1f')} "
                         f"| {_num(stable.get('p99_ms'), '.1f')} | {pred.get('status', '–')} "
                         f"(TVD {_num(pred.get('tvd'), '.3f')}) |")
        return lines
    if strategy == "ab":
        test = held.get("test") or {}
        lines = [f"A/B test: **{held.get('decision')}** — {held.get('reason') or ''} "
                 f"(p = {_num(test.get('p_value'), '.3g')})", "",
                 "| variant | requests | errors | p99 ms | labeled rows | accuracy |", "|---|---|---|---|---|---|"]
        for name, v in (held.get("variants") or {}).items():
            lines.append(f"| {name} | {_num(v.get('requests'), '.0f')} | {_num(v.get('error_rate'), '.3g')} "
                         f"| {_num(v.get('p99_ms'), '.1f')} | {_num(v.get('labeled_rows'), '.0f')} "
                         f"| {_num(v.get('accuracy'), '.4f')} |")
        return lines
    if strategy == "shadow":
        r = held.get("report") or {}
        return ["| shadow figure | value |", "|---|---|",
                *(f"| {k} | {_num(r.get(k), spec)} |" for k, spec in (
                    ("compared", ".0f"), ("agreement", ".4f"), ("max_abs_diff", ".3g"), ("mean_abs_diff", ".3g"),
                    ("challenger_errors", ".0f")))]
    return []


def approval_request(tracking_uri: str, model_name: str, version: int, held: dict, mlflow_ui: str | None = None,
                     links: dict[str, str] | None = None) -> dict:
    """What a person sees before approving (``held``: the rollout's ``awaiting_approval`` result,
    or, asked before the rollout, ``{"strategy": ...}``): ``subject``, a Markdown ``body`` with the
    candidate's gate figures (its run's test metrics), the held release's live numbers so far (gray:
    each step's share, the two groups' requests, error rate, p99 and predicted-class check; A/B: the
    variants and the test; shadow: the comparison), links to its model card and MLflow version
    (under ``mlflow_ui``, the MLflow UI's address) and ``links``; and ``champion``, the version the
    registry names now (the approval is withdrawn once that changes)."""
    mv = registry.get_version(tracking_uri, model_name, version)
    metrics = registry.client(tracking_uri).get_run(mv.run_id).data.metrics if mv.run_id else {}
    gate = {k: v for k, v in sorted(metrics.items()) if k.startswith("test_")}
    champion = registry.alias_version(tracking_uri, model_name, registry.CHAMPION)  # the approval's reference
    strategy = held.get("strategy", "gray")
    if held.get("outcome") == AWAITING_APPROVAL:
        subject = f"Promote {model_name} version {version} to all traffic?"
        intro = (f"**{model_name} version {version}** holds **{held['held_share_pct']:g} %** of the live traffic "
                 f"({strategy}) and passed every check so far. Approve: it takes all traffic and becomes "
                 "`champion`. Reject, or no answer in time: it is rolled back (the note goes on the version).")
    else:
        subject = f"Roll {model_name} version {version} out ({strategy})?"
        intro = (f"**{model_name} version {version}** passed its gate; nothing of it is served yet. Approve: the "
                 f"{strategy} rollout starts. Reject, or no answer in time: nothing is rolled out (the note goes "
                 "on the version).")
    lines = [intro, "", f"Champion now: version {champion.version if champion is not None else 'none'}.", "",
             "| gate figure | value |", "|---|---|"]
    lines += [f"| {k} | {v:.4g} |" for k, v in list(gate.items())[:12]] or ["| (none recorded) | |"]
    evidence = _evidence(held) if held.get("outcome") == AWAITING_APPROVAL else []
    lines += ["", *evidence] if evidence else []
    if mlflow_ui:
        base = mlflow_ui.rstrip("/")
        links = {"Model card": f"{base}/get-artifact?path=model_card/model_card.html&run_uuid={mv.run_id}",
                 "MLflow version": f"{base}/#/models/{model_name}/versions/{version}", **(links or {})}
    lines += ["", *(f"- [{name}]({url})" for name, url in (links or {}).items())]
    return {"subject": subject, "body": "\n".join(lines),
            "champion": int(champion.version) if champion is not None else None}


def champion_version(tracking_uri: str, model_name: str) -> int | None:
    """The version ``champion`` names now (None: no such alias)."""
    found = registry.alias_version(tracking_uri, model_name, registry.CHAMPION)
    return None if found is None else int(found.version)
