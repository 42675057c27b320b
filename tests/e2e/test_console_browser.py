"""The console in a real browser, over a real demo run left up (`run_demo(..., keep=True)`).

The closed-loop demo run (`demo` in conftest.py: real broker, Redis and every
service as processes, the console among them) trains v1, serves, drifts,
detects and retrains v2; its stack stays up, and headless Chromium opens every
page, clicks through to a model, a detection and a trace, promotes with the
token, sends a label from the labeling queue, and checks that hostile data
(script tags, quotes, unicode) is shown as text. Each page's screenshot is
saved under artifacts/console/. A page fails the test when it errors, logs a
JavaScript error, or renders without its data.
"""

from __future__ import annotations

import asyncio
import json
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mlbus.config import MlbusSettings
from mlbus.demo import DemoRun
from mlbus.runstate import check_run, pid_alive
from tests.e2e._browser import (
    chromium,
    require_chromium,
    screenshot,
    severe_console_errors,
    submit_and_wait,
    wait_for,
)
from tests.e2e.conftest import REGISTRY_TOKEN as TOKEN

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1200)]

HOSTILE = '<script>window.__xss=1</script>"\'><img src=x onerror="window.__xss=2">ü✓—'
HOSTILE_ENTITY = "card_<b>x</b>\"'<script>window.__xss=3</script>"


@pytest.fixture(scope="module")
def url(demo: DemoRun) -> str:
    require_chromium()
    assert demo.error is None, demo.error
    assert demo.stack is not None, "the demo did not leave the stack up (keep=True)"
    assert demo.console_url is not None, "the demo did not start the console"
    wait_for(lambda: _get(demo.console_url + "healthz") == "ok", 60, "the console to answer")
    return demo.console_url.rstrip("/")


@pytest.fixture(scope="module")
def browser(url: str) -> Iterator[Any]:
    with chromium() as driver:
        yield driver


def _get(address: str) -> str:
    with urllib.request.urlopen(address, timeout=10) as answer:
        return str(answer.read().decode())


def _open(driver: Any, address: str) -> None:
    driver.get(address)
    assert driver.find_elements("css selector", "#page-error") == [], driver.find_element(
        "css selector", "#page-error"
    ).text
    errors = driver.find_elements("css selector", "#errors")
    assert errors == [], errors[0].text


def _drawn(driver: Any, minimum: int = 1) -> int:
    count = len(driver.find_elements("css selector", "[data-drawn='1'] .main-svg"))
    return count if count >= minimum else 0


def _rows(driver: Any, table: str) -> list[Any]:
    return driver.find_elements("css selector", f"{table} tr td:not(.muted)")


def test_status_names_the_console_by_url(demo: DemoRun, url: str) -> None:
    assert demo.stack is not None
    state = demo.stack.state
    assert state is not None
    assert state.http_url("console") == f"{url}/"
    settings = MlbusSettings(data_dir=state.data_dir)
    report = asyncio.run(check_run(state, settings, 5.0))
    console = report.components["console"]
    assert console.healthy, console.detail
    assert console.address == f"{url}/"


def test_overview_shows_health_aliases_rates_detections_trainings_live(
    browser: Any, url: str
) -> None:
    _open(browser, url + "/")
    cards = wait_for(lambda: browser.find_elements("css selector", "#health .card"), 30, "health")
    names = {c.get_attribute("data-component") for c in cards}
    assert {"broker", "redis", "registry", "inference", "drift", "console"} <= names
    assert "champion" in browser.find_element("css selector", "#aliases").text
    wait_for(lambda: _rows(browser, "#detections"), 60, "a detection on the overview")
    trainings = browser.find_element("css selector", "#trainings").text
    assert "completed" in trainings
    assert "promoted" in trainings
    # Live: the SSE stream swaps the live part without a reload, and the chart redraws.
    first = int(browser.find_element("css selector", "#live").get_attribute("data-updates") or 0)
    wait_for(
        lambda: (
            int(browser.find_element("css selector", "#live").get_attribute("data-updates") or 0)
            > first
        ),
        30,
        "a live update over SSE",
    )
    wait_for(lambda: _drawn(browser), 30, "the event-rate chart")
    screenshot(browser, "01-overview")
    assert severe_console_errors(browser) == []


