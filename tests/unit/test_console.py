"""The console's pure parts: figures, the drift ratio, trace kinds, CSRF, escaping, filters."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from mlbus.console._app import _templates, ago, num
from mlbus.console._charts import histogram_figure, scores_figure, waterfall_figure
from mlbus.console._collector import ScorePoint
from mlbus.console._security import CSRF_COOKIE, csrf_ok
from mlbus.console._sources import kind_of
from mlbus.profiles import CategoricalProfile, NumericProfile
from mlbus.runstate import RunState, ServiceState
from mlbus.telemetry.spans import SpanRecord, build_traces

NOW = datetime(2026, 1, 5, 12, tzinfo=UTC)
HOSTILE = "<script>alert(1)</script>\"'&ü✓"


def test_numeric_histogram_compares_shares_on_the_reference_bins() -> None:
    profile = NumericProfile(edges=(1.0, 2.0), counts=(2, 6, 2))
    fig = histogram_figure("amount", profile, [0.5, 1.5, 1.5, 5.0, None])
    reference, live = fig["data"]
    assert reference["x"] == ["≤1", "1–2", ">2"]
    assert reference["y"] == pytest.approx([0.2, 0.6, 0.2])
    assert live["y"] == pytest.approx([0.25, 0.5, 0.25])  # the missing value left out
    assert live["name"] == "live (n=4)"


def test_categorical_histogram_pools_unseen_categories() -> None:
    profile = CategoricalProfile(frequencies={"a": 3, "b": 1})
    fig = histogram_figure("channel", profile, ["a", "zzz", "zzz"])
    reference, live = fig["data"]
    assert reference["y"][:2] == pytest.approx([0.75, 0.25])
    shares = dict(zip(live["x"], live["y"], strict=True))
    assert shares["a"] == pytest.approx(1 / 3)
    assert sum(shares.values()) == pytest.approx(1.0)
    assert shares.get("b") == 0.0


def test_drift_ratio_puts_score_and_p_value_tests_on_one_scale() -> None:
    psi = ScorePoint(at=NOW, score=0.3, p_value=None, threshold=0.2)
    ks_quiet = ScorePoint(at=NOW, score=0.02, p_value=0.5, threshold=0.01)
    ks_drift = ScorePoint(at=NOW, score=0.2, p_value=0.001, threshold=0.01)
    assert psi.ratio == pytest.approx(1.5)
    assert ks_quiet.ratio == pytest.approx(0.02)
    assert ks_drift.ratio == pytest.approx(10.0)


def test_scores_figure_draws_the_threshold_at_one_and_marks_detections() -> None:
    points = [(NOW, 0.5), (NOW + timedelta(seconds=5), 2.0)]
    fig = scores_figure("amount", {"ks": points}, [NOW])
    names = [trace["name"] for trace in fig["data"]]
    assert names == ["ks", "threshold", "detection"]
    assert fig["data"][1]["y"] == [1, 1]
    assert fig["layout"]["yaxis"]["type"] == "log"


def _span(trace: str, span: str, parent: str | None, service: str, name: str, at: int) -> Any:
    return SpanRecord(trace, span, parent, name, "INTERNAL", service, at, at + 1_000_000)


def test_trace_kinds_and_waterfall_offsets() -> None:
    loop = build_traces(
        [
            _span("a" * 32, "1" * 16, None, "mlbus-drift", "drift.detected", 10**9),
            _span("a" * 32, "2" * 16, "1" * 16, "mlbus-trainer", "training.run", 10**9 + 5 * 10**6),
            _span("a" * 32, "3" * 16, "2" * 16, "mlbus-registry", "register", 10**9 + 9 * 10**6),
        ]
    )[0]
    probe = build_traces([_span("b" * 32, "4" * 16, None, "mlbus-inference", "x", 0)])[0]
    health = build_traces(
        [_span("c" * 32, "5" * 16, None, "mlbus-registry", "grpc.health.v1.Health/Check", 0)]
    )[0]
    assert kind_of(loop) == "loop"
    assert kind_of(probe) == "probe"
    assert kind_of(health) == "probe"
    fig = waterfall_figure(loop)
    bases = {trace["name"]: trace["base"][0] for trace in fig["data"]}
    assert bases == {"mlbus-drift": 0.0, "mlbus-registry": 9.0, "mlbus-trainer": 5.0}


def test_csrf_needs_the_cookie_and_the_same_field() -> None:
    token = "x" * 43
    with_cookie = SimpleNamespace(cookies={CSRF_COOKIE: token})
    assert csrf_ok(with_cookie, token)  # type: ignore[arg-type]
    assert not csrf_ok(with_cookie, "y" * 43)  # type: ignore[arg-type]
    assert not csrf_ok(with_cookie, None)  # type: ignore[arg-type]
    assert not csrf_ok(SimpleNamespace(cookies={}), "")  # type: ignore[arg-type]


def test_templates_escape_hostile_text_and_figures(tmp_path: Path) -> None:
    env = _templates().env
    page = env.get_template("error.html").render(
        request=None,
        nav=(),
        active="",
        snap=SimpleNamespace(errors={HOSTILE: HOSTILE}, at=None),
        message=HOSTILE,
    )
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&#34;&#39;&amp;ü✓" in page
    macro = env.get_template("_macros.html").module.plot  # type: ignore[attr-defined]
    embedded = str(macro("p", {"data": [{"name": HOSTILE}], "layout": {}}))
    payload = embedded.split('data-plot="p">', 1)[1].rsplit("</script>", 1)[0]
    assert "<" not in payload  # no way out of the <script type="application/json"> element
    assert json.loads(payload)["data"][0]["name"] == HOSTILE


def test_number_and_age_filters() -> None:
    assert num(None) == "—"
    assert num(12345) == "12,345"
    assert num(0.123456) == "0.1235"
    assert ago(datetime.now(UTC) - timedelta(seconds=30)).endswith("s ago")
    assert ago(None) == "—"


def test_run_state_names_an_http_service_by_url(tmp_path: Path) -> None:
    state = RunState(
        supervisor_pid=1,
        data_dir=tmp_path,
        services={
            "console": ServiceState(http_port=18080, log=tmp_path / "c.log"),
            "registry": ServiceState(grpc_port=8002, log=tmp_path / "r.log"),
        },
    )
    assert state.http_url("console") == "http://127.0.0.1:18080/"
    assert state.http_url("registry") is None
    assert state.grpc_address("console") is None


def test_span_cache_counts_health_checks_and_rereads_only_on_change(tmp_path: Path) -> None:
    from mlbus.console._sources import SpanCache

    def line(trace: str, span: str, parent: str | None, service: str, name: str) -> str:
        record = _span(trace, span, parent, service, name, 10**9)
        return json.dumps(record.to_json()) + "\n"

    (tmp_path / "registry-1.jsonl").write_text(
        line("c" * 32, "5" * 16, None, "mlbus-registry", "grpc.health.v1.Health/Check")
        + line("a" * 32, "2" * 16, "1" * 16, "mlbus-registry", "register")
    )
    (tmp_path / "drift-2.jsonl").write_text(
        line("a" * 32, "1" * 16, None, "mlbus-drift", "drift.detected")
        + line("a" * 32, "1" * 16, None, "mlbus-drift", "drift.detected")  # written twice
    )
    cache = SpanCache(tmp_path)
    traces = cache.traces()
    assert [t.trace_id for t in traces] == ["a" * 32]
    assert len(traces[0].spans) == 2
    assert cache.health_checks == 1
    assert cache.kinds["data"] == traces
    assert cache.traces() is traces  # nothing changed: not rebuilt
    with (tmp_path / "drift-2.jsonl").open("a") as out:
        out.write(line("d" * 32, "6" * 16, None, "mlbus-drift", "solo"))
    assert cache.latest() is traces  # pages read the last refresh, never the files
    assert len(cache.traces()) == 2
    assert [t.trace_id for t in cache.kinds["probe"]] == ["d" * 32]
    assert len(cache.latest()) == 2


def test_window_labels_read_like_the_spec() -> None:
    from mlbus.console._pages_outcomes import window_label

    assert [window_label(s) for s in (3600, 86_400, 5400, 90, 604_800)] == [
        "1 h",
        "1 d",
        "90 min",
        "90 s",
        "7 d",
    ]


def test_feature_names_lose_their_view_only_when_they_stay_distinct() -> None:
    from mlbus.console._pages_outcomes import short_names

    assert short_names(["v.amount", "v.count"]) == {"v.amount": "amount", "v.count": "count"}
    both = ["a.amount", "b.amount"]
    assert short_names(both) == {"a.amount": "a.amount", "b.amount": "b.amount"}


def test_outcomes_figure_draws_each_interval_around_its_value() -> None:
    from mlbus.console._charts import outcomes_figure

    fig = outcomes_figure(
        "auc",
        [
            ("v2 champion", [("1 h", {"value": 0.8, "ci_low": 0.7, "ci_high": 0.85, "n": 900})]),
            ("v3 canary", [("1 h", {"value": None, "ci_low": None, "ci_high": None, "n": 0})]),
        ],
    )
    champion, canary = fig["data"]
    assert champion["y"] == [0.8]
    assert champion["error_y"]["array"] == [pytest.approx(0.05)]
    assert champion["error_y"]["arrayminus"] == [pytest.approx(0.1)]
    assert champion["customdata"] == [900]
    assert canary["x"] == []  # no value yet: nothing drawn, no invented point
    assert fig["layout"]["scattermode"] == "group"


async def _evaluated(tmp_path: Path, challenger_auc: float, *, experiment: bool) -> dict[str, Any]:
    """A status written by the outcomes service's own evaluator (in memory)."""
    from tests.unit.test_outcomes_evaluator import arm, setup

    evaluator, store, _ = setup(tmp_path, challenger_auc)
    bucket = int(datetime.now(UTC).timestamp() // evaluator.bucket_s)
    store.partitions[0][f"cell|m|1|champion|{bucket}"] = arm(0.8, 2000, 3)
    if not experiment:
        store.records.clear()
    status: dict[str, Any] = await evaluator.evaluate()
    return status


def _render_experiments(context: dict[str, Any]) -> str:
    from mlbus.console._pages_outcomes import window_label

    full = {
        "request": None,
        "nav": (),
        "active": "experiments",
        "snap": SimpleNamespace(errors={}, at=None),
        "model": "m",
        "alpha": 0.05,
        "decided": [],
        "acted": [],
        "window_label": window_label,
        **context,
    }
    return _templates().env.get_template("experiments.html").render(full)


async def test_without_an_experiment_the_page_says_so_and_shows_the_champions_outcomes(
    tmp_path: Path,
) -> None:
    from mlbus.console._pages_outcomes import experiments_context

    status = await _evaluated(tmp_path, 0.72, experiment=False)
    assert status["experiments"] == []
    context = experiments_context(status, champion_now=1, min_samples=500)
    page = _render_experiments(context)
    assert 'id="no-experiments"' in page
    outcomes = page.split('id="outcomes"', 1)[1].split("</table>", 1)[0]
    assert "champion now" in outcomes
    assert "2,000" in outcomes  # the champion's labelled outcomes in the window
    assert [len(f["data"]) for f in context["figures"]] == [1, 1, 1, 1]  # auc … positive rate
    assert context["figures"][0]["data"][0]["name"] == "v1 champion"


async def test_a_champion_without_labelled_outcomes_is_still_named_champion_now(
    tmp_path: Path,
) -> None:
    """Just after a promotion the new champion has answered nothing labelled: the table
    still says which version serves, above the older champion's rows."""
    from mlbus.console._pages_outcomes import experiments_context

    status = await _evaluated(tmp_path, 0.72, experiment=False)
    context = experiments_context(status, champion_now=2, min_samples=500)
    first = context["arms"][0]
    assert (first["version"], first["champion_now"], first["windows"]) == (2, True, [])
    outcomes = _render_experiments(context).split('id="outcomes"', 1)[1].split("</table>")[0]
    newest, older = outcomes.split('class="no-outcomes"', 1)[1].split("</tr>", 1)
    for shown in ("v2", "champion now", "no labelled outcomes yet"):
        assert shown in newest
    assert "2,000" in older  # v1's rows, no longer the champion
    assert "champion now" not in older
    assert [len(f["data"]) for f in context["figures"]] == [1, 1, 1, 1]  # v1's series only


async def test_an_experiment_shows_its_verdict_evidence_and_escapes_what_it_names(
    tmp_path: Path,
) -> None:
    from mlbus.console._pages_outcomes import experiments_context

    status = await _evaluated(tmp_path, 0.84, experiment=True)
    (record,) = status["experiments"]
    assert record["verdict"] == "better"
    record["experiment_id"] = HOSTILE
    record["action_outcome"] = HOSTILE
    context = experiments_context(status, champion_now=1, min_samples=500)
    (shown,) = context["experiments"]
    last = record["last"]
    assert shown["figure"]["data"][0]["x"] == [last["difference"]]
    assert shown["figure"]["data"][0]["error_x"]["array"] == [
        pytest.approx(last["ci_high"] - last["difference"])
    ]
    page = _render_experiments(context)
    assert 'data-verdict="better"' in page
    assert f"{last['difference']:+.4f}" in page
    assert "<script>alert(1)</script>" not in page
    assert page.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 3  # id, data attribute, action
