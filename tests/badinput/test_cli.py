"""Bad input through `comfybatch` (in process, as `main()` runs it): exit 2, one clear line, no traceback."""

import sys
from pathlib import Path

import pytest

from comfybatch.cli import main
from comfybatch.settings import get_settings
from tests.badinput import corpus
from tests.conftest import FIXTURES


# main() reads sys.argv as the installed command does; cyclopts warns about that under pytest.
@pytest.mark.filterwarnings("ignore:Cyclopts application invoked without tokens:UserWarning")
@pytest.mark.timeout(60)  # every case must stop before Prefect or a server is contacted
@pytest.mark.parametrize("case", corpus.cases("cli"))
def test_cli_bad_input_exits_2_naming_it(
    case: corpus.Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each CLI case exits with its code and names the problem on stderr; nothing is lost or written elsewhere."""
    inputs = corpus.prepare(case, tmp_path)
    before = corpus.files_outside_out(tmp_path)
    args = [arg.replace("{fixtures}", str(FIXTURES)) for arg in corpus.expand_placeholders(case.raw["args"], inputs)]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COMFYUI_URLS", "http://127.0.0.1:9")  # were the request accepted: fail, never render
    monkeypatch.setenv("COMFYBATCH_CONFIG_FILE", str(tmp_path / "absent.toml"))
    monkeypatch.setattr(sys, "argv", ["comfybatch", *args])
    get_settings.cache_clear()

    with pytest.raises(SystemExit) as exited:
        main()

    captured = capsys.readouterr()
    get_settings.cache_clear()
    assert exited.value.code == case.expect["exit"], captured.err
    corpus.check_message(case, captured.err)
    assert "Traceback" not in captured.out
    assert captured.err.startswith("error: ")
    corpus.check_nothing_lost_or_escaped(tmp_path, before)
