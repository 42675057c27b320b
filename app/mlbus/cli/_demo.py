"""`mlbus demo`: the closed loop on the embedded stack, with progress and a summary table.

The scenario lives in `mlbus.demo`; this module only parses options, draws
progress, prints the summary and maps failures to an exit code.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from mlbus.cli._common import console, err_console, settings_or_exit

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, TaskID
    from rich.table import Table

    from mlbus.demo import DemoRun, DemoSummary, ExperimentResult

EXIT_PHASE_FAILED = 1
EXIT_INTERRUPTED = 130


class RichReporter:
    """One progress line per phase; news lines printed above the bars."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.task: TaskID | None = None
        self.total: int | None = None

    def phase(self, name: str, total: int | None = None) -> None:
        self.finish()
        self.task, self.total = self.progress.add_task(name, total=total), total

    def finish(self) -> None:
        """Mark the current phase done (a phase without a total shows as one step)."""
        if self.task is not None:
            done = self.total if self.total is not None else 1
            self.progress.update(self.task, total=done, completed=done)
            self.progress.stop_task(self.task)
            self.task = None

    def advance(self, steps: int = 1) -> None:
        if self.task is not None and steps:
            self.progress.advance(self.task, steps)

    def news(self, text: str) -> None:
        self.progress.console.print(f"  [cyan]→[/] {text}", highlight=False)


