"""Real-ComfyUI steps several tests share."""

from comfybatch.comfy.client import ComfyClient, new_prompt_id
from comfybatch.comfy.follow import PromptResult
from comfybatch.comfy.workflow import ApiWorkflow


async def resumed_elsewhere(url: str, workflow: ApiWorkflow) -> tuple[str, PromptResult]:
    """Queue `workflow` from one client that goes away, then follow it to its end by id from another (as a
    recovered job is); returns the prompt id and what the second client saw."""
    prompt_id = new_prompt_id()
    async with ComfyClient(url) as first:
        await first.queue_prompt(workflow, prompt_id=prompt_id, client_id="gone-away")
    async with ComfyClient(url) as second:
        return prompt_id, await second.resume(prompt_id)
