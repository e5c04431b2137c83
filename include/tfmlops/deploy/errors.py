"""Errors of a rollout step, shared by the modules that lock, wait and check (no import of theirs)."""


class RolloutError(RuntimeError):
    """A rollout step failed; the message names the endpoint, version and numbers."""


class RolloutBusy(RolloutError):
    """Another rollout held an endpoint's lock for longer than the timeout; nothing was touched."""
