"""The inpaint and animated templates as batches on real ComfyUI and the tiny checkpoint."""

import hashlib
import io
import uuid
from pathlib import Path

import httpx
import pytest
from PIL import Image

from comfybatch.blocks.server import name_from_url
from comfybatch.flows.batch import generate_batch
from comfybatch.models import BatchSpec, read_template
from comfybatch.outputs.manifest import read_manifest
from comfybatch.outputs.storage import OutputStore
from comfybatch.settings import Settings
from tests.conftest import SuiteFleet
from tests.flows.conftest import PREFECT_SOCKETS, server_names
from tests.flows.test_image_inputs import _colours

pytestmark = [pytest.mark.anyio, PREFECT_SOCKETS]
SIZE = 64  # the tiny checkpoint's VAE works on multiples of 8
FRAMES = ["6", 0]  # animated-tiny's decoded frames
MOVING = {  # every animated and video save node of ComfyUI 0.3.75 core, on the same four frames
    "7": {"class_type": "SaveAnimatedWEBP", "inputs": {"images": FRAMES, "filename_prefix": "x", "fps": 4.0,
                                                       "lossless": False, "quality": 80, "method": "default"}},
    "8": {"class_type": "SaveAnimatedPNG", "inputs": {"images": FRAMES, "filename_prefix": "x", "fps": 4.0,
                                                      "compress_level": 4}},
    "9": {"class_type": "SaveWEBM", "inputs": {"images": FRAMES, "filename_prefix": "x", "codec": "vp9", "fps": 4.0,
                                               "crf": 32.0}},
    "10": {"class_type": "CreateVideo", "inputs": {"images": FRAMES, "fps": 4.0}},
    "11": {"class_type": "SaveVideo", "inputs": {"video": ["10", 0], "filename_prefix": "x", "format": "mp4",
                                                 "codec": "auto"}},
}  # fmt: skip
SOUND = ["1", 0]
AUDIO = {  # every audio save node of ComfyUI 0.3.75 core, on half a second of silence (no model needed)
    "1": {"class_type": "EmptyAudio", "inputs": {"duration": 0.5, "sample_rate": 44100, "channels": 1}},
    "2": {"class_type": "SaveAudio", "inputs": {"audio": SOUND, "filename_prefix": "x"}},
    "3": {"class_type": "SaveAudioMP3", "inputs": {"audio": SOUND, "filename_prefix": "x", "quality": "128k"}},
    "4": {"class_type": "SaveAudioOpus", "inputs": {"audio": SOUND, "filename_prefix": "x", "quality": "64k"}},
}


