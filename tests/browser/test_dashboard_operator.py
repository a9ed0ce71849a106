"""Issue 13 §3 in real headless chromium: the full-size viewer, the fleet panel, a failed batch's reason, "Retry
failed" and "Render the rest" (the same batch resumed), and the batch view at 400 px."""

import asyncio
import io
import os
import re
import shutil
import time
import zipfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from playwright.sync_api import Browser, Page, Route, expect
from prefect.settings import PREFECT_API_URL, temporary_settings

from comfybatch.blocks.drain import set_draining
from comfybatch.blocks.server import name_from_url
from comfybatch.dashboard.app import create_app
from comfybatch.dashboard.launcher import Launcher
from comfybatch.dashboard.schemas import TERMINAL_STATES
from comfybatch.local.fleet import free_port
from comfybatch.testing.live_app import serve_in_thread
from tests.browser.conftest import Tab, batch_name, create_batch, new_tab
from tests.dashboard.conftest import AUTH, DashboardPlatform, flaky_spec
from tests.support import graphs

pytestmark = pytest.mark.timeout(300)

BATCH_URL = re.compile(r"#/batches/([0-9a-f-]{36})$")
DOCS = Path(__file__).resolve().parents[2] / "docs"
DONE_CARDS_JS = """() => [...document.querySelectorAll('[data-testid="item"]')].filter((card) => {
  const img = card.querySelector('img[data-testid="thumb"]');
  return card.dataset.state === "done" && img !== null && img.complete && img.naturalWidth > 0;
}).length"""
CARDS_JS = """() => [...document.querySelectorAll('[data-testid="item"]')].map((card) =>
  `${card.dataset.state}: ${card.querySelector('.media')?.textContent || ''}`
  + (card.querySelector('.media.loading') ? ' (image loading)' : ''))"""


def _name(label: str) -> str:
    return batch_name("operator", label)


def _status(base_url: str, batch_id: str) -> dict[str, Any]:
    response = httpx.get(f"{base_url}/api/batches/{batch_id}", headers=AUTH, timeout=30)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _wait_done_cards(page: Page, count: int, *, timeout_s: float = 120.0) -> None:
    """Until at least `count` cards are done with their thumbnail loaded."""
    deadline = time.monotonic() + timeout_s
    while page.evaluate(DONE_CARDS_JS) < count:
        if time.monotonic() > deadline:
            cards = page.evaluate(CARDS_JS)
            pytest.fail(f"not {count} done cards with thumbnails within {timeout_s:g} s; cards: {cards}", pytrace=False)
        page.wait_for_timeout(200)


def _wait_state(page: Page, state: str) -> None:
    expect(page.get_by_test_id("batch-state")).to_have_attribute("data-state", state, timeout=120_000)


def _save_doc(shot: Path, name: str) -> None:
    """Keep the screenshot for the README when asked (`COMFYBATCH_SAVE_SCREENSHOT=1`)."""
    assert shot.stat().st_size > 5_000
    if os.environ.get("COMFYBATCH_SAVE_SCREENSHOT") == "1":
        DOCS.mkdir(exist_ok=True)
        shutil.copyfile(shot, DOCS / name)


def _quick_spec(name: str, count: int, *, seconds: float = 0.05) -> dict[str, Any]:
    """`count` Delay items, the prompt bound to the node's nonce (a distinct job each)."""
    graph = graphs.delay(seconds, graphs.unique(name))
    prompts = [f"{name} item {number}" for number in range(1, count + 1)]
    return {"name": name, "workflow": graph, "bindings": {"prompt": "2.inputs.nonce"}, "prompts": prompts}


