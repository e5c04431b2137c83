"""Rolling version updates on TF Serving endpoints (real TF Serving or ``tf-serving-local``).

Only documented TF Serving mechanisms are used: version directories in the base path, the
``ModelServerConfig`` (version policy, ``version_labels``) reloaded with
``HandleReloadConfigRequest`` and written to the server's config file, and the status / predict
APIs. No Airflow import; MLflow only when a tracking URI is given (aliases and tags).

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

Two rollouts never interleave on an endpoint: each holds an exclusive lock on every endpoint's
config file (``<model_config_file>.lock``, ``flock``; taken in a fixed order) for its whole run,
so DAGs that roll out (``tf_serving_rollout``, the retraining DAGs) and scripts on hosts that
share the file wait for each other, whatever pool or executor they run in.

Retirement (keep-N) runs after a successful rollout: a version directory is removed only when no
endpoint's config (policy or label) references it and no endpoint has it loaded.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .client import ModelNotAvailableError, ServingClient, ServingError

log = logging.getLogger("tfmlops.rollout")

STRATEGIES = ("replace", "canary")
STABLE, CANARY = "stable", "canary"
PROMOTED, ROLLED_BACK = "promoted", "rolled_back"


class RolloutError(RuntimeError):
    """A rollout step failed; the message names the endpoint, version and numbers."""


class RolloutBusy(RolloutError):
    """Another rollout held an endpoint's lock for longer than the timeout; nothing was touched."""


class CheckFailed(RolloutError):
    """A post-load check (smoke parity, accuracy, latency) failed."""


# ----------------------------------------------------------------------------------- inputs
@dataclass
class Endpoint:
    """One TF Serving replica. ``models_root`` is where versions are published as this process
    sees it (local path or ``s3://``), ``server_models_root`` the same place as the server sees it
    (e.g. ``/models`` in a container). ``model_config_file`` is the server's ModelServerConfig file:
    it is rewritten with every change (so a restart keeps the state) and is where the current
    config is read from; without it the rollout keeps the config in ``config``."""

    name: str
    host: str = "127.0.0.1"
    rest_port: int = 8501
    grpc_port: int = 8500
    models_root: str = ""
    server_models_root: str | None = None
    model_config_file: str | None = None
    timeout: float = 30.0
    config: object = field(default=None, repr=False)
    _client: ServingClient | None = field(default=None, repr=False, compare=False)

    @property
    def client(self) -> ServingClient:
        if self._client is None:
            self._client = ServingClient(self.host, self.rest_port, self.grpc_port, timeout=self.timeout)
        return self._client

    def base_path(self, model: str) -> str:
        return f"{str(self.server_models_root or self.models_root).rstrip('/')}/{model}"

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    @classmethod
    def from_dict(cls, d: dict) -> "Endpoint":
        keys = {"name", "host", "rest_port", "grpc_port", "models_root", "server_models_root", "model_config_file",
                "timeout"}
        return cls(**{k: v for k, v in d.items() if k in keys})


@dataclass
class Candidate:
    """The version to roll out: its SavedModel directory and the smoke batch (``smoke.json`` as
    ``tfmlops.export`` writes it: instances, expected, tolerance, signature_name, output)."""

    model: str
    version: int
    saved_model_dir: str
    smoke: dict


@dataclass
class CanaryChecks:
    smoke: bool = True
    holdout_x: np.ndarray | None = None
    holdout_y: np.ndarray | None = None
    min_accuracy: float | None = None
    latency_budget_ms: float | None = None  # p99 of single-row REST predicts on the canary label
    latency_requests: int = 30


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


