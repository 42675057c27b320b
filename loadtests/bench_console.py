"""Server time of each console page with the demo's data, against a bare route of the same app.

The console answers every request with `Server-Timing: app;dur=<ms>` (the time
from the request to the response's headers: reads, rendering and figures, not
the network). Each page is asked `--requests` times in turn, after a warm-up;
p50 and p99 are recorded per page, beside the same app's bare route
(`/healthz`, a Starlette PlainTextResponse) measured interleaved in the same
run. The goal is the issue's: well under a person's 300 ms threshold, taken
here as p99 ≤ half of it; the 300 ms is a fixed budget, not a measurement.

    python loadtests/bench_console.py            # runs a shortened demo, kept up, then measures
    python loadtests/bench_console.py --url http://127.0.0.1:8080   # a running `mlbus demo --keep`
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import httpx

from _harness import Benchmark, console

BARE = "bare route (/healthz)"
BUDGET = "a person's threshold (300 ms, fixed)"
BUDGET_MS = 300.0
TIMING = re.compile(r"app;dur=([0-9.]+)")


def discover_pages(client: httpx.Client) -> dict[str, str]:
    """Page name → path, with a real model, version pair, detection, entity and trace."""
    pages = {"overview": "/", "models": "/models"}
    listing = client.get("/models").text
    model = _first(r'href="/models/([A-Za-z0-9_.-]+)"', listing)
    if model:
        pages["model"] = f"/models/{model}"
        versions = re.findall(
            rf'href="/models/{re.escape(model)}/versions/(\d+)"',
            client.get(f"/models/{model}").text,
        )
        if versions:
            pages["version (lineage)"] = f"/models/{model}/versions/{versions[0]}"
        if len(set(versions)) >= 2:
            a, b = sorted({int(v) for v in versions})[:2]
            pages["compare"] = f"/models/{model}/compare?a={a}&b={b}"
    pages["drift"] = "/drift"
    detection = _first(r'href="(/drift/detections/[0-9a-f-]+)"', client.get("/drift").text)
    if detection:
        pages["detection"] = detection
    entity = _first(r'href="/features\?entity=([^"]+)"', client.get("/features").text)
    pages["features"] = f"/features?entity={entity}" if entity else "/features"
    pages["experiments"] = "/experiments"
    pages["labeling"] = "/labeling"
    pages["traces"] = "/traces"
    trace = _first(r'id="loop-traces".*?href="(/traces/[0-9a-f]+)"', client.get("/traces").text)
    if trace:
        pages["trace (waterfall)"] = trace
    return pages


def _first(pattern: str, text: str) -> str | None:
    found = re.search(pattern, text, re.S)
    return found.group(1) if found else None


def server_ms(answer: httpx.Response) -> float:
    answer.raise_for_status()
    found = TIMING.search(answer.headers.get("server-timing", ""))
    if found is None:
        raise RuntimeError(f"{answer.request.url} answered without Server-Timing")
    return float(found.group(1))


def measure(url: str, requests: int, warmup: int) -> Benchmark:
    bench = Benchmark(
        "console_pages",
        "server time per console page (demo data) vs the same app's bare route",
        requests=requests,
        warmup=warmup,
        url=url,
    )
    with httpx.Client(base_url=url, timeout=30.0) as client:
        pages = discover_pages(client)
        console.print(f"pages: {', '.join(f'{n} {p}' for n, p in pages.items())}")
        samples: dict[str, list[float]] = {BARE: [], **{name: [] for name in pages}}
        for i in range(warmup + requests):
            for name, path in [("", "/healthz"), *pages.items()]:
                took = server_ms(client.get(path))
                if i >= warmup:
                    samples[name or BARE].append(took)
    bench.record_percentiles(samples)
    bench.record(BUDGET, "p50", BUDGET_MS, "ms", higher_is_better=False)
    bench.record(BUDGET, "p99", BUDGET_MS, "ms", higher_is_better=False)
    for name in pages:
        bench.goal(f"{name}: p99 well under 300 ms", name, BUDGET, "p99", "<=", 0.5)
        bench.notes.append(
            f"{name}: p50 {bench.median(name, 'p50'):.1f} ms, p99 {bench.median(name, 'p99'):.1f}"
            f" ms = {bench.ratio(name, BARE, 'p50'):.0f}× the bare route's p50"
        )
    return bench


def run_demo_and_measure(requests: int, warmup: int) -> Benchmark:
    from mlbus.config import MlbusSettings
    from mlbus.demo import DemoConfig, DemoRun, DemoSizes, LoopOptions, SilentReporter, run_demo

    config = DemoConfig(
        sizes=DemoSizes(payments=36_000, bootstrap=12_000, drift_age=timedelta(hours=120)),
        loop=LoopOptions(manual_retrain_after=None, after_retrain=500),
    )
    with tempfile.TemporaryDirectory(prefix="bench-console-") as tmp:
        console.print(f"running a shortened demo in {tmp} (a few minutes) …")
        started = time.monotonic()
        run = DemoRun()
        run_demo(MlbusSettings(data_dir=Path(tmp)), config, SilentReporter(), run, keep=True)
        console.print(f"demo done in {time.monotonic() - started:.0f} s; measuring")
        try:
            assert run.console_url is not None, "the demo did not start the console"
            time.sleep(12)  # two refreshes: event rates and score history have points
            return measure(run.console_url.rstrip("/"), requests, warmup)
        finally:
            if run.stack is not None:
                run.stack.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a running console (e.g. of `mlbus demo --keep`)")
    parser.add_argument("--requests", type=int, default=100, help="measured requests per page")
    parser.add_argument("--warmup", type=int, default=5, help="unmeasured requests per page")
    args = parser.parse_args(argv)
    if args.url:
        bench = measure(args.url.rstrip("/"), args.requests, args.warmup)
    else:
        bench = run_demo_and_measure(args.requests, args.warmup)
    return 0 if bench.report() else 1


if __name__ == "__main__":
    raise SystemExit(main())
