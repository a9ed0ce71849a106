"""Issue 14 on the page, in real headless chromium: input images submitted from the form (files and a zip), every
output media shown with its own element (an animated WebP in an <img>, a WebM in a <video>); issue 13: the field at
fault marked in the form, unreachable servers in one line, server display names from configuration."""

import io
import os
import re
import shutil
import time
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from playwright.sync_api import Browser, Page, expect

from comfybatch.blocks.server import name_from_url
from comfybatch.dashboard.app import create_app
from comfybatch.dashboard.launcher import Launcher
from comfybatch.local.fleet import free_port
from comfybatch.models import read_template
from comfybatch.settings import Settings
from comfybatch.testing.live_app import serve_in_thread
from tests.browser.conftest import Tab, batch_name, new_tab
from tests.dashboard.conftest import AUTH, DashboardPlatform

pytestmark = pytest.mark.timeout(300)

BATCH_URL = re.compile(r"#/batches/([0-9a-f-]{36})$")
DOCS = Path(__file__).resolve().parents[2] / "docs"
SIZE = 64  # the tiny checkpoint's VAE works on multiples of 8
COLOURS = {"red": (220, 30, 30), "blue": (30, 60, 220), "green": (30, 180, 60)}
DONE_CARDS_JS = """() => [...document.querySelectorAll('[data-testid="item"]')].filter((card) =>
  card.dataset.state === "done" && card.querySelector('[data-testid="open-viewer"]') !== null).length"""


def _name(label: str) -> str:
    return batch_name("inputs", label)


def _photo(path: Path, colour: tuple[int, int, int]) -> Path:
    Image.new("RGB", (SIZE, SIZE), colour).save(path)
    return path


