"""The API docs (/docs, /redoc) and the landing page (/) in a real headless browser:
Debian's chromium driven by Playwright against a real `gradserve serve` process.

Every page must work on a machine without internet: each request the browser makes
is recorded and must go to the service itself (FastAPI's own pages load Swagger UI and
ReDoc from a CDN and ReDoc's fonts from Google; rest/pages.py serves them from a PyPI
package instead). Swagger UI's "Try it out" runs the cross_entropy example and shows the
service's own answer; ReDoc renders every op of the catalog.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.conftest import ServerProcess, skip_or_fail_in_ci

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is a dev extra")
CHROMIUM = Path("/usr/bin/chromium")
pytestmark = [pytest.mark.e2e]
TIMEOUT_MS = 60_000
CROSS_ENTROPY = "#operations-losses-losses_cross_entropy"


@pytest.fixture(autouse=True)
def _chromium() -> None:
    if not CHROMIUM.exists():
        skip_or_fail_in_ci("no /usr/bin/chromium (make test runs scripts/install_browser.sh)")


class Browser:
    """One page, with every request, console error and script error it saw."""

    def __init__(self, page: Any, server: ServerProcess) -> None:
        self.page, self.server = page, server
        self.requests: list[str] = []
        self.errors: list[str] = []
        page.on("request", lambda r: self.requests.append(r.url))
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(str(e)))

    def outside(self) -> list[str]:
        """Requests that left the service: another host or port, or any scheme but the
        page's own (blob: URLs of this origin are ReDoc's search worker)."""
        here = urlsplit(self.server.url)
        away = []
        for url in self.requests:
            parts = urlsplit(url.removeprefix("blob:"))
            if parts.scheme == "data":
                continue
            if (parts.scheme, parts.netloc) != (here.scheme, here.netloc):
                away.append(url)
        return away


@pytest.fixture
def browser(server: ServerProcess) -> Iterator[Browser]:
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM))
        try:
            yield Browser(chromium.new_page(viewport={"width": 1280, "height": 900}), server)
        finally:
            chromium.close()


def test_swagger_ui_try_it_out_runs_cross_entropy(server: ServerProcess, browser: Browser) -> None:
    page = browser.page
    page.goto(f"{server.url}/docs", wait_until="load")
    op = page.locator(CROSS_ENTROPY)
    op.wait_for(timeout=TIMEOUT_MS)
    op.locator(".opblock-summary-control").click()
    op.locator(".try-out__btn").click()
    # The example is the op's own (rest/models.py request_example), sent as shown.
    body = op.locator("textarea.body-param__text").input_value()
    op.locator(".execute").click()
    status = op.locator(".live-responses-table .response .response-col_status").first
    status.wait_for(timeout=TIMEOUT_MS)
    assert status.text_content().strip() == "200"
    shown = op.locator(".live-responses-table .response-col_description .microlight").first.text_content()

    direct = httpx.post(f"{server.url}/v1/losses/cross_entropy", content=body, timeout=30).json()
    assert '"loss"' in shown and '"grad_input"' in shown
    assert str(direct["loss"]["data"]) in shown
    assert browser.errors == []
    assert browser.outside() == []
    # Only the service's own assets were loaded, the UI's bundle among them.
    assert f"{server.url}/docs/swagger-ui-bundle.js" in browser.requests


def test_redoc_renders_every_op(server: ServerProcess, browser: Browser) -> None:
    page = browser.page
    page.goto(f"{server.url}/redoc", wait_until="load")
    page.locator("[data-section-id='operation/losses_cross_entropy']").wait_for(timeout=TIMEOUT_MS)
    catalog = httpx.get(f"{server.url}/v1/ops", timeout=30).json()["ops"]
    for op in catalog:
        section = page.locator(f"[data-section-id='operation/{op['family']}_{op['name']}']")
        assert section.count() == 1, op["name"]
    assert page.title() == "gradserve - ReDoc"
    assert browser.errors == []
    outside = browser.outside()
    assert outside == [], outside
    # ReDoc's fonts stay off (they would come from fonts.googleapis.com).
    assert not any("font" in url for url in browser.requests)


def test_landing_page_links_to_the_docs(server: ServerProcess, browser: Browser) -> None:
    page = browser.page
    page.goto(f"{server.url}/", wait_until="load")
    assert page.title().startswith("gradserve ")
    hrefs = page.eval_on_selector_all("#links a", "links => links.map(a => a.getAttribute('href'))")
    for path in ("/docs", "/redoc", "/lab", "/v1/ops", "/metrics", "/healthz", "/readyz"):
        assert path in hrefs
    for href in hrefs:
        assert httpx.get(f"{server.url}{href}", timeout=30).status_code == 200, href
    page.click("#links a[href='/docs']")
    page.locator(CROSS_ENTROPY).wait_for(timeout=TIMEOUT_MS)
    assert browser.errors == []
    assert browser.outside() == []
