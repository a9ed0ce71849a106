"""The generate-batch run form as Prefect's own UI draws it, in chromium: what a person filling it reads."""

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, expect
from prefect.settings import PREFECT_API_URL, temporary_settings

from comfybatch.flows.batch import generate_batch
from comfybatch.local.prefect_server import LocalPrefectServer

pytestmark = pytest.mark.timeout(180)


async def _apply_deployment(api_url: str) -> str:
    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        deployment = await generate_batch.ato_deployment(name="generate-batch")
        return str(await deployment.apply())


@pytest.fixture(scope="module")
def run_form_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Prefect server with its UI, knowing the generate-batch deployment (no runner: the form is all we read)."""
    server = LocalPrefectServer(Path(tmp_path_factory.mktemp("prefect-form")), ui=True)
    server.start()
    try:
        deployment_id = asyncio.run(_apply_deployment(server.api_url))
        yield f"http://127.0.0.1:{server.port}/deployments/deployment/{deployment_id}/run"
    finally:
        server.stop()


def test_prefect_run_form_offers_templates_and_reads_in_words(run_form_url: str, browser: Browser) -> None:
    """The form lists the templates, describes every field in words and shows no 'Property is type "None"'."""
    page = browser.new_page(viewport={"width": 1280, "height": 2400})
    try:
        page.goto(run_form_url)
        expect(page.get_by_text("Which ComfyUI workflow renders the images")).to_be_visible(timeout=30_000)
        expect(page.get_by_text("How many images of each item")).to_be_visible()
        # The template picker: the first control after the workflow's three choices (Template is selected).
        page.locator("xpath=//button[normalize-space()='ComfyUI graph (JSON)']/following::button[1]").click()
        page.keyboard.press("ArrowDown")  # opens Prefect's select
        expect(page.locator(".p-select-option", has_text="txt2img-tiny").first).to_be_visible()
        body = page.inner_text("body")
    finally:
        page.close()

    assert "Property is type" not in body
    assert "Prefect UI's run form" not in body