class PlainReporter:
    """Output that is not a terminal (CI logs, `| tee`): plain lines with counts, no bars.

    A line when a phase starts, its count at most every `every_s` while it runs,
    a line when it ends with its count and duration, and each news line.
    """

    def __init__(
        self,
        write: Callable[[str], None],
        *,
        every_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.write, self.every_s, self.clock = write, every_s, clock
        self.name: str | None = None
        self.total: int | None = None
        self.done = 0
        self.started = self.last_line = 0.0
        self.number = 0

    def phase(self, name: str, total: int | None = None) -> None:
        self.finish()
        self.number += 1
        self.name, self.total, self.done = name, total, 0
        self.started = self.last_line = self.clock()
        count = f" (0/{total:,})" if total is not None else ""
        self.write(f"[{self.number}] {name}{count}")

    def advance(self, steps: int = 1) -> None:
        if self.name is None or not steps:
            return
        self.done += steps
        now = self.clock()
        if now - self.last_line >= self.every_s:
            self.last_line = now
            self.write(f"    {self._count()} after {now - self.started:.0f} s")

    def finish(self) -> None:
        if self.name is None:
            return
        took = self.clock() - self.started
        count = f", {self._count()}" if self.total is not None else ""
        self.write(f"[{self.number}] done in {took:.1f} s{count}")
        self.name = None

    def news(self, text: str) -> None:
        from rich.text import Text

        self.write(f"  -> {Text.from_markup(text).plain}")

    def _count(self) -> str:
        return f"{self.done:,}/{self.total:,}" if self.total is not None else f"{self.done:,}"


@contextlib.contextmanager
def reporter_for(out: Console) -> Iterator[RichReporter | PlainReporter]:
    """Rich progress bars on a terminal; plain lines with counts anywhere else."""
    if out.is_terminal:
        with _progress() as progress:
            yield RichReporter(progress)
        return

    def write(line: str) -> None:
        out.print(line, markup=False, highlight=False, emoji=False, soft_wrap=True)

    yield PlainReporter(write)


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo(
        data_dir: Annotated[
            Path | None,
            typer.Option(
                "--data-dir",
                help="Data folder of the run (default: a new temporary folder, kept so "
                "`mlbus trace show` can read its spans).",
                file_okay=False,
            ),
        ] = None,
        seed: Annotated[int, typer.Option(help="Seed of the generated payments.")] = 7,
        payments: Annotated[
            int | None,
            typer.Option(
                min=5_000,
                help="Payments generated. loop: 40,000 over 8 days, the drift starts 120 hours "
                "before now; experiment, or --drift-kind concept: 55,000 over 11 days, the "
                "drift 192 hours before now (the same payments a day, a longer drifted "
                "stretch: for both arms' outcomes, or for the labels that show a concept "
                "drift and then retrain on it).",
                show_default=False,
            ),
        ] = None,
        bootstrap: Annotated[
            int, typer.Option(min=2_000, help="The oldest payments: what the first model learns.")
        ] = 12_000,
        after_retrain: Annotated[
            int,
            typer.Option(
                min=500, help="Stop once the retrained model has answered this many payments."
            ),
        ] = 4_000,
        drift_kind: Annotated[
            str,
            typer.Option(
                help="covariate (inputs move), concept (fraud changes), both, or none: the "
                "control run, which passes only if nothing is detected and nothing retrained.",
            ),
        ] = "both",
        story: Annotated[
            str,
            typer.Option(
                help="loop: the retrained model replaces the champion at once. experiment: it "
                "goes out as canary to half of the cards, and the stream goes on until the "
                "outcomes service's verdict on labelled outcomes promotes or rolls it back.",
            ),
        ] = "loop",
        concurrency: Annotated[
            int, typer.Option(min=1, max=256, help="Scoring calls in flight at once.")
        ] = 16,
        fallback_after: Annotated[
            int,
            typer.Option(
                min=0,
                help="Safety net, off by default: if no retrained model is in place after N "
                "drifted payments and none is training, request one by hand (reported as "
                "such). The drift service normally asks once enough drifted payments are "
                "labelled; 0: never.",
            ),
        ] = 0,
        summary_json: Annotated[
            Path | None,
            typer.Option(
                "--summary-json", help="Also write the summary to this JSON file.", dir_okay=False
            ),
        ] = None,
        keep: Annotated[
            bool,
            typer.Option(
                "--keep",
                help="Leave the stack up after a successful run (browse the console, use "
                "`mlbus status`, `mlbus models list` …) until Ctrl-C.",
            ),
        ] = False,
    ) -> None:
        """Run the closed loop once: train, serve, drift, detect, retrain, reload, recover.

        Starts the embedded broker, Redis and every service with the fraud example,
        sends generated payments and chargebacks, trains the first model, scores
        live payments over gRPC while the fraud pattern drifts, and waits for the
        drift service to trigger a retraining that inference hot-reloads. Ends with
        a summary: versions, AUC before drift / after drift / after retraining,
        detection delay, retraining time, requests during the reload and the trace
        to open with `mlbus trace show`. Exit code 1 names the phase that failed.
        """
        import tempfile

        from mlbus.config import MlbusSettings
        from mlbus.demo import (
            STORIES,
            DemoConfig,
            DemoRun,
            LoopOptions,
            PhaseFailed,
            StackError,
            run_demo,
            story_sizes,
        )
        from mlbus.errors import MlbusError
        from mlbus.example import DRIFT_KINDS, GenerationError

        if drift_kind not in DRIFT_KINDS:
            raise typer.BadParameter(
                f"expected one of {', '.join(DRIFT_KINDS)}", param_hint="--drift-kind"
            )
        if story not in STORIES:
            raise typer.BadParameter(f"expected one of {', '.join(STORIES)}", param_hint="--story")
        settings = settings_or_exit(MlbusSettings)
        root = data_dir or Path(tempfile.mkdtemp(prefix="mlbus-demo-"))
        settings = settings.model_copy(update={"data_dir": root.resolve()})
        try:
            sizes = story_sizes(story, drift_kind)  # type: ignore[arg-type]
            config = DemoConfig(
                sizes=replace(
                    sizes,
                    payments=sizes.payments if payments is None else payments,
                    bootstrap=bootstrap,
                ),
                seed=seed,
                loop=LoopOptions(
                    concurrency=concurrency,
                    after_retrain=after_retrain,
                    manual_retrain_after=fallback_after or None,
                ),
                story=story,  # type: ignore[arg-type]
            )
        except GenerationError as exc:
            raise typer.BadParameter(str(exc)) from None
        console.print(f"mlbus demo in [bold]{settings.data.root}[/]", highlight=False)
        run = DemoRun()
        code = 0
        with _signals_as_interrupt(), reporter_for(console) as reporter:
            try:
                run_demo(settings, config, reporter, run, keep=keep)
                reporter.finish()
            except PhaseFailed as exc:
                code = EXIT_PHASE_FAILED
                message = f"the demo failed in phase '{exc.phase}': {exc.detail}"
            except (StackError, GenerationError, MlbusError) as exc:
                code = EXIT_PHASE_FAILED
                message = f"the demo failed: {exc}"
            except KeyboardInterrupt:
                code = EXIT_INTERRUPTED
                message = "interrupted; every process was stopped"
        if run.summary is not None:
            print_summary(run.summary)
            if summary_json is not None:
                summary_json.write_text(
                    json.dumps(run.summary.model_dump(mode="json"), indent=2) + "\n"
                )
                console.print(f"summary written to {summary_json}", highlight=False)
        if code:
            err_console.print(f"[red]{message}[/]", highlight=False)
            err_console.print(f"logs: {settings.data.logs}", highlight=False)
        elif run.stack is not None:
            _keep_until_interrupted(run, settings.data.root)
        raise typer.Exit(code)


def _keep_until_interrupted(run: DemoRun, root: Path) -> None:
    """`--keep`: the stack stays up until Ctrl-C (or SIGTERM), then stops in order."""
    stack = run.stack
    assert stack is not None
    where = f"console at {run.console_url}, " if run.console_url else ""
    console.print(
        f"[bold]the stack is still up[/] ({where}data in {root}; "
        f"`mlbus status --data-dir {root}`); Ctrl-C to stop",
        highlight=False,
    )
    with _signals_as_interrupt():
        try:
            while stack.alive():
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
        finally:
            stack.stop()
    console.print("stopped")


class _signals_as_interrupt:  # noqa: N801 - used as a context manager, reads like one
    """Ctrl-C (SIGINT) and SIGTERM stop the demo at once, and every child in order.

    Both raise KeyboardInterrupt where the main thread is. asyncio.run's own
    Ctrl-C handling only cancels the main task, and a cancellation swallowed
    anywhere below lets the demo run on: seen twice in CI, where a Ctrl-C'd demo
    ran to its end (the swallowing await was not identified).
    """

    def __enter__(self) -> None:
        import signal

        def interrupt(signum: int, frame: object) -> None:
            raise KeyboardInterrupt

        self._previous = {
            sig: signal.signal(sig, interrupt) for sig in (signal.SIGINT, signal.SIGTERM)
        }

    def __exit__(self, *exc: object) -> None:
        import signal

        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _progress() -> Progress:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )


