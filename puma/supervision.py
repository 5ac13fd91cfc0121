"""Supervision: what a :class:`puma.RestartPolicy` reports, and how it is tuned.

A Runner given ``on_failure=puma.RestartPolicy(...)`` restarts what fails or
dies instead of stopping everything.  This module holds the names that go
with it:

* :class:`Restart`: a runnable's kind (permanent, transient, temporary);
* :class:`Crash`: one end the policy acted on (who, how, what it did);
* :class:`RestartStatistics`: what the policy has done (``policy.statistics()``,
  also in ``runner.snapshot()``);
* :class:`DeadLetter`: a value in flight at a crash that was not given again;
* :class:`TooManyRestartsError`: the policy gave up, carrying the crash history.

See ``docs/supervision.md``.
"""

from __future__ import annotations

from puma._core.naming import present_as as _present_as
from puma._runner.restart_policy import (
    Crash,
    DeadLetter,
    Restart,
    RestartPolicy,
    RestartStatistics,
    TooManyRestartsError,
)

__all__ = ["Crash", "DeadLetter", "Restart", "RestartPolicy", "RestartStatistics", "TooManyRestartsError"]

_present_as("puma.supervision", globals(), [n for n in __all__ if n != "RestartPolicy"])  # puma.RestartPolicy
