"""ObjectInfo: a real ComfyUI 0.3.75 `/object_info` (trimmed) read the way the frontend reads it."""

from pathlib import Path
from typing import Any

import pytest

from comfybatch.comfy.object_info import ObjectInfo, merge_object_infos

FIXTURES = Path(__file__).parents[1] / "fixtures"


@pytest.fixture(scope="module")
def info() -> ObjectInfo:
    return ObjectInfo.from_file(FIXTURES / "object_info_0.3.75.json")


def synthetic(inputs: dict[str, Any], **extra: Any) -> ObjectInfo:
    return ObjectInfo({"Node": {"input": inputs, "output": ["IMAGE"], "output_node": False, **extra}})


def test_object_info_has_class_tells_known_from_unknown(info: ObjectInfo) -> None:
    """Classes of the server are known; others (and UI-only types) are not."""
    assert (info.has_class("KSampler"), info.has_class("PrimitiveNode"), "SaveImage" in info) == (True, False, True)


def test_object_info_inputs_follow_input_order_required_then_optional(info: ObjectInfo) -> None:
    """Inputs come in `input_order`, required before optional."""
    names = [spec.name for spec in info.inputs("ImageStitch")]

    assert names == ["image1", "direction", "match_image_size", "spacing_width", "spacing_color", "image2"]


def test_object_info_inputs_fall_back_to_dict_order_without_input_order() -> None:
    """Without `input_order` (older servers) the declaration order is used."""
    info = synthetic({"required": {"b": ["INT"], "a": ["IMAGE"]}, "optional": {"c": ["STRING"]}})

    assert [(s.name, s.required) for s in info.inputs("Node")] == [("b", True), ("a", True), ("c", False)]


def test_object_info_widget_inputs_skip_link_types(info: ObjectInfo) -> None:
    """Only widget types own widgets: KSampler's model/positive/negative/latent are links."""
    names = [spec.name for spec in info.widget_inputs("KSampler")]

    assert names == ["seed", "steps", "cfg", "sampler_name", "scheduler", "denoise"]


def test_object_info_force_input_gets_no_widget() -> None:
    """`forceInput` turns a widget type into a link-only input."""
    info = synthetic({"required": {"text": ["STRING", {"forceInput": True}], "n": ["INT", {}]}})

    assert (info.is_widget("Node", "text"), info.is_widget("Node", "n")) == (False, True)


def test_object_info_combo_options_read_both_spellings(info: ObjectInfo) -> None:
    """Combos written `[[...], {}]` and `["COMBO", {"options": [...]}]` both expose their options."""
    legacy = info.combo_options("ImageRotate", "rotation")
    modern = info.combo_options("CaseConverter", "mode")

    assert (legacy, modern) == (
        ("none", "90 degrees", "180 degrees", "270 degrees"),
        ("UPPERCASE", "lowercase", "Capitalize", "Title Case"),
    )


def test_object_info_combo_options_none_for_non_combo(info: ObjectInfo) -> None:
    """A non-combo input has no options."""
    assert info.combo_options("EmptyImage", "width") is None


def test_object_info_control_after_generate_from_spec_flag(info: ObjectInfo) -> None:
    """The spec's `control_after_generate` flag marks KSampler.seed, but not steps."""
    assert (
        info.has_control_after_generate("KSampler", "seed"),
        info.has_control_after_generate("KSampler", "steps"),
    ) == (
        True,
        False,
    )


def test_object_info_control_after_generate_implied_for_seed_ints() -> None:
    """INT inputs named seed/noise_seed get the control value when the spec is silent."""
    info = synthetic({"required": {"seed": ["INT", {}], "noise_seed": ["INT"], "size": ["INT"]}})

    flags = [info.has_control_after_generate("Node", n) for n in ("seed", "noise_seed", "size")]

    assert flags == [True, True, False]


def test_object_info_control_after_generate_explicit_false_wins() -> None:
    """An explicit `control_after_generate: false` overrides the seed-name heuristic."""
    info = synthetic({"required": {"seed": ["INT", {"control_after_generate": False}]}})

    assert not info.has_control_after_generate("Node", "seed")


def test_object_info_value_range_reads_min_and_max(info: ObjectInfo) -> None:
    """min/max come from the input's options."""
    assert info.value_range("EmptyImage", "width") == (1, 16384)


def test_object_info_output_node_flag(info: ObjectInfo) -> None:
    """SaveImage is an output node; ImageInvert is not."""
    assert (info.is_output_node("SaveImage"), info.is_output_node("ImageInvert")) == (True, False)


def test_object_info_output_types_by_slot(info: ObjectInfo) -> None:
    """Output types are listed by slot index."""
    assert info.output_types("CheckpointLoaderSimple") == ("MODEL", "CLIP", "VAE")


def test_object_info_upload_flag_on_load_image(info: ObjectInfo) -> None:
    """LoadImage's image combo carries the upload flag."""
    spec = info.input_spec("LoadImage", "image")

    assert spec is not None
    assert spec.has_upload


def test_object_info_rejects_non_object() -> None:
    """A JSON array is not an object_info."""
    with pytest.raises(ValueError, match="must be a JSON object"):
        ObjectInfo.from_json("[1, 2]")


def test_merge_object_infos_unions_combo_options() -> None:
    """A fleet catalogue offers every checkpoint any server has, in both combo spellings."""
    old = {"Loader": {"input": {"required": {"ckpt_name": [["a.ckpt"], {}]}}, "output": ["MODEL"]}}
    other = {"Loader": {"input": {"required": {"ckpt_name": [["b.ckpt", "a.ckpt"], {}]}}, "output": ["MODEL"]},
             "Only2": {"input": {"required": {"mode": ["COMBO", {"options": ["x"]}]}}, "output": []}}  # fmt: skip

    merged = merge_object_infos([ObjectInfo(old), ObjectInfo(other)])

    assert merged.combo_options("Loader", "ckpt_name") == ("a.ckpt", "b.ckpt")
    assert merged.has_class("Only2")
    assert ObjectInfo(old).combo_options("Loader", "ckpt_name") == ("a.ckpt",)


def test_merge_object_infos_across_three_servers_leaves_each_catalogue_as_it_was() -> None:
    """Options from a third server add to the merged combo, and no server's own catalogue changes."""
    first = ObjectInfo({"Loader": {"input": {"required": {"ckpt_name": [["a"], {}]}, "optional": {"x": ["INT", {}]}}}})
    second = ObjectInfo({"Loader": {"input": {"required": {"ckpt_name": [["b"], {}]}}}})
    third = ObjectInfo({"Loader": {"input": {"required": {"ckpt_name": [["c", "a"], {}]}}}})

    merged = merge_object_infos([first, second, third])

    assert merged.combo_options("Loader", "ckpt_name") == ("a", "b", "c")
    assert merged.input_spec("Loader", "x") is not None
    assert [info.combo_options("Loader", "ckpt_name") for info in (first, second, third)] == [
        ("a",),
        ("b",),
        ("c", "a"),
    ]
