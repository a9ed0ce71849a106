"""Bad input through the flow's parameters: `BatchSpec`, then what the flow runs before any GPU time."""

import csv
import io
import json
import re
import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from comfybatch.comfy.object_info import ObjectInfo
from comfybatch.comfy.preflight import check_workflow
from comfybatch.comfy.workflow import ApiWorkflow
from comfybatch.errors import BatchRequestError, ComfyBatchError, WorkflowRejected
from comfybatch.expansion import Expansion, expand_batch
from comfybatch.flows.plan import resolve_workflow
from comfybatch.models import BatchSpec, JobResult, StoredFile
from comfybatch.outputs.manifest import MANIFEST_CSV, read_manifest, write_manifest
from comfybatch.outputs.storage import OutputStore
from comfybatch.problems import validation_text
from tests.badinput import corpus
from tests.conftest import FIXTURES

OBJECT_INFO = ObjectInfo.from_file(FIXTURES / "object_info_0.3.75.json")
FORMULA_START = tuple("=+-@\t\r")


@pytest.mark.parametrize("case", corpus.cases("params"))
def test_params_bad_input_is_named_and_harmless(case: corpus.Case, tmp_path: Path) -> None:
    """Each parameter case is refused with a message naming its field, row, column or node, or accepted as data."""
    inputs = corpus.prepare(case, tmp_path)
    before = corpus.files_outside_out(tmp_path)
    started = time.perf_counter()

    outcome: Any
    try:
        outcome = _run(case, inputs, tmp_path / "out")
    except (ValidationError, ComfyBatchError) as exc:
        outcome = exc

    assert time.perf_counter() - started < case.raw.get("max_seconds", 5)
    if case.expect.get("ok"):
        assert not isinstance(outcome, Exception), str(outcome)
        _check_accepted(case, outcome)
    else:
        _check_refused(case, outcome)
    corpus.check_nothing_lost_or_escaped(tmp_path, before)


def _run(case: corpus.Case, inputs: Path, out: Path) -> Any:
    if case.raw["stage"] == "preflight":
        problems = check_workflow(ApiWorkflow(corpus.graph(case.raw["graph"])), OBJECT_INFO)
        return problems or None
    spec = BatchSpec.model_validate(corpus.expand_placeholders(case.raw["spec"], inputs))
    if case.raw["stage"] == "spec":
        return spec
    info = OBJECT_INFO if case.raw.get("object_info") else None
    expansion = expand_batch(spec, resolve_workflow(spec.workflow, {}), object_info=info)
    if case.raw["stage"] == "manifest":
        return _manifest(case, expansion, OutputStore(out))
    return expansion


def _manifest(case: corpus.Case, expansion: Expansion, store: OutputStore) -> tuple[Expansion, str, Any]:
    """Write the manifest of the expansion as if every job rendered; return its CSV text and what reads back."""
    batch_dir = case.raw.get("batch_dir", "a")
    results = [
        JobResult(job=job, status="done", server="gpu-a", error=case.raw.get("error_text"),
                  files=[StoredFile(uri=store.uri(f"a/{job.file_stem}.png"), sha256="0" * 64, size_bytes=1,
                                    node_id="7")])
        for job in expansion.jobs
    ]  # fmt: skip
    write_manifest(store, batch_dir, results)
    return expansion, store.read_bytes(f"{batch_dir}/{MANIFEST_CSV}").decode(), read_manifest(store, batch_dir)


def _check_refused(case: corpus.Case, outcome: Any) -> None:
    expected = case.expect["error"]
    if case.raw["stage"] == "preflight":  # problems, as ComfyUI would report them (or a refusal carrying them)
        assert outcome, "preflight found nothing wrong"
        if isinstance(outcome, WorkflowRejected):
            corpus.check_message(case, str(outcome))
            outcome = outcome.problems
        assert expected in {problem.kind for problem in outcome}
        corpus.check_message(case, "\n".join(str(problem) for problem in outcome))
        return
    assert isinstance(outcome, Exception), f"accepted: {outcome!r}"
    assert expected in {cls.__name__ for cls in type(outcome).__mro__}, repr(outcome)
    # What a person reads: the model's refusal as comfybatch words it (the CLI, the API and the flow's failure).
    shown = validation_text(outcome, fields=BatchSpec.model_fields) if isinstance(outcome, ValidationError) else None
    corpus.check_message(case, shown or str(outcome))
    if isinstance(outcome, BatchRequestError):
        first = outcome.problems[0]
        for name in ("field", "row", "column"):
            if name in case.expect:
                assert getattr(first, name) == case.expect[name], str(first)


def _check_accepted(case: corpus.Case, outcome: Any) -> None:
    expansion, csv_text, read_back = outcome if isinstance(outcome, tuple) else (outcome, None, None)
    assert isinstance(expansion, Expansion)
    assert len(expansion.jobs) == case.expect["jobs"]
    first = expansion.jobs[0]
    for name, value in case.expect.get("values", {}).items():
        assert first.values[name] == value
        assert first.workflow.to_json().count(_json_text(value)) >= 1  # bound verbatim into the graph
    for job in expansion.jobs:  # file names: "<number>_<slug>_<seed>", nothing that leaves the folder
        assert re.fullmatch(r"\d{5,}_[a-z0-9-]+_\d+", job.file_stem), job.file_stem
    if csv_text is not None:
        _check_manifest(expansion, csv_text, read_back)


def _check_manifest(expansion: Expansion, csv_text: str, read_back: Any) -> None:
    """No text cell of the CSV starts a formula; the manifest read back holds the original values."""
    for row in csv.reader(io.StringIO(csv_text)):
        for cell in row:
            if cell.startswith(FORMULA_START):
                float(cell)  # only a plain number may start with - or +
    for job, (_, row) in zip(expansion.jobs, read_back.iterrows(), strict=True):
        assert row["param.prompt"] == job.values["prompt"]
        assert row["error"] == '=HYPERLINK("http://evil.example","click")'
    assert "'=cmd|" in csv_text


def _json_text(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)[1:-1] if isinstance(value, str) else json.dumps(value)