def test_viewer_shows_the_full_size_image_with_its_parameters_and_steps_with_the_keys(
    open_tab: Callable[..., Tab], live_dashboard: str, tmp_path: Path
) -> None:
    """Clicking a thumbnail opens the stored image at full size beside its number, prompt, seed, server and file;
    → and ← step through the batch, Esc closes; Download zip saves every stored image and the manifest."""
    prompts = ["a lighthouse in a storm", "a tram in the snow", "a fox under a lantern"]
    batch_id = create_batch(live_dashboard, {"name": _name("viewer"), "workflow": "txt2img-tiny", "prompts": prompts,
                                        "defaults": {"steps": 1, "width": 320, "height": 288}})  # fmt: skip
    tab = open_tab()
    page = tab.page
    page.goto(f"/#/batches/{batch_id}")
    _wait_done_cards(page, 3)
    _wait_state(page, "COMPLETED")
    items = httpx.get(f"{live_dashboard}/api/batches/{batch_id}/items", headers=AUTH, timeout=30).json()["items"]
    stored = httpx.get(f"{live_dashboard}{items[0]['image']}", headers=AUTH, timeout=30).content

    page.locator('[data-testid="item"]').first.get_by_test_id("open-viewer").click()
    viewer = page.get_by_test_id("viewer")
    expect(viewer).to_be_visible()
    expect(page.get_by_test_id("viewer-number")).to_have_text("#1 of 3")
    image = page.get_by_test_id("viewer-image")
    expect(image).to_be_visible()
    page.wait_for_function("() => document.querySelector('[data-testid=viewer-image]').naturalWidth > 0")
    shown = page.evaluate("() => [document.querySelector('[data-testid=viewer-image]').naturalWidth,"
                          " document.querySelector('[data-testid=viewer-image]').naturalHeight]")  # fmt: skip
    first_params = page.get_by_test_id("viewer-params").inner_text()
    shot = tmp_path / "viewer.png"
    page.screenshot(path=shot)
    page.keyboard.press("ArrowRight")
    expect(page.get_by_test_id("viewer-number")).to_have_text("#2 of 3")
    expect(page.get_by_test_id("param-Prompt")).to_have_text(prompts[1])
    page.keyboard.press("ArrowRight")
    expect(page.get_by_test_id("viewer-number")).to_have_text("#3 of 3")
    expect(page.get_by_test_id("viewer-next")).to_be_disabled()
    page.keyboard.press("ArrowLeft")
    expect(page.get_by_test_id("viewer-number")).to_have_text("#2 of 3")
    page.keyboard.press("Escape")
    expect(viewer).to_be_hidden()
    with page.expect_download() as download:
        page.get_by_test_id("archive").click()
    with zipfile.ZipFile(download.value.path()) as archive:
        names = archive.namelist()
        first_file = archive.read(items[0]["file"])

    with Image.open(io.BytesIO(stored)) as png:
        assert list(shown) == [png.width, png.height] == [320, 288]  # the stored file, not the 256 px thumbnail
    for expected in (prompts[0], f"Seed\n{items[0]['seed']}", f"Server\n{items[0]['server']}",
                     f"File\n{items[0]['file']}"):  # fmt: skip
        assert expected in first_params, first_params
    assert sorted(names) == sorted([*(item["file"] for item in items), "manifest.csv", "manifest.parquet"])
    assert first_file == stored
    assert download.value.suggested_filename.endswith(".zip")
    _save_doc(shot, "dashboard-viewer.png")
    assert tab.errors == []