# ----------------------------------------------------------------------------------- config
@contextlib.contextmanager
def endpoints_locked(endpoints: list[Endpoint], timeout_s: float, on_wait: Callable[[str], None] | None = None):
    """Hold ``<model_config_file>.lock`` of every endpoint (sorted, so two holders cannot
    deadlock); waits at most ``timeout_s`` for another rollout to finish. Endpoints without a
    config file (config kept in memory by this process) need no lock."""
    paths = sorted({os.path.abspath(f"{ep.model_config_file}.lock") for ep in endpoints if ep.model_config_file})
    with contextlib.ExitStack() as stack:
        for path in paths:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            handle = stack.enter_context(open(path, "a"))
            deadline, told = time.monotonic() + timeout_s, False
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise RolloutBusy(f"another rollout has held {path} for more than {timeout_s:g} s")
                    if not told and on_wait is not None:
                        on_wait(f"waiting for another rollout to release {path}")
                        told = True
                    time.sleep(0.2)
            stack.callback(fcntl.flock, handle, fcntl.LOCK_UN)
        yield


def read_config(ep: Endpoint):
    from .config import ModelServerConfig, load_config

    if ep.model_config_file and Path(ep.model_config_file).exists():
        return load_config(ep.model_config_file)
    return copy.deepcopy(ep.config) if ep.config is not None else ModelServerConfig()


def apply_config(ep: Endpoint, cfg) -> None:
    """Write the config file first (a server polling it sees the same config), then
    HandleReloadConfigRequest; on a rejected reload the previous file is restored."""
    from .config import write_config

    previous = read_config(ep)
    if ep.model_config_file:
        write_config(ep.model_config_file, cfg)
    try:
        ep.client.reload_config(cfg)
    except ServingError:
        if ep.model_config_file:
            write_config(ep.model_config_file, previous)
        raise
    ep.config = copy.deepcopy(cfg)


def find_entry(cfg, model: str):
    for entry in cfg.model_config_list.config:
        if entry.name == model:
            return entry
    return None


def _entry(cfg, model: str, base_path: str):
    entry = find_entry(cfg, model)
    if entry is None:
        entry = cfg.model_config_list.config.add()
        entry.name, entry.model_platform = model, "tensorflow"
    entry.base_path = base_path
    return entry


def with_versions(cfg, model: str, base_path: str, versions, labels: dict | None) -> object:
    """A copy of ``cfg`` where ``model`` serves ``specific {versions}`` (or ``latest {1}`` when
    ``versions == "latest"``) with exactly ``labels``."""
    cfg = copy.deepcopy(cfg)
    entry = _entry(cfg, model, base_path)
    entry.model_version_policy.Clear()
    if versions == "latest":
        entry.model_version_policy.latest.num_versions = 1
    else:
        entry.model_version_policy.specific.versions.extend(sorted(set(int(v) for v in versions)))
    entry.version_labels.clear()
    for label, v in (labels or {}).items():
        entry.version_labels[label] = int(v)
    return cfg


def without_model(cfg, model: str):
    cfg = copy.deepcopy(cfg)
    keep = [copy.deepcopy(e) for e in cfg.model_config_list.config if e.name != model]
    del cfg.model_config_list.config[:]
    cfg.model_config_list.config.extend(keep)
    return cfg


def referenced_versions(cfg, model: str) -> set:
    entry = find_entry(cfg, model)
    if entry is None:
        return set()
    refs = set(entry.version_labels.values())
    if entry.model_version_policy.WhichOneof("policy_choice") == "specific":
        refs |= set(entry.model_version_policy.specific.versions)
    return refs


# ----------------------------------------------------------------------------------- status
def version_states(client: ServingClient, model: str) -> dict[int, tuple[str, str]]:
    """{version: (state, error message)}; {} when the server does not know the model."""
    try:
        entries = client.status(model).get("model_version_status", [])
    except ServingError as exc:
        if exc.http_status == 404:
            return {}
        raise
    return {int(e["version"]): (e.get("state"), (e.get("status") or {}).get("error_message", "")) for e in entries}


def serving_versions(client: ServingClient, model: str) -> list[int]:
    return sorted(v for v, (state, _) in version_states(client, model).items() if state == "AVAILABLE")


