"""Classifying ComfyUI's /prompt answers into WorkflowRejected vs ServerIncompatible."""

from comfybatch.comfy.rejection import classify_rejection
from comfybatch.errors import ServerIncompatible, WorkflowRejected


def _node_error(node_id: str, class_type: str, kind: str, input_name: str, received: object) -> dict[str, object]:
    return {node_id: {"class_type": class_type, "dependent_outputs": ["9"], "errors": [{
        "type": kind, "message": "Value not in list", "details": f"{input_name}: '{received}' not in list",
        "extra_info": {"input_name": input_name, "input_config": None, "received_value": received}}]}}  # fmt: skip


def test_classify_accepted_answer_is_none() -> None:
    """A 200 without node_errors is no rejection."""
    assert classify_rejection({"prompt_id": "p", "number": 1, "node_errors": {}}, server="a") is None


def test_classify_missing_lora_is_server_incompatible() -> None:
    """A file combo (lora_name) not in list means the server lacks the file."""
    body = {
        "error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation"},
        "node_errors": _node_error("4", "LoraLoader", "value_not_in_list", "lora_name", "style.safetensors"),
    }

    error = classify_rejection(body, server="gpu-a")

    assert isinstance(error, ServerIncompatible)
    assert error.server == "gpu-a"


def test_classify_bad_sampler_name_is_workflow_rejected() -> None:
    """A non-file combo (sampler_name) not in list is the workflow's fault on every server."""
    body = {
        "error": {"type": "prompt_outputs_failed_validation", "message": "failed"},
        "node_errors": _node_error("3", "KSampler", "value_not_in_list", "sampler_name", "eulr"),
    }

    error = classify_rejection(body, server="gpu-a")

    assert isinstance(error, WorkflowRejected)
    assert "KSampler (node 3), input 'sampler_name'" in str(error)


def test_classify_mixed_problems_is_workflow_rejected() -> None:
    """One workflow mistake among missing files is still the workflow's fault."""
    node_errors = {
        **_node_error("3", "KSampler", "value_not_in_list", "sampler_name", "eulr"),
        **_node_error("4", "LoraLoader", "value_not_in_list", "lora_name", "x.safetensors"),
    }
    body = {"error": {"type": "prompt_outputs_failed_validation", "message": "failed"}, "node_errors": node_errors}

    assert isinstance(classify_rejection(body, server="a"), WorkflowRejected)


def test_classify_invalid_prompt_with_missing_nodes_is_server_incompatible() -> None:
    """invalid_prompt plus classes absent from /object_info is a server that lacks custom nodes."""
    body = {
        "error": {"type": "invalid_prompt", "message": "Cannot execute because node X does not exist."},
        "node_errors": {},
    }

    error = classify_rejection(body, server="a", missing_nodes={"12": "X"})

    assert isinstance(error, ServerIncompatible)
    assert error.problems[0].node_id == "12"


def test_classify_malformed_invalid_prompt_is_workflow_rejected_with_details() -> None:
    """invalid_prompt with every class present is a malformed graph; the details are kept."""
    body = {"error": {"type": "invalid_prompt", "message": "Cannot execute because a node is missing the class_type "
            "property.", "details": "Node ID '#5'"}, "node_errors": {}}  # fmt: skip

    error = classify_rejection(body, server="a")

    assert isinstance(error, WorkflowRejected)
    assert "Node ID '#5'" in str(error)
