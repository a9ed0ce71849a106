"""Local fleets for the test suite and benchmarks: `comfybatch.local`'s servers plus the fault-injection nodes.

The test nodes (`comfy_nodes/comfybatch_test_nodes`: Delay, Fail, Flaky, Hang, Crash) record each execution
in a per-server journal (one JSON line each) that tests read to count executions.
"""

from collections.abc import Sequence
from pathlib import Path

from comfybatch.local.fleet import LocalComfyServer, LocalFleet
from comfybatch.local.install import ComfyInstall

TEST_NODES_PACKAGE = Path(__file__).parent / "comfy_nodes" / "comfybatch_test_nodes"
TEST_NODE_CLASSES = ("ComfybatchDelay", "ComfybatchFail", "ComfybatchFlaky", "ComfybatchHang", "ComfybatchCrash")
JOURNAL_ENV = "COMFYBATCH_TEST_NODE_LOG"  # read by the test nodes


def journal_path(server: LocalComfyServer) -> Path:
    """Where the test nodes on `server` record each execution (one JSON line each)."""
    return server.base_dir / "node-journal.jsonl"


class HarnessFleet(LocalFleet):
    """A `LocalFleet` whose servers load the test nodes (a server that fails to load them fails to start).

    Example:
        with HarnessFleet(Path(tempfile.mkdtemp()), count=2) as fleet:
            urls = [server.url for server in fleet.servers]
    """

    def __init__(
        self, root: Path, *, count: int = 2, checkpoint: bool = True, names: Sequence[str] | None = None,
        install: ComfyInstall | None = None,
    ) -> None:  # fmt: skip
        super().__init__(root, count=count, checkpoint=checkpoint, names=names, install=install,
                         custom_nodes=[TEST_NODES_PACKAGE], required_nodes=TEST_NODE_CLASSES[:1])  # fmt: skip

    def new_server(self, name: str) -> LocalComfyServer:
        server = super().new_server(name)
        server.env[JOURNAL_ENV] = str(journal_path(server))
        return server