def wait_unloaded(client: ServingClient, model: str, versions, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    versions = set(versions)
    while True:
        states = version_states(client, model)
        busy = {v for v in versions if states.get(v, ("END",))[0] in ("AVAILABLE", "UNLOADING", "LOADING", "START")}
        if not busy:
            return
        if time.monotonic() > deadline:
            raise RolloutError(f"{model} versions {sorted(busy)} still loaded after {timeout_s:.0f}s")
        time.sleep(0.2)


def wait_available(client: ServingClient, model: str, version: int, timeout_s: float, where: str) -> None:
    try:
        client.wait_until_available(model, version, timeout_s=timeout_s, poll_s=0.2)
    except ModelNotAvailableError as exc:
        raise RolloutError(f"{where}: {exc}") from exc


# ----------------------------------------------------------------------------------- checks
def smoke_parity(client: ServingClient, smoke: dict, model: str, *, version: int | None = None,
                 label: str | None = None, where: str = "") -> dict:
    """Predict the smoke batch over REST and gRPC; both must equal ``smoke["expected"]`` within
    its tolerance. Returns the max abs differences."""
    x = np.asarray(smoke["instances"], dtype=np.float32)
    expected = np.asarray(smoke["expected"], dtype=np.float32)
    tol = float(smoke.get("tolerance", 1e-5))
    sig = smoke.get("signature_name") or "serving_default"
    out = {}
    for api in ("rest", "grpc"):
        try:
            if api == "rest":
                got = client.predict_rest(model, x.tolist(), version=version, label=label, signature_name=sig)
            else:
                got = client.predict_grpc(model, x, version=version, label=label, signature_name=sig)
        except ServingError as exc:
            raise CheckFailed(f"{where}: smoke predict over {api.upper()} failed: {exc}") from exc
        if isinstance(got, dict):
            name = smoke.get("output") if smoke.get("output") in got else sorted(got)[0]
            got = got[name]
        got = np.asarray(got, dtype=np.float32)
        if got.shape != expected.shape:
            raise CheckFailed(f"{where}: {api.upper()} predictions have shape {got.shape}, expected {expected.shape}")
        diff = float(np.max(np.abs(got - expected))) if expected.size else 0.0
        if not diff <= tol:
            raise CheckFailed(f"{where}: {api.upper()} predictions differ from the registered model's by {diff:.3g} "
                              f"(tolerance {tol:g})")
        out[f"smoke_{api}_max_abs_diff"] = diff
    return out


def holdout_accuracy(client: ServingClient, model: str, x, y, *, label: str | None = None,
                     version: int | None = None, signature_name: str | None = None, batch: int = 256) -> float:
    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y).astype(int).ravel()
    correct = 0
    for i in range(0, len(x), batch):
        got = client.predict_rest(model, x[i:i + batch].tolist(), label=label, version=version,
                                  signature_name=signature_name)
        if isinstance(got, dict):
            got = got[sorted(got)[0]]
        correct += int(np.sum(np.argmax(np.asarray(got), axis=-1) == y[i:i + batch]))
    return correct / max(len(y), 1)


def latency_p99_ms(client: ServingClient, model: str, row, n: int, *, label: str | None = None,
                   version: int | None = None, signature_name: str | None = None) -> float:
    times = []
    for _ in range(max(n, 1)):
        t0 = time.perf_counter()
        client.predict_rest(model, [np.asarray(row).tolist()], label=label, version=version,
                            signature_name=signature_name)
        times.append((time.perf_counter() - t0) * 1000.0)
    return float(np.percentile(times, 99))