def _items(base_url: str, batch_id: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{base_url}/api/batches/{batch_id}/items", headers=AUTH, timeout=30)
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


def _wait_finished(page: Page, count: int, *, timeout_s: float = 180.0) -> None:
    """Until the batch is COMPLETED and `count` cards are done with something to open."""
    state = page.get_by_test_id("batch-state")
    expect(state).to_have_attribute("data-state", re.compile("COMPLETED|FAILED|CRASHED|CANCELLED"),
                                     timeout=timeout_s * 1000)  # fmt: skip
    if state.get_attribute("data-state") != "COMPLETED":
        cards = page.get_by_test_id("item-error").all_inner_texts()
        pytest.fail(f"the batch ended {state.get_attribute('data-state')}: "
                    f"{page.get_by_test_id('batch-reason').inner_text()} {cards}", pytrace=False)  # fmt: skip
    deadline = time.monotonic() + timeout_s
    while page.evaluate(DONE_CARDS_JS) < count:
        if time.monotonic() > deadline:
            pytest.fail(f"not {count} done cards within {timeout_s:g} s", pytrace=False)
        page.wait_for_timeout(200)


def _submit(page: Page, template: str, name: str, *, prompts: str = "", images: list[Path] | None = None) -> str:
    """Fill the form and submit it; the new batch's id once the page has moved to it."""
    page.goto("/")
    expect(page.get_by_test_id("template").locator("option", has_text=template)).to_have_count(1)
    page.get_by_test_id("template").select_option(template)
    page.get_by_test_id("batch-name").fill(name)
    page.get_by_test_id("prompts").fill(prompts)
    page.get_by_test_id("steps").fill("1")
    if images:
        page.get_by_test_id("images").set_input_files([str(path) for path in images])
    page.get_by_test_id("submit").click()
    page.wait_for_url(BATCH_URL, timeout=60_000)
    found = BATCH_URL.search(page.url)
    assert found is not None
    return found.group(1)


def test_page_submits_input_images_and_a_zip_and_shows_each_output(
    open_tab: Callable[..., Tab], live_dashboard: str, tmp_path: Path
) -> None:
    """Two photos and a zip holding a third, chosen in the form with img2img-tiny, upload and run as three items in
    the order chosen, each output named after its input and opened full size from its card."""
    red = _photo(tmp_path / "red.png", COLOURS["red"])
    blue = _photo(tmp_path / "blue.png", COLOURS["blue"])
    green = io.BytesIO()
    Image.new("RGB", (SIZE, SIZE), COLOURS["green"]).save(green, format="PNG")
    archive = tmp_path / "more.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("green.png", green.getvalue())
    tab = open_tab()
    page = tab.page

    batch_id = _submit(
        page, "img2img-tiny", _name("img2img"), prompts="the same picture, watercolor", images=[red, blue, archive]
    )
    _wait_finished(page, 3)
    items = _items(live_dashboard, batch_id)

    assert [item["state"] for item in items] == ["done"] * 3
    for item, stem in zip(items, ["red", "blue", "green"], strict=True):
        assert stem in item["file"], item["file"]
        assert item["media"] == "image/png"
    for card, stem in zip(page.get_by_test_id("item").all(), ["red", "blue", "green"], strict=True):
        expect(card.locator(".meta")).to_contain_text(f"{stem}.png")  # each card names its input
    shot = tmp_path / "image-in.png"
    page.get_by_test_id("batch-view").screenshot(path=shot)
    assert shot.stat().st_size > 5_000
    if os.environ.get("COMFYBATCH_SAVE_SCREENSHOT") == "1":  # the README's picture of an image-in batch
        DOCS.mkdir(exist_ok=True)
        shutil.copyfile(shot, DOCS / "dashboard-image-in.png")
    page.locator('[data-testid="item"]').first.get_by_test_id("open-viewer").click()
    expect(page.get_by_test_id("viewer-image")).to_have_attribute("data-media", "image/png")
    page.wait_for_function("() => document.querySelector('[data-testid=viewer-image]').naturalWidth > 0")
    expect(page.get_by_test_id("viewer-video")).to_be_hidden()
    assert tab.errors == []


def test_animated_output_plays_in_an_image_and_a_video_in_a_video_element(
    open_tab: Callable[..., Tab], live_dashboard: str, dashboard_platform: DashboardPlatform
) -> None:
    """animated-tiny submitted from the form gives an animated WebP the viewer shows as an <img>; a WebM output
    (the same frames through SaveWEBM) gets a play button on its card and a <video> with controls that loads."""
    tab = open_tab()
    page = tab.page
    animated_id = _submit(page, "animated-tiny", _name("animated"), prompts="a paper boat drifting on a pond")
    _wait_finished(page, 1)
    [animated] = _items(live_dashboard, animated_id)
    stored = httpx.get(f"{live_dashboard}{animated['image']}", headers=AUTH, timeout=30)

    assert (animated["media"], stored.headers["content-type"]) == ("image/webp", "image/webp")
    with Image.open(io.BytesIO(stored.content)) as image:
        assert (image.format, image.is_animated, image.n_frames) == ("WEBP", True, 4)
    page.get_by_test_id("open-viewer").click()
    expect(page.get_by_test_id("viewer-image")).to_have_attribute("data-media", "image/webp")
    page.wait_for_function("() => document.querySelector('[data-testid=viewer-image]').naturalWidth > 0")
    page.get_by_test_id("viewer-close").click()

    graph = read_template("animated-tiny")
    graph["7"] = {"class_type": "SaveWEBM", "inputs": {"images": ["6", 0], "filename_prefix": "x", "codec": "vp9",
                                                       "fps": 4.0, "crf": 32.0}}  # fmt: skip
    spec = {"name": _name("webm"), "workflow": graph, "prompts": ["a paper boat"], "defaults": {"steps": 1}}
    created = httpx.post(f"{live_dashboard}/api/batches", json=spec, headers=AUTH, timeout=30)
    assert created.status_code == 202, created.text
    page.goto(f"/#/batches/{created.json()['batch_id']}")
    _wait_finished(page, 1)
    play = page.get_by_test_id("open-viewer")
    expect(play).to_have_attribute("data-media", "video")
    play.click()

    video = page.get_by_test_id("viewer-video")
    expect(video).to_be_visible()
    expect(video).to_have_attribute("data-media", "video/webm")
    assert video.get_attribute("controls") is not None
    page.wait_for_function("() => document.querySelector('[data-testid=viewer-video]').readyState >= 1")  # metadata
    expect(page.get_by_test_id("viewer-image")).to_be_hidden()
    assert tab.errors == []


def test_check_and_submit_mark_the_field_at_fault_and_only_a_submit_says_not_submitted(
    open_tab: Callable[..., Tab], live_dashboard: str, tmp_path: Path
) -> None:
    """A width of 66 is marked on the Width field (aria-invalid, the sentence under it) after Check, which does not
    say "Not submitted"; a submit says it; editing the field takes the mark away; a bad name marks the name; a file
    that is not an image marks Input images, naming the file."""
    tab = open_tab()
    page = tab.page
    page.goto("/")
    page.get_by_test_id("template").select_option("txt2img-tiny")
    page.get_by_test_id("batch-name").fill(_name("fields"))
    page.get_by_test_id("prompts").fill("a lighthouse at dusk")
    width = page.get_by_test_id("width")
    width.fill("66")

    page.get_by_test_id("check").click()
    expect(width).to_have_attribute("aria-invalid", "true")
    note = page.locator("label", has=width).get_by_test_id("field-error")
    expect(note).to_contain_text("multiple of 8")
    expect(page.get_by_test_id("problems-title")).to_contain_text("Check found problems")
    expect(page.get_by_test_id("validation")).not_to_contain_text("Not submitted")
    expect(page.get_by_test_id("problem").first).to_have_attribute("data-field", "width")

    page.get_by_test_id("submit").click()
    expect(page.get_by_test_id("problems-title")).to_have_text("Not submitted — fix these first:")
    expect(width).to_have_attribute("aria-invalid", "true")
    width.fill("64")
    expect(width).not_to_have_attribute("aria-invalid", "true")
    expect(page.get_by_test_id("field-error")).to_have_count(0)

    page.get_by_test_id("batch-name").fill("Spring Catalog")
    page.get_by_test_id("submit").click()
    expect(page.get_by_test_id("batch-name")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("label", has=page.get_by_test_id("batch-name")).get_by_test_id("field-error")).to_contain_text(
        "lowercase letters"
    )
    page.get_by_test_id("batch-name").fill(_name("fields"))
    fake = tmp_path / "holiday.png"
    fake.write_text("not a picture at all", encoding="utf-8")
    page.get_by_test_id("images").set_input_files(str(fake))
    page.get_by_test_id("check").click()
    images = page.get_by_test_id("images")
    expect(images).to_have_attribute("aria-invalid", "true")
    expect(page.locator("label", has=images).get_by_test_id("field-error")).to_have_text(
        re.compile(r"^holiday\.png: not an image")
    )
    expect(page.get_by_test_id("batch-name")).not_to_have_attribute("aria-invalid", "true")
    assert not BATCH_URL.search(page.url)
    assert tab.errors == []


@contextmanager
def _dashboard(browser: Browser, settings: Settings, api_url: str, *, width: int = 1280) -> Iterator[Tab]:
    """A tab on a dashboard of its own, with `settings` (its fleet), at `width` pixels."""
    with serve_in_thread(create_app(settings, Launcher(settings, api_url=api_url))) as url:
        context, tab = new_tab(browser, url)
        tab.page.set_viewport_size({"width": width, "height": 860})
        try:
            yield tab
        finally:
            context.close()


def test_check_names_unreachable_servers_in_one_line_and_the_plan_fits_a_narrow_page(
    browser: Browser, dashboard_platform: DashboardPlatform
) -> None:
    """With two dead servers beside the live ones, Check shows one line naming both (never a transport error's
    repr), and at 400 px the plan wraps inside the page."""
    urls = [server.url for server in dashboard_platform.fleet.servers]
    dead = [f"http://127.0.0.1:{free_port()}" for _ in range(2)]
    settings = dashboard_platform.settings().model_copy(update={"comfyui_urls": [*urls, *dead]})
    try:
        with _dashboard(browser, settings, dashboard_platform.api_url, width=400) as tab:
            page = tab.page
            page.goto("/")
            page.get_by_test_id("template").select_option("txt2img-tiny")
            page.get_by_test_id("prompts").fill("a lighthouse at dusk")
            page.get_by_test_id("check").click()

            line = page.get_by_test_id("unreachable")
            expect(line).to_have_count(1, timeout=60_000)
            for url in dead:
                expect(line).to_contain_text(name_from_url(url))
            expect(line).to_contain_text("2 of 4 servers do not answer")
            assert "ConnectError" not in page.get_by_test_id("validation").inner_text()
            dead_row = page.locator(f'[data-testid="fleet-server"][data-server="{name_from_url(dead[0])}"]')
            expect(dead_row.get_by_test_id("fleet-health")).to_have_text("unreachable: connection refused")
            overflow = page.evaluate("""() => { const plan = document.querySelector('[data-testid="plan"]');
              return [plan.scrollWidth - plan.clientWidth, document.documentElement.scrollWidth - innerWidth]; }""")
            assert max(overflow) <= 0, overflow  # the plan box and the page: no horizontal scrolling
            assert tab.errors == []
    finally:
        # The dry run saved the dead servers as configuration blocks: a run of the live fleet alone deletes them.
        clean = dashboard_platform.settings().model_copy(update={"comfyui_urls": urls})
        with serve_in_thread(create_app(clean, Launcher(clean, api_url=dashboard_platform.api_url))) as url:
            spec = {"name": _name("cleanup"), "workflow": "txt2img-tiny", "prompts": ["x"]}
            httpx.post(f"{url}/api/validate", json=spec, headers=AUTH, timeout=60)


def test_servers_show_their_display_names_in_the_fleet_panel_and_the_lanes(
    browser: Browser, dashboard_platform: DashboardPlatform, live_dashboard: str, tmp_path: Path
) -> None:
    """`display_name` in comfybatch.toml replaces `127-0-0-1-<port>` in the fleet panel and a batch's lanes; the
    server's name stays its key (`data-server`)."""
    urls = [server.url for server in dashboard_platform.fleet.servers]
    config = tmp_path / "comfybatch.toml"
    config.write_text("".join(f'[[servers]]\nurl = "{url}"\ndisplay_name = "GPU {number}"\n\n'
                              for number, url in enumerate(urls, 1)))  # fmt: skip
    settings = dashboard_platform.settings().model_copy(update={"config_file": config})
    spec = {"name": _name("lanes"), "workflow": "txt2img-tiny", "prompts": ["a fox", "a jay", "a wren"],
            "defaults": {"steps": 1}}  # fmt: skip
    created = httpx.post(f"{live_dashboard}/api/batches", json=spec, headers=AUTH, timeout=30)
    assert created.status_code == 202, created.text

    with _dashboard(browser, settings, dashboard_platform.api_url) as tab:
        page = tab.page
        page.goto("/")
        for number, url in enumerate(urls, 1):
            row = page.locator(f'[data-testid="fleet-server"][data-server="{name_from_url(url)}"]')
            expect(row.get_by_test_id("fleet-name")).to_have_text(f"GPU {number}", timeout=30_000)
        page.goto(f"/#/batches/{created.json()['batch_id']}")
        _wait_finished(page, 3)
        lanes = page.get_by_test_id("lane")
        expect(lanes.first).to_be_visible()
        names = {name_from_url(url): f"GPU {number}" for number, url in enumerate(urls, 1)}
        for lane in lanes.all():
            server = lane.get_attribute("data-server")
            assert server in names
            expect(lane.locator(".lane-name")).to_have_text(names[server])
        assert tab.errors == []
