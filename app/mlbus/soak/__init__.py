"""The soak: the whole stack under steady load, broken on a schedule, checked at the end.

    report = run_soak(SoakConfig(minutes=10, faults=True), status=print)
    report["lost"], report["duplicated"], report["invariants"]

`loadtests/soak.py` is its command line. The invariants are pure functions
(`exactly_once`, `dead_letters`, `requests_answered`, `alias_history`,
`brute_force`, …) over what was sent and what was found, so each one is
unit-tested against a deliberately broken case.
"""

from mlbus.soak._checks import (
    OUTSIDE,
    AliasMove,
    FaultWindow,
    Invariant,
    Letter,
    Mismatch,
    RequestOutcome,
    ServerMemory,
    StoredRow,
    TimedEvent,
    alias_history,
    brute_force,
    compare_values,
    dead_letters,
    died_with_inference,
    exactly_once,
    faults_recovered,
    healthy_since,
    hostile_survived,
    nothing_left,
    online_values,
    recovery_summary,
    requests_answered,
    window_of,
)
from mlbus.soak._config import SoakConfig
from mlbus.soak._faults import (
    FaultRecord,
    corrupt,
    fault_kinds,
    fault_schedule,
    malformed_records,
    wrong_signature_model,
)
from mlbus.soak._run import run_soak

__all__ = [
    "OUTSIDE",
    "AliasMove",
    "FaultRecord",
    "FaultWindow",
    "Invariant",
    "Letter",
    "Mismatch",
    "RequestOutcome",
    "ServerMemory",
    "SoakConfig",
    "StoredRow",
    "TimedEvent",
    "alias_history",
    "brute_force",
    "compare_values",
    "corrupt",
    "dead_letters",
    "died_with_inference",
    "exactly_once",
    "fault_kinds",
    "fault_schedule",
    "faults_recovered",
    "healthy_since",
    "hostile_survived",
    "malformed_records",
    "nothing_left",
    "online_values",
    "recovery_summary",
    "requests_answered",
    "run_soak",
    "window_of",
    "wrong_signature_model",
]
