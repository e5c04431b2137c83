"""Monitoring by model: drift of every named input of a model module's spec and of the prediction
distribution by task, against a reference *profile*; quality by task from labeled feedback. NumPy
only (no TensorFlow, MLflow or Airflow import).

- :func:`build_profile` — the reference, as plain JSON-able data: per input its kind and the
  bins, shares or vocabulary of its statistics; the prediction distribution by task.
- :func:`measure` — population stability index (PSI, :func:`tfmlops.monitoring.psi_from_fractions`)
  of each statistic and of the predictions vs a profile; ``top`` lists the statistics that moved most.
- :func:`quality` — metrics by task (:func:`tfmlops.evaluation.task_metrics`) with a headline:
  accuracy (multiclass), AUC (binary), RMSE (regression).

Kinds, decided from the spec (dtype and shape) and the reference rows, never from a name:

- ``numeric`` — a float32/int64 scalar (or any one-value shape): PSI on the reference's quantile
  bins (plus a bucket for NaN/inf). An int64 scalar with at most :data:`MAX_INT_CATEGORIES`
  distinct reference values is ``categorical`` instead.
- ``categorical`` — a string scalar with at most :data:`MAX_CATEGORIES` distinct reference values
  (or a low-cardinality int64 scalar): PSI on the category shares, with an ``(unseen)`` bucket for
  values the reference never had; ``moved`` names the categories whose share moved most.
- ``text`` — any other string input (a scalar with more distinct values, or a string vector, its
  strings joined): two statistics, ``<input>.length`` (PSI of the token count per row) and
  ``<input>.oov`` (the out-of-vocabulary rate: the share of tokens, lowercased and split on non-word
  characters, not in the reference's top :data:`MAX_VOCAB` tokens; PSI of the OOV/in-vocabulary
  split). The vocabulary is built from one half of the reference rows and ``oov_rate_reference``
  is measured on the other half, so it is the rate to expect from new rows of the same population
  (the reference rows themselves read lower: half of them built the vocabulary).
- ``image`` — a float32 input of rank >= 2: per channel (the last axis for rank >= 3, one channel
  for rank 2; one channel too when there are more than :data:`MAX_CHANNELS`), the row mean and
  standard deviation, each a numeric statistic (``<input>.mean`` / ``<input>.std``, or
  ``<input>.c<k>.mean`` / ``.std`` with several channels).
- ``vector`` — any other numeric input with more than one value: the row mean and standard
  deviation (``<input>.mean`` / ``<input>.std``).
- ``module`` — the model module's own statistics: ``DRIFT_STATISTICS(features) -> {name: one
  number per row}``, each binned as a numeric statistic. A name ``<input>`` or ``<input>.<anything>``
  declares that input: its default statistics above are not computed (MNIST's module gives the
  seven image moments of its ``pixels``, so a rotation moves ``pixels.cov_xy``); other names are
  extra statistics of no input.

Predictions (the model's outputs, :func:`tfmlops.formats.task_outputs`): ``classes`` (multiclass
probabilities [N, C]: the predicted-class histogram), ``probability`` (binary: the positive
probability [N] on quantile bins, and the predicted-positive share at 0.5), ``value``
(regression: the values [N] on quantile bins, and their quantiles p5 p25 p50 p75 p95).

Bounded: at most ``max_rows`` rows (a seeded sample), :data:`MAX_VOCAB` tokens,
:data:`MAX_CATEGORIES` categories, :data:`MAX_CHANNELS` channels per image.
"""

from __future__ import annotations

import math
import re
from collections import Counter

import numpy as np

from tfmlops import evaluation
from tfmlops.modelspec import DEFAULT_GATE_METRIC, ModelSpec
from tfmlops.monitoring import _bin_fractions, per_class, psi_from_fractions

