"""Expand a batch request into image jobs: items (sheet rows or prompts) x sweep x images per item.

Pure and synchronous: every value is checked before any job exists, so a bad request costs no GPU time.
"""

import hashlib
import itertools
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd  # type: ignore[import-untyped]  # no stubs installed (pandas-stubs is not a dependency)

from comfybatch.comfy.object_info import InputSpec, ObjectInfo
from comfybatch.comfy.parameters import UPLOAD_INPUTS, InputPath
from comfybatch.comfy.rule import spec_rule
from comfybatch.comfy.workflow import ApiWorkflow
from comfybatch.errors import BatchRequestError, BindingError, RequestProblem
from comfybatch.inputs import (
    SHA_SUFFIX,
    InputImage,
    InputPolicy,
    check_image,
    list_images,
    location_stem,
    resolve_location,
)
from comfybatch.models import BatchSpec, JobSpec, SeedPolicy
from comfybatch.sheets import EMPTY, cell_value, read_sheet
from comfybatch.slug import label_slug
from comfybatch.values import BUILTIN_RULES, InvalidValue, Kind, Rule, apply_rule

MAX_JOBS = 100_000
MAX_LISTED_PROBLEMS = 50
LABEL_COLUMN = "label"
RESERVED_PARAMETERS = frozenset({"filename_prefix"})  # "comfybatch/<batch>/<job_key>", set when a job is built
_RANDOM_SEED_MODULUS = 2**48
_UNSET: Any = object()  # a value that broke a rule: recorded as a problem, never bound

Axis = list[dict[str, Any]]


@dataclass(frozen=True)
class Expansion:
    """The jobs of a batch in order, and how many jobs equal to an earlier one were dropped."""

    jobs: list[JobSpec]
    duplicates: int = 0


@dataclass(frozen=True)
class _Item:
    values: dict[str, Any]
    row: int | None = None
    label: str = ""


def expand_batch(
    spec: BatchSpec,
    template: ApiWorkflow,
    *,
    object_info: ObjectInfo | None = None,
    sheet: pd.DataFrame | None = None,
    input_policy: InputPolicy | None = None,
) -> Expansion:
    """Turn `spec` into image jobs: each item (sheet row, input image, prompt, or one from defaults) x sweep x image.

    Values are checked per parameter (built-in rules for well-known names, plus the server's input specs
    when `object_info` is given), and every problem is collected before anything is bound. A given `sheet`
    is numbered as a spreadsheet shows it: its first data row is row 2. Input images (`images`, an `image` column
    or any upload parameter) are read and checked here, under `input_policy` (the process settings when None).

    Raises:
        BatchRequestError: the sheet cannot be read, or the problems found (row, column or field named).
    """
    if spec.sheet is not None and sheet is None:
        sheet = read_sheet(spec.sheet)
    if input_policy is None:
        from comfybatch.settings import get_settings

        input_policy = InputPolicy.from_settings(get_settings())
    expander = _Expander(spec, template, object_info, input_policy)
    defaults = {name: expander.value(name, value, field=f"defaults.{name}") for name, value in spec.defaults.items()}
    axes = expander.sweep_axes()
    if sheet is not None:
        items = expander.sheet_items(sheet)
    else:
        items = expander.image_items() if spec.images is not None else expander.prompt_items()
    expander.check_request(_set_names(spec, sheet), jobs=len(items) * math.prod(map(len, axes)))
    expander.raise_if_any()
    return expander.build(items, axes, defaults)