def _inputs(folder: Path, colours: list[tuple[int, int, int]]) -> None:
    """One solid photo per colour, and one mask: white (repaint) on the left half, black (keep) on the right."""
    folder.mkdir(parents=True)
    rows = ["image,mask,prompt"]
    for number, colour in enumerate(colours):
        Image.new("RGB", (SIZE, SIZE), colour).save(folder / f"photo-{number}.png")
        rows.append(f"photo-{number}.png,left-half.png,a clean white marble surface")
    mask = Image.new("RGB", (SIZE, SIZE), (0, 0, 0))
    mask.paste((255, 255, 255), (0, 0, SIZE // 2, SIZE))
    mask.save(folder / "left-half.png")
    (folder / "rows.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")


async def test_inpaint_tiny_repaints_only_the_masked_half(
    batch_settings: Settings, comfy_fleet: SuiteFleet, tmp_path: Path
) -> None:
    """A sheet of photos with a mask: each output keeps its own photo's pixels exactly where the mask is black and
    is repainted where it is white."""
    colours = _colours(2)
    _inputs(tmp_path / "pages", colours)
    spec = BatchSpec(name="inpaint", workflow="inpaint-tiny", sheet=str(tmp_path / "pages" / "rows.csv"),
                     servers=server_names(comfy_fleet))  # fmt: skip

    report = await generate_batch(spec)

    manifest = read_manifest(OutputStore(batch_settings.output_root), "inpaint")
    assert (report.done, report.failed) == (2, 0)
    assert manifest is not None
    for number, (_, row) in enumerate(manifest.sort_values("index").iterrows()):
        assert row["param.mask"] == str(tmp_path / "pages" / "left-half.png")
        with Image.open(row["outputs"][0]) as output:
            pixels = output.convert("RGB")
            kept = {pixels.getpixel((x, y)) for x in range(SIZE // 2, SIZE) for y in range(SIZE)}
            repainted = {pixels.getpixel((x, y)) for x in range(SIZE // 2) for y in range(SIZE)}
        assert output.size == (SIZE, SIZE)
        assert kept == {colours[number]}
        assert repainted != {colours[number]}


async def test_animated_tiny_stores_an_animated_webp_listed_with_its_media_type(
    batch_settings: Settings, comfy_fleet: SuiteFleet
) -> None:
    """The animated-tiny template's output is stored as an animated WebP of four frames, listed in the manifest as
    image/webp."""
    spec = BatchSpec(name="animated", workflow="animated-tiny", prompts=["a paper boat drifting on a pond"],
                     servers=server_names(comfy_fleet))  # fmt: skip

    report = await generate_batch(spec)

    manifest = read_manifest(OutputStore(batch_settings.output_root), "animated")
    assert (report.done, report.failed) == (1, 0)
    assert manifest is not None
    [row] = manifest.to_dict("records")
    assert row["media_types"] == ["image/webp"]
    path = Path(row["outputs"][0])
    assert path.suffix == ".webp"
    with Image.open(path) as output:
        assert (output.format, output.is_animated, output.n_frames) == ("WEBP", True, 4)


async def test_animated_and_video_outputs_are_stored_byte_for_byte_with_their_media_types(
    batch_settings: Settings, comfy_fleet: SuiteFleet
) -> None:
    """One job saving its frames as animated WebP, animated PNG, WebM and MP4: four files stored exactly as the
    server serves them, each listed with its media type: image/webp, image/png, video/webm, video/mp4."""
    graph = {**read_template("animated-tiny"), **MOVING}
    name = f"moving-{uuid.uuid4().hex[:8]}"
    spec = BatchSpec(name=name, workflow=graph, prompts=["a paper boat"], servers=server_names(comfy_fleet))

    report = await generate_batch(spec)
    by_suffix, stored = await _stored_as_served(batch_settings, comfy_fleet, name)

    assert report.done == 1
    assert by_suffix == {"webp": "image/webp", "png": "image/png", "webm": "video/webm", "mp4": "video/mp4"}
    with Image.open(io.BytesIO(stored["png"])) as apng:
        assert (apng.format, apng.is_animated, apng.n_frames) == ("PNG", True, 4)


async def test_audio_outputs_are_stored_byte_for_byte_with_their_media_types(
    batch_settings: Settings, comfy_fleet: SuiteFleet
) -> None:
    """One job saving a sound as FLAC, MP3 and Opus: three files stored exactly as the server serves them, listed
    as audio/flac, audio/mpeg and audio/ogg."""
    async with httpx.AsyncClient(base_url=comfy_fleet.servers[0].url) as http:
        if (await http.get("/object_info/SaveAudio")).json() == {}:
            # ComfyUI's audio nodes import torchaudio; the test install's torch 2.14 has no matching torchaudio yet.
            pytest.skip("the ComfyUI servers have no audio nodes (comfy_extras/nodes_audio.py needs torchaudio)")
    name = f"sound-{uuid.uuid4().hex[:8]}"
    spec = BatchSpec(name=name, workflow=AUDIO, servers=server_names(comfy_fleet))

    report = await generate_batch(spec)
    by_suffix, _ = await _stored_as_served(batch_settings, comfy_fleet, name)

    assert report.done == 1
    assert by_suffix == {"flac": "audio/flac", "mp3": "audio/mpeg", "opus": "audio/ogg"}


async def _stored_as_served(
    settings: Settings, fleet: SuiteFleet, name: str
) -> tuple[dict[str, str], dict[str, bytes]]:
    """The one job's media type and stored bytes per extension, after checking the bytes against the manifest's
    digests and against the files the server serves (its history is deleted: they are looked up by name)."""
    store = OutputStore(settings.output_root)
    manifest = read_manifest(store, name)
    assert manifest is not None
    [row] = manifest.to_dict("records")
    assert row["status"] == "done"
    by_suffix = {uri.rpartition(".")[2]: media for uri, media in zip(row["outputs"], row["media_types"], strict=True)}
    stored = {uri.rpartition(".")[2]: store.read_bytes(str(store.relpath_of(uri))) for uri in row["outputs"]}
    assert [hashlib.sha256(stored[uri.rpartition(".")[2]]).hexdigest() for uri in row["outputs"]] == row["sha256"]
    server = next(server.url for server in fleet.servers if name_from_url(server.url) == row["server"])
    async with httpx.AsyncClient(base_url=server) as http:  # ComfyUI numbers files per prefix: a new one from 00001
        answers = [await http.get("/view", params={"filename": f"{name}-00000_{n:05d}_.{ext}", "type": "output",
                                                   "subfolder": f"comfybatch/{name}"})
                   for n in range(1, len(stored) + 1) for ext in stored]  # fmt: skip
    served = {str(answer.url.params["filename"]).rpartition(".")[2]: answer.content for answer in answers
              if answer.is_success}  # fmt: skip
    assert served == stored
    return by_suffix, stored