def _num(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2%}"


def _detection(summary: DemoSummary) -> str:
    delay = summary.detection
    if delay is None:
        return "no"
    if delay.seconds is None:
        return "FALSE ALARM: before any drifted payment was scored"
    if delay.false_alarm:
        return f"FALSE ALARM: {-delay.seconds:.1f} s before the first drifted payment"
    return f"{delay.events:,} drifted payments / {delay.seconds:.1f} s after the drift point"


def _frauds(count: int | None) -> str:
    return "" if count is None else f" ({count:,} labelled frauds)"


def _experiment_rows(facts: Table, result: ExperimentResult) -> None:
    """The experiment story's verdict, its evidence, the time to it and the action."""
    champion = f"v{result.champion_version or '-'}"
    canary = f"v{result.challenger_version or '-'}"
    arms = (
        f"{champion} {result.champion_served:,}{_frauds(result.champion_frauds)}, "
        f"canary {canary} {result.challenger_served:,}{_frauds(result.challenger_frauds)}"
    )
    if result.verdict == "not yet":
        facts.add_row(f"experiment {canary} vs {champion}", "NOT YET: no verdict")
        facts.add_row("  payments answered", arms)
        if result.note:
            facts.add_row("  why", result.note)
        return
    facts.add_row(
        f"experiment {canary} vs {champion}",
        f"{result.verdict.upper()} (always-valid p {_num(result.p_value, 4)} ≤ α "
        f"{_num(result.alpha, 2)}, {result.looks or 0:,} looks)",
    )
    facts.add_row(
        f"  {result.metric}",
        f"canary {_num(result.challenger_value)} vs champion {_num(result.champion_value)}: "
        f"difference {_signed(result.difference)}, interval "
        f"[{_signed(result.ci_low)}, {_signed(result.ci_high)}]",
    )
    outcomes = (result.champion_outcomes or 0) + (result.challenger_outcomes or 0)
    facts.add_row(
        "  labelled outcomes",
        f"canary {result.challenger_outcomes or 0:,}, champion {result.champion_outcomes or 0:,}"
        f" ({outcomes:,} to the verdict)",
    )
    facts.add_row("  payments answered", arms)
    facts.add_row(
        "  time to decision",
        "-"
        if result.seconds_to_decision is None
        else f"{result.seconds_to_decision:.1f} s from the canary's publication",
    )
    if result.action is None:
        facts.add_row("  action", result.note or "not seen")
    else:
        facts.add_row(
            "  action", f"{result.action} {result.action_outcome}: {result.action_reason}"
        )


def _signed(value: float | None) -> str:
    return "-" if value is None else f"{value:+.3f}"


