"""The trainer while the registry is down (soak bug 3): a run waits for it, trying
again with backoff, instead of failing; its registration, keyed by the run id, is
safe to repeat. On the real broker, with a registry stopped and started on one port."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mlbus.bus import Publisher, ensure_topics
from mlbus.config import KafkaSettings
from mlbus.events import MODEL_PUBLISHED, MODEL_REGISTERED, TrainingCompleted
from mlbus.registry import RegistryServer, RegistrySettings
from mlbus.registry_client import RegistryClient
from mlbus.runtime._embedded import free_port
from mlbus.spec import ProjectSpec
from mlbus.trainer import TrainerService, TrainerSettings
from mlbus.training import LabelRow

from .test_trainer import Outcomes, eventually, request, stack, write_labelled_rows

pytestmark = pytest.mark.integration
__all__ = ["stack"]  # the fixture, shared with test_trainer


class WatchedFit:
    """A fit the test holds: `entered` once the run got past the champion's lookup."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, model: Any, x: np.ndarray, y: np.ndarray) -> Any:
        self.entered.set()
        if not self.release.wait(60):
            raise TimeoutError("the test never released the fit")
        return model.fit(x, y)


def labelled(spec: ProjectSpec, offline: Any) -> None:
    base = datetime(2025, 6, 1, tzinfo=UTC)
    rows = [
        LabelRow(
            f"card_{i % 40:06d}",
            f"tx{i}",
            int((base + timedelta(minutes=i)).timestamp() * 1000),
            f"cb{i}",
            i % 4 == 0,
        )
        for i in range(300)
    ]
    write_labelled_rows(spec, offline, rows, np.random.default_rng(0))


async def test_a_run_waits_for_the_registry_and_registers_once_it_is_back(
    kafka: KafkaSettings, stack: Any, tmp_path: Path, unique: str
) -> None:
    _, spec, offline = stack
    labelled(spec, offline)
    await ensure_topics(kafka, [MODEL_PUBLISHED, MODEL_REGISTERED])
    port = free_port()  # the registry's, fixed: it goes away and comes back on it
    registry_settings = RegistrySettings(
        data_dir=tmp_path / "registry", kafka=kafka, grpc_port=port, spec=tmp_path / "mlbus.yaml"
    )
    settings = TrainerSettings(
        data_dir=tmp_path,
        kafka=kafka,
        spec=tmp_path / "mlbus.yaml",
        registry_address=f"127.0.0.1:{port}",
        registry_timeout_s=2.0,
        registry_retry_s=120.0,
        group_id=f"trainer-{unique}",
        record_labels=False,
    )
    fit = WatchedFit()
    service = TrainerService(settings, spec, executor=ThreadPoolExecutor(1), fit=fit)
    task = asyncio.create_task(service.run())
    try:
        await service.wait_started()
        async with (
            Publisher(kafka, source="test") as publisher,
            Outcomes(kafka, spec.model.name) as outcomes,
        ):
            await request(publisher, spec.model.name)
            # Down at the start: the champion's lookup is tried again, the run goes on.
            await eventually(lambda: service.registry_retries >= 2)
            assert not fit.entered.is_set()
            async with RegistryServer(registry_settings, host="127.0.0.1"):
                await eventually(fit.entered.is_set)
            # Down again when the run registers: the registration is tried again.
            retries = service.registry_retries
            fit.release.set()
            await eventually(lambda: service.registry_retries > retries + 1)
            assert outcomes.events == []  # no training.failed meanwhile
            async with RegistryServer(registry_settings, host="127.0.0.1"):
                (done,) = await outcomes.wait_for(1, timeout_s=60)
                async with RegistryClient(f"127.0.0.1:{port}") as client:
                    versions = await client.list_versions(spec.model.name)
        assert isinstance(done, TrainingCompleted), done
        assert [(v.version, v.run_id) for v in versions] == [(1, done.run_id)]
        assert done.version == 1
        assert done.promoted
    finally:
        fit.release.set()
        service.stop()
        await asyncio.wait_for(task, 30)
