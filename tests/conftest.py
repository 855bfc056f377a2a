"""Root test configuration: settings every test's child processes inherit.

dcmtk and Orthanc stall ~40 ms per C-STORE without TCP_NODELAY=1 (Nagle + delayed
ACK); tests start them as children, so it is set once here for all of them.
Nothing here skips a test: a missing tool is a failure, installed by `make test`.
"""

from __future__ import annotations

import os

from hypothesis import settings

from api.dimse.tuning import tune_pynetdicom

os.environ["TCP_NODELAY"] = "1"

# The tests' own pynetdicom clients get what Chronicle's get (api.dimse.tuning):
# among them the race-free reactor pause, without which a client can lose a
# response that arrives within a millisecond.
tune_pynetdicom()

# Property tests judge correctness, not speed: on a shared 2-core CI machine a
# slow example must not fail a run (speed lives in bench/). Derandomized: every
# run draws the same examples, so CI fails only for a change, never for luck;
# HYPOTHESIS_PROFILE=explore draws fresh ones (what found the 2-bit JPEG-LS case).
settings.register_profile("chronicle", deadline=None, derandomize=True)
settings.register_profile("explore", deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "chronicle"))
