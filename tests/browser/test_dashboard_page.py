"""The dashboard page in real headless chromium against the real platform: submit, watch, reload, resume."""

import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, Route, WebSocketRoute, expect

from tests.browser.conftest import Tab, batch_name, create_batch, new_tab
from tests.dashboard.conftest import API_KEY, AUTH
from tests.support import graphs

pytestmark = pytest.mark.timeout(300)

XSS = "<img src=x onerror=alert(1)>"
PAGE_PROMPTS = ["a red fox in snow", "a blue jay on a branch", XSS]
PENDING = {"queued", "submitted", "retrying", "running"}
TERMINAL = {"done", "failed", "skipped"}
BATCH_URL = re.compile(r"#/batches/([0-9a-f-]{36})$")
README_IMAGE = Path(__file__).resolve().parents[2] / "docs" / "dashboard.png"

# Every item card as the page shows it: state, spinner, a loaded thumbnail, visible text.
CARDS_JS = """() => [...document.querySelectorAll('[data-testid="item"]')].map((card) => {
  const img = card.querySelector('img[data-testid="thumb"]');
  return {key: card.dataset.key, state: card.dataset.state, text: card.innerText,
          spinner: card.querySelector('[data-testid="spinner"]') !== null,
          loaded: img !== null && img.complete && img.naturalWidth > 0};
})"""

Card = dict[str, Any]


def _name(label: str) -> str:
    return batch_name("browser", label)


def _slow_spec(name: str, *, count: int, seconds: float) -> dict[str, Any]:
    """`count` Delay-node items, the prompt bound to the node's nonce: a readable prompt and a distinct job each."""
    run = uuid.uuid4().hex[:6]
    graph = graphs.delay(seconds, graphs.unique("browser"))
    prompts = [f"slow item {i} {run}" for i in range(count)]
    return {"name": name, "workflow": graph, "bindings": {"prompt": "2.inputs.nonce"}, "prompts": prompts}


def _cards(page: Page) -> list[Card]:
    cards: list[Card] = page.evaluate(CARDS_JS)
    return cards


def _watch(page: Page, until: Callable[[list[Card]], bool], *, timeout_s: float = 90.0) -> list[list[Card]]:
    """Sample the grid every 100 ms until `until(cards)`; every sample, for invariants checked afterwards."""
    samples: list[list[Card]] = []
    deadline = time.monotonic() + timeout_s
    while True:
        cards = _cards(page)
        samples.append(cards)
        if until(cards):
            return samples
        if time.monotonic() > deadline:
            pytest.fail(f"grid not as expected within {timeout_s:g} s; last sample: {cards}", pytrace=False)
        page.wait_for_timeout(100)


def _all_done(count: int) -> Callable[[list[Card]], bool]:
    return lambda cards: len(cards) == count and all(c["state"] == "done" and c["loaded"] for c in cards)


def _assert_true_states(samples: list[list[Card]]) -> None:
    """Pending items always spin and never claim "no image"; done items show no spinner; no item goes back.

    No card shows a missing value as "null" or "undefined".
    """
    reached: dict[str, str] = {}
    for cards in samples:
        for card in cards:
            assert not {"null", "undefined"} & set(card["text"].split()), card
            if card["state"] in PENDING:
                assert card["spinner"], card
                assert "no image" not in card["text"].lower(), card
            else:
                assert card["state"] in TERMINAL, card
                assert not card["spinner"], card
            if reached.get(card["key"]) in TERMINAL:
                assert card["state"] == reached[card["key"]], f"{card['key']} left {reached[card['key']]}: {card}"
            reached[card["key"]] = card["state"]


def _wait_completed(page: Page) -> None:
    expect(page.get_by_test_id("batch-state")).to_have_attribute("data-state", "COMPLETED", timeout=60_000)
    expect(page.get_by_test_id("conn-status")).to_have_attribute("data-conn", "ended", timeout=15_000)


@dataclass(frozen=True)
class PageBatch:
    """A batch submitted from the form, watched until it completed: the tab and every grid sample."""

    tab: Tab
    samples: list[list[Card]]


@pytest.fixture(scope="module")
def page_batch(browser: Browser, live_dashboard: str) -> Iterator[PageBatch]:
    """Enter the key once, fill the form (txt2img-tiny, three prompts, one of them markup), submit, watch it finish."""
    context, tab = new_tab(browser, live_dashboard, with_key=False)
    page = tab.page
    page.goto("/")
    page.get_by_test_id("key-input").fill(API_KEY)
    page.get_by_test_id("key-save").click()
    expect(page.get_by_test_id("template").locator("option", has_text="txt2img-tiny")).to_have_count(1)
    page.get_by_test_id("template").select_option("txt2img-tiny")
    page.get_by_test_id("batch-name").fill(_name("submit"))
    page.get_by_test_id("prompts").fill("\n".join(PAGE_PROMPTS))
    page.get_by_test_id("steps").fill("1")
    page.get_by_test_id("submit").click()
    page.wait_for_url(BATCH_URL)
    samples = _watch(page, _all_done(3))
    _wait_completed(page)
    yield PageBatch(tab, samples)
    context.close()


