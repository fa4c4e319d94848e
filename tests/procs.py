"""The process helpers ipcsem's tests have always imported from here, now
all from the kit users get (``ipcsem.testing``): a driven process (Agent),
the supervisor, the independent oracle, waiting.  Kept so that tests written
against this module keep working; new tests import ``ipcsem.testing``."""
from __future__ import annotations

from ipcsem.testing import (  # noqa: F401 - re-exported
    Agent,
    AgentError,
    SupervisorProcess,
    can_take_all,
    held_by,
    queued_pids,
    start_supervisor,
    wait_until,
)


def stop(supervisor: SupervisorProcess) -> str:
    """Stop a supervisor started with ``start_supervisor``; its whole log."""
    return supervisor.stop()