def test_fleet_panel_shows_each_server_and_a_dead_ones_error(
    browser: Browser, dashboard_platform: DashboardPlatform, tmp_path: Path
) -> None:
    """The home page lists every fleet server with health, queue and slots; a server that does not answer is shown
    unreachable with its error."""
    urls = [server.url for server in dashboard_platform.fleet.servers]
    dead = f"http://127.0.0.1:{free_port()}"
    settings = dashboard_platform.settings().model_copy(update={"comfyui_urls": [*urls, dead]})
    app = create_app(settings, Launcher(settings, api_url=dashboard_platform.api_url))
    with serve_in_thread(app) as url:
        context, tab = new_tab(browser, url)
        try:
            page = tab.page
            page.goto("/")
            rows = page.get_by_test_id("fleet-server")
            expect(rows).to_have_count(len(urls) + 1, timeout=30_000)
            down = page.locator(f'[data-testid="fleet-server"][data-server="{name_from_url(dead)}"]')
            expect(down.get_by_test_id("fleet-health")).to_contain_text("unreachable")
            expect(down.get_by_test_id("fleet-error")).to_contain_text("unreachable")
            for server_url in urls:
                row = page.locator(f'[data-testid="fleet-server"][data-server="{name_from_url(server_url)}"]')
                expect(row.get_by_test_id("fleet-health")).to_have_text("ok")
                expect(row.get_by_test_id("fleet-slots")).to_have_text(re.compile(r"^\d+ / \d+$"))
                expect(row.get_by_test_id("fleet-queue")).to_have_text(re.compile(r"^\d+$"))
            shot = tmp_path / "fleet.png"
            page.get_by_test_id("fleet-panel").screenshot(path=shot)
            _save_doc(shot, "dashboard-fleet.png")
            assert tab.errors == []
        finally:
            context.close()


def test_failed_batch_shows_why_and_retry_failed_renders_the_failed_item(
    open_tab: Callable[..., Tab], live_dashboard: str, dashboard_platform: DashboardPlatform, tmp_path: Path
) -> None:
    """A batch with a failing item ends FAILED and says why, the item shows its error; "Retry failed" opens the same
    batch's new run, which renders only that item and links back to the first run."""
    name = _name("retry")
    first_id = create_batch(live_dashboard, flaky_spec(name, dashboard_platform, tmp_path))
    tab = open_tab()
    page = tab.page

    page.goto(f"/#/batches/{first_id}")
    _wait_state(page, "FAILED")
    expect(page.get_by_test_id("batch-reason")).to_contain_text("1 of 2 job(s) failed")
    expect(page.get_by_test_id("item-error")).to_contain_text("planned failure 3 of 3")
    expect(page.get_by_test_id("render-rest")).to_be_hidden()
    page.get_by_test_id("retry-failed").click()
    page.wait_for_url(re.compile(r"#/batches/(?!" + first_id + r")[0-9a-f-]{36}$"))
    second_id = BATCH_URL.search(page.url).group(1)  # type: ignore[union-attr]
    _wait_state(page, "COMPLETED")
    _wait_done_cards(page, 2)

    expect(page.get_by_test_id("resumed-from")).to_have_attribute("href", f"#/batches/{first_id}")
    expect(page.get_by_test_id("retry-failed")).to_be_hidden()
    assert _status(live_dashboard, second_id)["resumed_from"] == first_id
    assert _status(live_dashboard, first_id)["resumed_as"] == second_id
    page.goto(f"/#/batches/{first_id}")
    expect(page.get_by_test_id("resumed-as")).to_have_attribute("href", f"#/batches/{second_id}")
    expect(page.get_by_test_id("retry-failed")).to_be_hidden()
    assert tab.errors == []


def test_render_the_rest_after_a_cancel_finishes_the_batch(open_tab: Callable[..., Tab], live_dashboard: str) -> None:
    """A batch cancelled part way offers "Render the rest"; its new run renders every item the cancel left."""
    batch_id = create_batch(live_dashboard, _quick_spec(_name("rest"), 6, seconds=2.0))
    tab = open_tab()
    page = tab.page
    page.goto(f"/#/batches/{batch_id}")
    _wait_done_cards(page, 1)
    cancelled = httpx.post(f"{live_dashboard}/api/batches/{batch_id}/cancel", headers=AUTH, timeout=30)
    assert cancelled.status_code == 202, cancelled.text

    _wait_state(page, "CANCELLED")
    expect(page.get_by_test_id("render-rest")).to_be_visible()
    page.get_by_test_id("render-rest").click()
    page.wait_for_url(re.compile(r"#/batches/(?!" + batch_id + r")[0-9a-f-]{36}$"))
    _wait_state(page, "COMPLETED")
    _wait_done_cards(page, 6)

    expect(page.get_by_test_id("counts")).to_have_text("6 of 6 done · 0 failed · 0 pending")
    assert tab.errors == []


