"""The browser tests' shared pieces: one chromium (Debian's, driven by Playwright) and the screenshot folder.

Screenshots of every browser step go to ``$OPTIMOVE_NETMERA_SCREENSHOTS`` (default
``${TMPDIR:-/tmp}/optimove-netmera-screenshots``), emptied once at the start of the run.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
SCREENSHOTS_ENV = "OPTIMOVE_NETMERA_SCREENSHOTS"
TIMEOUT_MS = 60_000


@pytest.fixture(scope="session")
def screenshots() -> Path:
    """The screenshot folder, emptied once a run (every browser test adds its steps' images).

    The workers of a pytest-xdist run share the folder: the first to get here empties it, under a lock, and stamps
    it with the run's id (``OPTIMOVE_NETMERA_TEST_RUN``, set once by tests/conftest.py and inherited by the workers).
    """
    folder = Path(os.environ.get(SCREENSHOTS_ENV) or Path(tempfile.gettempdir()) / "optimove-netmera-screenshots")
    folder.parent.mkdir(parents=True, exist_ok=True)
    run, stamp = os.environ["OPTIMOVE_NETMERA_TEST_RUN"], folder / ".run"
    with open(folder.parent / f".{folder.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not stamp.is_file() or stamp.read_text() != run:
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            stamp.write_text(run)
    return folder


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's chromium, headless, for one test module (never a downloaded browser).

    Module-scoped, not session-scoped: Playwright's sync API keeps an asyncio loop running in the main thread while
    it lives, so every later module's ``asyncio.run`` (and ``dag.test()`` running a trigger) would fail with
    "cannot be called from a running event loop" in a randomised order.
    """
    if not Path(CHROMIUM).is_file():
        pytest.fail(
            f"{CHROMIUM} is missing: the browser tests drive Debian's chromium. Install it with "
            "`apt-get update && apt-get install -y chromium` (never `playwright install`).",
            pytrace=False,
        )
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=TIMEOUT_MS)
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            yield chromium
        finally:
            chromium.close()


def log_in(browser: Any, base_url: str, user: str, password: str, shot: Path | None = None) -> Any:
    """A new page logged in to the Airflow UI at ``base_url`` through its form (``shot``: the form, filled)."""
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": 1500, "height": 1100})
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(base_url + "/")
    page.locator("input[name=username]").fill(user)
    page.locator("input[name=password]").fill(password)
    if shot is not None:
        page.screenshot(path=shot)
    page.locator("button[type=submit]").click()
    expect(page.get_by_role("link", name="Optimove Netmera").first).to_be_visible()
    return page