def test_click_through_to_a_model_its_lineage_and_a_comparison(browser: Any, url: str) -> None:
    _open(browser, url + "/models")
    screenshot(browser, "02-models")
    browser.find_element("css selector", "#models a").click()
    versions = wait_for(lambda: _rows(browser, "#versions"), 20, "the versions table")
    assert len(browser.find_elements("css selector", "#versions tr")) >= 3  # header, v2, v1
    assert "passed" in " ".join(v.text for v in versions)
    assert "champion" in browser.find_element("css selector", "#history").text
    screenshot(browser, "03-model")
    browser.find_element("css selector", "#versions a").click()  # newest first: v2
    lineage = wait_for(lambda: browser.find_element("css selector", "#lineage").text, 20, "lineage")
    assert "card_activity" in lineage
    assert "drift" in lineage, "v2's lineage should name the drift that asked for it"
    gate = browser.find_element("css selector", "#gate").text
    assert "beats champion" in gate or "passed" in gate.lower()
    assert browser.find_element("css selector", "#metrics").text.strip()
    screenshot(browser, "04-version")
    browser.back()
    submit_and_wait(browser, browser.find_element("css selector", "#compare-form"))
    wait_for(lambda: _drawn(browser), 20, "the metrics chart of the comparison")
    table = browser.find_element("css selector", "#compare").text.lower()  # headers: uppercase
    assert "v1" in table
    assert "v2" in table
    assert "metric auc" in table.lower()
    screenshot(browser, "05-compare")
    assert severe_console_errors(browser) == []


def test_drift_page_then_a_detection_its_retraining_and_its_trace(browser: Any, url: str) -> None:
    _open(browser, url + "/drift")
    wait_for(lambda: browser.find_elements("css selector", ".tests td"), 30, "the tests table")
    wait_for(lambda: _drawn(browser, 5), 30, "the histograms")
    histograms = browser.find_elements("css selector", ".histograms [data-drawn='1']")
    assert len(histograms) >= 5
    screenshot(browser, "06-drift")
    # The detection whose retraining column links a version (the one that caused v2),
    # found and clicked in one script: a live update may replace the table in between.
    clicked = wait_for(
        lambda: browser.execute_script(
            "for (const row of document.querySelectorAll('#detections tr')) {"
            "  if (row.querySelector('td:last-child a')) {"
            "    const link = row.querySelector('td a'); link.click(); return link.href; } }"
            "return null;"
        ),
        30,
        "a detection that caused a retraining",
    )
    assert "/drift/detections/" in clicked
    evidence = wait_for(lambda: _rows(browser, "#evidence"), 20, "the detection's evidence")
    assert evidence
    caused = browser.find_element("css selector", "#caused").text
    assert "drift" in caused
    assert "v2" in caused, "the detection page should link the retrained version"
    screenshot(browser, "07-detection")
    browser.find_element("css selector", "#trace-link").click()
    wait_for(lambda: _drawn(browser), 30, "the trace waterfall")
    services = browser.find_element("css selector", "main p").text
    for hop in ("mlbus-drift", "mlbus-trainer", "mlbus-registry"):
        assert hop in services, f"the loop trace lacks {hop}: {services}"
    assert len(browser.find_elements("css selector", "#spans tr")) > 5
    screenshot(browser, "08-trace")
    assert severe_console_errors(browser) == []


def test_features_page_shows_an_entitys_values_and_the_consistency(browser: Any, url: str) -> None:
    _open(browser, url + "/features")
    consistency = browser.find_element("css selector", "#consistency").text
    assert "card_activity" in consistency
    assert "%" in consistency, "no match rate: the consistency counters were not read"
    browser.find_element("css selector", "#entity-form a").click()
    values = wait_for(
        lambda: browser.find_elements("css selector", "table.online td"), 20, "online values"
    )
    assert values
    assert " ago," in browser.find_element("css selector", "main").text  # the values' age
    screenshot(browser, "09-features")
    assert severe_console_errors(browser) == []


