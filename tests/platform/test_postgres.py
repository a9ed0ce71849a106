"""Prefect on PostgreSQL, as in production: a real batch whose flow run lands in PostgreSQL's `flow_run` table."""

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path
from uuid import UUID

import asyncpg  # type: ignore[import-untyped]  # a Prefect dependency without type hints
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName
from prefect.client.schemas.objects import StateType
from prefect.events.worker import EventsWorker
from prefect.logging.handlers import APILogWorker
from prefect.settings import PREFECT_API_URL, temporary_settings

from comfybatch.flows.batch import generate_batch
from comfybatch.local.prefect_server import LocalPrefectServer
from comfybatch.models import BatchSpec
from comfybatch.outputs.manifest import read_manifest
from comfybatch.outputs.storage import OutputStore
from comfybatch.settings import Settings, get_settings
from comfybatch.testing.postgres import INSTALL_HINT, LocalPostgres, find_postgres
from tests.conftest import SuiteFleet
from tests.flows.conftest import PREFECT_SOCKETS, server_names, use_test_settings

MISSING = f"PostgreSQL server binaries not found (/usr/lib/postgresql/<version>/bin); {INSTALL_HINT}"
# Skipped before the session's ComfyUI fleet starts; under CI=true the `postgres` fixture fails instead.
pytestmark = [
    pytest.mark.anyio,
    pytest.mark.timeout(120),
    PREFECT_SOCKETS,
    pytest.mark.skipif(find_postgres() is None and os.environ.get("CI") != "true", reason=MISSING),
]


@pytest.fixture
def postgres(tmp_path: Path) -> Iterator[LocalPostgres]:
    """A throwaway cluster; missing binaries fail the run under CI=true (elsewhere the module is skipped)."""
    if find_postgres() is None:
        pytest.fail(MISSING, pytrace=False)
    with LocalPostgres(tmp_path / "postgres") as cluster:
        yield cluster


@pytest.fixture
def prefect_on_postgres(postgres: LocalPostgres, tmp_path: Path) -> Iterator[LocalPrefectServer]:
    """`prefect server start` with PREFECT_SERVER_DATABASE_CONNECTION_URL pointing at `postgres`."""
    server = LocalPrefectServer(tmp_path / "prefect", database_url=postgres.url)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_batch_settings(
    prefect_on_postgres: LocalPrefectServer, comfy_fleet: SuiteFleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Settings]:
    """Like `batch_settings`, but with this test's own Prefect server instead of the session's."""
    use_test_settings(monkeypatch, comfy_fleet, tmp_path)
    # The log and event workers are process-wide and bound to the API URL they started with:
    # drain them so this test's go to its own server, and again so later tests get fresh ones.
    _drain_prefect_workers()
    try:
        with temporary_settings(updates={PREFECT_API_URL: prefect_on_postgres.api_url}):
            yield get_settings()
            _drain_prefect_workers()
    finally:
        get_settings.cache_clear()


async def _read_postgres(
    dsn: str, flow_run_id: UUID, *, tasks: int, timeout_s: float = 10.0
) -> tuple[tuple[str, str] | None, list[str]]:
    """The flow run's (name, state type) and its task runs' state types, straight from PostgreSQL.

    Task runs arrive through Prefect's event pipeline, so wait up to `timeout_s` for `tasks` of them.
    """
    connection = await asyncpg.connect(dsn, timeout=10)
    try:
        flow_run = await connection.fetchrow("SELECT name, state_type FROM flow_run WHERE id = $1", flow_run_id)
        deadline = time.monotonic() + timeout_s
        while True:
            rows = await connection.fetch("SELECT state_type FROM task_run WHERE flow_run_id = $1", flow_run_id)
            if len(rows) >= tasks or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
    finally:
        await connection.close()
    flow = (flow_run["name"], flow_run["state_type"]) if flow_run is not None else None
    return flow, sorted(row["state_type"] for row in rows)


def _exists(path: str) -> bool:
    return Path(path).is_file()


def _drain_prefect_workers() -> None:
    APILogWorker.drain_all(timeout=10)
    EventsWorker.drain_all(timeout=10)


async def test_batch_on_postgres_records_its_flow_run(
    pg_batch_settings: Settings, prefect_on_postgres: LocalPrefectServer, postgres: LocalPostgres,
    comfy_fleet: SuiteFleet,
) -> None:  # fmt: skip
    """Three prompts render three PNGs; the flow run and its three task runs are rows in PostgreSQL, not SQLite."""
    spec = BatchSpec(name="pg-batch", workflow="txt2img-tiny", prompts=["a red fox", "a blue jay", "a green frog"],
                     defaults={"steps": 1}, servers=server_names(comfy_fleet))  # fmt: skip

    report = await generate_batch(spec)

    manifest = read_manifest(OutputStore(pg_batch_settings.output_root), "pg-batch")
    assert manifest is not None
    assert (report.done, report.failed, report.total) == (3, 0, 3)
    files = [uri for uris in manifest["outputs"] for uri in uris]
    assert len(files) == 3
    assert all(_exists(uri) for uri in files)
    async with get_client() as client:
        runs = await client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=["pg-batch"])))
    assert [run.state_type for run in runs] == [StateType.COMPLETED]
    flow_row, task_states = await _read_postgres(postgres.dsn, runs[0].id, tasks=3)
    assert flow_row == ("pg-batch", "COMPLETED")
    assert task_states == ["COMPLETED"] * 3
    assert not _exists(str(prefect_on_postgres.home / "prefect.db"))
