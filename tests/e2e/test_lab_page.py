"""The lab page (/lab) in a real headless browser: Debian's chromium driven by Playwright
against a real `gradserve serve` process.

It loads with no console errors and fetches nothing from outside the service; a preset
click redraws the figure and fills the table with the op's own numbers; a bad width
shows the API's error text. Screenshots go to the test's tmp folder; with
GRADSERVE_LAB_SCREENSHOT=1 the preset's one is also copied to docs/lab.png (the README's).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ROOT, ServerProcess, skip_or_fail_in_ci

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is a dev extra")
CHROMIUM = Path("/usr/bin/chromium")
pytestmark = [pytest.mark.e2e]


@pytest.fixture(autouse=True)
def _chromium() -> None:
    if not CHROMIUM.exists():
        skip_or_fail_in_ci("no /usr/bin/chromium (make test runs scripts/install_browser.sh)")


TIMEOUT_MS = 90_000
# What the page sends for the ReLU + Kaiming preset (its controls, in their order).
KAIMING = {"activation": "relu", "init": "kaiming_normal", "depth": 10, "width": 500, "mode": "fan_in"}
COLUMNS = ("mean", "std", "saturated", "dead", "grad_std")


def _query(params: dict[str, Any]) -> str:
    return "&".join(f"{k}={v}" for k, v in params.items())


def _wait_for_run(page: Any, query: str) -> None:
    """Until the figure for ``query`` has loaded and the table holds its numbers."""
    page.wait_for_function(
        """(query) => {
            const img = document.getElementById("plot");
            const table = document.getElementById("stats");
            return img.dataset.query === query && img.complete && img.naturalWidth > 0
                && table.dataset.query === query;
        }""",
        arg=query,
        timeout=TIMEOUT_MS,
    )


def test_lab_page(server: ServerProcess, tmp_path: Path) -> None:
    console: list[str] = []
    page_errors: list[str] = []
    requests: list[str] = []
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM))
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 1100})
            page.on("console", lambda m: console.append(f"{m.type}: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda e: page_errors.append(str(e)))
            page.on("request", lambda r: requests.append(r.url))

            # Load: the first preset (tanh, std 0.01) runs by itself.
            page.goto(f"{server.url}/lab", wait_until="load")
            _wait_for_run(
                page, _query({"activation": "tanh", "init": "normal", "depth": 10, "width": 500, "std": 0.01})
            )
            assert page.title().startswith("gradserve lab")
            assert console == [] and page_errors == [], (console, page_errors)

            # A preset click redraws the figure and refills the table.
            before = page.get_attribute("#plot", "src")
            page.click("button[data-preset=relu_kaiming]")
            _wait_for_run(page, _query(KAIMING))
            assert page.get_attribute("#plot", "src") != before
            assert page.get_attribute("button[data-preset=relu_kaiming]", "aria-pressed") == "true"
            assert page.is_hidden("#error")
            cells = page.eval_on_selector_all(
                "#stats tbody td[data-column]", "tds => tds.map(td => [td.dataset.column, td.dataset.value])"
            )
            direct = httpx.post(f"{server.url}/v1/lab/activation_stats", json=KAIMING, timeout=60).json()
            for column in COLUMNS:
                shown = [float(v) for c, v in cells if c == column]
                assert shown == [float(v) for v in direct[column]["data"]], column
            assert page.locator("#stats tbody tr").count() == 10
            shot = tmp_path / "lab.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
            if os.environ.get("GRADSERVE_LAB_SCREENSHOT"):
                shutil.copyfile(shot, ROOT / "docs" / "lab.png")
            assert console == [] and page_errors == [], (console, page_errors)

            # A bad width: the API's own error text is shown to the person.
            page.fill("#width", "5000")
            page.click("#run")
            page.wait_for_selector("#error:not([hidden])", timeout=TIMEOUT_MS)
            bad = httpx.post(
                f"{server.url}/v1/lab/activation_stats", json={**KAIMING, "width": 5000}, timeout=60
            )
            assert bad.status_code == 422
            message = bad.json()["error"]["message"]
            assert "'width'" in message
            assert page.text_content("#error") == f"422: {message}"
            assert page.text_content("#status") == "error"
            page.screenshot(path=str(tmp_path / "lab-error.png"), full_page=True)

            # An emptied field is the page's own error, naming it; nothing is sent (the
            # API would have run its default depth under the person's eyes).
            page.fill("#width", "500")
            page.fill("#depth", "")
            sent = len(requests)
            page.click("#run")
            page.wait_for_function("document.getElementById('error').textContent.includes('depth')")
            assert page.text_content("#error") == "depth: enter a number"
            assert page.text_content("#status") == "error"
            assert not any("activation_stats" in u for u in requests[sent:]), requests[sent:]

            # Chosen by hand, an init's mode starts at the API's default.
            page.fill("#depth", "10")
            page.select_option("#init", "xavier_normal")
            assert page.input_value("#mode") == "fan_avg"

            # At a phone's width nothing is pushed off the screen (the table scrolls).
            phone = browser.new_page(viewport={"width": 375, "height": 800})
            phone.goto(f"{server.url}/lab", wait_until="load")
            _wait_for_run(
                phone,
                _query({"activation": "tanh", "init": "normal", "depth": 10, "width": 500, "std": 0.01}),
            )
            assert phone.evaluate("document.documentElement.scrollWidth") <= 375
        finally:
            browser.close()

    # The only console errors after the bad width are the browser's notes on the 422
    # answers themselves; no script failed, and nothing was fetched from elsewhere.
    assert page_errors == []
    assert all("status of 422" in line for line in console), console
    outside = [u for u in requests if not u.startswith((server.url, "data:", "blob:"))]
    assert outside == [], outside
