"""The dashboard reads the deployment's name from the catalogue without loading the flows it serves."""

import subprocess
import sys


def test_dashboard_app_loads_no_flow_module() -> None:
    """Importing the dashboard app (which imports `catalog.GENERATE_BATCH`) leaves the batch, shard and inbox flows
    unloaded: only `serve` and the flow-run processes need them."""
    code = ("import sys, comfybatch.dashboard.app; "
            "print(sorted(m for m in ('comfybatch.flows.batch', 'comfybatch.flows.shard', 'comfybatch.flows.inbox') "
            "if m in sys.modules))")  # fmt: skip
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)

    assert loaded.stdout.strip() == "[]"
