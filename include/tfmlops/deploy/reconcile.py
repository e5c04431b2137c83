"""What a model's targets serve, compared with the version they should serve.

The registry side (which version ``champion`` names) is the steps layer's
(:mod:`tfmlops.steps.reconcile`); here only the servers are asked: :func:`served_by` is the version
an endpoint's clients get, :func:`compare` says whether a set of endpoints serves a wanted version.
"""

from __future__ import annotations

from . import model_config
from .client import ServingError
from .endpoint import Endpoint
from .status import serving_versions

STABLE_LABEL = "stable"


def served_by(ep: Endpoint, model: str) -> int | None:
    """The version of ``model`` that ``ep``'s clients get: the one its ``stable`` label names when
    its config has that label (canary rollouts put it there; clients address it), else the highest
    AVAILABLE version (what an unversioned request gets). None: the endpoint does not serve it."""
    available = serving_versions(ep.client, model)
    if ep.model_config_file:
        entry = model_config.find_entry(model_config.read_config(ep), model)
        if entry is not None and STABLE_LABEL in entry.version_labels:
            labelled = int(entry.version_labels[STABLE_LABEL])
            if labelled in available:
                return labelled
    return max(available) if available else None


def compare(model: str, wanted: int, endpoints: list[Endpoint]) -> dict[str, int | str | None]:
    """``{endpoint: version}`` of the endpoints that do not serve ``wanted`` (``"unknown (…)"``
    for one that cannot answer: it is rolled like any other); empty when all serve it."""
    off: dict[str, int | str | None] = {}
    for ep in endpoints:
        try:
            served = served_by(ep, model)
        except (ServingError, OSError) as exc:
            served = f"unknown ({exc})"
        if served != wanted:
            off[ep.name] = served
    return off
