"""`prefect.yaml` is the catalogue written for `prefect deploy`: generated, never edited by hand."""

from pathlib import Path

import yaml

from comfybatch.deployments.catalog import catalog
from comfybatch.deployments.workpool import POOL, prefect_yaml
from comfybatch.settings import Settings

COMMITTED = Path(__file__).parents[2] / "prefect.yaml"


def test_committed_prefect_yaml_is_the_generated_one() -> None:
    """The committed file equals the generator's output (else: `python -m comfybatch.deployments.workpool >
    prefect.yaml`)."""
    assert COMMITTED.read_text() == prefect_yaml()


def test_prefect_yaml_declares_the_catalogue_deployments_on_the_pool() -> None:
    """Read as YAML, the file has each catalogue deployment with its entrypoint, the inbox's cron and its one-at-a-time
    limit, all on the `comfybatch` work pool."""
    document = yaml.safe_load(prefect_yaml())
    deployments = {entry["name"]: entry for entry in document["deployments"]}
    served = catalog(Settings.model_construct())

    assert list(deployments) == [entry.options["name"] for entry in served]
    assert [deployments[entry.options["name"]]["entrypoint"] for entry in served] == [
        "comfybatch.flows.batch:generate_batch", "comfybatch.flows.shard:render_shard",
        "comfybatch.flows.inbox:process_inbox",
    ]  # fmt: skip
    inbox = deployments["scheduled-production"]
    assert inbox["schedules"] == [{"cron": "*/5 * * * *", "timezone": "UTC"}]
    assert inbox["concurrency_limit"] == {"limit": 1, "collision_strategy": "CANCEL_NEW"}
    assert {entry["work_pool"]["name"] for entry in deployments.values()} == {POOL}