def test_traces_page_lists_the_loop(browser: Any, url: str) -> None:
    _open(browser, url + "/traces")
    loops = browser.find_elements("css selector", "#loop-traces a.trace-link")
    assert loops, "no trace crosses the trainer and the registry"
    screenshot(browser, "10-traces")
    loops[0].click()
    wait_for(lambda: _drawn(browser), 30, "a waterfall")
    assert severe_console_errors(browser) == []


def test_experiments_page_shows_outcomes_per_version_with_intervals(browser: Any, url: str) -> None:
    _open(browser, url + "/experiments")
    # The demo's labels joined to what each champion served: rows with counts and intervals.
    rows = wait_for(lambda: _outcome_rows(browser), 60, "labelled outcomes on the experiments page")
    assert any(row["alias"] == "champion" and row["labelled"] > 0 for row in rows), rows
    # Every labelled row has an accuracy interval; AUC one needs both classes (~2% fraud).
    assert all("[" in row["accuracy"] for row in rows if row["labelled"] > 0), rows
    assert any("[" in row["auc"] for row in rows), rows
    assert "champion now" in browser.find_element("css selector", "#outcomes").text
    wait_for(lambda: _drawn(browser, 4), 30, "a chart per metric (AUC … positive rate)")
    # The demo runs no canary or shadow: the page says so; an experiment would show a verdict.
    experiments = browser.find_elements("css selector", "section.experiment")
    if experiments:
        verdicts = {e.get_attribute("data-verdict") for e in experiments}
        assert verdicts <= {"better", "worse", "not yet", "running", "ended"}, verdicts
    else:
        assert "No experiment has run" in browser.find_element("id", "no-experiments").text
    screenshot(browser, "11-experiments")
    assert severe_console_errors(browser) == []


def _outcome_rows(driver: Any) -> list[dict[str, Any]]:
    """The rows of the outcomes table that carry a window (one per version, alias, window)."""
    found: list[dict[str, Any]] = []
    alias = ""
    for row in driver.find_elements("css selector", "#outcomes tr"):
        cells = [c.text.strip() for c in row.find_elements("css selector", "td")]
        if len(cells) < 6:
            continue
        alias = cells[1] or alias
        labelled = int(cells[3].replace(",", ""))
        found.append({"alias": alias, "labelled": labelled, "auc": cells[4], "accuracy": cells[5]})
    return found


def _counts(driver: Any) -> dict[str, str]:
    return {
        card.get_attribute("data-count"): card.find_element("css selector", ".value").text
        for card in driver.find_elements("css selector", "#counts .card")
    }


def _count(driver: Any, name: str) -> int:
    return int(_counts(driver)[name].replace(",", ""))


def test_labeling_page_shows_the_queue_the_demo_filled(browser: Any, url: str) -> None:
    _open(browser, url + "/labeling")
    assert _count(browser, "requested") > 0, "the demo queued no labeling request"
    assert _count(browser, "answered") > 0, "no request was answered by the demo's chargebacks"
    assert _count(browser, "open") > 0, "no request waits (every label arrived?)"
    rows = browser.find_elements("css selector", "#requests tr.request")
    assert rows
    priorities = [float(r.find_element("css selector", "td").text) for r in rows]
    assert priorities == sorted(priorities, reverse=True), priorities
    first = rows[0].text
    assert "champion" in first  # its score
    assert "amount" in first  # its features
    assert rows[0].find_elements("css selector", "form input[name=token]")
    screenshot(browser, "11-labeling")
    assert severe_console_errors(browser) == []