def test_page_submits_a_batch_and_thumbnails_fill_in(page_batch: PageBatch) -> None:
    """A batch typed into the form runs; every item ends done with its thumbnail, its prompt and no state going back."""
    page = page_batch.tab.page

    _assert_true_states(page_batch.samples)
    assert sorted(page.get_by_test_id("item-prompt").all_inner_texts()) == sorted(PAGE_PROMPTS)
    assert page.evaluate("localStorage.getItem('comfybatch.apiKey')") == API_KEY
    assert page_batch.tab.errors == []


def test_xss_prompt_is_shown_as_text_and_runs_nothing(page_batch: PageBatch) -> None:
    """A prompt that is an <img onerror=alert> tag appears literally, adds no element and opens no dialog."""
    page = page_batch.tab.page

    expect(page.get_by_test_id("item-prompt").filter(has_text=XSS)).to_have_count(1)
    assert page.locator("img[src='x']").count() == 0
    assert page.locator('[data-testid="item"] img:not([data-testid="thumb"])').count() == 0
    assert page_batch.tab.dialogs == []
    assert page_batch.tab.errors == []


def test_check_shows_dry_run_errors_before_submitting(open_tab: Callable[..., Tab], live_dashboard: str) -> None:
    """Check reports the fleet dry run; a width of 100 is refused naming `width`, and no batch is created."""
    tab = open_tab()
    page = tab.page
    name = _name("check")
    page.goto("/")
    page.get_by_test_id("template").select_option("txt2img-tiny")
    page.get_by_test_id("batch-name").fill(name)
    page.get_by_test_id("prompts").fill("a lighthouse at dusk")

    page.get_by_test_id("check").click()
    expect(page.get_by_test_id("validation-summary")).to_contain_text("Ready: 1 image(s)")
    page.get_by_test_id("width").fill("100")
    page.get_by_test_id("check").click()
    expect(page.get_by_test_id("problem")).to_contain_text("width")
    page.get_by_test_id("submit").click()
    expect(page.get_by_test_id("problem")).to_contain_text("width")

    assert not BATCH_URL.search(page.url)
    listed = httpx.get(f"{live_dashboard}/api/batches", params={"name": name}, headers=AUTH, timeout=30)
    assert listed.json()["batches"] == []
    assert tab.errors == []


def test_submit_retried_after_a_lost_answer_keeps_its_key_and_starts_one_batch(
    open_tab: Callable[..., Tab], live_dashboard: str
) -> None:
    """A refused submit, then a fixed one whose answer is lost: its retry reuses its key and one batch starts."""
    tab = open_tab()
    page = tab.page
    name = _name("retry")
    keys: list[str | None] = []  # the Idempotency-Key of every POST /api/batches

    def lose_first_answer(route: Route) -> None:
        """The server gets every POST; the page never hears the answer to the first one it was not refused."""
        if route.request.method != "POST":
            route.continue_()
            return
        keys.append(route.request.headers.get("idempotency-key"))
        answer = route.fetch()
        if answer.status == 202 and len(keys) == 2:
            route.abort("connectionreset")  # the batch started; the answer is lost on the way back
        else:
            route.fulfill(response=answer)

    page.route("**/api/batches", lose_first_answer)
    page.goto("/")
    page.get_by_test_id("template").select_option("txt2img-tiny")
    page.get_by_test_id("batch-name").fill(name)
    page.get_by_test_id("prompts").fill("a kettle on a stove")
    page.get_by_test_id("steps").fill("1")
    page.get_by_test_id("width").fill("100")
    page.get_by_test_id("submit").click()
    expect(page.get_by_test_id("problem")).to_contain_text("width")
    page.get_by_test_id("width").fill("")
    page.get_by_test_id("submit").click()
    page.wait_for_url(BATCH_URL)

    listed = httpx.get(f"{live_dashboard}/api/batches", params={"name": name}, headers=AUTH, timeout=30)
    assert [batch["batch_id"] for batch in listed.json()["batches"]] == [BATCH_URL.search(page.url).group(1)]  # type: ignore[union-attr]
    assert len(keys) == 3, keys
    assert keys[1] == keys[2]  # the retry of the lost submission
    assert keys[0] != keys[1]  # the changed form is a new submission
    assert all(keys), keys
    assert tab.errors == []


def test_pending_items_spin_until_done_and_never_show_no_image(
    open_tab: Callable[..., Tab], live_dashboard: str
) -> None:
    """Slow items: every sample shows queued/submitted/running items with a spinner, done ones with an image."""
    batch_id = create_batch(live_dashboard, _slow_spec(_name("spin"), count=6, seconds=1.5))
    tab = open_tab()
    page = tab.page

    page.goto(f"/#/batches/{batch_id}")
    samples = _watch(page, _all_done(6))
    _wait_completed(page)

    _assert_true_states(samples)
    mixed = [s for s in samples if any(c["state"] == "done" for c in s) and any(c["state"] in PENDING for c in s)]
    assert mixed, "never saw the grid part done, part pending"
    assert any(c["state"] == "running" for s in samples for c in s)
    assert tab.errors == []


