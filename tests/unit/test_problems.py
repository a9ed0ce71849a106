"""The one translation of problems into the user's words (`comfybatch/problems.py`)."""

import httpx
import pytest
from pydantic import ValidationError

from comfybatch.errors import NodeProblem, ServerUnavailable, WorkflowRejected
from comfybatch.models import BatchSpec
from comfybatch.problems import problems_of, unreachable_line, validation_problems, why_unreachable


def _refused(**fields: object) -> ValidationError:
    with pytest.raises(ValidationError) as caught:
        BatchSpec.model_validate({"name": "a", "workflow": "txt2img-tiny", **fields})
    return caught.value


def test_validation_problem_names_the_field_as_typed_without_pydantic_words() -> None:
    """`defaults.width` 66 reads "defaults.width: must be a multiple of 8, got 66", field kept beside it."""
    [problem] = validation_problems(_refused(defaults={"width": 66}))

    assert problem.message == "defaults.width: must be a multiple of 8, got 66"
    assert (problem.field, problem.reason) == ("defaults.width", "must be a multiple of 8, got 66")


def test_validation_problem_counts_prompts_from_one() -> None:
    """The second prompt is "prompt 2" in the sentence and item 2 beside it; the field path stays `prompts[1]`."""
    [problem] = validation_problems(_refused(prompts=["a cat", " "]))

    assert problem.message == "prompt 2: must not be empty"
    assert (problem.field, problem.item) == ("prompts[1]", 2)


def test_validation_problem_says_the_name_rule_in_words() -> None:
    """A bad batch name is told which names are allowed, never the regex."""
    [problem] = validation_problems(_refused(name="My Batch"))

    assert "lowercase letters, digits and dashes" in problem.message
    assert "[a-z" not in problem.message


def test_validation_problem_suggests_the_field_meant() -> None:
    """A misspelt field is named with the field it probably meant."""
    [problem] = validation_problems(_refused(promts=["a cat"]), fields=BatchSpec.model_fields)

    assert problem.message == "'promts' is not a field of a batch request; did you mean 'prompts'?"


def test_node_problem_names_the_node_by_title_or_class_in_words() -> None:
    """A titled node is named by its title, an untitled one by its class in words, each with its id and input."""
    error = WorkflowRejected("rejected", problems=(
        NodeProblem("1", "'x.safetensors' is not one of ['a']", class_type="CheckpointLoaderSimple",
                    input_name="ckpt_name", title="Load Checkpoint"),
        NodeProblem("6", "required input is missing", class_type="VAEDecode", input_name="vae"),
    ))  # fmt: skip

    titled, untitled = problems_of(error)

    assert titled.message.startswith("Load Checkpoint (node 1), input 'ckpt_name': ")
    assert (titled.node, titled.input) == ("1", "ckpt_name")
    assert untitled.message == "VAE Decode (node 6), input 'vae': required input is missing"


def test_unreachable_servers_are_one_line_with_the_reason_in_words() -> None:
    """Two of three servers refusing read as one line naming both and the reason, no exception repr."""
    line = unreachable_line({"gpu-b": "connection refused", "gpu-c": "connection refused"}, total=3)

    assert line == "2 of 3 servers do not answer: gpu-b, gpu-c (connection refused)"


def test_why_unreachable_reads_the_transport_error_under_ours() -> None:
    """A ServerUnavailable caused by httpx's ConnectError is "connection refused", not `ConnectError(...)`."""
    cause = httpx.ConnectError("All connection attempts failed")
    error = ServerUnavailable(f"GET /system_stats: {cause!r}", server="gpu-b")
    error.__cause__ = cause  # as `raise … from exc` in comfy/client.py

    assert why_unreachable(error) == "connection refused"
