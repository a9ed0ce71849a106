"""Frozen models at the edges: the batch request (a Prefect UI form), its jobs and their results."""

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, WithJsonSchema, field_validator
from pydantic_core import PydanticCustomError

from comfybatch.comfy.intake import decode_workflow, detect_format
from comfybatch.comfy.workflow import ApiWorkflow
from comfybatch.errors import ConfigError, WorkflowFormatError
from comfybatch.notify.targets import url_problem
from comfybatch.problems import NAME_RULE, field_words
from comfybatch.values import BUILTIN_RULES, InvalidValue, apply_rule, control_character, non_finite

BATCH_NAME_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"  # in words: problems.NAME_RULE
TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"


class SeedPolicy(StrEnum):
    """How the seeds of an item's images are chosen."""

    FIXED = "fixed"  # every image of the item uses the item's seed
    INCREMENT = "increment"  # item seed, +1, +2, …
    RANDOM = "random"  # drawn from a hash of batch, item and image: random-looking, reproducible, recorded


class Sweep(BaseModel):
    """Parameter axes multiplied with every item."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    axes: dict[str, list[JsonValue]] = Field(
        default_factory=dict,
        description="Cartesian product: every combination of these values, e.g. {'steps': [20, 30]}.",
    )
    zipped: list[dict[str, list[JsonValue]]] = Field(
        default_factory=list,
        description="Groups whose lists advance together (equal lengths), "
        "e.g. [{'width': [1080, 1200], 'height': [1920, 630]}].",
    )


def template_names() -> list[str]:
    """The bundled workflow templates (`comfybatch/templates/<name>.json`), by name."""
    return sorted(path.stem for path in TEMPLATES_DIR.glob("*.json"))


def read_template(source: str | dict[str, Any]) -> Any:
    """A workflow as `BatchSpec.workflow` names it: a template name (`comfybatch/templates/<name>.json`), a JSON
    file path, or an inline graph, decoded (not yet checked as a graph).

    Raises:
        ConfigError naming the templates on offer; WorkflowFormatError naming a file that is not JSON.
    """
    if isinstance(source, dict):
        return source
    candidate = TEMPLATES_DIR / f"{source}.json"
    if candidate.is_file():
        return decode_workflow(candidate)
    path = Path(source)
    if path.suffix == ".json" and path.is_file():
        return decode_workflow(path)  # a broken file is a WorkflowFormatError naming it, not a JSONDecodeError
    raise ConfigError(f"workflow {source!r} is neither a template ({', '.join(template_names())}) nor a JSON file")


def _workflow_schema() -> dict[str, Any]:
    """The run form's workflow: a template picked from a list, a .json file, or a graph. The deployment enforces its
    parameter schema, so Prefect refuses a misspelt template (409) when the run is created, not at run time."""
    return {"title": "Workflow", "anyOf": [
        {"title": "Template", "type": "string", "enum": template_names()},
        {"title": "Workflow file (.json)", "type": "string", "pattern": r"\.json$"},
        {"title": "ComfyUI graph (JSON)", "type": "object"},
    ]}  # fmt: skip


_CHOICE_TITLES = {"string": "Text", "array": "List", "integer": "Number", "number": "Number", "object": "JSON"}


def _form_schema(schema: dict[str, Any]) -> None:
    """Optional fields start on their value, not on "None": Prefect's form shows `Property is type "None"` for an
    `anyOf` whose default is null, and leaves a field without a default out of the run when it is left empty."""
    for field in schema.get("properties", {}).values():
        if field.get("default", 0) is None and any(branch.get("type") == "null" for branch in field.get("anyOf", [])):
            del field["default"]
            field["anyOf"] = [branch for branch in field["anyOf"] if branch.get("type") != "null"] + [
                {"type": "null", "title": "Not set"}]  # fmt: skip
        for branch in field.get("anyOf", []):  # the form names each choice by its title, else by "str", "int"…
            branch.setdefault("title", _CHOICE_TITLES.get(branch.get("type", ""), branch.get("type", "")))


class BatchSpec(BaseModel):
    """What to render: a workflow (a template or your own ComfyUI graph) and the items to render with it: prompts,
    the rows of a sheet or input images, each times any sweep, each rendered `images_per_item` times."""

    model_config = ConfigDict(extra="forbid", frozen=True, json_schema_extra=_form_schema)

    name: str = Field(
        pattern=BATCH_NAME_PATTERN, description=f"The batch's name: {NAME_RULE}. Running the same request under the "
        "same name again resumes it.", examples=["spring-catalog"],
    )  # fmt: skip
    workflow: Annotated[str | dict[str, Any], WithJsonSchema(_workflow_schema())] = Field(
        description="Which ComfyUI workflow renders the images: a template from the list, a .json file on the worker "
        "(UI or API format), or the graph itself pasted as JSON.",
    )  # fmt: skip
    bindings: dict[str, str] = Field(
        default_factory=dict, description="Only for parameters comfybatch does not find by itself: parameter name -> "
        "'node.inputs.input', e.g. {'strength': '12.inputs.strength'}. Prompt, seed, steps, size and the like are "
        "found without it.",
    )  # fmt: skip
    prompts: list[str] = Field(default_factory=list, description="One item per prompt.")
    sheet: str | None = Field(
        None, description="A CSV, XLSX or Parquet file (path or URL): one item per row, columns named after "
        "parameters (prompt, seed, width…). Leave empty to use prompts or images instead.",
    )  # fmt: skip
    images: str | list[str] | None = Field(
        None, description="Input images: a folder or URL prefix (each image file one item, in name order), "
        "or a list of paths and URLs. Leave empty for text-to-image.",
    )  # fmt: skip
    sweep: Sweep = Field(default_factory=Sweep, description="Values to try on every item: each combination is "
                         "rendered (e.g. steps 20 and 30 doubles the batch).")  # fmt: skip
    defaults: dict[str, JsonValue] = Field(
        default_factory=dict, description="Values for every item that does not set its own, e.g. {'steps': 25, "
        "'width': 768}.",
    )  # fmt: skip
    images_per_item: int = Field(1, ge=1, le=1000, description="How many images of each item, each with its own "
                                 "seed (see the seed policy).")  # fmt: skip
    seed_policy: SeedPolicy = Field(
        SeedPolicy.INCREMENT, description="How an item's images get their seeds: increment (seed, seed+1, …), fixed "
        "(all the same) or random (reproducible, recorded in the manifest).",
    )  # fmt: skip
    base_seed: int = Field(0, ge=0, le=2**53, description="The seed of items that set none.")
    priority: int = Field(0, ge=-100, le=100, description="Higher runs first when batches share servers.")
    output: str | None = Field(None, description="Where the images go: a folder or URL. Leave empty for the "
                               "platform's output folder.")  # fmt: skip
    servers: list[str] = Field(default_factory=list, description="Only these servers (by name); all when empty.")
    dry_run: bool = Field(False, description="Only check the request on every server and estimate; render nothing.")
    shard_size: int | None = Field(
        None, ge=1, le=100_000, description="Images per shard: a batch with more to render runs as child flow runs "
        "on the work pool, this many each. Leave empty for the worker's setting (COMFYBATCH_SHARD_SIZE).",
    )  # fmt: skip
    new_version: bool = Field(
        False,
        description="When a batch of this name exists with a different request, render this one as a new version "
        "in a folder of its own (the name plus .v2, .v3, …) instead of refusing it.",
    )
    webhook: str | None = Field(
        None, description="An http(s) address told when the batch starts and finishes (signed POSTs, Standard "
        "Webhooks). Leave empty for none.",
    )  # fmt: skip
    webhook_items: bool = Field(False, description="Also tell the webhook about every image done or failed.")

    # Checks that need no file, server or template, so a bad request is refused where it arrives: the Prefect
    # form, the REST API (422/409 naming the field) or the CLI. The expansion repeats them with rows and columns.
    @field_validator("workflow")
    @classmethod
    def _graph_or_name(cls, value: str | dict[str, Any]) -> str | dict[str, Any]:
        if isinstance(value, str):
            if not value.strip() or control_character(value):
                raise ValueError(f"expected a template name or a workflow file, got {value!r}")
            return value
        _finite(value, "workflow")
        try:
            if detect_format(value) == "api":
                ApiWorkflow(value)  # every node an object with a class_type and object inputs
        except WorkflowFormatError as exc:
            raise ValueError(str(exc)) from None
        return value

    @field_validator("prompts")
    @classmethod
    def _prompt_texts(cls, prompts: list[str]) -> list[str]:
        for number, prompt in enumerate(prompts):
            _check(BUILTIN_RULES["prompt"], prompt, f"prompts[{number}]")
        return prompts

    @field_validator("sheet", "output")
    @classmethod
    def _location(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.strip():
            raise ValueError("is empty; leave it out instead")
        if problem := control_character(value):
            raise ValueError(problem)
        if ".." in value.replace("\\", "/").split("/"):
            raise ValueError(f"{value!r} has a '..' segment; give an absolute path or a URL instead")
        return value

    @field_validator("webhook")
    @classmethod
    def _webhook_url(cls, value: str | None) -> str | None:
        if value is not None and (problem := url_problem(value)):
            raise ValueError(problem)  # the address itself is checked where settings are known (SSRF)
        return value

    @field_validator("images")
    @classmethod
    def _image_locations(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and not value:
            raise ValueError("is an empty list; leave it out instead")
        for number, location in enumerate([value] if isinstance(value, str) else value or []):
            try:
                cls._location(location)
            except ValueError as exc:
                if isinstance(value, list):
                    raise _invalid(f"images[{number}]", str(exc)) from None
                raise
        return value

    @field_validator("defaults")
    @classmethod
    def _default_values(cls, defaults: dict[str, JsonValue]) -> dict[str, JsonValue]:
        for name, value in defaults.items():
            _finite(value, f"defaults.{name}")
            _check(BUILTIN_RULES.get(name), value, f"defaults.{name}")
        return defaults

    @field_validator("sweep")
    @classmethod
    def _swept_values(cls, sweep: Sweep) -> Sweep:
        groups = [("sweep.axes", sweep.axes), *((f"sweep.zipped[{n}]", group) for n, group in enumerate(sweep.zipped))]
        for where, group in groups:
            for name, values in group.items():
                for value in values:
                    _finite(value, f"{where}.{name}")
                    _check(BUILTIN_RULES.get(name), value, f"{where}.{name}")
        return sweep


def _finite(value: Any, field: str) -> None:
    """Refuse NaN and infinities (Python's JSON parser reads them; JSON and Prefect's storage have none)."""
    if found := non_finite(value, field):
        raise _invalid(field, f"{found}: NaN and infinities are not JSON numbers; send a finite number", bare=True)


def _check(rule: Any, value: Any, field: str) -> None:
    """Raise the pydantic-visible error for a value a built-in rule refuses (`field: message`)."""
    if rule is None:
        return
    try:
        apply_rule(rule, value)
    except InvalidValue as exc:
        raise _invalid(field, str(exc)) from None


def _invalid(field: str, problem: str, *, bare: bool = False) -> PydanticCustomError:
    """A refusal naming its own field (`defaults.width`, `prompts[1]` read as "prompt 2"), so every channel shows
    the same sentence without pydantic's "Value error," (see `comfybatch/problems.py`)."""
    sentence = problem if bare else f"{field_words(field)}: {problem}"
    return PydanticCustomError("invalid_value", "{sentence}", {"field": field, "sentence": sentence})