def test_narrow_batch_view_keeps_sixteen_items_on_a_short_page(browser: Browser, live_dashboard: str) -> None:
    """At 400 px a finished 16-item batch is a short page: several cards to a row, each lane one short block."""
    batch_id = create_batch(live_dashboard, _quick_spec(_name("narrow"), 16))
    context = browser.new_context(base_url=live_dashboard, viewport={"width": 400, "height": 800})
    context.add_init_script(f"localStorage.setItem('comfybatch.apiKey', {AUTH['Authorization'][7:]!r});")
    try:
        page = context.new_page()
        page.goto(f"/#/batches/{batch_id}")
        _wait_state(page, "COMPLETED")
        expect(page.get_by_test_id("counts")).to_have_text("16 of 16 done · 0 failed · 0 pending", timeout=30_000)
        _wait_done_cards(page, 3)  # the rows in view are drawn (the grid draws no more)
        height = page.evaluate("() => document.documentElement.scrollHeight")
        widest = page.evaluate("() => document.documentElement.scrollWidth")
        lanes = page.get_by_test_id("lane")
        lane_heights = [box["height"] for box in (lanes.nth(n).bounding_box() for n in range(lanes.count())) if box]
        columns = len({round(box["x"]) for card in page.get_by_test_id("item").all()
                       if (box := card.bounding_box()) is not None})  # fmt: skip
    finally:
        context.close()

    assert columns >= 3, columns
    assert height < 2_000, height
    assert widest <= 400, widest
    assert lane_heights
    assert max(lane_heights) < 80, lane_heights


def test_batch_view_says_it_is_loading_until_the_status_arrives(
    open_tab: Callable[..., Tab], live_dashboard: str
) -> None:
    """While the batch's status is on its way the view says so (title, badge, items) instead of blank fields."""
    name = _name("loading")
    batch_id = create_batch(live_dashboard, _quick_spec(name, 2))
    tab = open_tab()
    page = tab.page
    held: list[Route] = []

    def hold(route: Route) -> None:
        """The first status read waits for the test; later ones pass."""
        if held:
            route.continue_()
        else:
            held.append(route)

    page.route(re.compile(rf"/api/batches/{batch_id}$"), hold)

    page.goto(f"/#/batches/{batch_id}")
    expect(page.get_by_test_id("batch-name-title")).to_have_text("Loading batch…")
    expect(page.get_by_test_id("batch-state")).to_have_text("loading")
    expect(page.get_by_test_id("grid-message")).to_have_text("Loading the items…")
    while not held:
        page.wait_for_timeout(50)
    held[0].continue_()

    expect(page.get_by_test_id("batch-name-title")).to_have_text(name)
    expect(page.get_by_test_id("batch-state")).not_to_have_text("loading")
    assert tab.errors == []


def test_a_status_read_older_than_the_run_s_end_does_not_take_the_badge_back_to_running(
    open_tab: Callable[..., Tab], live_dashboard: str
) -> None:
    """Status reads answered while the batch ran, delivered only after the page showed COMPLETED (a slow answer, or
    the server's one-second shared read), leave the badge COMPLETED."""
    batch_id = create_batch(live_dashboard, _quick_spec(_name("stale"), 6, seconds=2.0))
    tab = open_tab()
    page = tab.page
    passed: list[str] = []
    stale: list[tuple[Route, Any]] = []

    def delay_running_answers(route: Route) -> None:
        """The view's first read passes; later answers that say the run is not over are held back."""
        answer = route.fetch()
        state = answer.json()["state"]
        if passed and state not in TERMINAL_STATES:
            stale.append((route, answer))
        else:
            passed.append(state)
            route.fulfill(response=answer)

    page.route(re.compile(rf"/api/batches/{batch_id}$"), delay_running_answers)
    page.goto(f"/#/batches/{batch_id}")
    _wait_state(page, "COMPLETED")
    assert stale, f"no status read was answered while the batch ran (answers passed: {passed})"
    for route, answer in stale:
        route.fulfill(response=answer)
    page.wait_for_timeout(1_000)  # the stale answers applied (or not)

    expect(page.get_by_test_id("batch-state")).to_have_attribute("data-state", "COMPLETED", timeout=1)
    expect(page.get_by_test_id("eta")).to_have_text("finished")
    assert tab.errors == []


