"""Headless Chromium from Debian's packages (`chromium`, `chromium-driver`), driven by Selenium.

Nothing downloads a browser: the driver and the browser are the system's, named
by path, and Selenium Manager is told to stay offline. Without them the browser
tests skip with the reason, except in CI (CI=true), where they fail: CI installs
both (`make chromium`, run by `make test`).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from mlbus.config import running_in_ci

CHROMIUM = os.environ.get("MLBUS_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("MLBUS_CHROMEDRIVER", "/usr/bin/chromedriver")
ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("MLBUS_ARTIFACTS_DIR", ROOT / "artifacts")) / "console"


def require_chromium() -> None:
    """Skip (outside CI) or fail (in CI) when the system browser or its driver is missing."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).is_file()]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium package (pip install -e '.[dev]')")
    if not missing:
        return
    reason = (
        f"browser tests need Debian's chromium and chromium-driver: missing {', '.join(missing)} "
        "(apt-get install -y chromium chromium-driver, or `make chromium` as root)"
    )
    if running_in_ci():
        pytest.fail(reason)
    pytest.skip(reason)


@contextmanager
def chromium(width: int = 1400, height: int = 1000) -> Iterator[Any]:
    """A headless Chromium session; quit on exit, however the test ends."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager never downloads anything
    options = Options()
    options.binary_location = shutil.which(CHROMIUM) or CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        f"--window-size={width},{height}",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(
    condition: Callable[[], Any], timeout_s: float = 30.0, what: str = "the condition"
) -> Any:
    """Poll until `condition()` is truthy; fail naming `what`."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = condition()
        except Exception as exc:  # an element not there yet, a stale one: try again
            last = exc
        if last and not isinstance(last, Exception):
            return last
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what} (last: {last!r})")


def submit_and_wait(driver: Any, form: Any, timeout_s: float = 20.0) -> None:
    """Click `form`'s button and wait for the page its submission answers with.

    Waiting for an element is not enough: the page that holds the form has the same
    elements until the browser swaps it, and a test that reads them then gets stale
    references. So wait for the old document to go, then for the new one to load."""
    from selenium.common.exceptions import StaleElementReferenceException

    old_page = driver.find_element("tag name", "html")
    form.find_element("css selector", "button").click()

    def old_page_gone() -> bool:
        try:
            old_page.tag_name  # noqa: B018 - any call on a swapped-out element raises
        except StaleElementReferenceException:
            return True
        return False

    wait_for(old_page_gone, timeout_s, "the form's answer to replace the page")
    wait_for(
        lambda: driver.execute_script("return document.readyState") == "complete",
        timeout_s,
        "the answer page to load",
    )


def screenshot(driver: Any, name: str) -> Path:
    """A full-page PNG under artifacts/console/ (Chromium's DevTools capture beyond the
    viewport, the page's whole height up to 8,000 px)."""
    import base64

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    time.sleep(0.5)  # figures finish their transitions
    layout = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})
    size = layout.get("cssContentSize") or layout["contentSize"]
    clip = {
        "x": 0,
        "y": 0,
        "width": float(size["width"]),
        "height": min(float(size["height"]), 8000.0),
        "scale": 1,
    }
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": clip}
    )
    path = ARTIFACTS / f"{name}.png"
    path.write_bytes(base64.b64decode(shot["data"]))
    return path


def severe_console_errors(driver: Any) -> list[str]:
    """JavaScript errors the page logged (SEVERE entries of the browser log)."""
    return [
        entry["message"] for entry in driver.get_log("browser") if entry.get("level") == "SEVERE"
    ]