def test_a_label_sent_from_the_browser_with_the_token_leaves_the_queue(
    browser: Any, url: str, demo: DemoRun
) -> None:
    _open(browser, url + "/labeling")
    answered = _count(browser, "answered")
    event_id = browser.find_element("css selector", "#requests tr.request").get_attribute(
        "data-event"
    )
    row = f'#requests tr.request[data-event="{event_id}"]'

    def send(label: str, token: str) -> None:
        form = browser.find_element("css selector", f"{row} form")
        form.find_element("css selector", "input[name=label]").send_keys(label)
        form.find_element("css selector", "input[name=token]").send_keys(token)
        submit_and_wait(browser, form)

    send("maybe", TOKEN)
    assert "expected true or false" in browser.find_element("id", "message").text
    send("true", "wrong-token")
    assert "token is wrong" in browser.find_element("id", "message").text
    assert browser.find_elements("css selector", row), "a refused label left the queue"
    send("true", TOKEN)
    assert event_id in browser.find_element("id", "sent").text
    screenshot(browser, "11-labeling-sent")

    def answered_and_gone() -> bool:  # ingestion, then the outcomes service, take seconds
        browser.get(url + "/labeling")
        return not browser.find_elements("css selector", row) and (
            _count(browser, "answered") > answered
        )

    wait_for(answered_and_gone, 60, "the labelled request to leave the queue as answered")
    assert TOKEN not in browser.page_source
    screenshot(browser, "11-labeling-after-a-label")
    logs = demo.stack.logs if demo.stack is not None else Path()
    assert TOKEN not in (logs / "console.log").read_text(), "the token reached the log"
    # The two refusals answered 400 and 401, which the browser logs; nothing else may be.
    refused = "/labeling/labels - Failed to load resource"
    assert [e for e in severe_console_errors(browser) if refused not in e] == []


def test_promotion_needs_the_token_and_csrf_and_hostile_text_stays_text(
    browser: Any, url: str, demo: DemoRun
) -> None:
    _open(browser, url + "/models/fraud_detector")

    def submit(action: str, version: str, token: str, reason: str) -> None:
        form = browser.find_element("css selector", "#promote-form")
        form.find_element("css selector", "select[name=action]").send_keys(action)
        form.find_element("css selector", "select[name=version]").send_keys(version)
        form.find_element("css selector", "input[name=reason]").send_keys(reason)
        form.find_element("css selector", "input[name=token]").send_keys(token)
        submit_and_wait(browser, form)

    submit("promote", "v1", "", "no token")
    assert "needs the registry's bearer token" in browser.find_element("id", "message").text
    submit("promote", "v1", "wrong-token", "bad token")
    assert "token is wrong" in browser.find_element("id", "message").text
    # A forged form (no CSRF field) is refused before the token is even looked at.
    browser.execute_script(
        "document.querySelector('#promote-form input[name=csrf_token]').value = 'forged'"
    )
    submit("promote", "v1", TOKEN, "forged")
    assert "CSRF" in browser.find_element("id", "message").text
    # With the token: v1 becomes champion, and the hostile reason is shown as text.
    _open(browser, url + "/models/fraud_detector")
    submit("promote", "v1", TOKEN, HOSTILE)
    history = browser.find_element("css selector", "#history")
    refused = browser.find_elements("id", "message")
    assert HOSTILE in history.text, refused[0].text if refused else "no message"
    assert browser.execute_script("return window.__xss") is None
    assert TOKEN not in browser.page_source, "the token was rendered back"
    versions = browser.find_element("css selector", "#versions").text
    assert "v1 champion" in versions.replace("\n", " ")
    # ...and rolled back to v2 with the same token.
    submit("roll back", "v1", TOKEN, "back to v2")
    assert "v2 champion" in browser.find_element("css selector", "#versions").text.replace(
        "\n", " "
    )
    screenshot(browser, "12-model-after-promote-and-rollback")
    logs = demo.stack.logs if demo.stack is not None else Path()
    assert TOKEN not in (logs / "console.log").read_text(), "the token reached the log"


def test_hostile_feature_values_entity_ids_and_span_names_are_shown_as_text(
    browser: Any, url: str, demo: DemoRun
) -> None:
    assert demo.stack is not None
    state = demo.stack.state
    assert state is not None
    assert state.redis is not None
    asyncio.run(_write_hostile_online_values(state.redis.url, state.redis.key_prefix))
    _write_hostile_span(state.data_dir / "spans")

    browser.get(f"{url}/features?entity={urllib.request.quote(HOSTILE_ENTITY)}")
    assert browser.find_element("id", "entity-name").text == HOSTILE_ENTITY
    assert HOSTILE in browser.find_element("css selector", "table.online").text

    def hostile_trace_listed() -> bool:  # span files are re-read at the next refresh
        browser.get(f"{url}/traces")
        return HOSTILE in browser.find_element("css selector", "#other-traces").text

    wait_for(hostile_trace_listed, 30, "the hostile trace on the traces page")
    # A labeling request with a hostile event id, entity and feature value: shown as text.
    asyncio.run(_write_hostile_labeling_request(state.redis.url, state.redis.key_prefix))
    browser.get(f"{url}/labeling")
    first = browser.find_element("css selector", "#requests tr.request")
    assert first.get_attribute("data-event") == HOSTILE
    assert HOSTILE_ENTITY in first.text
    assert HOSTILE in first.find_element("css selector", "td.features").text
    # A model name the registry refuses, and a path no page has: both echoed, as text.
    for path in (f"/models/{HOSTILE.replace('/', '')}", f"/no/such/{HOSTILE}"):
        browser.get(url + urllib.request.quote(path, safe="/"))
        assert "could not be shown" in browser.find_element("css selector", "h1").text
        assert "<script>" in browser.find_element("id", "page-error").text
    assert browser.execute_script("return window.__xss") is None
    assert "<script>window.__xss" not in _raw(
        f"{url}/features?entity=" + urllib.request.quote(HOSTILE_ENTITY)
    )


