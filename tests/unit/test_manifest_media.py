"""Each output's media type in the manifest (manifests written before that column still read), and contact sheets
that draw the first frame of an animated output and skip videos."""

import io

import numpy as np
import pandas as pd  # type: ignore[import-untyped]
import pytest
from PIL import Image

from comfybatch.comfy.workflow import ApiWorkflow
from comfybatch.models import JobResult, JobSpec, StoredFile
from comfybatch.outputs.contact_sheet import write_contact_sheets
from comfybatch.outputs.manifest import media_type_of, read_manifest, write_manifest
from comfybatch.outputs.storage import OutputStore


@pytest.mark.parametrize(
    ("name", "media_type"),
    [("00000_a_1.png", "image/png"), ("00001_b_2.webp", "image/webp"), ("clip.webm", "video/webm"),
     ("clip.MP4", "video/mp4"), ("voice.flac", "audio/flac"), ("voice.opus", "audio/ogg"),
     ("latent.latent", "application/octet-stream"), ("noext", "application/octet-stream")],
)  # fmt: skip
def test_media_type_of_follows_the_extension(name: str, media_type: str) -> None:
    """An output's media type comes from its extension, whatever the host's mime.types says."""
    assert media_type_of(f"s3://bucket/out/batch.v2/{name}") == media_type


def _result(workflow: ApiWorkflow, names: list[str]) -> JobResult:
    job = JobSpec(batch="clips", index=0, key="k0", item=0, values={}, seed=None, label="clip", workflow=workflow)
    files = [StoredFile(uri=f"memory:///m/clips/{name}", sha256="0" * 64, size_bytes=1, node_id="7") for name in names]
    return JobResult(job=job, status="done", attempts=1, files=files)


@pytest.mark.parametrize("source", ["manifest.parquet", "manifest.csv"])
def test_manifest_lists_a_media_type_per_output(workflow: ApiWorkflow, source: str) -> None:
    """An animated WebP and a WebM are listed with their media types, parallel to `outputs`, in both formats."""
    store = OutputStore("memory://media-manifest")
    write_manifest(store, "clips", [_result(workflow, ["00000_clip.webp", "00000_clip_1.webm"])])
    if source == "manifest.csv":
        store.delete("clips/manifest.parquet")  # read_manifest falls back to the CSV

    frame = read_manifest(store, "clips")

    assert frame is not None
    assert frame["media_types"].tolist() == [["image/webp", "video/webm"]]


def test_manifest_written_before_media_types_still_reads(workflow: ApiWorkflow) -> None:
    """A CSV manifest without the `media_types` column reads back with empty lists there."""
    store = OutputStore("memory://old-manifest")
    write_manifest(store, "old", [_result(workflow, ["00000_a.png"])])
    frame = pd.read_csv(io.BytesIO(store.read_bytes("old/manifest.csv")), dtype=str, keep_default_na=False)
    store.write_bytes("old/manifest.csv", frame.drop(columns=["media_types"]).to_csv(index=False).encode())
    store.delete("old/manifest.parquet")

    old = read_manifest(store, "old")

    assert old is not None
    assert old["media_types"].tolist() == [[]]
    assert old["outputs"].tolist() == [["memory:///m/clips/00000_a.png"]]


def test_contact_sheet_draws_the_first_frame_of_the_first_image_not_a_video(workflow: ApiWorkflow) -> None:
    """A job whose outputs are a WebM then an animated WebP (red, then blue frames) gets a tile of the WebP's first,
    red frame; the video is skipped, not drawn as "unreadable"."""
    store = OutputStore("memory://contact-media")
    frames = [Image.new("RGB", (48, 48), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="WEBP", save_all=True, append_images=frames[1:], lossless=True)
    files = [
        StoredFile(uri=store.write_bytes("clips/00000_a.webm", b"\x1aE\xdf\xa3 not decodable"), sha256="0" * 64,
                   size_bytes=1, node_id="9"),
        StoredFile(uri=store.write_bytes("clips/00000_a_1.webp", buffer.getvalue()), sha256="1" * 64, size_bytes=1,
                   node_id="7"),
    ]  # fmt: skip
    job = JobSpec(batch="clips", index=0, key="k0", item=0, values={}, seed=None, label="clip", workflow=workflow)

    [uri] = write_contact_sheets(store, "clips", [JobResult(job=job, status="done", attempts=1, files=files)]).uris

    with Image.open(io.BytesIO(store.read_bytes("clips/contact_sheet.png"))) as sheet:
        pixels = np.asarray(sheet.convert("RGB"))
    assert uri.endswith("clips/contact_sheet.png")
    assert np.all(pixels == (255, 0, 0), axis=-1).any()
    assert not np.all(pixels == (0, 0, 255), axis=-1).any()