class JobSpec(BaseModel):
    """One image job: one Prefect task run, one prompt on one server."""

    model_config = ConfigDict(frozen=True)

    batch: str
    index: int = Field(description="Position in the batch, from 0.")
    key: str = Field(description="Item key: hash of the bound graph; equal keys are the same image.")
    item: int = Field(description="Which item (sheet row, prompt, sweep point) this image belongs to.")
    image: int = Field(0, description="Which image of the item (images_per_item).")
    row: int | None = Field(None, description="Sheet row as a spreadsheet shows it (header is row 1).")
    values: dict[str, JsonValue] = Field(description="Every bound parameter, seed included.")
    seed: int | None = None
    label: str = Field("", description="Short slug for file names, from the prompt.")
    workflow: ApiWorkflow

    @property
    def job_key(self) -> str:
        return f"{self.batch}-{self.index:05d}"

    @property
    def file_stem(self) -> str:
        """`<number>_<slug>_<seed>`; the output extension is added per file."""
        # Numbered from 1, as the page, the task runs and the contact sheet number images.
        parts = [f"{self.index + 1:05d}", self.label or "item", str(self.seed) if self.seed is not None else "noseed"]
        return "_".join(parts)


class StoredFile(BaseModel):
    """An output as stored, bytes exactly as ComfyUI wrote them."""

    model_config = ConfigDict(frozen=True)

    uri: str
    sha256: str
    size_bytes: int
    node_id: str
    media: str = "images"


