"""Settings shared by every test suite of the workspace.

Hypothesis explores fresh examples on developers' machines; under CI (``CI`` set) it is
derandomised, so a run is reproducible and a failure there is a real regression.
"""

from __future__ import annotations

import os

try:
    from hypothesis import settings
except ImportError:  # a package's test environment without hypothesis
    pass
else:
    settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
    if os.environ.get("CI"):
        settings.load_profile("ci")
