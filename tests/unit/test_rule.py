"""The one value-rule path: `comfy/rule.py` checks built-in rules, sheet cells and preflight against one rule."""

from pathlib import Path

import pytest

from comfybatch.comfy.intake import load_workflow
from comfybatch.comfy.object_info import ObjectInfo
from comfybatch.comfy.preflight import check_workflow
from comfybatch.comfy.rule import OutOfRange, Rule, apply_rule, check_bounds, spec_rule
from comfybatch.values import BUILTIN_RULES

FIXTURES = Path(__file__).parents[1] / "fixtures"


@pytest.fixture(scope="module")
def info() -> ObjectInfo:
    return ObjectInfo.from_file(FIXTURES / "object_info_0.3.75.json")


def test_spec_rule_takes_min_and_max_but_not_step(info: ObjectInfo) -> None:
    """EmptyLatentImage's width (min 16, max 16384, step 8) is an int rule without a multiple: the server
    does not check `step`; the 8 comes from the built-in `width` rule instead."""
    rule = spec_rule(info.input_spec("EmptyLatentImage", "width"))

    assert rule == Rule("int", min=16, max=16384)
    assert BUILTIN_RULES["width"].multiple_of == 8


def test_spec_rule_is_a_combo_for_options_and_none_for_linked_types(info: ObjectInfo) -> None:
    """A sampler name is a combo of the server's 42 options; an IMAGE input has nothing checkable."""
    sampler = spec_rule(info.input_spec("KSampler", "sampler_name"))

    assert sampler is not None
    assert (sampler.kind, len(sampler.choices)) == ("combo", 42)
    assert spec_rule(info.input_spec("SaveImage", "images")) is None


@pytest.mark.parametrize(
    ("value", "bound", "limit", "message"),
    [(8, "min", 16, "must be at least 16, got 8"), (20000, "max", 16384, "must be at most 16384, got 20000"),
     (100, "multiple_of", 8, "must be a multiple of 8, got 100")],
)  # fmt: skip
def test_check_bounds_names_the_bound_broken(value: int, bound: str, limit: int, message: str) -> None:
    """check_bounds says which bound and limit a number breaks, in the words apply_rule gives the user."""
    with pytest.raises(OutOfRange) as raised:
        check_bounds(BUILTIN_RULES["width"], value)
    with pytest.raises(OutOfRange, match=f"^{message}$"):
        apply_rule(BUILTIN_RULES["width"], str(value))

    assert (raised.value.bound, raised.value.limit, str(raised.value)) == (bound, limit, message)


def test_preflight_and_sheet_refuse_the_same_declared_maximum(info: ObjectInfo) -> None:
    """cfg 120 breaks KSampler's declared maximum 100 for both readers of the spec rule: preflight says it as
    ComfyUI does (kind and words), a sheet cell in comfybatch's words."""
    workflow = load_workflow(FIXTURES / "api" / "txt2img_tiny.json").bind({"cfg": 120})
    rule = spec_rule(info.input_spec("KSampler", "cfg"))
    assert rule is not None

    problems = check_workflow(workflow, info)

    assert [(p.node_id, p.input_name, p.kind, p.message) for p in problems] == [
        ("5", "cfg", "value_bigger_than_max", "120.0 is bigger than the maximum 100.0")
    ]
    with pytest.raises(OutOfRange, match=r"^must be at most 100, got 120$"):
        apply_rule(rule, "120")


def test_preflight_accepts_a_width_off_the_declared_step(info: ObjectInfo) -> None:
    """Width 100 is off EmptyLatentImage's step 8 but ComfyUI 0.3.75 accepts it, so preflight does too."""
    workflow = load_workflow(FIXTURES / "api" / "txt2img_tiny.json").bind({"width": 100})

    assert check_workflow(workflow, info) == []