def test_fleet_panel_marks_a_draining_server(browser: Browser, dashboard_platform: DashboardPlatform) -> None:
    """A server taken out of rotation with `comfybatch fleet drain` says so in the fleet panel; the other does not."""
    drained, other = (name_from_url(server.url) for server in dashboard_platform.fleet.servers[:2])
    settings = dashboard_platform.settings()
    app = create_app(settings, Launcher(settings, api_url=dashboard_platform.api_url))
    _set_draining(dashboard_platform.api_url, drained, True)
    try:
        with serve_in_thread(app) as url:
            context, tab = new_tab(browser, url)
            try:
                tab.page.goto("/")
                row = tab.page.locator(f'[data-testid="fleet-server"][data-server="{drained}"]')
                expect(row.get_by_test_id("fleet-draining")).to_have_text("draining", timeout=30_000)
                other_row = tab.page.locator(f'[data-testid="fleet-server"][data-server="{other}"]')
                expect(other_row.get_by_test_id("fleet-health")).to_have_text("ok")
                expect(other_row.get_by_test_id("fleet-draining")).to_have_count(0)
                assert tab.errors == []
            finally:
                context.close()
    finally:
        _set_draining(dashboard_platform.api_url, drained, False)


def test_running_batch_lanes_mark_a_draining_server(open_tab: Callable[..., Tab], live_dashboard: str,
                                                    dashboard_platform: DashboardPlatform) -> None:  # fmt: skip
    """While a batch runs on two servers, draining one marks its lane "draining" within the page's poll; the other
    lane has no mark, and undrained, the mark goes."""
    drained, other = (name_from_url(server.url) for server in dashboard_platform.fleet.servers[:2])
    batch_id = create_batch(live_dashboard, _quick_spec(_name("lanes"), 40, seconds=0.5))
    tab = open_tab()
    page = tab.page
    page.goto(f"/#/batches/{batch_id}")
    expect(page.locator(f'[data-testid="lane"][data-server="{other}"]')).to_have_count(1, timeout=60_000)
    _set_draining(dashboard_platform.api_url, drained, True)
    try:
        lane = page.locator(f'[data-testid="lane"][data-server="{drained}"]')
        expect(lane.get_by_test_id("lane-draining")).to_have_text("draining", timeout=30_000)
        expect(page.locator(f'[data-testid="lane"][data-server="{other}"]').get_by_test_id("lane-draining")
               ).to_have_count(0)  # fmt: skip
    finally:
        _set_draining(dashboard_platform.api_url, drained, False)
    expect(lane.get_by_test_id("lane-draining")).to_have_count(0, timeout=30_000)
    httpx.post(f"{live_dashboard}/api/batches/{batch_id}/cancel", headers=AUTH, timeout=30)
    assert tab.errors == []


def _set_draining(api_url: str, name: str, draining: bool) -> None:
    """`comfybatch fleet drain/undrain` against the platform's Prefect, from a thread of its own (Playwright's
    sync API holds this thread's event loop)."""

    def run() -> None:
        with temporary_settings(updates={PREFECT_API_URL: api_url}):
            asyncio.run(set_draining(name, draining))

    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(run).result()