def canary_checks(ep: Endpoint, cand: Candidate, checks: CanaryChecks, label: str | None = CANARY) -> dict:
    """Checks through ``label`` (or, with ``label=None``, on version ``cand.version``)."""
    version = None if label else cand.version
    where = f"{ep.name}: {cand.model} version {cand.version}" + (f" (label {label})" if label else "")
    sig = cand.smoke.get("signature_name")
    out: dict = {}
    if checks.smoke:
        out.update(smoke_parity(ep.client, cand.smoke, cand.model, label=label, version=version, where=where))
    if checks.min_accuracy is not None and checks.holdout_x is not None:
        try:
            acc = holdout_accuracy(ep.client, cand.model, checks.holdout_x, checks.holdout_y, label=label,
                                   version=version, signature_name=sig)
        except ServingError as exc:
            raise CheckFailed(f"{where}: holdout predictions failed: {exc}") from exc
        out["holdout_accuracy"] = acc
        if acc < checks.min_accuracy:
            raise CheckFailed(f"{where}: holdout accuracy {acc:.4f} < minimum {checks.min_accuracy:.4f} "
                              f"({len(checks.holdout_y)} rows)")
    if checks.latency_budget_ms is not None:
        row = np.asarray(cand.smoke["instances"], dtype=np.float32)[0]
        try:
            p99 = latency_p99_ms(ep.client, cand.model, row, checks.latency_requests, label=label, version=version,
                                 signature_name=sig)
        except ServingError as exc:
            raise CheckFailed(f"{where}: latency probe failed: {exc}") from exc
        out["latency_p99_ms"] = p99
        if p99 > checks.latency_budget_ms:
            raise CheckFailed(f"{where}: p99 latency {p99:.1f} ms > budget {checks.latency_budget_ms:.1f} ms "
                              f"({checks.latency_requests} requests)")
    return out


# ----------------------------------------------------------------------------------- rollout
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
        out = canary_checks(ep, self.cand, self.checks)
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
            refs |= {v for v, (s, _) in states.items() if s in ("AVAILABLE", "LOADING", "START", "UNLOADING")}
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


# ----------------------------------------------------------------------------------- registry glue
def load_holdout(uri: str, s3_client=None) -> tuple[np.ndarray, np.ndarray]:
    """A labelled holdout ``.npz`` (``x``/``y`` or ``x_test``/``y_test``), local or ``s3://``."""
    import io

    from tfmlops.storage import read_bytes

    with np.load(io.BytesIO(read_bytes(uri, s3_client=s3_client))) as npz:
        x = npz["x"] if "x" in npz else npz["x_test"]
        y = npz["y"] if "y" in npz else npz["y_test"]
    return np.asarray(x, np.float32), np.asarray(y)


def fetch_candidate(tracking_uri: str, model_name: str, version_or_alias, dst: str | Path) -> Candidate:
    """Resolve a registered version (number or alias) and download its serving artifact."""
    from tfmlops.pipeline import download_serving_artifact, resolve

    model = resolve(tracking_uri, model_name, version_or_alias)
    saved_model, smoke = download_serving_artifact(tracking_uri, model["serving_artifact_uri"], Path(dst))
    return Candidate(model_name, model["version"], str(saved_model), smoke)


def rollout_registered(tracking_uri: str, model_name: str, version_or_alias, endpoints: list[Endpoint],
                       strategy: str = "replace", checks: CanaryChecks | None = None, keep: int = 2,
                       timeout_s: float = 120.0, s3_client=None, on_event=None) -> dict:
    """Roll a registered MLflow version out and record the outcome in MLflow (tags, aliases).
    Returns the RolloutResult as a dict with ``aliases``; does not raise on a rollback (raises
    :class:`RolloutBusy`, recording nothing, when another rollout keeps an endpoint locked)."""
    import tempfile

    from tfmlops import registry

    with tempfile.TemporaryDirectory() as tmp:
        cand = fetch_candidate(tracking_uri, model_name, version_or_alias, tmp)
        champion = registry.alias_version(tracking_uri, model_name, registry.CHAMPION)
        if champion is None or int(champion.version) != cand.version:
            registry.set_alias(tracking_uri, model_name, registry.CHALLENGER, cand.version)
        result = rollout(cand, endpoints, strategy, checks, keep, timeout_s, s3_client, on_event).to_dict()
    result["aliases"] = registry.record_rollout(tracking_uri, model_name, cand.version, result)
    return result
