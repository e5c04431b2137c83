"""What an endpoint actually serves: version states from the status API, and waits on them.
(:mod:`.model_config` is what it is asked to serve; a version follows its config asynchronously.)"""

from __future__ import annotations

import time

from .client import ModelNotAvailableError, ServingClient, ServingError
from .errors import RolloutError

LOADED_STATES = ("START", "LOADING", "AVAILABLE", "UNLOADING")  # the server holds (or is getting) the version


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
        busy = {v for v in versions if states.get(v, ("END",))[0] in LOADED_STATES}
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
