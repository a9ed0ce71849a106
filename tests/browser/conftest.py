"""Debian's chromium, driven by Playwright, against the live dashboard on the real platform of `tests/dashboard`."""

import json
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Dialog, Page, sync_playwright

from tests.dashboard.conftest import API_KEY, AUTH, dashboard_platform, live_dashboard, platform_prefect

__all__ = ["dashboard_platform", "live_dashboard", "platform_prefect"]

CHROMIUM = Path("/usr/bin/chromium")  # Debian's package; never `playwright install`
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Headless chromium; skipped when it is not installed, except under `CI=true` where that fails the run.

    Requested before the platform fixtures, so the check happens before a platform is started. Module-scoped:
    sync Playwright runs an event loop in this thread, which must be gone before the next module's async tests.
    """
    if not CHROMIUM.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{CHROMIUM} is missing: the CI image must install Debian's chromium", pytrace=False)
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@dataclass
class Tab:
    """A page of the dashboard, with every JavaScript dialog and uncaught error it produced."""

    page: Page
    dialogs: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def new_tab(browser: Browser, base_url: str, *, with_key: bool = True) -> tuple[BrowserContext, Tab]:
    """A tab on a fresh browser context; `with_key=True` stores the API key as the page itself would."""
    context = browser.new_context(base_url=base_url, viewport={"width": 1280, "height": 860}, accept_downloads=True)
    context.set_default_timeout(30_000)
    if with_key:
        context.add_init_script(f"localStorage.setItem('comfybatch.apiKey', {json.dumps(API_KEY)});")
    tab = Tab(context.new_page())

    def record_dialog(dialog: Dialog) -> None:
        tab.dialogs.append(dialog.message)
        dialog.dismiss()

    tab.page.on("dialog", record_dialog)
    tab.page.on("pageerror", lambda error: tab.errors.append(str(error)))
    return context, tab


@pytest.fixture
def open_tab(browser: Browser, live_dashboard: str) -> Iterator[Callable[..., Tab]]:
    """Open tabs on the live dashboard (see `new_tab`); their contexts close after the test."""
    contexts: list[BrowserContext] = []

    def open_(*, with_key: bool = True) -> Tab:
        context, tab = new_tab(browser, live_dashboard, with_key=with_key)
        contexts.append(context)
        return tab

    yield open_
    for context in contexts:
        context.close()


def batch_name(prefix: str, label: str) -> str:
    """A fresh batch name for one test (`<prefix>-<label>-<6 hex>`)."""
    return f"{prefix}-{label}-{uuid.uuid4().hex[:6]}"


def create_batch(base_url: str, spec: dict[str, Any]) -> str:
    """Start a batch over the API (as a client other than the page would); its id."""
    response = httpx.post(f"{base_url}/api/batches", json=spec, headers=AUTH, timeout=30)
    assert response.status_code == 202, response.text
    return str(response.json()["batch_id"])
