"""Turn ComfyUI's validation answers (400, or 200 with `node_errors`) into our errors.

Classified on `error.type` and `node_errors[*].errors[*].type`, never on message text
(comfyui-protocol.md §1.3).
"""

from typing import Any

from comfybatch.comfy.graph import node_sort_key
from comfybatch.errors import ComfyBatchError, NodeProblem, ServerIncompatible, WorkflowRejected

# Combo inputs whose options are files on the server: "not in list" there means "this server lacks it".
FILE_INPUTS = frozenset(
    {"ckpt_name", "lora_name", "vae_name", "unet_name", "clip_name", "clip_name1", "clip_name2", "clip_name3",
     "control_net_name", "model_name", "upscale_model", "style_model_name", "clip_vision", "gligen_name",
     "hypernetwork_name", "image", "audio", "video", "embedding"}
)  # fmt: skip
_MODEL_SUFFIXES = frozenset({".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".gguf", ".sft", ".onnx"})


def node_problems(node_errors: dict[str, Any]) -> tuple[NodeProblem, ...]:
    """Every per-input problem in a `node_errors` map, node ids in numeric order."""
    problems: list[NodeProblem] = []
    for node_id in sorted(node_errors, key=node_sort_key):
        entry = node_errors[node_id] if isinstance(node_errors[node_id], dict) else {}
        class_type = entry.get("class_type")
        for error in entry.get("errors") or [{}]:
            extra = error.get("extra_info") or {}
            message = error.get("details") or error.get("message") or "rejected"
            if "received_value" in extra and str(extra["received_value"]) not in message:
                message = f"{message} (got {extra['received_value']!r})"
            problems.append(
                NodeProblem(
                    node_id=str(node_id), message=str(message), class_type=class_type,
                    input_name=extra.get("input_name"), kind=str(error.get("type") or "invalid"),
                )
            )  # fmt: skip
    return tuple(problems)


def server_lacks(problem: NodeProblem) -> bool:
    """True when the problem means this server lacks a file or node class another may have."""
    if problem.kind == "missing_node_type":
        return True
    if problem.kind not in {"value_not_in_list", "custom_validation_failed"}:
        return False
    if problem.input_name in FILE_INPUTS:
        return True
    # Our messages quote the received value; a model-file suffix there marks a file combo.
    return any(f"{suffix}'" in problem.message.lower() for suffix in _MODEL_SUFFIXES)


def classify_rejection(
    body: Any, *, server: str, missing_nodes: dict[str, str] | None = None
) -> ComfyBatchError | None:
    """The error a `/prompt` answer stands for, or None when it accepted everything.

    `missing_nodes` maps node ids to class types absent from this server's `/object_info`:
    ComfyUI reports them as `invalid_prompt`, which also covers malformed graphs.
    """
    if not isinstance(body, dict):
        return WorkflowRejected("ComfyUI answered /prompt with a body that is not an object")
    error = body.get("error")
    raw_errors = body.get("node_errors")
    node_errors: dict[str, Any] = raw_errors if isinstance(raw_errors, dict) else {}
    if not error and not node_errors:
        return None
    if missing_nodes:
        problems = tuple(
            NodeProblem(node_id=node_id, class_type=name, message=f"node class {name} is not installed on this server",
                        kind="missing_node_type")
            for node_id, name in sorted(missing_nodes.items(), key=lambda item: node_sort_key(item[0]))
        )  # fmt: skip
        return ServerIncompatible("server lacks node classes the workflow uses", server=server, problems=problems)
    problems = node_problems(node_errors)
    summary = _summary(error) if isinstance(error, dict) else "ComfyUI rejected the workflow"
    if problems and all(server_lacks(problem) for problem in problems):
        return ServerIncompatible(f"{summary}: server lacks files the workflow uses", server=server, problems=problems)
    if not problems and isinstance(error, dict):
        details = error.get("details")
        problems = (NodeProblem(node_id="-", message=str(details), kind=str(error.get("type"))),) if details else ()
    return WorkflowRejected(f"[{server}] {summary}", problems=problems)


def _summary(error: dict[str, Any]) -> str:
    message = str(error.get("message") or "rejected").strip()
    kind = error.get("type")
    return f"{message} ({kind})" if kind else message
