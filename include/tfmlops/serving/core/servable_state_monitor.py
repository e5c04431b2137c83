"""States of every model version ever seen, mirroring TF Serving's
``tensorflow_serving/core/servable_state_monitor.cc`` (with the ``ManagerState`` values of
``servable_state.h`` as the ``START`` .. ``END`` strings).

States and errors of every version are kept for the status API (END versions included), like
ServableStateMonitor, and listed newest first.

Deviation: TF Serving's monitor learns the states from the manager's event bus; here the
manager writes the :class:`VersionRecord` fields itself while holding :attr:`lock`, which it
also holds while swapping its serving snapshot, so a version's AVAILABLE state and its
appearance in the snapshot change together.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from ..errors import StatusError, not_found

START, LOADING, AVAILABLE, UNLOADING, END = "START", "LOADING", "AVAILABLE", "UNLOADING", "END"


@dataclass
class VersionRecord:
    version: int
    state: str
    path: str = ""
    error: StatusError | None = None
    servable: object = None
    fingerprint: tuple | None = None
    retry: bool = False


class ServableStateMonitor:
    def __init__(self):
        # Re-entrant: the manager reads records (versions()) while it holds the lock for a change.
        self.lock = threading.RLock()
        self._records: dict[str, dict[int, VersionRecord]] = {}

    def add(self, name: str, rec: VersionRecord) -> None:
        with self.lock:
            self._records.setdefault(name, {})[rec.version] = rec

    def versions(self, name: str) -> dict[int, VersionRecord]:
        """A copy of ``{version: record}`` of one model (empty if none was ever seen)."""
        with self.lock:
            return dict(self._records.get(name, {}))

    def model_names(self) -> list[str]:
        with self.lock:
            return list(self._records)

    def model_status(self, name: str, version: int | None = None) -> list:
        """[(version, state, StatusError|None)], newest first (ServableStateMonitor order)."""
        recs = self.versions(name)
        if version is not None:
            rec = recs.get(version)
            if rec is None:
                raise not_found(f"Could not find version {version} of model {name}")
            return [(rec.version, rec.state, rec.error)]
        if not recs:
            raise not_found(f"Could not find any versions of model {name}")
        return [(r.version, r.state, r.error) for r in sorted(recs.values(), key=lambda r: -r.version)]
