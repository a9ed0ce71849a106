"""ApiWorkflow: parsing errors, immutability, hashing and parameter binding."""

import json
import pickle
from pathlib import Path

import pytest
from pydantic import BaseModel

from comfybatch.comfy.intake import detect_format, load_workflow
from comfybatch.comfy.object_info import ObjectInfo
from comfybatch.comfy.workflow import ApiWorkflow, InputPath
from comfybatch.errors import BindingError, WorkflowFormatError

FIXTURES = Path(__file__).parents[1] / "fixtures"
TXT2IMG = FIXTURES / "api" / "txt2img_tiny.json"


@pytest.fixture
def txt2img() -> ApiWorkflow:
    return load_workflow(TXT2IMG)


def test_load_workflow_not_json_reports_position() -> None:
    """Text that is not JSON says so, with where the JSON error is."""
    with pytest.raises(WorkflowFormatError, match=r"not valid JSON: .* line 1 column 9 \(char 8\)"):
        load_workflow('{"1": {}')


def test_load_workflow_json_list_says_what_was_found() -> None:
    """JSON that is not a graph names what it found."""
    with pytest.raises(WorkflowFormatError, match="found a JSON array of 2 items"):
        load_workflow("[1, 2]")


def test_load_workflow_prompt_body_hints_at_prompt_key() -> None:
    """A whole /prompt request body is recognised and the fix suggested."""
    with pytest.raises(WorkflowFormatError, match="pass its 'prompt' value"):
        load_workflow({"prompt": {"1": {"class_type": "X"}}, "client_id": "c"})


def test_load_workflow_node_without_class_type_is_named() -> None:
    """A node lacking class_type is named in the error."""
    with pytest.raises(WorkflowFormatError, match="node '7' has no class_type"):
        load_workflow({"1": {"class_type": "EmptyImage", "inputs": {}}, "7": {"inputs": {"x": 1}}})


def test_load_workflow_ui_format_without_object_info_explains() -> None:
    """UI format cannot be converted without a server's object_info, and the error says so."""
    with pytest.raises(WorkflowFormatError, match="needs the target server's node definitions"):
        load_workflow(FIXTURES / "ui" / "primitives.json")


def test_load_workflow_missing_file_is_format_error(tmp_path: Path) -> None:
    """An unreadable file is a WorkflowFormatError naming it."""
    with pytest.raises(WorkflowFormatError, match="cannot read workflow file"):
        load_workflow(tmp_path / "absent.json")


def test_load_workflow_accepts_utf8_bom_bytes() -> None:
    """Bytes with a UTF-8 BOM (as some editors save) parse."""
    workflow = load_workflow(b"\xef\xbb\xbf" + TXT2IMG.read_bytes())

    assert workflow.class_type("5") == "KSampler"


def test_load_workflow_accepts_a_path_string() -> None:
    """A str naming an existing file is read like a Path."""
    assert load_workflow(str(TXT2IMG)) == load_workflow(TXT2IMG)


def test_detect_format_tells_api_from_ui() -> None:
    """A graph of class_type nodes is API; a `nodes` list is UI."""
    ui = json.loads((FIXTURES / "ui" / "reroute_notes.json").read_text())

    assert (detect_format(json.loads(TXT2IMG.read_text())), detect_format(ui)) == ("api", "ui")


def test_detect_format_empty_object_is_rejected() -> None:
    """An empty object is neither format."""
    with pytest.raises(WorkflowFormatError, match="found an empty JSON object"):
        detect_format({})


def test_api_workflow_nodes_is_a_copy(txt2img: ApiWorkflow) -> None:
    """Mutating the `nodes` dict does not change the workflow."""
    txt2img.nodes["2"]["inputs"]["text"] = "changed"

    assert txt2img.get_input("2", "text") == "a photo of a cat"


def test_api_workflow_with_input_returns_a_changed_copy(txt2img: ApiWorkflow) -> None:
    """with_input leaves the original alone."""
    changed = txt2img.with_input("5", "steps", 3)

    assert (txt2img.get_input("5", "steps"), changed.get_input("5", "steps")) == (1, 3)


def test_api_workflow_with_input_wraps_list_values(txt2img: ApiWorkflow) -> None:
    """A list literal is wrapped so the server does not read it as a link."""
    changed = txt2img.with_input("2", "text", ["a", "b"])

    assert changed.get_input("2", "text") == {"__value__": ["a", "b"]}


