"""The batch manifest: one row per job, written as Parquet (typed) and CSV (for people and spreadsheets)."""

import csv
import io
import json
import mimetypes
from collections.abc import Iterable, Sequence
from typing import Any

import pandas as pd  # type: ignore[import-untyped]
import pyarrow as pa  # type: ignore[import-untyped]

from comfybatch.models import JobResult
from comfybatch.outputs.storage import OutputStore, check_relpath

MANIFEST_PARQUET = "manifest.parquet"
MANIFEST_CSV = "manifest.csv"
PARAM_PREFIX = "param."
CSV_LIST_SEPARATOR = ";"

# Fixed columns and their pandas dtypes; `param.<name>` columns follow, sorted by name.
MANIFEST_COLUMNS: dict[str, str] = {
    "index": "int64",
    "job_key": "string",
    "key": "string",
    "item": "int64",
    "image": "int64",
    "row": "Int64",
    "seed": "Int64",
    "status": "string",
    "error": "string",
    "server": "string",
    "prompt_id": "string",
    "attempts": "int64",
    "queued_at": "datetime64[us, UTC]",
    "started_at": "datetime64[us, UTC]",
    "finished_at": "datetime64[us, UTC]",
    "duration_s": "float64",
    "gpu_seconds": "float64",  # ComfyUI's own execution time (its history's execution_start to execution_success)
    "outputs": "object",  # list[str] of URIs
    "sha256": "object",  # list[str], parallel to outputs
    "media_types": "object",  # list[str], parallel to outputs: image/png, image/webp (animated), video/webm…
    "comfyui_version": "string",
    "values_json": "string",
}
_LIST_COLUMNS = ("outputs", "sha256", "media_types")
# What ComfyUI 0.3.75's save nodes write (SaveImage, SaveAnimatedWEBP/PNG, SaveWEBM, SaveVideo, SaveAudio*), fixed
# here rather than read from the host's mime.types, which differs between machines.
_MEDIA_TYPES = {
    ".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp", ".gif": "image/gif",
    ".webm": "video/webm", ".mp4": "video/mp4", ".mov": "video/quicktime",
    ".flac": "audio/flac", ".mp3": "audio/mpeg", ".opus": "audio/ogg", ".ogg": "audio/ogg", ".wav": "audio/wav",
}  # fmt: skip
OUTPUT_MEDIA_TYPES = frozenset(_MEDIA_TYPES.values())
_TIME_COLUMNS = ("queued_at", "started_at", "finished_at")
_INT64_RANGE = range(-(2**63), 2**63)
# OWASP "CSV Injection": a spreadsheet runs a cell starting with one of these as a formula. Such text cells are
# written with a leading `'` (shown as text); a leading `'` is doubled, so reading the CSV back is exact.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "'")


def manifest_frame(results: Sequence[JobResult]) -> pd.DataFrame:
    """One row per job, sorted by `index`, with the fixed `MANIFEST_COLUMNS` then `param.<name>` columns.

    Timestamps are UTC datetimes (NaT when unknown); `duration_s` runs from start to finish.
    A parameter column keeps a single type: int, float, bool or text; mixed values become text.
    """
    ordered = sorted(results, key=lambda result: result.job.index)
    rows = [_row(result) for result in ordered]
    frame = _typed(pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS)))
    return _with_params(frame, [result.job.values for result in ordered])


def write_manifest(store: OutputStore, batch_dir: str, results: Sequence[JobResult]) -> tuple[str, str]:
    """Write `<batch_dir>/manifest.parquet` and `<batch_dir>/manifest.csv`; return both URIs.

    In the CSV, list cells (`outputs`, `sha256`) are joined with `;`.

    Raises:
        UnsafePath, StorageError.
    """
    batch_dir = check_relpath(batch_dir)
    frame = manifest_frame(results)
    parquet_uri = store.write_bytes(f"{batch_dir}/{MANIFEST_PARQUET}", _parquet_bytes(frame))
    csv_frame = frame.copy()
    for column in _LIST_COLUMNS:
        csv_frame[column] = csv_frame[column].map(CSV_LIST_SEPARATOR.join)
    csv_frame = csv_frame.map(_defused)
    # Text quoted too: a `;`-separated locale must not split a cell and expose a formula in its second half.
    csv_text = csv_frame.to_csv(index=False, quoting=csv.QUOTE_NONNUMERIC)
    csv_uri = store.write_bytes(f"{batch_dir}/{MANIFEST_CSV}", csv_text.encode())
    return parquet_uri, csv_uri


def read_manifest(store: OutputStore, batch_dir: str) -> pd.DataFrame | None:
    """The manifest of `batch_dir` (from Parquet, else from CSV), or None if it has none.

    Raises:
        UnsafePath, StorageError.
    """
    batch_dir = check_relpath(batch_dir)
    parquet, csv = f"{batch_dir}/{MANIFEST_PARQUET}", f"{batch_dir}/{MANIFEST_CSV}"
    if store.exists(parquet):
        frame = pd.read_parquet(io.BytesIO(store.read_bytes(parquet)), engine="pyarrow")
        return _typed(frame)
    if store.exists(csv):
        return _from_csv(store.read_bytes(csv))
    return None


def media_type_of(uri: str) -> str:
    """The media type of an output file, from its extension (`application/octet-stream` when unknown)."""
    suffix = "." + uri.rpartition("/")[2].rpartition(".")[2].lower() if "." in uri.rpartition("/")[2] else ""
    return _MEDIA_TYPES.get(suffix) or mimetypes.guess_type(f"x{suffix}")[0] or "application/octet-stream"


