"""Rolling version updates on TF Serving endpoints (real TF Serving or ``tf-serving-local``).

Strategies, per endpoint, one endpoint at a time (capacity never drops below all-but-one):

``replace``
    1. config ``specific {old…, N}`` (labels kept) → N loads next to the serving versions;
    2. wait until N is AVAILABLE (a load that ends in END → roll back);
    3. smoke parity of version N over REST and gRPC (predictions equal to the registered
       model's on a fixed batch);
    4. config ``latest {1}`` (``specific {N}`` when a higher number exists in the base path),
       labels that pointed at an old version moved to N → the old versions unload once N serves.

``canary``
    1. config ``specific {old, N}``, labels ``stable``→old (added when missing);
    2. wait until N is AVAILABLE, *then* add ``canary``→N (TF Serving only accepts labels on
       AVAILABLE versions, unless ``--allow_version_labels_for_unavailable_models``);
    3. checks through the ``canary`` label: smoke parity (REST and gRPC), accuracy on a labeled
       holdout, latency budget;
    4. promote: ``stable``→N (old still loaded), then drop old and the ``canary`` label.

Note: unversioned requests always go to the highest AVAILABLE version (TF Serving semantics),
so canary traffic control relies on clients addressing the ``stable`` label.

Any failure (a check, a version in END, a timeout, a publish conflict) rolls back the endpoint
being updated and every endpoint already updated, in reverse order: their config goes back to
what it was before the rollout (the old versions only), reloading old versions first where they
were already unloaded, so requests keep being served. ``rollout`` never raises for such a
failure: it returns a :class:`RolloutResult` with ``outcome == "rolled_back"`` and the reason.

Retirement (keep-N) runs after a successful rollout: a version directory is removed only when no
endpoint's config (policy or label) references it and no endpoint has it loaded.

The steps live next door: :mod:`.locking` (a rollout holds every endpoint's config-file lock for
its whole run), :mod:`.model_config` (config edits and reloads), :mod:`.status` (version states,
waits), :mod:`.checks` (smoke parity, holdout accuracy, latency), :mod:`.publish` (version
directories), :mod:`.endpoint` (the ``Endpoint`` a rollout targets).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

from .checks import CanaryChecks, canary_checks, smoke_parity
from .client import ServingError
from .endpoint import Endpoint
from .errors import RolloutBusy, RolloutError
from .locking import endpoints_locked
from .model_config import apply_config, find_entry, read_config, referenced_versions, with_versions, without_model
from .status import LOADED_STATES, serving_versions, version_states, wait_available, wait_unloaded

__all__ = [
    "STRATEGIES", "STABLE", "CANARY", "PROMOTED", "ROLLED_BACK", "Candidate", "RolloutResult", "Rollout", "rollout",
    # defined next door, importable from here for the callers that drive a rollout
    "Endpoint", "CanaryChecks", "RolloutError", "RolloutBusy",
]

log = logging.getLogger("tfmlops.rollout")

STRATEGIES = ("replace", "canary")
STABLE, CANARY = "stable", "canary"
PROMOTED, ROLLED_BACK = "promoted", "rolled_back"


@dataclass
class Candidate:
    """The version to roll out: its SavedModel directory and the smoke batch (``smoke.json`` as
    ``tfmlops.export`` writes it: instances, expected, tolerance, signature_name, output)."""

    model: str
    version: int
    saved_model_dir: str
    smoke: dict


@dataclass
class RolloutResult:
    model: str
    version: int
    strategy: str
    outcome: str
    reason: str = ""
    old_versions: dict = field(default_factory=dict)  # endpoint -> [versions serving before]
    endpoints: list = field(default_factory=list)  # endpoints updated (promoted), in order
    rolled_back: list = field(default_factory=list)  # endpoints rolled back
    checks: dict = field(default_factory=dict)  # endpoint -> {check: value}
    published: list = field(default_factory=list)
    retired: list = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.outcome == PROMOTED

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class _State:
    ep: Endpoint
    before: object  # config to restore on rollback (serving versions pinned); None: not served
    old: list  # versions serving before, other than N
    serving: list = field(default_factory=list)  # versions serving before (N included on a re-run)


class Rollout:
    """One rollout of ``candidate`` over ``endpoints``; ``run()`` returns a RolloutResult."""

    def __init__(self, candidate: Candidate, endpoints: list[Endpoint], strategy: str = "replace",
                 checks: CanaryChecks | None = None, keep: int = 2, timeout_s: float = 120.0, s3_client=None,
                 on_event: Callable[[str], None] | None = None):
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
        if not endpoints:
            raise ValueError("no endpoints to roll out to")
        self.cand = candidate
        self.endpoints = list(endpoints)
        self.strategy = strategy
        self.checks = checks or CanaryChecks()
        self.keep = max(int(keep), 1)
        self.timeout_s = timeout_s
        self.s3_client = s3_client
        self.on_event = on_event
        self._published: dict[str, dict] = {}

    def _event(self, msg: str) -> None:
        log.info(msg)
        if self.on_event is not None:
            self.on_event(msg)

    # -- steps
    def _publish(self, ep: Endpoint) -> None:
        from .publish import PublishError, publish_version

        root = str(ep.models_root)
        if root in self._published:
            return
        try:
            res = publish_version(self.cand.saved_model_dir, root, self.cand.model, self.cand.version,
                                  s3_client=self.s3_client)
        except PublishError as exc:
            raise RolloutError(f"{ep.name}: {exc}") from exc
        self._published[root] = res
        self._event(f"{ep.name}: version {self.cand.version} {'published' if res['published'] else 'already published'}"
                    f" at {res['path']} (hash {res['content_hash'][:12]})")

    def _pin(self, ep: Endpoint) -> _State:
        """Snapshot the endpoint and pin its serving versions (policy ``specific``), so that
        publishing N into a shared base path changes nothing until this endpoint's turn."""
        model, n = self.cand.model, self.cand.version
        cfg = read_config(ep)
        entry = find_entry(cfg, model)
        serving = serving_versions(ep.client, model) if entry is not None else []
        old = [v for v in serving if v != n]
        if not serving:
            return _State(ep, None, [], [])
        labels = {k: v for k, v in entry.version_labels.items() if v in serving}
        pinned = with_versions(cfg, model, entry.base_path, serving, labels)
        if old and pinned != cfg:
            apply_config(ep, pinned)
        return _State(ep, pinned, old, serving)

    def _replace(self, st: _State) -> dict:
        ep, model, n = st.ep, self.cand.model, self.cand.version
        where = f"{ep.name}: {model} version {n}"
        cfg = read_config(ep)
        entry = find_entry(cfg, model)
        labels = dict(entry.version_labels) if entry is not None else {}
        apply_config(ep, with_versions(cfg, model, ep.base_path(model), set(st.old) | {n}, labels))
        wait_available(ep.client, model, n, self.timeout_s, where)
        self._event(f"{where} is AVAILABLE next to {st.old}")
        out = smoke_parity(ep.client, self.cand.smoke, model, version=n, where=where)
        self._event(f"{where}: smoke parity over REST and gRPC {out}")
        higher = [v for v in self._published_versions(ep) if v > n]
        policy = [n] if higher else "latest"
        labels = {k: (n if v in st.old else v) for k, v in labels.items() if k != CANARY}
        apply_config(ep, with_versions(read_config(ep), model, ep.base_path(model), policy, labels))
        wait_unloaded(ep.client, model, st.old, self.timeout_s)
        return out

    def _canary(self, st: _State) -> dict:
        ep, model, n = st.ep, self.cand.model, self.cand.version
        where = f"{ep.name}: {model} version {n}"
        base = ep.base_path(model)
        cur = find_entry(read_config(ep), model)
        stable = {k: v for k, v in cur.version_labels.items() if v in st.serving} if cur is not None else {}
        stable.pop(CANARY, None)
        if st.old:
            stable[STABLE] = max(st.old)
        apply_config(ep, with_versions(read_config(ep), model, base, set(st.old) | {n}, stable))
        wait_available(ep.client, model, n, self.timeout_s, where)
        apply_config(ep, with_versions(read_config(ep), model, base, set(st.old) | {n}, {**stable, CANARY: n}))
        self._event(f"{where} is AVAILABLE as {CANARY} next to {STABLE}={stable.get(STABLE)}")
        out = canary_checks(ep, self.cand, self.checks, label=CANARY)
        self._event(f"{where}: canary checks passed {out}")
        # promote: stable -> N while old is still loaded, then drop old and the canary label
        apply_config(ep, with_versions(read_config(ep), model, base, set(st.old) | {n}, {STABLE: n, CANARY: n}))
        apply_config(ep, with_versions(read_config(ep), model, base, [n], {STABLE: n}))
        wait_unloaded(ep.client, model, st.old, self.timeout_s)
        return out

    def _rollback(self, st: _State) -> None:
        """Back to the pre-rollout config (old versions only). Old versions that were already
        unloaded are loaded again next to what serves now before anything is dropped."""
        ep, model, n = st.ep, self.cand.model, self.cand.version
        if st.before is None:  # the model was not served before: take it out again
            cfg = read_config(ep)
            if find_entry(cfg, model) is not None:
                apply_config(ep, without_model(cfg, model))
            return
        serving = serving_versions(ep.client, model)
        missing = [v for v in st.old if v not in serving]
        if missing:
            cur = read_config(ep)
            entry = find_entry(cur, model)
            labels = {k: v for k, v in entry.version_labels.items() if v in serving} if entry is not None else {}
            apply_config(ep, with_versions(cur, model, ep.base_path(model), set(serving) | set(st.old), labels))
            for v in missing:
                wait_available(ep.client, model, v, self.timeout_s, f"{ep.name}: rollback to version {v}")
        apply_config(ep, st.before)
        if n not in st.serving:
            wait_unloaded(ep.client, model, [n], self.timeout_s)

    def _published_versions(self, ep: Endpoint) -> list[int]:
        from .publish import published_versions

        return published_versions(ep.models_root, self.cand.model, s3_client=self.s3_client)

    def retire(self) -> list[str]:
        """Remove version directories beyond the newest ``keep`` that nothing references."""
        from .publish import remove_version

        model, removed = self.cand.model, []
        in_use: dict[str, set] = {}
        for ep in self.endpoints:
            refs = referenced_versions(read_config(ep), model)
            states = version_states(ep.client, model)
            refs |= {v for v, (s, _) in states.items() if s in LOADED_STATES}
            in_use.setdefault(str(ep.models_root), set()).update(refs | {self.cand.version})
        for root, refs in in_use.items():
            ep = next(e for e in self.endpoints if str(e.models_root) == root)
            versions = self._published_versions(ep)
            keep = set(versions[-self.keep:]) | refs
            for v in versions:
                if v not in keep and remove_version(root, model, v, s3_client=self.s3_client):
                    removed.append(f"{root.rstrip('/')}/{model}/{v}")
                    self._event(f"retired {model} version {v} from {root}")
        return removed

    def pin_and_publish(self) -> dict:
        """Pin every endpoint to what it serves, then publish N into every models root (what a
        separate publish task does: N cannot be picked up by a ``latest`` policy before its turn)."""
        with endpoints_locked(self.endpoints, self.timeout_s, self._event):
            for ep in self.endpoints:
                self._pin(ep)
            for ep in self.endpoints:
                self._publish(ep)
        return {path: r["content_hash"] for path, r in
                ((r["path"], r) for r in self._published.values())}

    def run(self) -> RolloutResult:
        """Raises :class:`RolloutBusy` (nothing touched, nothing recorded) when another rollout
        keeps an endpoint locked past ``timeout_s``: that is a reason to retry, not a rollback."""
        t0 = time.monotonic()
        with endpoints_locked(self.endpoints, self.timeout_s, self._event):
            res = self._run()
        res.seconds = round(time.monotonic() - t0, 3)
        return res

    def _run(self) -> RolloutResult:
        res = RolloutResult(self.cand.model, self.cand.version, self.strategy, PROMOTED)
        done: list[_State] = []
        current: _State | None = None
        try:
            states = []
            for ep in self.endpoints:  # pin every endpoint before N appears in a shared base path
                st = self._pin(ep)
                states.append(st)
                res.old_versions[ep.name] = st.old
            for st in states:
                current = st
                self._publish(st.ep)
                if st.serving == [self.cand.version]:  # a re-run: already promoted here, check only
                    checks = self.checks if self.strategy == "canary" else CanaryChecks()
                    res.checks[st.ep.name] = canary_checks(st.ep, self.cand, checks, label=None)
                else:
                    step = self._replace if self.strategy == "replace" else self._canary
                    res.checks[st.ep.name] = step(st)
                done.append(st)
                res.endpoints.append(st.ep.name)
                current = None
                self._event(f"{st.ep.name}: {self.cand.model} version {self.cand.version} promoted "
                            f"({self.strategy})")
        except Exception as exc:  # noqa: BLE001 - whatever went wrong, serving goes back to what it was
            res.outcome, res.reason = ROLLED_BACK, str(exc) if isinstance(exc, (RolloutError, ServingError)) \
                else f"{type(exc).__name__}: {exc}"
            self._event(f"rollout of {self.cand.model} version {self.cand.version} failed: {exc}; rolling back")
            for st in ([current] if current is not None else []) + list(reversed(done)):
                try:
                    self._rollback(st)
                    res.rolled_back.append(st.ep.name)
                    self._event(f"{st.ep.name}: rolled back to {st.old or 'nothing'}")
                except Exception as rb_exc:  # noqa: BLE001 - keep going: roll back the others
                    res.reason += f"; rollback of {st.ep.name} failed: {rb_exc}"
                    log.error("rollback of %s failed: %s", st.ep.name, rb_exc)
            res.endpoints = []
        res.published = [r["path"] for r in self._published.values()]
        if res.ok:
            res.retired = self.retire()
        return res


def rollout(candidate: Candidate, endpoints: list[Endpoint], strategy: str = "replace",
            checks: CanaryChecks | None = None, keep: int = 2, timeout_s: float = 120.0, s3_client=None,
            on_event: Callable[[str], None] | None = None) -> RolloutResult:
    """Roll ``candidate`` out to ``endpoints`` (see the module docstring); never raises for a
    failed check or load: the result says ``rolled_back`` and why. Raises :class:`RolloutBusy`
    when another rollout holds an endpoint for longer than ``timeout_s``."""
    return Rollout(candidate, endpoints, strategy, checks, keep, timeout_s, s3_client, on_event).run()