def test_api_workflow_with_input_unknown_node_raises(txt2img: ApiWorkflow) -> None:
    """Setting an input of a missing node is a BindingError."""
    with pytest.raises(BindingError, match="no node '99'"):
        txt2img.with_input("99", "steps", 3)


def test_api_workflow_content_hash_ignores_key_order_and_titles() -> None:
    """The hash covers what runs: key order and `_meta` titles do not matter."""
    a = ApiWorkflow({"1": {"class_type": "X", "inputs": {"a": 1, "b": 2}, "_meta": {"title": "one"}}})
    b = ApiWorkflow({"1": {"inputs": {"b": 2, "a": 1}, "class_type": "X"}})

    assert a.content_hash() == b.content_hash()


def test_api_workflow_content_hash_changes_with_values(txt2img: ApiWorkflow) -> None:
    """Any input change changes the hash."""
    assert txt2img.with_input("5", "seed", 2).content_hash() != txt2img.content_hash()


def test_api_workflow_output_node_ids(txt2img: ApiWorkflow) -> None:
    """Output nodes are found with the server's object_info."""
    info = ObjectInfo.from_file(FIXTURES / "object_info_0.3.75.json")

    assert txt2img.output_node_ids(info) == ["7"]


def test_api_workflow_in_pydantic_model_round_trips(txt2img: ApiWorkflow) -> None:
    """A pydantic model can hold an ApiWorkflow and dump/load it as a plain dict."""

    class Spec(BaseModel):
        template: ApiWorkflow

    dumped = Spec(template=txt2img).model_dump_json()

    assert Spec.model_validate_json(dumped).template == txt2img


def test_parameters_detects_txt2img(txt2img: ApiWorkflow) -> None:
    """The tiny txt2img graph offers every common parameter at the expected input."""
    found = {name: [str(p) for p in paths] for name, paths in txt2img.parameters().items()}

    assert found == {
        "prompt": ["2.inputs.text"],
        "negative_prompt": ["3.inputs.text"],
        "checkpoint": ["1.inputs.ckpt_name"],
        "width": ["4.inputs.width"],
        "height": ["4.inputs.height"],
        "batch_size": ["4.inputs.batch_size"],
        "seed": ["5.inputs.seed"],
        "steps": ["5.inputs.steps"],
        "cfg": ["5.inputs.cfg"],
        "sampler": ["5.inputs.sampler_name"],
        "scheduler": ["5.inputs.scheduler"],
        "denoise": ["5.inputs.denoise"],
        "filename_prefix": ["7.inputs.filename_prefix"],
    }


def test_parameters_follow_conditioning_nodes_to_the_encoder(txt2img: ApiWorkflow) -> None:
    """Prompts are found through nodes between encoder and sampler (e.g. a ControlNet apply)."""
    nodes = txt2img.nodes
    nodes["8"] = {"class_type": "ControlNetApplyAdvanced", "inputs": {"positive": ["2", 0], "negative": ["3", 0]}}
    nodes["5"]["inputs"].update(positive=["8", 0], negative=["8", 1])

    found = ApiWorkflow(nodes).parameters()

    assert (found["prompt"], found["negative_prompt"]) == ([InputPath("2", "text")], [InputPath("3", "text")])


def test_parameters_prompt_from_a_primitive_string_node(txt2img: ApiWorkflow) -> None:
    """When the encoder's text is linked from a string primitive, that primitive's value is the prompt."""
    nodes = txt2img.nodes
    nodes["9"] = {"class_type": "PrimitiveStringMultiline", "inputs": {"value": "a dog"}}
    nodes["2"]["inputs"]["text"] = ["9", 0]

    assert ApiWorkflow(nodes).parameters()["prompt"] == [InputPath("9", "value")]