class _Expander:
    """One batch's offered parameters, their rules, and the problems found so far."""

    def __init__(
        self, spec: BatchSpec, template: ApiWorkflow, object_info: ObjectInfo | None, policy: InputPolicy
    ) -> None:
        self.spec = spec
        self.template = template
        try:
            self.offered = template.parameters(spec.bindings)
        except BindingError as exc:
            problem = RequestProblem(exc.summary, field="bindings")
            raise BatchRequestError("the bindings do not fit the workflow", problems=(problem,)) from exc
        self.uploads = {name for name, paths in self.offered.items()
                        if paths and all(_is_upload(template, path, object_info) for path in paths)}  # fmt: skip
        self.rules = {
            name: [Rule("str", non_empty=True)] if name in self.uploads else _rules(template, name, paths, object_info)
            for name, paths in self.offered.items()
        }
        self.policy = policy
        self.images: dict[str, InputImage] = {}  # by location: each distinct input read and checked once
        self.sheet_base = _folder_of(spec.sheet) if spec.sheet else None
        self.problems: list[RequestProblem] = []
        self.problem_count = 0
        swept = set(spec.sweep.axes).union(*spec.sweep.zipped)
        self.need_prompt = "prompt" in self.offered and "prompt" not in spec.defaults and "prompt" not in swept

    def problem(self, message: str, **where: Any) -> None:
        self.problem_count += 1
        if len(self.problems) < MAX_LISTED_PROBLEMS:
            self.problems.append(RequestProblem(message, **where))

    def raise_if_any(self) -> None:
        if self.problem_count:
            shown = f", the first {len(self.problems)} listed" if self.problem_count > len(self.problems) else ""
            summary = f"batch '{self.spec.name}' is invalid: {self.problem_count} problem(s){shown}"
            raise BatchRequestError(summary, problems=tuple(self.problems))

    def usable(self, name: str, **where: Any) -> bool:
        """Whether `name` may be set; if not, record why."""
        if name in RESERVED_PARAMETERS:
            self.problem(f"'{name}' is set by comfybatch on every job and cannot be set", **where)
        elif name not in self.offered:
            names = ", ".join(sorted(set(self.offered) - RESERVED_PARAMETERS)) or "none"
            self.problem(f"unknown parameter '{name}'; this workflow offers: {names}", **where)
        return name in self.offered and name not in RESERVED_PARAMETERS

    def value(self, name: str, value: Any, *, check_name: bool = True, **where: Any) -> Any:
        """`value` converted per `name`'s rules, or `_UNSET` after recording why it cannot be."""
        if check_name and not self.usable(name, **where):
            return _UNSET
        try:
            for rule in self.rules[name]:
                value = apply_rule(rule, value)
        except InvalidValue as exc:
            self.problem(str(exc), **where)
            return _UNSET
        return self._input(value, **where) if name in self.uploads else value

    def _input(self, value: str, **where: Any) -> Any:
        """The input image's location, after reading and checking it (once per location)."""
        try:
            location = resolve_location(value, self.sheet_base if "row" in where else None)
            if location not in self.images:
                self.images[location] = check_image(location, self.policy)
        except InvalidValue as exc:
            self.problem(str(exc), **where)
            return _UNSET
        return location

    def image_items(self) -> list[_Item]:
        """One item per input image (x each prompt, when prompts are given too)."""
        source = self.spec.images
        if "image" not in self.uploads:
            self.problem("this workflow has no LoadImage to take the images; bind one: image=<node>.inputs.image",
                         field="images")  # fmt: skip
            return []
        try:
            locations = list_images(source) if source is not None else []
        except InvalidValue as exc:
            self.problem(str(exc), field="images")
            return []
        prompts = self.prompt_items()
        items: list[_Item] = []
        for number, location in enumerate(locations):
            where = f"images[{number}]" if isinstance(source, list) else "images"
            image = self.value("image", location, check_name=False, field=where)
            items += [_Item({**prompt.values, "image": image}) for prompt in prompts]
        return items

    def sweep_axes(self) -> list[Axis]:
        axes: list[Axis] = []
        seen: set[str] = set()
        for name, values in self.spec.sweep.axes.items():
            axes.append([{name: value} for value in self._swept(name, values, seen, f"sweep.axes.{name}")])
        for number, group in enumerate(self.spec.sweep.zipped):
            where = f"sweep.zipped[{number}]"
            lengths = {name: len(values) for name, values in group.items()}
            if len(set(lengths.values())) != 1:
                shown = ", ".join(f"{name}: {length}" for name, length in lengths.items()) or "an empty group"
                self.problem(f"zipped lists advance together and must have equal lengths, got {shown}", field=where)
                continue
            columns = {name: self._swept(name, values, seen, f"{where}.{name}") for name, values in group.items()}
            axes.append([dict(zip(columns, point, strict=True)) for point in zip(*columns.values(), strict=True)])
        return axes

    def _swept(self, name: str, values: Sequence[Any], seen: set[str], where: str) -> list[Any]:
        if name in seen:
            self.problem(f"'{name}' is swept more than once", field=where)
        seen.add(name)
        if not values:
            self.problem("no values: the batch would be empty", field=where)
        if not self.usable(name, field=where):
            return list(values)
        return [self.value(name, value, check_name=False, field=where) for value in values]

    def prompt_items(self) -> list[_Item]:
        if not self.spec.prompts:
            return [_Item({})]
        if not self.usable("prompt", field="prompts"):
            return []
        prompts = (
            self.value("prompt", p, check_name=False, field=f"prompts[{n}]") for n, p in enumerate(self.spec.prompts)
        )
        return [_Item({"prompt": prompt}) for prompt in prompts]

    def sheet_items(self, sheet: pd.DataFrame) -> list[_Item]:
        if self.spec.prompts:
            self.problem("give either a sheet or prompts, not both", field="prompts")
        if self.spec.images is not None:
            self.problem("give either a sheet (with an 'image' column) or images, not both", field="images")
        names = [str(column).strip() for column in sheet.columns]
        for name in sorted({name for name in names if names.count(name) > 1}):
            self.problem("the sheet has more than one column with this name", column=name)
        params = {
            position: name
            for position, name in enumerate(names)
            if not name.startswith(("#", "_")) and name != LABEL_COLUMN and self.usable(name, column=name)
        }
        label_at = names.index(LABEL_COLUMN) if LABEL_COLUMN in names else None
        items: list[_Item] = []
        for offset, raw in enumerate(zip(*(sheet.iloc[:, p].tolist() for p in range(len(names))), strict=True)):
            cells = [cell_value(value) for value in raw]
            if all(cell is EMPTY for cell in cells):  # a blank row is a spacer, not an item
                continue
            row = offset + 2  # as a spreadsheet numbers it: the header is row 1
            label = "" if label_at is None or cells[label_at] is EMPTY else label_slug(str(cells[label_at]))
            items.append(_Item(self._row_values(cells, row, params), row=row, label=label))
        if not items:
            self.problem("the sheet has no rows with values", field="sheet")
        return items

    def _row_values(self, cells: list[Any], row: int, params: Mapping[int, str]) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for position, name in params.items():
            if cells[position] is not EMPTY:
                values[name] = self.value(name, cells[position], check_name=False, row=row, column=name)
            elif name == "prompt" and self.need_prompt:
                self.problem("the prompt is empty", row=row, column=name)
        return values

    def check_request(self, set_names: set[str], *, jobs: int) -> None:
        spec, offered, ipi = self.spec, self.offered, self.spec.images_per_item
        if "prompt" in offered and "prompt" not in set_names:  # else every image renders the template's prompt
            self.problem("no prompt: set a 'prompt' column, prompts, a sweep axis or a default", field="prompts")
        if "seed" not in offered and ipi > 1:
            self.problem(
                f"the workflow has no seed: its {ipi} images per item would be identical", field="images_per_item"
            )
        elif spec.seed_policy is SeedPolicy.FIXED and ipi > 1:  # one seed per item: its images would be one image
            self.problem(
                f"seed_policy 'fixed' gives all {ipi} images of an item the same seed, so they would be identical; "
                "use 'increment' or 'random', or 1 image per item",
                field="images_per_item",
            )
        if "seed" in offered and "seed" in set_names and spec.seed_policy is SeedPolicy.RANDOM:
            self.problem(
                "seeds are set, but seed_policy 'random' ignores them; use 'fixed' or 'increment'", field="seed_policy"
            )
        if (total := jobs * ipi) > MAX_JOBS:
            where = "sheet" if spec.sheet else "prompts" if spec.prompts else "images_per_item"
            message = f"the batch would have {total:,} jobs; at most {MAX_JOBS:,} are allowed: split it"
            self.problem(message, field=where)

    def build(self, items: list[_Item], axes: list[Axis], defaults: dict[str, Any]) -> Expansion:
        spec = self.spec
        points = [{k: v for part in combo for k, v in part.items()} for combo in itertools.product(*axes)]
        jobs: list[JobSpec] = []
        keys: set[str] = set()
        for (number, item), (offset, point) in itertools.product(enumerate(items), enumerate(points)):
            item_index = number * len(points) + offset
            values = {**defaults, **item.values, **point}  # precedence: sweep > row or prompt > defaults
            inputs = {name: self.images[values[name]] for name in self.uploads if name in values}
            stem = next((label_slug(location_stem(found.location)) for found in inputs.values()), "")
            label = item.label or stem or label_slug(str(values.get("prompt", ""))) or "item"
            # The graph names each input by its content; the values record where it came from and its digest.
            bound = {**values, **{name: found.server_name for name, found in inputs.items()}}
            values = {**values, **{name + SHA_SUFFIX: found.sha256 for name, found in inputs.items()}}
            for image in range(spec.images_per_item):
                seed = _seed(spec, item_index, image, values.get("seed")) if "seed" in self.offered else None
                job_values = values if seed is None else {**values, "seed": seed}
                workflow = self._bind(bound if seed is None else {**bound, "seed": seed})
                if (key := workflow.content_hash()[:16]) not in keys:
                    keys.add(key)
                    jobs.append(JobSpec(
                        batch=spec.name, index=len(jobs), key=key, item=item_index, image=image, row=item.row,
                        values=job_values, seed=seed, label=label, workflow=workflow,
                    ))  # fmt: skip
        return Expansion(jobs=jobs, duplicates=len(items) * len(points) * spec.images_per_item - len(jobs))

    def _bind(self, values: dict[str, Any]) -> ApiWorkflow:
        # Same as template.bind(values, spec.bindings), with the paths resolved once instead of per job.
        try:
            return self.template.bind(values, {name: self.offered[name] for name in values})
        except BindingError as exc:
            problem = RequestProblem(exc.summary, field="bindings")
            raise BatchRequestError("a parameter cannot be bound onto the workflow", problems=(problem,)) from exc


