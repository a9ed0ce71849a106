"""Issue 10 §4 and §5 on a real HTTP server: bad requests answer a 4xx and the keep-alive connection survives."""

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from comfybatch.dashboard.app import create_app
from comfybatch.settings import Settings
from comfybatch.testing.live_app import serve_in_thread
from tests.badinput.test_api import API_KEY, RecordingLauncher

AUTH = {"Authorization": f"Bearer {API_KEY}"}
JSON = {**AUTH, "Content-Type": "application/json"}
_BATCH = '{"name": "a", "workflow": "txt2img-tiny", "prompts": ["a cat"]'
# The exact requests of issue 10 §5: each answered 500 and dropped the keep-alive connection.
NON_FINITE = [
    (_BATCH + ', "defaults": {"seed": NaN}}', "defaults.seed = nan"),
    (_BATCH + ', "defaults": {"seed": Infinity}}', "defaults.seed = inf"),
    (_BATCH + ', "images_per_item": 1e400}', "finite number"),
    (_BATCH + ', "sweep": {"axes": {"cfg": [7, NaN]}}}', "sweep.axes.cfg = nan"),
    ('{"name": "a", "workflow": {"1": {"class_type": "EmptyImage", "inputs": {"color": NaN}}}}', "inputs.color = nan"),
]


@pytest.fixture(scope="module")
def live() -> Iterator[tuple[str, RecordingLauncher]]:
    """The dashboard on uvicorn with a launcher that records instead of starting flow runs."""
    settings = Settings(api_keys={"ci": API_KEY}, max_request_bytes=10_000_000)
    launcher = RecordingLauncher(settings)
    with serve_in_thread(create_app(settings, launcher)) as url:
        yield url, launcher


def _peer(response: httpx.Response) -> Any:
    return response.extensions["network_stream"].get_extra_info("client_addr")


@pytest.mark.parametrize("path", ["/api/validate", "/api/batches"])
@pytest.mark.parametrize(("body", "words"), NON_FINITE)
def test_non_finite_numbers_are_a_422_and_the_connection_lives_on(
    live: tuple[str, RecordingLauncher], path: str, body: str, words: str
) -> None:
    """NaN, Infinity and 1e400 answer 422 naming the field; the next request on the same connection works."""
    url, launcher = live
    with httpx.Client(base_url=url, timeout=10) as http:
        refused = http.post(path, content=body.encode(), headers=JSON)
        first_connection = _peer(refused)
        following = http.get("/api/batches?offset=9223372036854775808", headers=AUTH)
        same_connection = _peer(following) == first_connection

    assert refused.status_code == 422, refused.text
    assert words in refused.text
    assert json.loads(refused.text)["detail"]  # strict JSON: no NaN in the echo
    assert following.status_code == 422, following.text
    assert "offset" in following.text
    assert same_connection  # the 422 kept the connection alive
    assert launcher.started == []


@pytest.mark.parametrize("query", ["offset=9223372036854775808", "offset=-1", "limit=100000000000000000000"])
def test_huge_list_paging_is_a_422(live: tuple[str, RecordingLauncher], query: str) -> None:
    """Paging values past their bounds answer 422 naming the parameter, never 500."""
    response = httpx.get(f"{live[0]}/api/batches?{query}", headers=AUTH, timeout=10)

    assert response.status_code == 422, response.text
    assert query.split("=")[0] in response.text


def test_four_thousand_prompts_are_a_413_naming_the_limit(live: tuple[str, RecordingLauncher]) -> None:
    """Issue 10 §4: 4,000 prompts (about 646 KB) pass the body limit but not Prefect's: 413 saying what to do."""
    prompts = [f"a studio photograph of product {n:04d}, white background, soft shadows, " + "x" * 89 for n in
               range(4000)]  # fmt: skip
    body = json.dumps({"name": "big", "workflow": "txt2img-tiny", "prompts": prompts}).encode()
    assert 640_000 < len(body) < 660_000

    with httpx.Client(base_url=live[0], timeout=30) as http:
        answers = [http.post(path, content=body, headers=JSON) for path in ("/api/validate", "/api/batches")]

    for answer in answers:
        assert answer.status_code == 413, answer.text[:500]
        assert "524,288" in answer.text
        assert "PUT /api/uploads" in answer.text
    assert live[1].started == []


def test_a_five_megabyte_prompt_is_a_short_422(live: tuple[str, RecordingLauncher]) -> None:
    """Issue 10 §4: one 5 MB prompt is refused naming the 10,000-character limit, without echoing 5 MB back."""
    body = json.dumps({"name": "big", "workflow": "txt2img-tiny", "prompts": ["a cat " * 850_000]}).encode()

    with httpx.Client(base_url=live[0], timeout=30) as http:
        answer = http.post("/api/batches", content=body, headers=JSON)

    assert answer.status_code == 422, answer.text[:500]
    assert "prompt 1: is 5,100,000 characters long; at most 10,000 are allowed" in answer.text
    assert len(answer.content) < 5_000
    assert live[1].started == []


def test_a_body_over_the_limit_without_content_length_is_a_413() -> None:
    """The body guard counts what arrives, so a streamed (chunked) body over its limit is a 413 too."""
    settings = Settings(api_keys={"ci": API_KEY}, max_request_bytes=100_000)

    def chunks() -> Iterator[bytes]:
        yield b'{"name": "a", "workflow": "txt2img-tiny", "prompts": ['
        for _ in range(3000):
            yield b'"a cat in the rain, again and again and again", '
        yield b'"end"]}'

    with serve_in_thread(create_app(settings, RecordingLauncher(settings))) as url:
        answer = httpx.post(f"{url}/api/batches", content=chunks(), headers=JSON, timeout=10)

    assert answer.status_code == 413, answer.text
    assert "at most 100000 bytes" in answer.text