def test_parameters_prefix_binds_every_save_node(txt2img: ApiWorkflow) -> None:
    """A parameter found on several nodes binds all of them."""
    nodes = txt2img.nodes
    nodes["8"] = {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": "other"}}

    bound = ApiWorkflow(nodes).bind({"filename_prefix": "batch/job-00001"})

    assert [bound.get_input(n, "filename_prefix") for n in ("7", "8")] == ["batch/job-00001"] * 2


def test_parameters_shared_encoder_is_only_the_prompt(txt2img: ApiWorkflow) -> None:
    """One encoder feeding both sides is `prompt`, never also `negative_prompt`."""
    nodes = txt2img.nodes
    nodes["5"]["inputs"]["negative"] = ["2", 0]

    found = ApiWorkflow(nodes).parameters()

    assert (found["prompt"], found.get("negative_prompt")) == ([InputPath("2", "text")], None)


def test_parameters_skip_linked_inputs(txt2img: ApiWorkflow) -> None:
    """An input fed by a link (here the seed) is not offered as a parameter."""
    nodes = txt2img.nodes
    nodes["9"] = {"class_type": "PrimitiveInt", "inputs": {"value": 5}}
    nodes["5"]["inputs"]["seed"] = ["9", 0]

    assert "seed" not in ApiWorkflow(nodes).parameters()


def test_parameters_explicit_bindings_accept_long_and_short_paths(txt2img: ApiWorkflow) -> None:
    """Explicit bindings accept both path spellings and take over the inputs detected names had."""
    found = txt2img.parameters({"style": "2.inputs.text", "size": ["4.width", "4.height"]})

    assert found["style"] == [InputPath("2", "text")]
    assert found["size"] == [InputPath("4", "width"), InputPath("4", "height")]
    assert {"prompt", "width", "height"}.isdisjoint(found)
    assert found["seed"] == [InputPath("5", "seed")]


def test_parameters_explicit_binding_to_missing_input_lists_inputs(txt2img: ApiWorkflow) -> None:
    """A typo in an input name is caught, listing the node's inputs."""
    with pytest.raises(BindingError, match=r"has no input 'sed' \(it has: cfg, denoise"):
        txt2img.parameters({"seed": "5.inputs.sed"})


def test_parameters_explicit_binding_to_missing_node(txt2img: ApiWorkflow) -> None:
    """A binding to a node the graph lacks is named."""
    with pytest.raises(BindingError, match="no node '42'"):
        txt2img.parameters({"seed": "42.seed"})


def test_input_path_parse_rejects_a_bare_name() -> None:
    """A path without a node part is not a binding."""
    with pytest.raises(BindingError, match="not of the form"):
        InputPath.parse("seed")


def test_bind_sets_each_value(txt2img: ApiWorkflow) -> None:
    """bind writes every named value into its input."""
    bound = txt2img.bind({"prompt": "a cat", "seed": 7, "cfg": 4.5, "sampler": "dpmpp_2m"})

    values = [bound.get_input(n, i) for n, i in (("2", "text"), ("5", "seed"), ("5", "cfg"), ("5", "sampler_name"))]

    assert values == ["a cat", 7, 4.5, "dpmpp_2m"]


def test_bind_unknown_name_lists_offered_names(txt2img: ApiWorkflow) -> None:
    """An unknown name raises BindingError listing what the workflow offers."""
    with pytest.raises(BindingError, match=r"unknown parameter\(s\) colour; this workflow offers: batch_size, cfg"):
        txt2img.bind({"colour": "red"})


def test_bind_onto_a_link_names_node_and_input(txt2img: ApiWorkflow) -> None:
    """Binding onto an input that is a link is an error naming node and input."""
    with pytest.raises(BindingError, match=r"node 5 \(KSampler\) input 'model': it is a link \['1', 0\]"):
        txt2img.bind({"model": "x"}, {"model": "5.inputs.model"})


def test_bind_wraps_list_values(txt2img: ApiWorkflow) -> None:
    """A list value is stored as `{"__value__": [...]}`, never as a bare (link-like) list."""
    bound = txt2img.bind({"seeds": ["3", 0]}, {"seeds": "5.seed"})

    assert bound.get_input("5", "seed") == {"__value__": ["3", 0]}


def test_bind_rejects_non_json_values(txt2img: ApiWorkflow) -> None:
    """A value that is not JSON data is refused."""
    with pytest.raises(BindingError, match="not JSON data"):
        txt2img.bind({"prompt": {1, 2}})


def test_bind_leaves_the_template_and_other_bound_copies_alone(txt2img: ApiWorkflow) -> None:
    """Bound copies share unchanged nodes, yet changing one copy's `nodes` reaches no other workflow."""
    first = txt2img.bind({"prompt": "a cat"})
    second = txt2img.bind({"prompt": "a dog"})

    nodes = first.nodes
    nodes["5"]["inputs"]["steps"] = 99
    nodes["2"]["inputs"]["text"] = "changed"

    assert [w.get_input("5", "steps") for w in (txt2img, first, second)] == [1, 1, 1]
    assert [w.get_input("2", "text") for w in (txt2img, first, second)] == ["a photo of a cat", "a cat", "a dog"]


def test_bind_one_value_on_two_inputs_stays_immutable(txt2img: ApiWorkflow) -> None:
    """A value bound on several inputs cannot be changed through what `get_input` returns."""
    bound = txt2img.bind({"pair": [1, 2]}, {"pair": ["5.seed", "5.steps"]})

    bound.get_input("5", "seed")["__value__"].append(3)

    assert [bound.get_input("5", name) for name in ("seed", "steps")] == [{"__value__": [1, 2]}] * 2


def test_bind_result_equals_its_validated_copy(txt2img: ApiWorkflow) -> None:
    """A bound workflow equals, and hashes like, the same graph validated from a dict, JSON or a pickle."""
    bound = txt2img.bind({"prompt": "a cat", "seed": 7})

    copies = [ApiWorkflow(bound.nodes), ApiWorkflow.from_json(bound.to_json()), pickle.loads(pickle.dumps(bound))]

    assert all(copy == bound and copy.content_hash() == bound.content_hash() for copy in copies)
    assert bound.content_hash() != txt2img.content_hash()


def test_bind_stores_values_as_json_data(txt2img: ApiWorkflow) -> None:
    """Tuples and non-string keys inside a value are stored as JSON would give them back."""
    bound = txt2img.bind({"extra": {"pair": (1, 2), 3: "x"}}, {"extra": "5.seed"})

    assert bound.get_input("5", "seed") == {"pair": [1, 2], "3": "x"}
    assert bound == ApiWorkflow.from_json(bound.to_json())


@pytest.mark.parametrize(
    "prompt",
    [
        "say \"hi\" and 'bye'",
        "{red|blue} hat, {{double}} braces, ${HOME} %date:yyyy%",
        "line one\nline two\r\n\ttabbed\\backslash",
        "</script><script>alert(1)</script>",
        "café 漢字 😀 \u202e right-to-left \x00 nul",
        '"]}, "99": {"class_type": "Injected"',
    ],
)
def test_bind_hostile_prompt_survives_json_round_trip(txt2img: ApiWorkflow, prompt: str) -> None:
    """Prompts are data: the exact string comes back after JSON serialisation, and no node is added."""
    bound = txt2img.bind({"prompt": prompt})

    reloaded = ApiWorkflow.from_json(bound.to_json())

    assert (reloaded.get_input("2", "text"), len(reloaded)) == (prompt, 7)


def test_load_workflow_json_string_says_what_was_found() -> None:
    """A JSON string is described as such."""
    with pytest.raises(WorkflowFormatError, match="found a JSON string"):
        load_workflow('"just text"')


def test_api_workflow_node_that_is_not_an_object_is_named() -> None:
    """A node value that is not an object names the node and what it is."""
    with pytest.raises(WorkflowFormatError, match="node '2' is not an object but a JSON number"):
        ApiWorkflow({"1": {"class_type": "X", "inputs": {}}, "2": 5})


def test_api_workflow_inputs_that_are_not_an_object_are_named() -> None:
    """Inputs must be an object; the node and class are named."""
    with pytest.raises(WorkflowFormatError, match=r"node '1' \(X\) has inputs that are a JSON array"):
        ApiWorkflow({"1": {"class_type": "X", "inputs": [1, 2]}})


def test_api_workflow_rejects_values_that_are_not_json() -> None:
    """NaN cannot be sent as JSON, so it is refused up front."""
    with pytest.raises(WorkflowFormatError, match="not JSON data"):
        ApiWorkflow({"1": {"class_type": "X", "inputs": {"v": float("nan")}}})


def test_load_workflow_missing_json_path_string_is_named() -> None:
    """A `.json` path string that does not exist is reported as a file, not as bad JSON."""
    with pytest.raises(WorkflowFormatError, match=r"cannot read workflow file 'nowhere/absent\.json'"):
        load_workflow("nowhere/absent.json")


def test_api_workflow_survives_pickle(txt2img: ApiWorkflow) -> None:
    """Pickling (as task runners do with parameters) keeps the workflow equal."""
    assert pickle.loads(pickle.dumps(txt2img)) == txt2img