def _raw(address: str) -> str:
    try:
        return _get(address)
    except urllib.error.HTTPError as exc:
        return str(exc.read().decode())


async def _write_hostile_online_values(redis_url: str, prefix: str) -> None:
    """What the feature service writes for an entity (FeatureKeys, encode_value), hostile."""
    import time

    import redis.asyncio as aioredis

    from mlbus.featurestore import FeatureKeys, encode_value

    client = aioredis.Redis.from_url(redis_url)
    try:
        key = FeatureKeys(prefix).online("card_activity", 1, HOSTILE_ENTITY)
        await client.hset(
            key,
            mapping={
                b"__ts": str(int(time.time() * 1000) - 5000).encode(),
                b"__n": b"1",
                b"merchant_category": encode_value(HOSTILE),
                b"amount": encode_value(12.5),
            },
        )
        await client.expire(key, 600)
    finally:
        await client.aclose()


async def _write_hostile_labeling_request(redis_url: str, prefix: str) -> None:
    """A request as the outcomes service queues it (`mlbus.labeling`), hostile, first in line."""
    from datetime import UTC, datetime

    import redis.asyncio as aioredis

    from mlbus.labeling import LabelQueue, new_request

    client = aioredis.Redis.from_url(redis_url)
    try:
        request = new_request(
            model="fraud_detector",
            version=1,
            scored_event_id=HOSTILE,
            entity_id=HOSTILE_ENTITY,
            reason="band",
            priority=9.0,
            scores={"champion": 0.5},
            features={"card_activity.merchant_category": HOSTILE, "card_activity.amount": 1.0},
            predicted_at=datetime.now(UTC),
        )
        queue = LabelQueue(client, prefix=prefix, model="fraud_detector")
        assert await queue.offer([request], 1000) == [HOSTILE]
    finally:
        await client.aclose()


def _write_hostile_span(folder: Path) -> None:
    """Two spans of one trace (two services: a data-plane trace) with hostile names."""
    import time

    now = time.time_ns()
    trace_id = os.urandom(16).hex()
    root = os.urandom(8).hex()
    spans = [
        {
            "trace_id": trace_id,
            "span_id": root,
            "parent_span_id": None,
            "name": HOSTILE,
            "kind": "PRODUCER",
            "service": "mlbus-ingestion",
            "start_ns": now,
            "end_ns": now + 10**6,
        },
        {
            "trace_id": trace_id,
            "span_id": os.urandom(8).hex(),
            "parent_span_id": root,
            "name": HOSTILE,
            "kind": "CONSUMER",
            "service": "mlbus-features",
            "start_ns": now + 10**5,
            "end_ns": now + 2 * 10**6,
        },
    ]
    with (folder / "hostile-1.jsonl").open("w") as out:
        for span in spans:
            out.write(json.dumps(span) + "\n")


def test_stopping_the_kept_stack_leaves_no_process(demo: DemoRun) -> None:
    """Last in the module: `keep=True` hands the stack over; its stop ends every child."""
    assert demo.stack is not None, demo.error
    demo.stack.stop()
    pids = sorted(set(demo.child_pids) | set(demo.stack.child_pids()))
    assert pids, "the stack reported no processes"
    alive = [pid for pid in pids if pid_alive(pid)]
    assert alive == [], f"left behind: {alive}"
