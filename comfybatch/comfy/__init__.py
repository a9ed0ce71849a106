"""Async ComfyUI client and workflow formats (no Prefect, no FastAPI)."""