def test_reload_and_dropped_stream_resume_without_losing_events(
    open_tab: Callable[..., Tab], live_dashboard: str
) -> None:
    """Reloading mid-batch keeps the items, no state goes back, and a dropped stream resumes after its last seq."""
    batch_id = create_batch(live_dashboard, _slow_spec(_name("reload"), count=6, seconds=1.5))
    tab = open_tab()
    page = tab.page
    connections: list[tuple[int, list[int]]] = []  # (after, seqs delivered) per WebSocket the page opened

    def relay(route: WebSocketRoute) -> None:
        """Pass the stream through, recording it, and cut the second connection after its first item.done."""
        seqs: list[int] = []
        connections.append((int(re.search(r"after=(\d+)", route.url).group(1)), seqs))  # type: ignore[union-attr]
        cut, dropped = len(connections) == 2, list[bool]()
        server = route.connect_to_server()

        def forward(message: str | bytes) -> None:
            if dropped:
                return
            route.send(message)
            seqs.append(int(re.search(r'"seq":\s*(\d+)', str(message)).group(1)))  # type: ignore[union-attr]
            if cut and '"item.done"' in str(message):
                dropped.append(True)
                route.close(code=1011, reason="test drops the stream")
                server.close()

        server.on_message(forward)

    page.route_web_socket(re.compile(r"/api/batches/[^/]+/events"), relay)
    page.goto(f"/#/batches/{batch_id}")
    before = _watch(page, lambda cards: len(cards) == 6 and any(c["state"] == "done" for c in cards))
    page.reload()
    expect(page.get_by_test_id("item")).to_have_count(6)
    after = _watch(page, _all_done(6))
    _wait_completed(page)

    assert {c["key"] for c in before[-1]} == {c["key"] for c in after[0]} == {c["key"] for c in after[-1]}
    _assert_true_states([*before, *after])
    assert len(connections) >= 3, connections
    first_after_reload, cut_stream = connections[1], connections[1][1]
    assert first_after_reload[0] == 0  # a reloaded page replays from the start onto its snapshot
    assert connections[2][0] == cut_stream[-1]
    seen = [seq for _, seqs in connections[1:] for seq in seqs]
    assert seen == list(range(1, len(seen) + 1))  # nothing lost, nothing twice, across the drop
    assert tab.errors == []


def test_finished_batch_view_lanes_links_manifest_and_screenshot(
    open_tab: Callable[..., Tab], live_dashboard: str, tmp_path: Path
) -> None:
    """A finished six-image batch shows counts, per-server lanes, its Prefect link and a downloadable manifest."""
    prompts = ["a fox reading under a tree", "an owl with a lantern", "a hedgehog baking bread",
               "a rabbit painting the moon", "a bear fishing at dawn", "a mouse sailing a leaf boat"]  # fmt: skip
    batch_id = create_batch(live_dashboard, {"name": "picture-book-demo", "workflow": "picture-book-tiny",
                                        "prompts": prompts, "defaults": {"steps": 1}})  # fmt: skip
    tab = open_tab()
    page = tab.page

    page.goto(f"/#/batches/{batch_id}")
    _watch(page, _all_done(6))
    _wait_completed(page)

    expect(page.get_by_test_id("counts")).to_have_text("6 of 6 done · 0 failed · 0 pending")
    lanes = page.get_by_test_id("lane-counts").all_inner_texts()
    assert sum(int(text.split(" done")[0]) for text in lanes) == 6
    assert page.get_by_test_id("prefect-link").get_attribute("href", timeout=5_000) is not None
    assert str(page.get_by_test_id("prefect-link").get_attribute("href")).endswith(f"/runs/flow-run/{batch_id}")
    with page.expect_download() as download:
        page.get_by_test_id("manifest-csv").click()
    manifest = Path(download.value.path()).read_text()
    assert len(manifest.strip().splitlines()) == 7
    shot = tmp_path / "dashboard.png"
    page.get_by_test_id("batch-view").screenshot(path=shot)
    if os.environ.get("COMFYBATCH_SAVE_SCREENSHOT") == "1":
        README_IMAGE.parent.mkdir(exist_ok=True)
        shutil.copyfile(shot, README_IMAGE)
    assert shot.stat().st_size > 10_000
    assert tab.errors == []


def test_link_with_key_in_the_fragment_signs_the_page_in(open_tab: Callable[..., Tab]) -> None:
    """`/#key=<key>` (what `comfybatch up` prints) stores the key, drops it from the address, and the list loads."""
    tab = open_tab(with_key=False)

    tab.page.goto(f"/#key={API_KEY}")

    expect(tab.page.get_by_test_id("template")).to_contain_text("txt2img-tiny")
    assert tab.page.evaluate("localStorage.getItem('comfybatch.apiKey')") == API_KEY
    assert "key=" not in tab.page.url
    assert tab.page.get_by_test_id("key-panel").is_hidden()
