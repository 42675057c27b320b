"""`mlbus demo`: the closed loop on the embedded stack, as a story with numbers.

    run = run_demo(settings, DemoConfig(sizes=DemoSizes(payments=40_000)), reporter)
    run.summary.segment("after retraining").auc

The scenario (`plan_scenario`) is data; the loop (`run_loop`) drives a running
stack like an application and a producer would; the summary (`DemoSummary`)
is computed from what the loop recorded, by pure functions.
"""

from mlbus.demo._loop import (
    LoopContext,
    LoopOptions,
    PhaseFailed,
    PhaseTimeouts,
    Reporter,
    SilentReporter,
    start_loop,
)
from mlbus.demo._observe import BusObserver, LoopRecord
from mlbus.demo._run import (
    STORIES,
    DemoConfig,
    DemoRun,
    build_summary,
    experiment_spec,
    run_demo,
    story_sizes,
)
from mlbus.demo._scenario import (
    EXPERIMENT_SIZES,
    DemoSizes,
    Payment,
    ScenarioPlan,
    plan_scenario,
)
from mlbus.demo._stack import EmbeddedStack, StackError, demo_catalogue
from mlbus.demo._summary import (
    AFTER_DRIFT,
    AFTER_RETRAIN,
    BEFORE_DRIFT,
    DemoSummary,
    DetectionDelay,
    ExperimentResult,
    Milestones,
    ReloadWindow,
    Segment,
    ServedRequest,
    TraceLinks,
    experiment_result,
    roc_auc,
)
from mlbus.demo._trace import trace_links
from mlbus.demo._traffic import Scorer

__all__ = [
    "AFTER_DRIFT",
    "AFTER_RETRAIN",
    "BEFORE_DRIFT",
    "EXPERIMENT_SIZES",
    "STORIES",
    "BusObserver",
    "DemoConfig",
    "DemoRun",
    "DemoSizes",
    "DemoSummary",
    "DetectionDelay",
    "EmbeddedStack",
    "ExperimentResult",
    "LoopContext",
    "LoopOptions",
    "LoopRecord",
    "Milestones",
    "Payment",
    "PhaseFailed",
    "PhaseTimeouts",
    "ReloadWindow",
    "Reporter",
    "ScenarioPlan",
    "Scorer",
    "Segment",
    "ServedRequest",
    "SilentReporter",
    "StackError",
    "TraceLinks",
    "build_summary",
    "demo_catalogue",
    "experiment_result",
    "experiment_spec",
    "plan_scenario",
    "roc_auc",
    "run_demo",
    "start_loop",
    "story_sizes",
    "trace_links",
]