PROFILE_VERSION = 1
MAX_ROWS = 20_000
MAX_VOCAB = 10_000
MAX_CATEGORIES = 50  # distinct reference values of a string scalar up to which it is categorical
MAX_INT_CATEGORIES = 20  # the same for an int64 scalar
MAX_CHANNELS = 16  # an image with more channels is summarised as one channel
MAX_ROC_POINTS = 201
TOP = 5  # statistics listed in a measurement's ``top``; categories / tokens listed per statistic
UNSEEN = "(unseen)"
QUANTILES = {"p5": 0.05, "p25": 0.25, "p50": 0.5, "p75": 0.75, "p95": 0.95}
HOOK = "DRIFT_STATISTICS"
_TOKEN = re.compile(r"\w+")


# ------------------------------------------------------------------------------------ helpers
def _num(x) -> float | None:
    """A plain float, None for NaN/inf (strict JSON)."""
    x = float(x)
    return x if math.isfinite(x) else None


def _spec(spec) -> ModelSpec:
    return ModelSpec.from_dict(spec)


def _text(value) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return value if isinstance(value, str) else str(value)


def _strings(array: np.ndarray) -> list[str]:
    """One string per row: the row's strings joined by a space (a scalar input: the value)."""
    flat = array.reshape(len(array), -1)
    if flat.shape[1] == 1:
        return [_text(v) for v in flat[:, 0]]
    return [" ".join(_text(v) for v in row) for row in flat]


