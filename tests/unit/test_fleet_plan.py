"""Planning a batch on the fleet: which server may run which job."""

from comfybatch.comfy.object_info import ObjectInfo
from comfybatch.comfy.workflow import ApiWorkflow
from comfybatch.flows.plan import ServerProbe, plan_fleet
from comfybatch.models import JobSpec

_CATALOGUE = {
    "EmptyImage": {"input": {"required": {"width": ["INT", {"min": 1, "max": 4096}]}}, "output": ["IMAGE"],
                   "output_node": False},
    "SaveImage": {"input": {"required": {"images": ["IMAGE"], "filename_prefix": ["STRING", {}]}}, "output": [],
                  "output_node": True},
}  # fmt: skip
_GRAPH = ApiWorkflow({
    "1": {"class_type": "EmptyImage", "inputs": {"width": 8}},
    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "cat"}},
})  # fmt: skip


def _info(*classes: str) -> ObjectInfo:
    return ObjectInfo({name: _CATALOGUE[name] for name in classes})


def test_servers_that_answer_alike_are_each_eligible_and_one_lacking_a_node_is_named() -> None:
    """Two servers with the same catalogue (checked as one group) both take every job; a third without SaveImage
    takes none, and no job is invalid since others can run it."""
    jobs = [JobSpec(batch="b", index=i, key=f"k{i}", item=i, values={"width": 8}, workflow=_GRAPH) for i in range(3)]
    infos = {"a": _info("EmptyImage", "SaveImage"), "b": _info("EmptyImage", "SaveImage"), "c": _info("EmptyImage")}

    plan = plan_fleet(jobs, [ServerProbe(name=name, reachable=True) for name in infos], infos)

    assert plan.eligible == {f"k{i}": ("a", "b") for i in range(3)}
    assert (plan.per_server, plan.invalid) == ({"a": 3, "b": 3, "c": 0}, {})


def test_a_job_no_server_can_run_names_the_server_that_lacks_its_node() -> None:
    """With every server lacking SaveImage, each job is invalid, and the reason names a server and the node."""
    jobs = [JobSpec(batch="b", index=0, key="k0", item=0, values={}, workflow=_GRAPH)]
    infos = {"a": _info("EmptyImage"), "b": _info("EmptyImage")}

    plan = plan_fleet(jobs, [ServerProbe(name=name, reachable=True) for name in infos], infos)

    assert plan.eligible == {"k0": ()}
    assert plan.invalid["k0"].startswith("a lacks: ")
    assert "SaveImage" in plan.invalid["k0"]
