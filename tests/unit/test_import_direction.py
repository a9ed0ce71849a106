"""Imports point one way: config models below the ComfyUI client, the product below its test harness."""

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "comfybatch"


def test_server_config_model_loads_no_comfy_client() -> None:
    """Importing `blocks.server` (the config model) in a fresh interpreter leaves the ComfyUI client unloaded:
    connections come from `blocks.connection`."""
    code = "import sys, comfybatch.blocks.server; print('comfybatch.comfy.client' in sys.modules)"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)

    assert loaded.stdout.strip() == "False"


def test_no_product_module_imports_the_test_harness() -> None:
    """Outside `comfybatch/testing/`, no module imports `comfybatch.testing` (the demo uses `comfybatch.local`)."""
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if PACKAGE / "testing" in path.parents:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.relative_to(PACKAGE.parent)}: {name}" for name in names
                          if name == "comfybatch.testing" or name.startswith("comfybatch.testing.")]  # fmt: skip

    assert offenders == []