def _rules(template: ApiWorkflow, name: str, paths: list[InputPath], object_info: ObjectInfo | None) -> list[Rule]:
    rules = [BUILTIN_RULES[name]] if name in BUILTIN_RULES else []
    if object_info is not None:
        rules += [rule for path in paths if (rule := spec_rule(_input_spec(template, object_info, path)))]
    if rules or not paths:
        return rules
    value = template.get_input(paths[0].node_id, paths[0].input_name)  # undeclared: go by the template's value
    kind: Kind = "bool" if isinstance(value, bool) else "number" if isinstance(value, int | float) else "any"
    return [Rule("str" if isinstance(value, str) else kind)]


def _is_upload(template: ApiWorkflow, path: InputPath, object_info: ObjectInfo | None) -> bool:
    class_type = template.class_type(path.node_id)
    if (class_type, path.input_name) in UPLOAD_INPUTS:
        return True
    spec = _input_spec(template, object_info, path) if object_info is not None else None
    return spec is not None and spec.has_upload


def _folder_of(location: str) -> str:
    """The folder a sheet is in: relative image paths in it are taken from there."""
    if "://" in location:
        return location.rsplit("/", 1)[0]
    return os.path.dirname(os.path.abspath(location))


def _input_spec(template: ApiWorkflow, object_info: ObjectInfo, path: InputPath) -> InputSpec | None:
    class_type = template.class_type(path.node_id)
    return object_info.input_spec(class_type, path.input_name) if object_info.has_class(class_type) else None


def _set_names(spec: BatchSpec, sheet: pd.DataFrame | None) -> set[str]:
    names = set(spec.defaults) | set(spec.sweep.axes) | {name for group in spec.sweep.zipped for name in group}
    names |= {"prompt"} if spec.prompts else set()
    names |= {"image"} if spec.images is not None else set()
    return names | ({str(column).strip() for column in sheet.columns} if sheet is not None else set())


def _seed(spec: BatchSpec, item_index: int, image: int, explicit: int | None) -> int:
    if spec.seed_policy is SeedPolicy.RANDOM:  # stable across reruns, so a resumed batch keeps its job keys
        material = json.dumps([spec.name, item_index, image, spec.base_seed]).encode()
        return int.from_bytes(hashlib.sha256(material).digest()[:8], "big") % _RANDOM_SEED_MODULUS
    item_seed = explicit if explicit is not None else spec.base_seed + item_index * spec.images_per_item
    return item_seed if spec.seed_policy is SeedPolicy.FIXED else item_seed + image