def _row(result: JobResult) -> dict[str, Any]:
    job = result.job
    duration = None
    if result.started_at is not None and result.finished_at is not None:
        duration = result.finished_at - result.started_at
    return {
        "index": job.index,
        "job_key": job.job_key,
        "key": job.key,
        "item": job.item,
        "image": job.image,
        "row": job.row,
        "seed": job.seed,
        "status": result.status,
        "error": result.error,
        "server": result.server,
        "prompt_id": result.prompt_id,
        "attempts": result.attempts,
        "queued_at": result.queued_at,
        "started_at": result.started_at,
        "finished_at": result.finished_at,
        "duration_s": duration,
        "gpu_seconds": result.gpu_seconds,
        "outputs": [file.uri for file in result.files],
        "sha256": [file.sha256 for file in result.files],
        "media_types": [media_type_of(file.uri) for file in result.files],
        "comfyui_version": result.comfyui_version,
        "values_json": json.dumps(job.values, sort_keys=True, ensure_ascii=False),
    }


def _typed(frame: pd.DataFrame) -> pd.DataFrame:
    """Give the fixed columns their dtypes, whether they come from rows, Parquet or CSV text."""
    frame = frame.copy()
    for column in (*_LIST_COLUMNS, "gpu_seconds"):
        if column not in frame.columns:  # a manifest written before the column existed
            frame[column] = None
    for column in _TIME_COLUMNS:
        frame[column] = _timestamps(frame[column])
    for column in _LIST_COLUMNS:
        frame[column] = frame[column].map(_as_list).astype("object")
    for column in ("row", "seed", "duration_s", "gpu_seconds"):
        frame[column] = pd.to_numeric(frame[column])
    for column, dtype in MANIFEST_COLUMNS.items():
        if column not in _TIME_COLUMNS + _LIST_COLUMNS:
            frame[column] = frame[column].astype(dtype)
    return frame.reset_index(drop=True)


def _timestamps(column: pd.Series) -> pd.Series:
    if pd.api.types.is_datetime64_any_dtype(column.dtype):
        return column.astype(MANIFEST_COLUMNS["queued_at"])
    if pd.api.types.is_numeric_dtype(column.dtype) or column.map(lambda v: v is None or _is_number(v)).all():
        # Epoch seconds, rounded to whole microseconds so that Parquet and CSV give back equal values.
        micros = pd.to_numeric(column, errors="coerce").mul(1_000_000).round().astype("Int64")
        return pd.to_datetime(micros, unit="us", utc=True).astype(MANIFEST_COLUMNS["queued_at"])
    return pd.to_datetime(column, utc=True, format="ISO8601").astype(MANIFEST_COLUMNS["queued_at"])


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _as_list(cell: object) -> list[str]:
    """A list cell from Python (list), Parquet (array) or CSV (`;`-joined text)."""
    if isinstance(cell, str):
        return cell.split(CSV_LIST_SEPARATOR) if cell else []
    if isinstance(cell, Iterable):
        return [str(item) for item in cell]
    return []  # None or NaN


def _with_params(frame: pd.DataFrame, values: Sequence[dict[str, Any]]) -> pd.DataFrame:
    names = sorted({name for job_values in values for name in job_values})
    params = {f"{PARAM_PREFIX}{name}": _param_column([v.get(name) for v in values]) for name in names}
    if not params:
        return frame
    return pd.concat([frame, pd.DataFrame(params, index=frame.index)], axis=1)


def _param_column(values: list[Any]) -> pd.Series:
    """One dtype per column: Int64, Float64, boolean, or string (JSON text for non-strings when mixed)."""
    present = [value for value in values if value is not None]
    if present and all(isinstance(v, bool) for v in present):
        return pd.Series(values, dtype="boolean")
    if present and all(isinstance(v, int) and not isinstance(v, bool) and v in _INT64_RANGE for v in present):
        return pd.Series(values, dtype="Int64")
    if present and all(_is_number(v) for v in present):
        return pd.Series(values, dtype="Float64")
    text = [v if v is None or isinstance(v, str) else json.dumps(v, sort_keys=True, ensure_ascii=False) for v in values]
    return pd.Series(text, dtype="string")


def _parquet_bytes(frame: pd.DataFrame) -> bytes:
    schema = pa.Schema.from_pandas(frame, preserve_index=False)
    for column in _LIST_COLUMNS:
        # Explicit: a batch where every job failed has only empty lists, which pyarrow would infer as list<null>.
        schema = schema.set(schema.get_field_index(column), pa.field(column, pa.list_(pa.string())))
    buffer = io.BytesIO()
    frame.to_parquet(buffer, engine="pyarrow", schema=schema, index=False)
    return buffer.getvalue()


def _defused(cell: object) -> object:
    """A text cell a spreadsheet will not run as a formula (`'` prefixed); other cells as they are."""
    return f"'{cell}" if isinstance(cell, str) and cell.startswith(_FORMULA_STARTS) else cell


def _restored(cell: str) -> str:
    return cell[1:] if cell.startswith("'") and cell[1:].startswith(_FORMULA_STARTS) else cell


def _from_csv(data: bytes) -> pd.DataFrame:
    """Parse the CSV manifest; parameter columns are rebuilt from `values_json`, their exact source."""
    frame = pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False).map(_restored)
    fixed = _typed(frame.reindex(columns=list(MANIFEST_COLUMNS)).replace({"": None}))
    return _with_params(fixed, [json.loads(text) for text in fixed["values_json"]])
