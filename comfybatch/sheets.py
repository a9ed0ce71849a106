"""Read item sheets (CSV, XLSX, Parquet) from a path or fsspec URL into a frame of cells as typed.

Cells are converted per parameter later, by `expansion`; here a sheet is only read and its columns checked.
"""

import codecs
import http.client
import io
import math
import zipfile
from pathlib import PurePosixPath
from typing import Any, NoReturn
from urllib.parse import urlsplit

import fsspec  # type: ignore[import-untyped]
import numpy as np
import pandas as pd  # type: ignore[import-untyped]  # no stubs installed (pandas-stubs is not a dependency)

from comfybatch.errors import BatchRequestError, RequestProblem

SHEET_EXTENSIONS = (".csv", ".xlsx", ".parquet")
# A byte order mark says the encoding for sure (Excel's "Unicode text" is UTF-16); without one, UTF-8 only:
# guessing Latin-1 or Windows-1252 would send mangled prompts to the GPUs without a word.
_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8-sig"),
         (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))  # fmt: skip
EMPTY: Any = object()  # a blank cell: "not set for this row"


def read_sheet(source: str, *, storage_options: dict[str, Any] | None = None) -> pd.DataFrame:
    """Read a CSV, XLSX (first worksheet) or Parquet sheet from a path or fsspec URL; row 1 names the columns.

    CSV and XLSX cells are read as text and converted per parameter later, so a prompt typed as `007`
    or `NA` stays as typed; only blank cells are empty.

    Raises:
        BatchRequestError: unknown extension, missing or unreadable file, no data rows, unnamed or duplicate columns.
    """
    shown = _display(source)
    suffix = PurePosixPath(urlsplit(source).path if "://" in source else source).suffix.lower()
    if suffix not in SHEET_EXTENSIONS:
        _sheet_error(shown, f"unknown extension {suffix or '(none)'!r}; expected one of {', '.join(SHEET_EXTENSIONS)}")
    try:
        frame = _read_frame(source, suffix, storage_options)
    except FileNotFoundError:
        _sheet_error(shown, "file not found")
    except pd.errors.EmptyDataError:
        _sheet_error(shown, "the sheet is empty")
    except ImportError as exc:  # fsspec: the package for this URL's protocol is missing, e.g. s3fs
        _sheet_error(shown, f"cannot open this URL: {exc}")
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, http.client.HTTPException) as exc:  # corrupt, bad URL
        _sheet_error(shown, f"cannot be read as {suffix[1:].upper()}: {exc}")
    return _checked_frame(frame, shown)


def cell_value(value: Any) -> Any:
    """A sheet cell as a plain Python value, or `EMPTY` for a blank, NaN or missing cell."""
    if isinstance(value, np.generic | np.ndarray):  # Parquet and caller frames hold numpy scalars and arrays
        value = value.tolist()
    if value is None or value is pd.NA or value is pd.NaT or (isinstance(value, float) and math.isnan(value)):
        return EMPTY
    return EMPTY if isinstance(value, str) and not value.strip() else value


def _read_frame(source: str, suffix: str, storage_options: dict[str, Any] | None) -> pd.DataFrame:
    if suffix == ".parquet":
        return pd.read_parquet(source, storage_options=storage_options)
    as_text: dict[str, Any] = {"header": None, "dtype": str, "keep_default_na": False, "na_values": [""]}
    if suffix == ".csv":
        with fsspec.open(source, "rb", **(storage_options or {})) as file:
            text = _csv_text(file.read())
        if not text.strip():
            raise pd.errors.EmptyDataError("no text")
        raw = pd.read_csv(io.StringIO(text), skip_blank_lines=False, **as_text)
    else:
        raw = pd.read_excel(source, sheet_name=0, storage_options=storage_options, **as_text)
    frame = raw.iloc[1:].reset_index(drop=True)
    frame.columns = ["" if (name := cell_value(value)) is EMPTY else str(name) for value in raw.iloc[0].tolist()]
    return frame


def _csv_text(data: bytes) -> str:
    """CSV bytes as text: UTF-8, or what a byte order mark says.

    Raises:
        ValueError: not text in that encoding; the message names the row and how to re-save.
    """
    encoding = next((name for bom, name in _BOMS if data.startswith(bom)), "utf-8")
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as exc:
        row = data[: exc.start].count(b"\n") + 1
        raise ValueError(
            f"row {row} is not {encoding.upper().removesuffix('-SIG')} text (byte 0x{data[exc.start]:02x}); "
            "save the sheet as 'CSV UTF-8'"
        ) from None
    if (nul := text.find("\x00")) >= 0:  # valid UTF-8, but what UTF-16 without a byte order mark looks like
        row = text[:nul].count("\n") + 1
        raise ValueError(f"row {row} has NUL characters (UTF-16 without a byte order mark?); save it as 'CSV UTF-8'")
    return text


def _checked_frame(frame: pd.DataFrame, shown: str) -> pd.DataFrame:
    if frame.shape[0] == 0 or frame.shape[1] == 0:
        _sheet_error(shown, "no data rows (row 1 holds the column names)")
    names = [str(column).strip() for column in frame.columns]
    for position, name in enumerate(names):
        if not name and any(cell_value(value) is not EMPTY for value in frame.iloc[:, position].tolist()):
            _sheet_error(shown, f"column {position + 1} has values but no name in row 1")
    if duplicates := sorted({name for name in names if name and names.count(name) > 1}):
        _sheet_error(shown, f"more than one column named {', '.join(repr(name) for name in duplicates)}")
    keep = [position for position, name in enumerate(names) if name]  # unnamed and empty: stray formatting
    frame = frame.iloc[:, keep]
    frame.columns = [names[position] for position in keep]
    return frame


def _sheet_error(shown: str, message: str) -> NoReturn:
    raise BatchRequestError(f"sheet '{shown}' cannot be used", problems=(RequestProblem(message, field="sheet"),))


def _display(source: str) -> str:
    """The source without credentials or query string, fit for messages and logs."""
    if "://" not in source:
        return source
    parts = urlsplit(source)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"
