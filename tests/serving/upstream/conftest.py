"""TF Serving's own model-server tests, ported as a conformance suite (see ``testdata/README.md``)."""

from __future__ import annotations

import pytest

from ._upstream import SERVERS


@pytest.fixture(autouse=True, scope="module")
def _stop_servers_after_module():
    """Upstream keeps its servers for the whole run; here each module stops the ones it started."""
    yield
    SERVERS.stop_all()
