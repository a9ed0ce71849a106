"""read_sheet: CSV, XLSX and Parquet sheets read as typed, and unusable sheets refused with a reason."""

from pathlib import Path

import pytest

from comfybatch.errors import BatchRequestError
from comfybatch.sheets import read_sheet


def test_read_sheet_missing_file_names_sheet(tmp_path: Path) -> None:
    """A missing sheet is a request error naming it."""
    path = tmp_path / "nope.csv"

    with pytest.raises(
        BatchRequestError, match=r"sheet '.*nope\.csv' cannot be used\n  - sheet: file not found"
    ):
        read_sheet(str(path))


def test_read_sheet_corrupt_xlsx_names_sheet(tmp_path: Path) -> None:
    """A file that is not a workbook is a request error, not a traceback."""
    path = tmp_path / "broken.xlsx"
    path.write_bytes(b"PK\x03\x04 not really a zip")

    with pytest.raises(BatchRequestError, match=r"sheet '.*broken\.xlsx' cannot be used\n.*cannot be read as XLSX"):
        read_sheet(str(path))


def test_read_sheet_unknown_extension_is_refused(tmp_path: Path) -> None:
    """Only .csv, .xlsx and .parquet are read."""
    path = tmp_path / "items.txt"
    path.write_text("prompt\na cat\n")

    with pytest.raises(BatchRequestError, match=r"unknown extension '\.txt'"):
        read_sheet(str(path))


def test_read_sheet_duplicate_columns_are_refused(tmp_path: Path) -> None:
    """Two columns with one name are refused (pandas would silently rename one)."""
    path = tmp_path / "items.csv"
    path.write_text("prompt,steps,prompt\na,1,b\n")

    with pytest.raises(BatchRequestError, match=r"more than one column named 'prompt'"):
        read_sheet(str(path))


def test_read_sheet_header_only_is_empty(tmp_path: Path) -> None:
    """A sheet with column names but no rows is refused."""
    path = tmp_path / "items.csv"
    path.write_text("prompt,steps\n")

    with pytest.raises(BatchRequestError, match=r"no data rows"):
        read_sheet(str(path))


def test_read_sheet_keeps_cells_as_typed(tmp_path: Path) -> None:
    """Cells that pandas would guess at (NA, 007) stay text."""
    path = tmp_path / "items.csv"
    path.write_text("prompt\nNA\n007\n")

    sheet = read_sheet(str(path))

    assert sheet["prompt"].tolist() == ["NA", "007"]


def test_read_sheet_url_credentials_stay_out_of_messages() -> None:
    """A sheet URL's user, password and query string are not repeated in the error."""
    with pytest.raises(BatchRequestError) as caught:
        read_sheet("https://user:secret@example.invalid/items.txt?token=abc")

    assert caught.value.summary == "sheet 'https://example.invalid/items.txt' cannot be used"
    assert "secret" not in str(caught.value)
    assert "token" not in str(caught.value)