def print_summary(summary: DemoSummary) -> None:
    from rich.table import Table

    from mlbus.demo import BEFORE_DRIFT

    versions = Table(
        title=f"mlbus demo — {summary.model} (seed {summary.seed})", title_justify="left"
    )
    versions.add_column("part of the stream")
    versions.add_column("served by", justify="right")
    versions.add_column("requests", justify="right")
    versions.add_column("labelled (fraud)", justify="right")
    versions.add_column("AUC", justify="right")
    for segment in summary.segments:
        versions.add_row(
            segment.name,
            ", ".join(f"v{v}" for v in segment.versions) or "-",
            f"{segment.requests:,}",
            f"{segment.labelled:,} ({segment.positives:,})",
            _num(segment.auc),
        )
    console.print(versions)

    facts = Table(show_header=False, title="the loop", title_justify="left")
    facts.add_column("what")
    facts.add_column("value", overflow="fold")
    facts.add_row(
        "versions",
        f"first v{summary.initial_version or '-'} → retrained v{summary.retrained_version or '-'}"
        + (f", asked for by: {summary.retrained_by}" if summary.retrained_by else "")
        + f" (served: {', '.join(f'v{v}' for v in summary.served_versions) or '-'})",
    )
    if summary.drift_kind == "none":
        facts.add_row(
            "control run (no drift)",
            f"{summary.detections:,} detections, {summary.drift_requests:,} drift-caused "
            "training requests (expected: 0 and 0)",
        )
    facts.add_row("drift detected", _detection(summary))
    before = summary.segment(BEFORE_DRIFT)
    if summary.initial_evaluation_auc is not None and before is not None:
        facts.add_row(
            "v1 evaluated vs served",
            f"AUC {_num(summary.initial_evaluation_auc)} on its holdout, {_num(before.auc)} "
            f"on what it served before the drift ({before.labelled:,} labelled)",
        )
    consistency = summary.consistency
    if consistency is not None:
        facts.add_row(
            "served = offline features",
            f"{_pct(consistency.match_rate)} of {consistency.values:,} values "
            f"({consistency.events:,} payments; {consistency.mismatch:,} mismatched, "
            f"{consistency.lag:,} lag apart) — mlbus features consistency",
        )
        for example in consistency.examples:
            facts.add_row("  a difference", example)
    if summary.causal_waits:
        facts.add_row(
            "scored in card order",
            f"{summary.causal_waits:,} payments waited for their card's previous payment to "
            f"be served ({summary.causal_timeouts:,} gave up)",
        )
    if summary.drift_causes:
        facts.add_row("drifted", ", ".join(summary.drift_causes))
    facts.add_row("drift-caused training requests", str(summary.drift_requests))
    facts.add_row(
        "retraining", "-" if summary.retraining_s is None else f"{summary.retraining_s:.1f} s"
    )
    if summary.promotion_reason:
        facts.add_row("promotion", summary.promotion_reason)
    facts.add_row(
        "drift onset → new model serving",
        "-" if summary.onset_to_new_model_s is None else f"{summary.onset_to_new_model_s:.1f} s",
    )
    if summary.reload is not None:
        span = (summary.reload.ended_at - summary.reload.started_at).total_seconds()
        facts.add_row(
            "during the reload",
            f"{summary.reload.served:,} served, {summary.reload.failed:,} failed ({span:.2f} s)",
        )
    failures = ", ".join(
        f"{status} {n:,}: {summary.failure_examples.get(status, '')}"
        for status, n in summary.failures.items()
    )
    facts.add_row(
        "requests",
        f"{summary.requests_total:,} sent, {summary.requests_failed:,} failed"
        + (f" ({failures})" if failures else ""),
    )
    traces = (
        ("trace", summary.trace),
        ("retraining's trace", summary.retrain_trace),
        ("alias move's trace", summary.publish_trace),
    )
    for title, trace in traces:
        if trace is None:
            continue
        links = ", ".join(f"{name} {'✓' if ok else '✗'}" for name, ok in trace.links.items())
        facts.add_row(title, f"{trace.trace_id or '-'}: {links} — {trace.note}")
        if trace.trace_id:
            facts.add_row(
                "open it with",
                f"MLBUS_DATA_DIR={summary.data_dir} mlbus trace show {trace.trace_id}",
            )
    if summary.experiment is not None:
        _experiment_rows(facts, summary.experiment)
    phases = ", ".join(f"{name} {secs:.0f} s" for name, secs in summary.phase_seconds.items())
    facts.add_row("time", f"{summary.total_seconds or 0:.0f} s ({phases})")
    for note in summary.notes:
        facts.add_row("note", note)
    console.print(facts)
