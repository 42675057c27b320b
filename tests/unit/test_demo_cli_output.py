"""`mlbus demo` piped to a file (CI logs, `| tee`): plain lines with counts, no progress bars."""

from __future__ import annotations

import io
import itertools

from rich.console import Console

from mlbus.cli._demo import PlainReporter, RichReporter, reporter_for


def drive(reporter: RichReporter | PlainReporter) -> None:
    reporter.phase("generating the payments and chargebacks", None)
    reporter.news("wrote [bold]40,000[/] payments")
    reporter.phase("sending the bootstrap payments", 1_000)
    for _ in range(10):
        reporter.advance(100)
    reporter.finish()


def test_output_that_is_not_a_terminal_gets_plain_lines_with_counts() -> None:
    out = io.StringIO()
    console = Console(file=out, width=60)
    assert not console.is_terminal
    with reporter_for(console) as reporter:
        assert isinstance(reporter, PlainReporter)
        reporter.clock = itertools.count(0.0, 4.0).__next__  # 4 s between calls
        drive(reporter)
    text = out.getvalue()
    assert "━" not in text
    assert "…" not in text
    assert "\x1b[" not in text  # no colours, no cursor movement
    lines = text.splitlines()
    assert lines[0] == "[1] generating the payments and chargebacks"
    assert "  -> wrote 40,000 payments" in lines  # markup gone, no wrapping
    assert "[2] sending the bootstrap payments (0/1,000)" in lines
    assert any(line.strip().startswith("300/1,000 after") for line in lines)  # every ~10 s
    assert lines[-1].startswith("[2] done in ")
    assert lines[-1].endswith(", 1,000/1,000")


def test_a_terminal_gets_progress_bars() -> None:
    console = Console(file=io.StringIO(), force_terminal=True, width=80)
    with reporter_for(console) as reporter:
        assert isinstance(reporter, RichReporter)
        drive(reporter)
