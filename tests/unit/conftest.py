"""Fixtures shared by the unit tests: the tiny txt2img template and a throwaway in-memory store."""

import uuid
from collections.abc import Iterator
from pathlib import Path

import fsspec  # type: ignore[import-untyped]
import pytest

from comfybatch.comfy.intake import load_workflow
from comfybatch.comfy.workflow import ApiWorkflow
from comfybatch.outputs.storage import OutputStore

TEMPLATE = Path(__file__).parents[2] / "comfybatch" / "templates" / "txt2img-tiny.json"


@pytest.fixture(scope="session")
def workflow() -> ApiWorkflow:
    return load_workflow(TEMPLATE)


@pytest.fixture
def memory_store() -> Iterator[OutputStore]:
    root = f"comfybatch-test-{uuid.uuid4().hex}"
    yield OutputStore(f"memory://{root}")
    memory = fsspec.filesystem("memory")
    if memory.exists(f"/{root}"):
        memory.rm(f"/{root}", recursive=True)


@pytest.fixture
def store(memory_store: OutputStore) -> OutputStore:
    return memory_store
