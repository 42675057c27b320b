"""The console's experiments and labeling pages on the real broker and Redis, with an in-process
registry that has a token.

The outcomes status is written by the outcomes service's own evaluator (over
its real Redis store), the labeling queue by `mlbus.labeling`, so the pages
read exactly what the services write. A label sent from the form must pass
CSRF, the registry's token and the labels source's contract, and then be on
the labels topic — once, and only when all three passed.
"""

from __future__ import annotations

import html
import json
import logging
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from markupsafe import escape
from pydantic import SecretStr

from mlbus.bus import Publisher, ensure_topics
from mlbus.config import KafkaSettings, RedisSettings
from mlbus.console import ConsoleSettings, build_app
from mlbus.events import (
    EXPERIMENT_ACTED,
    EXPERIMENT_DECIDED,
    MODEL_PUBLISHED,
    MODEL_REGISTERED,
    OUTCOMES_MEASURED,
)
from mlbus.labeling import LabelQueue, new_request
from mlbus.outcomes import Evaluator, ExperimentRecord, OutcomesStore, experiment_id
from mlbus.registry import RegistryServer, RegistrySettings
from mlbus.registry_client import RegistryClient
from mlbus.spec import load_spec
from tests.integration.test_outcomes import write_spec
from tests.unit.test_outcomes_evaluator import arm

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

TOKEN = "console-labels-token-9c2e"
HOSTILE = "<script>window.__xss=1</script>\"'&ü✓"
BAD_VALUE = "expected true or false for the label, got 'maybe'"  # the contract's words
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


@dataclass
class Console:
    client: httpx.AsyncClient
    app: Any
    model: str
    spec_path: Path
    labels_topic: str
    redis: RedisSettings
    registry_address: str
    kafka: KafkaSettings


@pytest.fixture
async def registry_address(kafka: KafkaSettings, tmp_path: Path) -> AsyncIterator[str]:
    await ensure_topics(kafka, [MODEL_PUBLISHED, MODEL_REGISTERED])
    settings = RegistrySettings(
        data_dir=tmp_path / "registry",
        kafka=kafka,
        grpc_port=0,
        spec=None,
        token=SecretStr(TOKEN),
    )
    async with RegistryServer(settings, host="127.0.0.1") as running:
        yield f"127.0.0.1:{running.port}"


@pytest.fixture
async def console(
    kafka: KafkaSettings, redis_url: str, registry_address: str, tmp_path: Path, unique: str
) -> AsyncIterator[Console]:
    model = f"console_{unique}"
    path = write_spec(tmp_path / "mlbus.yaml", model)
    doc = json.loads(path.read_text())
    doc["outcomes"]["experiments"].update(on_better="report", on_worse="report")
    doc["outcomes"]["labeling"] = {"band": 0.1, "sample_rate": 0.0, "max_open": 100}
    path.write_text(json.dumps(doc))
    spec = load_spec(path)
    labels_topic = spec.sources["labels"].topic
    await ensure_topics(
        kafka, [labels_topic, EXPERIMENT_DECIDED, EXPERIMENT_ACTED, OUTCOMES_MEASURED]
    )
    redis = RedisSettings(url=redis_url, key_prefix=f"test-{unique}")
    settings = ConsoleSettings(
        data_dir=tmp_path / "console",
        kafka=kafka,
        redis=redis,
        spec=path,
        registry_address=registry_address,
        outcomes_group=f"outcomes-{unique}",
    )
    app = build_app(settings, collect=False)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://console") as client:
            yield Console(client, app, model, path, labels_topic, redis, registry_address, kafka)