# cancelled: the batch ended (cancel, stop, crash) before this job finished; a rerun renders it.
JobStatus = Literal["done", "failed", "skipped", "cancelled"]


class JobResult(BaseModel):
    """What happened to one job; one manifest row."""

    model_config = ConfigDict(frozen=True)

    job: JobSpec
    status: JobStatus
    server: str | None = None
    prompt_id: str | None = None
    attempts: int = 0
    queued_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    files: list[StoredFile] = Field(default_factory=list)
    error: str | None = None
    comfyui_version: str | None = None
    gpu_seconds: float | None = Field(
        None, description="ComfyUI's own execution time of the prompt (execution_start to execution_success)."
    )


class BatchReport(BaseModel):
    """How a batch run ended: counts, where things are, what failed."""

    model_config = ConfigDict(frozen=True)

    name: str
    dry_run: bool = False
    total: int = 0
    done: int = 0
    failed: int = 0
    skipped: int = Field(0, description="Done by an earlier run; outputs already in storage.")
    duplicates: int = 0
    output: str = ""
    manifest: list[str] = Field(default_factory=list)
    contact_sheets: list[str] = Field(default_factory=list)
    cancelled: int = Field(0, description="Not rendered: the batch ended before these jobs finished.")
    failures: list[tuple[str, str]] = Field(default_factory=list, description="(job_key, error), first 50.")
    ended: str = Field("", description="Why the run ended early (cancelled, stopped), empty when it ran to the end.")
    gpu_seconds: float = Field(0.0, description="ComfyUI execution time summed over the batch's rendered images.")
    plan: list[str] = Field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.dry_run and self.failed == 0 and self.done + self.skipped == self.total