def _tokens(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


def _rows(features: dict, inputs: dict, outputs, who: str) -> int:
    """Check that ``features`` has every input with its shape and the same number of rows as
    ``outputs``; returns that number. ValueError naming the input otherwise."""
    if not isinstance(features, dict):
        raise ValueError(f"{who}: features must be a dict {{input name: array}}, got {type(features).__name__}")
    missing = [name for name in inputs if name not in features]
    if missing:
        raise ValueError(f"{who}: features miss the input(s) {missing} (the spec's inputs: {list(inputs)}; "
                         f"given: {sorted(features)})")
    n = None
    for name, (dtype, shape) in inputs.items():
        array = np.asarray(features[name])
        if array.ndim == 0 or tuple(array.shape[1:]) != tuple(shape):
            raise ValueError(f"{who}: input {name!r} has shape {list(array.shape)}; expected [rows, "
                             f"{', '.join(str(d) for d in shape)}]".replace(", ]", "]"))
        if dtype != "string" and not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
            raise ValueError(f"{who}: input {name!r} is {dtype} in the spec but its array holds {array.dtype}")
        if n is not None and len(array) != n:
            raise ValueError(f"{who}: input {name!r} has {len(array)} rows, the inputs before it {n}")
        n = len(array)
    if not n:
        raise ValueError(f"{who}: no rows")
    if outputs is not None and len(np.asarray(outputs)) != n:
        raise ValueError(f"{who}: {len(np.asarray(outputs))} outputs for {n} rows of features")
    return n


def _sample(features: dict, outputs: np.ndarray, inputs: dict, n: int, max_rows: int,
            seed: int) -> tuple[dict, np.ndarray]:
    keep = {name: np.asarray(features[name]) for name in inputs}
    outputs = np.asarray(outputs)
    if n <= max_rows:
        return keep, outputs
    rows = np.sort(np.random.default_rng(seed).choice(n, size=max_rows, replace=False))
    return {name: a[rows] for name, a in keep.items()}, outputs[rows]


def _outputs(task: str, outputs: np.ndarray, num_classes: int, who: str) -> np.ndarray:
    out = np.asarray(outputs, dtype=np.float64)
    if task == "multiclass":
        if out.ndim != 2 or (num_classes and out.shape[1] != num_classes):
            raise ValueError(f"{who}: multiclass outputs are class probabilities [rows, {num_classes or 'C'}], "
                             f"got shape {list(out.shape)}")
        return out
    if out.ndim == 2 and out.shape[1] == 1:
        out = out[:, 0]
    if out.ndim != 1:
        raise ValueError(f"{who}: {task} outputs are one number per row [rows], got shape {list(out.shape)}")
    return out


# ------------------------------------------------------------------------ numeric statistics
MIN_ROWS_PER_BIN = 25


def _numeric_profile(values: np.ndarray, bins: int) -> dict:
    """Quantile cut points of the finite values, the share of rows per bin and of non-finite rows."""
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    finite = values[np.isfinite(values)]
    if len(finite):
        cuts = np.unique(np.quantile(finite, np.linspace(0, 1, bins + 1)[1:-1]))
        if len(cuts) == 0 or cuts[-1] >= finite.max():  # a value above the reference's top gets its own bin
            cuts = np.append(cuts, np.nextafter(finite.max(), np.inf))
    else:
        cuts = np.array([])
    profile = {"cuts": [float(c) for c in cuts]}
    fractions, missing = _numeric_fractions(values, profile["cuts"])
    return {**profile, "fractions": fractions, "missing": missing,
            "mean": _num(finite.mean()) if len(finite) else None, "std": _num(finite.std()) if len(finite) else None}


def _numeric_fractions(values: np.ndarray, cuts: list[float]) -> tuple[list[float], float]:
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    ok = np.isfinite(values)
    finite = values[ok]
    edges = [-math.inf, *cuts, math.inf]
    share = len(finite) / len(values)
    fractions = _bin_fractions(finite, edges) * share if len(finite) else np.zeros(len(edges) - 1)
    return [float(f) for f in fractions], float(1.0 - share)


def _coarsened(reference: list[float], live: list[float], rows: int) -> tuple[list[float], list[float]]:
    """Adjacent bins merged (by the reference's mass) so that a live sample of ``rows`` has about
    :data:`MIN_ROWS_PER_BIN` rows per bin: PSI's sampling noise grows with bins / rows (ten bins on
    88 clean rows read ~0.3, above the usual 0.25 alarm), a real shift does not need ten bins."""
    k = max(2, min(len(reference), rows // MIN_ROWS_PER_BIN))
    if k >= len(reference):
        return reference, live
    middle = np.cumsum(reference) - np.asarray(reference) / 2  # each bin's centre in the reference's mass
    group = np.minimum((middle * k).astype(int), k - 1)
    merged = lambda f: np.bincount(group, weights=f, minlength=k).tolist()  # noqa: E731
    return merged(reference), merged(live)


def _numeric_measure(ref: dict, values: np.ndarray) -> dict:
    fractions, missing = _numeric_fractions(values, ref["cuts"])
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    finite = values[np.isfinite(values)]
    reference, live = _coarsened(list(ref["fractions"]), fractions, len(values))
    psi = psi_from_fractions([*reference, ref["missing"]], [*live, missing])
    out = {"psi": psi, "mean": _num(finite.mean()) if len(finite) else None, "reference_mean": ref["mean"],
           "std": _num(finite.std()) if len(finite) else None, "reference_std": ref["std"]}
    if missing or ref["missing"]:
        out.update({"missing": missing, "reference_missing": ref["missing"]})
    return out


# -------------------------------------------------------------------- categorical statistics
def _categories(array: np.ndarray, dtype: str) -> list[str]:
    flat = array.reshape(len(array))
    if dtype == "string":
        return [_text(v) for v in flat]
    return [str(int(v)) for v in flat]


def _categorical_profile(values: list[str]) -> dict:
    counts = Counter(values)
    categories = sorted(counts)
    return {"shares": {c: counts[c] / len(values) for c in categories}}


def _categorical_measure(ref: dict, values: list[str]) -> dict:
    counts = Counter(values)
    n = len(values)
    shares = {c: counts.get(c, 0) / n for c in ref["shares"]}
    unseen = 1.0 - sum(counts.get(c, 0) for c in ref["shares"]) / n
    psi = psi_from_fractions([*ref["shares"].values(), 0.0], [*shares.values(), unseen])
    moves = [(c, ref["shares"][c], shares[c]) for c in ref["shares"]]
    if unseen > 0:
        moves.append((UNSEEN, 0.0, unseen))
    moves.sort(key=lambda m: (-abs(m[2] - m[1]), m[0]))
    unseen_values = Counter(v for v in values if v not in ref["shares"]).most_common(TOP)
    return {"psi": psi, "shares": shares, "reference_shares": dict(ref["shares"]), "unseen_share": unseen,
            "unseen_values": [[v, c] for v, c in unseen_values],
            "moved": [{"category": c, "reference": r, "live": live} for c, r, live in moves[:TOP]]}


# --------------------------------------------------------------------------- text statistics
def _text_profiles(strings: list[str], bins: int, seed: int) -> tuple[dict, dict]:
    tokens = [_tokens(s) for s in strings]
    order = np.random.default_rng(seed).permutation(len(tokens))
    half = (len(tokens) + 1) // 2
    vocab_rows, held_out = order[:half], order[half:]
    counts = Counter(t for i in vocab_rows for t in tokens[i])
    vocabulary = sorted(t for t, _ in counts.most_common(MAX_VOCAB))
    known = set(vocabulary)
    held = [t for i in held_out for t in tokens[i]]
    oov_reference = sum(t not in known for t in held) / len(held) if held else 0.0
    length = _numeric_profile(np.array([len(t) for t in tokens], dtype=np.float64), bins)
    oov = {"vocabulary": vocabulary, "oov_rate_reference": float(oov_reference), "held_out_tokens": len(held)}
    return length, oov


def _oov_measure(ref: dict, strings: list[str], known: set) -> dict:
    tokens = [t for s in strings for t in _tokens(s)]
    unknown = Counter(t for t in tokens if t not in known)
    rate = sum(unknown.values()) / len(tokens) if tokens else 0.0
    r0 = ref["oov_rate_reference"]
    return {"psi": psi_from_fractions([1.0 - r0, r0], [1.0 - rate, rate]), "oov_rate": float(rate),
            "oov_rate_reference": r0, "tokens": len(tokens),
            "unseen_tokens": [[t, c] for t, c in unknown.most_common(2 * TOP)]}


# ------------------------------------------------------------------------ image / vector stats
def _image_channels(array: np.ndarray) -> np.ndarray:
    """(rows, values per channel, channels)."""
    n = len(array)
    if array.ndim >= 4 and array.shape[-1] <= MAX_CHANNELS:
        return array.reshape(n, -1, array.shape[-1])
    return array.reshape(n, -1, 1)


def _summaries(name: str, kind: str, array: np.ndarray) -> dict[str, np.ndarray]:
    """The default per-row statistics of an image or vector input."""
    x = np.asarray(array, dtype=np.float64)
    if kind == "image":
        channels = _image_channels(x)
        mean, std = channels.mean(axis=1), channels.std(axis=1)
        if channels.shape[2] == 1:
            return {f"{name}.mean": mean[:, 0], f"{name}.std": std[:, 0]}
        out = {}
        for k in range(channels.shape[2]):
            out.update({f"{name}.c{k}.mean": mean[:, k], f"{name}.c{k}.std": std[:, k]})
        return out
    flat = x.reshape(len(x), -1)
    return {f"{name}.mean": flat.mean(axis=1), f"{name}.std": flat.std(axis=1)}


def _input_kind(dtype: str, shape: tuple, array: np.ndarray) -> str:
    scalar = int(np.prod(shape)) == 1
    if dtype == "string":
        if scalar and len(set(_categories(array, dtype))) <= MAX_CATEGORIES:
            return "categorical"
        return "text"
    if scalar:
        if dtype == "int64" and len(np.unique(array)) <= MAX_INT_CATEGORIES:
            return "categorical"
        return "numeric"
    if dtype == "float32" and len(shape) >= 2:
        return "image"
    return "vector"


# --------------------------------------------------------------------------- module hook
def _hook_stats(module, features: dict, inputs: dict, n: int, who: str) -> dict[str, np.ndarray]:
    hook = getattr(module, HOOK, None) if module is not None else None
    if hook is None:
        return {}
    try:
        got = hook(dict(features))
    except Exception as exc:  # noqa: BLE001 - the user's module may raise anything: named and re-raised
        raise ValueError(f"{who}: the model module's {HOOK} failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(got, dict):
        raise ValueError(f"{who}: {HOOK} must return a dict {{name: one number per row}}, got {type(got).__name__}")
    out = {}
    for stat, values in got.items():
        if not isinstance(stat, str) or not stat:
            raise ValueError(f"{who}: {HOOK} returned a statistic named {stat!r}; names are non-empty strings")
        try:
            array = np.asarray(values, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{who}: {HOOK} statistic {stat!r} is not numeric: {exc}") from exc
        if array.shape != (n,):
            raise ValueError(f"{who}: {HOOK} statistic {stat!r} has shape {list(array.shape)}; expected one number "
                             f"per row [{n}]")
        out[stat] = array
    return out


def _declared_input(stat: str, inputs: dict) -> str | None:
    head = stat.split(".", 1)[0]
    return head if head in inputs else None


# ----------------------------------------------------------------------------- predictions
def _prediction_profile(task: str, out: np.ndarray, class_names: list[str], bins: int) -> dict:
    if task == "multiclass":
        c = out.shape[1]
        names = list(class_names) or [str(k) for k in range(c)]
        shares = np.bincount(np.argmax(out, axis=1), minlength=c) / len(out)
        return {"kind": "classes", "class_names": names, "fractions": [float(s) for s in shares]}
    profile = {"kind": "probability" if task == "binary" else "value", **_numeric_profile(out, bins)}
    finite = out[np.isfinite(out)]
    if task == "binary":
        profile["positive_share"] = float(np.mean(out >= 0.5))
    profile["quantiles"] = _quantiles(finite)
    return profile


def _quantiles(values: np.ndarray) -> dict:
    if not len(values):
        return {k: None for k in QUANTILES}
    return {k: _num(v) for k, v in zip(QUANTILES, np.quantile(values, list(QUANTILES.values())))}


def _prediction_measure(ref: dict, out: np.ndarray) -> dict:
    if ref["kind"] == "classes":
        c = len(ref["class_names"])
        shares = np.bincount(np.argmax(out, axis=1), minlength=c) / len(out)
        return {"kind": "classes", "psi": psi_from_fractions(ref["fractions"], shares),
                "histogram": dict(zip(ref["class_names"], (float(s) for s in shares))),
                "reference": dict(zip(ref["class_names"], ref["fractions"]))}
    result = {"kind": ref["kind"], **_numeric_measure(ref, out),
              "quantiles": _quantiles(out[np.isfinite(out)]), "reference_quantiles": ref["quantiles"]}
    if ref["kind"] == "probability":
        result.update({"positive_share": float(np.mean(out >= 0.5)),
                       "reference_positive_share": ref["positive_share"]})
    return result


# ---------------------------------------------------------------------------------- the API
def build_profile(spec, features: dict, outputs: np.ndarray, module=None, bins: int = 10, source: str = "",
                  max_rows: int = MAX_ROWS, seed: int = 0) -> dict:
    """The reference of :func:`measure`: from reference rows (training rows, say) and the model's
    outputs on them. ``spec``: a :class:`~tfmlops.modelspec.ModelSpec` (or its dict); ``module``:
    the model module, read for its optional ``DRIFT_STATISTICS``. JSON-able (strict JSON: no NaN).

    Keys: ``version``, ``source``, ``rows`` (given), ``rows_used`` (after the sample), ``bins``,
    ``seed``, ``task``, ``inputs`` ``{name: {"dtype", "shape", "kind", "stats": [stat names]}}``,
    ``stats`` ``{stat: {"input", "kind", ...}}`` (numeric kinds: ``cuts``, ``fractions``,
    ``missing``, ``mean``, ``std``; categorical: ``shares``; ``text_oov``: ``vocabulary``,
    ``oov_rate_reference``), ``prediction`` (``kind`` and its bins or class shares)."""
    spec = _spec(spec)
    if bins < 2:
        raise ValueError(f"build_profile: bins must be at least 2, got {bins}")
    who = "build_profile"
    n = _rows(features, spec.inputs, outputs, who)
    out = _outputs(spec.task, outputs, spec.num_classes, who)
    feats, out = _sample(features, out, spec.inputs, n, max_rows, seed)
    m = len(out)
    hooked = _hook_stats(module, feats, spec.inputs, m, who)
    declared = {_declared_input(s, spec.inputs) for s in hooked} - {None}
    inputs, stats = {}, {}
    for name, (dtype, shape) in spec.inputs.items():
        array = feats[name]
        kind = _input_kind(dtype, shape, array)
        names = []
        if name in declared:
            kind = "module"
        elif kind == "numeric":
            stats[name] = {"input": name, "kind": "numeric", **_numeric_profile(array, bins)}
            names = [name]
        elif kind == "categorical":
            stats[name] = {"input": name, "kind": "categorical", **_categorical_profile(_categories(array, dtype))}
            names = [name]
        elif kind == "text":
            length, oov = _text_profiles(_strings(array), bins, seed)
            stats[f"{name}.length"] = {"input": name, "kind": "text_length", **length}
            stats[f"{name}.oov"] = {"input": name, "kind": "text_oov", **oov}
            names = [f"{name}.length", f"{name}.oov"]
        else:
            for stat, values in _summaries(name, kind, array).items():
                stats[stat] = {"input": name, "kind": kind, **_numeric_profile(values, bins)}
                names.append(stat)
        inputs[name] = {"dtype": dtype, "shape": list(shape), "kind": kind, "stats": names}
    for stat, values in hooked.items():
        if stat in stats:
            raise ValueError(f"{who}: {HOOK} statistic {stat!r} has the name of a default statistic")
        owner = _declared_input(stat, spec.inputs)
        stats[stat] = {"input": owner, "kind": "module", **_numeric_profile(values, bins)}
        if owner is not None:
            inputs[owner]["stats"].append(stat)
    return {"version": PROFILE_VERSION, "source": source, "rows": int(n), "rows_used": int(m), "bins": int(bins),
            "seed": int(seed), "task": spec.task, "inputs": inputs, "stats": stats,
            "prediction": _prediction_profile(spec.task, out, spec.class_names, bins)}


def measure(profile: dict, features: dict, outputs: np.ndarray, module=None, max_rows: int = MAX_ROWS,
            seed: int = 0) -> dict:
    """PSI of every statistic of ``profile`` (:func:`build_profile`) and of the predictions on new
    rows (live traffic, a partition) and the model's outputs on them.

    Keys: ``rows``, ``rows_used``, ``features`` ``{stat: {"input", "kind", "psi", ...details}}``
    (numeric kinds: ``mean``/``std`` and the reference's; categorical: ``shares``,
    ``reference_shares``, ``unseen_share``, ``moved`` (the categories whose share moved most, the
    ``(unseen)`` bucket included); ``text_oov``: ``oov_rate``, ``oov_rate_reference``,
    ``unseen_tokens``), ``prediction`` (``kind``, ``psi``, ``histogram`` and ``reference`` for
    classes, ``quantiles`` and ``reference_quantiles`` for a probability or a value),
    ``input_psi_max``, ``input_psi_worst`` (its statistic, None when there is none),
    ``prediction_psi``, ``top`` ``[[stat, psi], ...]`` (most moved first, at most 5)."""
    who = "measure"
    declared = {name: (d["dtype"], tuple(d["shape"])) for name, d in profile["inputs"].items()}
    n = _rows(features, declared, outputs, who)
    num_classes = len(profile["prediction"].get("class_names", []))
    out = _outputs(profile["task"], outputs, num_classes, who)
    feats, out = _sample(features, out, declared, n, max_rows, seed)
    m = len(out)
    module_stats = [s for s, ref in profile["stats"].items() if ref["kind"] == "module"]
    hooked = {}
    if module_stats:
        if module is None or getattr(module, HOOK, None) is None:
            raise ValueError(f"{who}: the profile has the model module's statistics {module_stats}: pass the module "
                             f"(its {HOOK})")
        hooked = _hook_stats(module, feats, declared, m, who)
        lacking = [s for s in module_stats if s not in hooked]
        if lacking:
            raise ValueError(f"{who}: {HOOK} no longer returns {lacking} (it returned {sorted(hooked)})")
    cache: dict = {}
    results = {}
    for stat, ref in profile["stats"].items():
        name, kind = ref["input"], ref["kind"]
        if kind == "module":
            got = _numeric_measure(ref, hooked[stat])
        elif kind == "numeric":
            got = _numeric_measure(ref, feats[name])
        elif kind == "categorical":
            got = _categorical_measure(ref, _categories(feats[name], declared[name][0]))
        elif kind == "text_length":
            strings = cache.setdefault(("strings", name), _strings(feats[name]))
            got = _numeric_measure(ref, np.array([len(_tokens(s)) for s in strings], dtype=np.float64))
        elif kind == "text_oov":
            strings = cache.setdefault(("strings", name), _strings(feats[name]))
            got = _oov_measure(ref, strings, set(ref["vocabulary"]))
        elif kind in ("image", "vector"):
            summaries = cache.setdefault(("summaries", name), _summaries(name, kind, feats[name]))
            got = _numeric_measure(ref, summaries[stat])
        else:
            raise ValueError(f"{who}: the profile's statistic {stat!r} has an unknown kind {kind!r}")
        results[stat] = {"input": name, "kind": kind, **got}
    prediction = _prediction_measure(profile["prediction"], out)
    ranked = sorted(results, key=lambda s: (-results[s]["psi"], s))
    worst = ranked[0] if ranked else None
    return {"rows": int(n), "rows_used": int(m), "features": results, "prediction": prediction,
            "input_psi_max": results[worst]["psi"] if worst else 0.0, "input_psi_worst": worst,
            "prediction_psi": prediction["psi"], "top": [[s, results[s]["psi"]] for s in ranked[:TOP]]}


def _plain(value):
    """JSON-able: numpy scalars and arrays to Python ones."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_plain(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    return value


def _thin(roc: dict) -> dict:
    n = len(roc["fpr"])
    if n <= MAX_ROC_POINTS:
        return roc
    keep = np.unique(np.linspace(0, n - 1, MAX_ROC_POINTS).round().astype(int))
    return {k: [v[i] for i in keep] for k, v in roc.items()}


def quality(task: str, y_true, outputs, num_classes: int, max_rows: int = MAX_ROWS, seed: int = 0) -> dict:
    """Quality by task from labeled rows and the model's outputs on them
    (:func:`tfmlops.evaluation.task_metrics`): ``metric`` and ``value`` (the headline: accuracy,
    AUC, RMSE), every metric of the task, ``per_class`` precision/recall/F1 (multiclass), the
    ROC curve thinned to at most 201 points (binary), ``rows`` and ``rows_used`` (at most
    ``max_rows``, a seeded sample). JSON-able: Python types only (AUC is NaN when the labels
    hold one class)."""
    if task not in DEFAULT_GATE_METRIC:
        raise ValueError(f"quality: unknown task {task!r}; one of {list(DEFAULT_GATE_METRIC)}")
    y = np.asarray(y_true)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or not len(y):
        raise ValueError(f"quality: labels must be one per row [rows], got shape {list(y.shape)}")
    out = _outputs(task, outputs, num_classes if task == "multiclass" else 0, "quality")
    if len(out) != len(y):
        raise ValueError(f"quality: {len(out)} outputs for {len(y)} labels")
    n = len(y)
    if n > max_rows:
        rows = np.sort(np.random.default_rng(seed).choice(n, size=max_rows, replace=False))
        y, out = y[rows], out[rows]
    if task != "regression":
        classes = num_classes if task == "multiclass" else 2
        if not np.all(np.equal(np.mod(y, 1), 0)) or y.min() < 0 or y.max() >= classes:
            raise ValueError(f"quality: {task} labels are class indices 0..{classes - 1}, got values "
                             f"{np.unique(y)[:10].tolist()}")
        y = y.astype(np.int64)
    metrics = evaluation.task_metrics(task, y, out, num_classes)
    result = {"task": task, "metric": DEFAULT_GATE_METRIC[task], "value": metrics[DEFAULT_GATE_METRIC[task]],
              "rows": int(n), "rows_used": int(len(y)), **metrics}
    if task == "multiclass":
        result["per_class"] = per_class(metrics["confusion_matrix"])
    if "roc" in result:
        result["roc"] = _thin(result["roc"])
    return _plain(result)