async def _write_outcomes(console: Console, unique: str) -> dict[str, Any]:
    """What the outcomes service writes: windows of v1 (champion) and v2 (canary), and an
    experiment the evaluator decides (canary better), publishing its verdict and action."""
    spec = load_spec(console.spec_path)
    store = OutcomesStore.from_settings(console.redis, group=f"outcomes-{unique}", ttl_s=3600)
    record = ExperimentRecord(
        experiment_id(console.model, "canary", 2, 1),
        console.model,
        "canary",
        champion_version=1,
        challenger_version=2,
        started_at=time.time() - 600,
    )
    bucket = int(time.time() // 300)
    champion, challenger = arm(0.72, 3000, 1), arm(0.86, 3000, 2)
    fields = {
        f"cell|{console.model}|1|champion|{bucket}": champion,
        f"cell|{console.model}|2|canary|{bucket}": challenger,
        f"arm|{record.experiment_id}|champion": champion,
        f"arm|{record.experiment_id}|challenger": challenger,
    }
    publisher = Publisher(console.kafka, "outcomes-test")
    try:
        await store.open_experiment(record)
        assert await store.save_partition("labels", 0, 10, fields, [], [])
        await publisher.start()
        evaluator = Evaluator(spec, store, None, bucket_s=300, publisher=publisher)
        status = await evaluator.evaluate()
    finally:
        await publisher.stop()
        await store.aclose()
    return status


async def test_experiments_page_shows_outcomes_the_verdict_its_evidence_and_events(
    console: Console, unique: str
) -> None:
    status = await _write_outcomes(console, unique)
    (decided,) = status["experiments"]
    assert decided["verdict"] == "better"
    await console.app.state.collector.refresh()  # the status and the event tails, read now
    answer = await console.client.get("/experiments")
    assert answer.status_code == 200
    text = html.unescape(answer.text)
    section = text.split('data-experiment="', 1)[1].split("</section>", 1)[0]
    assert section.startswith(decided["experiment_id"])
    assert 'data-verdict="better"' in section
    last = decided["last"]
    assert f"{last['difference']:+.4f} [{last['ci_low']:+.4f}, {last['ci_high']:+.4f}]" in section
    assert "3,000 outcomes" in section
    assert "report: done" in section  # the action taken, as the spec says
    figure = _figures(answer.text)[0]
    (point,) = figure["data"]
    assert point["x"] == [pytest.approx(last["difference"])]
    assert point["error_x"]["arrayminus"] == [pytest.approx(last["difference"] - last["ci_low"])]
    # Side by side and per version: v1 champion and v2 canary over the spec's 1 h window.
    outcomes = _plain(text.split('id="outcomes"', 1)[1].split("</table>", 1)[0])
    assert "v1" in outcomes
    assert "canary" in outcomes
    assert outcomes.count("3,000") == 2
    auc = next(r for r in status["windows"] if r["alias"] == "canary")["metrics"]["auc"]
    assert f"{auc['value']:.3g} [{auc['ci_low']:.3g}, {auc['ci_high']:.3g}]" in outcomes
    assert len(_figures(answer.text)) == 1 + 4  # the difference, then AUC … positive rate
    # The verdict and the action as events on their topics.
    decisions = text.split('id="decisions"', 1)[1].split("</table>", 1)[0]
    assert decided["experiment_id"] in decisions
    assert "better" in decisions
    actions = text.split('id="actions"', 1)[1].split("</table>", 1)[0]
    assert decided["experiment_id"] in actions
    assert "report v2" in actions


async def test_a_label_needs_csrf_the_token_and_a_valid_value_then_reaches_the_topic(
    console: Console, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    ids = await _queue(console, [("tx-near", 0.49), ("tx-nearest", 0.5), (HOSTILE, 0.45)])
    page = await console.client.get("/labeling")
    assert page.status_code == 200
    rows = re.findall(r'<tr class="request" data-event="([^"]*)"', page.text)
    shown = [html.unescape(e) for e in rows]
    assert shown == [ids[1], ids[0], ids[2]]  # highest priority (nearest the threshold) first
    counts = dict(re.findall(r'data-count="(\w+)">.*?class="value">([^<]*)<', page.text))
    assert counts["open"] == "3"
    assert counts["requested"] == "3"
    assert "<script>window.__xss" not in page.text  # hostile ids, entities, features: text
    assert page.text.count(str(escape(HOSTILE))) >= 4  # row, hidden field, entity, feature
    csrf = CSRF.search(page.text)
    assert csrf is not None

    async def send(event_id: str, label: str, token: str, csrf_token: str) -> httpx.Response:
        return await console.client.post(
            "/labeling/labels",
            data={
                "csrf_token": csrf_token,
                "scored_event_id": event_id,
                "label": label,
                "token": token,
            },
        )

    good = csrf.group(1)
    refused = [
        (await send(ids[1], "true", TOKEN, "forged"), 403, "CSRF"),
        (await send(ids[1], "true", "", good), 401, "needs the registry's bearer token"),
        (await send(ids[1], "true", "wrong", good), 401, "the token is wrong"),
        (await send(ids[1], "maybe", TOKEN, good), 400, BAD_VALUE),
        (await send("tx-unknown", "true", TOKEN, good), 400, "no labeling request waits for"),
        (await send(ids[1], "", TOKEN, good), 400, "no label was given"),
    ]
    for answer, status, message in refused:
        assert answer.status_code == status, answer.text[:500]
        shown_message = answer.text.split('id="message">', 1)[1].split("</div>", 1)[0]
        assert message in html.unescape(shown_message)
    accepted = await send(ids[1], "true", TOKEN, good)
    assert accepted.status_code == 303
    assert accepted.headers["location"] == f"/labeling?sent={ids[1]}"
    (label,) = await _labels(console)  # only the accepted one reached the topic
    assert label["tx_id"] == ids[1]
    assert label["is_fraud"] is True
    assert label["card_id"] == "card_nearest"  # the queued request's entity, not the form's
    confirmation = await console.client.get(accepted.headers["location"])
    assert "sent to " + console.labels_topic in confirmation.text
    # The token is never rendered back nor logged; the probes registered nothing.
    for answer, _, _ in refused:
        assert TOKEN not in answer.text
    assert TOKEN not in confirmation.text
    assert TOKEN not in caplog.text
    async with RegistryClient(console.registry_address) as registry:
        assert await registry.list_models() == []


async def _queue(console: Console, scored: list[tuple[str, float]]) -> list[str]:
    """Requests as the outcomes service queues them (`mlbus.labeling`); returns their ids."""
    import redis.asyncio as aioredis

    rules = load_spec(console.spec_path).outcomes.labeling
    assert rules is not None
    client = aioredis.Redis.from_url(console.redis.require_url())
    try:
        queue = LabelQueue(client, prefix=console.redis.key_prefix, model=console.model)
        requests = []
        for event_id, score in scored:
            hostile = not event_id.startswith("tx-")
            entity = HOSTILE if hostile else "card_" + event_id.removeprefix("tx-")
            distance = abs(score - 0.5)
            requests.append(
                new_request(
                    model=console.model,
                    version=1,
                    scored_event_id=event_id,
                    entity_id=entity,
                    reason="band",
                    priority=1.0 + (1.0 - distance / 0.1),
                    scores={"champion": score},
                    features={"v.amount": 12.5, "v.note": HOSTILE},
                    predicted_at=datetime.now(UTC),
                )
            )
        assert len(await queue.offer(requests, rules.max_open)) == len(requests)
    finally:
        await client.aclose()
    return [event_id for event_id, _ in scored]


async def _labels(console: Console) -> list[dict[str, Any]]:
    """Every record on the labels topic (the test's own: the model name is unique)."""
    consumer = AIOKafkaConsumer(
        **console.kafka.client_kwargs(), group_id=None, enable_auto_commit=False
    )
    await consumer.start()
    try:
        partitions = [
            TopicPartition(console.labels_topic, p)
            for p in sorted(consumer.partitions_for_topic(console.labels_topic) or ())
        ]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        found: list[dict[str, Any]] = []
        deadline = time.monotonic() + 20
        while [tp for tp in partitions if await consumer.position(tp) < ends[tp]]:
            assert time.monotonic() < deadline, "the labels topic could not be read to its end"
            batch = await consumer.getmany(timeout_ms=500)
            found += [json.loads(r.value) for records in batch.values() for r in records]
        return found
    finally:
        await consumer.stop()


def _figures(text: str) -> list[dict[str, Any]]:
    found = re.findall(r'type="application/json" data-plot="[^"]*">(.*?)</script>', text, re.S)
    return [json.loads(raw) for raw in found]  # `tojson` leaves no markup in them


def _plain(markup: str) -> str:
    """The text of an HTML fragment, tags dropped, spaces collapsed."""
    return " ".join(re.sub(r"<[^>]+>", " ", markup).split())
