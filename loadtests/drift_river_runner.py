"""Runs River's ADWIN and KSWIN over the streams bench_drift_quality.py wrote; River's venv only.

    <river-venv>/bin/python loadtests/drift_river_runner.py STREAM_DIR

STREAM_DIR/manifest.json lists the streams ({"name", "file", "drift_at"}); each
file is a float64 .npy of the live part as River sees it: the feature, the 0/1
errors, or a 0/1 indicator (of a category, of a missing value) where the
feature is not a number. For every stream and detector this writes the indexes
where the detector fired to STREAM_DIR/river.json. A stream with a drift point
stops at the first detection at or after it (the delay is all we need); a
stationary stream (drift_at null) runs to the end.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
from river import drift

KSWIN_SEED = 42


def detectors() -> dict[str, object]:
    # River's defaults, as a user would get them
    return {"river-adwin": drift.ADWIN(), "river-kswin": drift.KSWIN(seed=KSWIN_SEED)}


def run(values: np.ndarray, detector: object, drift_at: int | None) -> tuple[list[int], float]:
    found: list[int] = []
    started = time.perf_counter()
    for index, value in enumerate(values.tolist()):
        detector.update(value)  # type: ignore[attr-defined]
        if detector.drift_detected:  # type: ignore[attr-defined]
            found.append(index)
            if drift_at is not None and index >= drift_at:
                break
    return found, time.perf_counter() - started


def main(stream_dir: Path) -> None:
    manifest = json.loads((stream_dir / "manifest.json").read_text())
    results: dict[str, dict[str, dict[str, object]]] = {}
    for stream in manifest:
        values = np.load(stream_dir / stream["file"])
        for name, detector in detectors().items():
            found, seconds = run(values, detector, stream["drift_at"])
            results.setdefault(stream["name"], {})[name] = {
                "detections": found,
                "seconds": seconds,
                "events": len(values) if not found or stream["drift_at"] is None else found[-1] + 1,
            }
    (stream_dir / "river.json").write_text(json.dumps(results))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
