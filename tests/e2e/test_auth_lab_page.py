"""The lab page against a server with API keys, in a real headless browser (Debian's
chromium driven by Playwright, as tests/e2e/test_lab_page.py).

The page itself loads without a key (its files are open); its first API call answers
401, so it shows the API's words and asks for the key; a wrong key is refused, and the
page says so; with the right one the experiment runs, the figures (fetched as blobs, since an
<img src> request cannot carry the header) and the table fill, and every API call
carried the key. The key stays for the tab (sessionStorage): a reload runs at once, a
new tab asks again.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ServerProcess, skip_or_fail_in_ci

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is a dev extra")
CHROMIUM = Path("/usr/bin/chromium")
pytestmark = [pytest.mark.e2e]
TIMEOUT_MS = 90_000
KEY = "lab-page-key-0123456789abcdefghij"
FIRST_RUN = "activation=tanh&init=normal&depth=10&width=500&std=0.01"


@pytest.fixture(autouse=True)
def _chromium() -> None:
    if not CHROMIUM.exists():
        skip_or_fail_in_ci("no /usr/bin/chromium (make test runs scripts/install_browser.sh)")


def _wait_for_run(page: Any, query: str) -> None:
    page.wait_for_function(
        """(query) => {
            const ok = (id) => { const img = document.getElementById(id); return img.complete && img.naturalWidth > 0; };
            return document.getElementById("plot").dataset.query === query && ok("plot")
                && document.getElementById("stats").dataset.query === query
                && ok("activation-plot") && ok("margin-plot");
        }""",
        arg=query,
        timeout=TIMEOUT_MS,
    )


def test_the_lab_page_asks_for_the_key_and_sends_it(
    server_factory: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    server = server_factory(env={"GRADSERVE_API_KEYS": KEY})
    api_calls: list[tuple[str, str | None]] = []
    page_errors: list[str] = []
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM))
        try:
            context = browser.new_context(viewport={"width": 1440, "height": 1100})
            page = context.new_page()
            page.on("pageerror", lambda e: page_errors.append(str(e)))
            page.on(
                "request",
                lambda r: (
                    api_calls.append((r.url, r.headers.get("authorization"))) if "/v1/" in r.url else None
                ),
            )

            # No key yet: the API's 401, in its own words, and the key form.
            page.goto(f"{server.url}/lab", wait_until="load")
            page.wait_for_selector("#auth:not([hidden])", timeout=TIMEOUT_MS)
            page.wait_for_selector("#error:not([hidden])", timeout=TIMEOUT_MS)
            assert page.text_content("#error").startswith("401: a valid API key is required")
            page.screenshot(path=str(tmp_path / "lab-key-asked.png"), full_page=True)

            # A wrong key: refused, and said so (not the missing-key words), and not kept.
            page.fill("#api-key", "not-the-key-0123456789")
            page.click("#use-key")
            # The status leaves "error" when the attempt starts, so this waits for the
            # wrong key's own answer, not the first attempt's.
            page.wait_for_function(
                "() => document.getElementById('status').textContent === 'error'"
                " && !document.getElementById('error').hidden",
                timeout=TIMEOUT_MS,
            )
            assert page.text_content("#error").startswith("401: the server refused this API key")
            assert page.evaluate("sessionStorage.getItem('gradserve.apiKey')") is None

            # The key: the experiment runs, figures and table fill.
            page.fill("#api-key", KEY)
            page.click("#use-key")
            _wait_for_run(page, FIRST_RUN)
            assert page.is_hidden("#error")
            assert page.locator("#stats tbody tr").count() == 10
            assert page.evaluate("() => sessionStorage.getItem('gradserve.apiKey')") == KEY
            assert page.get_attribute("#api-key", "value") in (None, "")  # not left in the field
            page.screenshot(path=str(tmp_path / "lab-keyed.png"), full_page=True)

            # The first call went without a key; every one since the key was given had it.
            assert api_calls[0] == (f"{server.url}/v1/ops", None)
            first_keyed = next(i for i, (_, auth) in enumerate(api_calls) if auth == f"Bearer {KEY}")
            later = api_calls[first_keyed:]
            assert all(auth == f"Bearer {KEY}" for _, auth in later), later
            plots = {
                url.split("?")[0].rsplit("/", 1)[-1]
                for url, auth in later
                if "/plots/" in url and auth == f"Bearer {KEY}"
            }
            assert plots == {"activation_stats", "activation", "margin"}, plots

            # A reload runs at once with the tab's key; another tab asks again.
            page.reload(wait_until="load")
            _wait_for_run(page, FIRST_RUN)
            assert page.is_visible("#forget-key")
            other = context.new_page()
            other.goto(f"{server.url}/lab", wait_until="load")
            other.wait_for_selector("#auth:not([hidden])", timeout=TIMEOUT_MS)

            # Forgetting the key: the next run is refused again.
            page.click("#forget-key")
            assert page.evaluate("() => sessionStorage.getItem('gradserve.apiKey')") is None
            page.click("#run")
            page.wait_for_selector("#error:not([hidden])", timeout=TIMEOUT_MS)
            assert page.text_content("#error").startswith("401:")
        finally:
            browser.close()
    assert page_errors == [], page_errors
