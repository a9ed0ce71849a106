"""expand_batch: items x sweep x images, precedence, seeds, dedupe and request problems."""

import json
import time
from pathlib import Path
from typing import Any

import pandas as pd  # type: ignore[import-untyped]
import pytest

from comfybatch.comfy.intake import load_workflow
from comfybatch.comfy.object_info import ObjectInfo
from comfybatch.comfy.workflow import ApiWorkflow
from comfybatch.errors import BatchRequestError
from comfybatch.expansion import Expansion, expand_batch
from comfybatch.models import BatchSpec, SeedPolicy
from comfybatch.sheets import read_sheet

ROOT = Path(__file__).parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
TEMPLATE = load_workflow(ROOT / "comfybatch" / "templates" / "txt2img-tiny.json")
OBJECT_INFO = ObjectInfo.from_file(FIXTURES / "object_info_0.3.75.json")
HOSTILE = 'say "hi" {braces} {{x}} \\n\nnew line </script><script>alert(1)</script> 🐱 naïve ${HOME} %date%'


def make_spec(**fields: Any) -> BatchSpec:
    return BatchSpec.model_validate({"name": "test-batch", "workflow": "txt2img-tiny", **fields})


def expand(template: ApiWorkflow = TEMPLATE, **fields: Any) -> Expansion:
    sheet = fields.pop("frame", None)
    object_info = fields.pop("object_info", None)
    return expand_batch(make_spec(**fields), template, object_info=object_info, sheet=sheet)


def problems_of(**fields: Any) -> list[str]:
    with pytest.raises(BatchRequestError) as caught:
        expand(**fields)
    return [str(problem) for problem in caught.value.problems]


def test_expand_batch_csv_sheet_one_job_per_row(tmp_path: Path) -> None:
    """A CSV sheet gives one job per row, with its values converted per parameter."""
    path = tmp_path / "items.csv"
    pd.DataFrame({"prompt": ["a cat", "a dog"], "steps": [3, 5]}).to_csv(path, index=False)

    expansion = expand(sheet=str(path))

    assert [(job.row, job.values["prompt"], job.values["steps"]) for job in expansion.jobs] == [
        (2, "a cat", 3),
        (3, "a dog", 5),
    ]


def test_expand_batch_xlsx_sheet_one_job_per_row(tmp_path: Path) -> None:
    """An XLSX sheet gives one job per row; a blank cell leaves the template's value."""
    path = tmp_path / "items.xlsx"
    pd.DataFrame({"prompt": ["a cat", "a dog"], "cfg": [6.5, None]}).to_excel(path, index=False)

    expansion = expand(sheet=str(path))

    assert [job.values for job in expansion.jobs] == [
        {"prompt": "a cat", "cfg": 6.5, "seed": 0},
        {"prompt": "a dog", "seed": 1},
    ]


def test_expand_batch_parquet_sheet_one_job_per_row(tmp_path: Path) -> None:
    """A Parquet sheet's typed columns (ints with blanks read as floats) bind as ints."""
    path = tmp_path / "items.parquet"
    pd.DataFrame({"prompt": ["a cat", "a dog", "a fox"], "width": [512, None, 768]}).to_parquet(path)

    expansion = expand(sheet=str(path))

    assert [job.values.get("width") for job in expansion.jobs] == [512, None, 768]
    assert expansion.jobs[2].workflow.get_input("4", "width") == 768


def test_read_sheet_csv_keeps_quoted_text_rows_and_comments() -> None:
    """Quoted commas and newlines survive, blank rows are skipped but still counted, comment columns ignored."""
    sheet = read_sheet(str(FIXTURES / "sheets" / "tricky.csv"))

    expansion = expand(frame=sheet)

    assert [(job.row, job.values["prompt"], job.label) for job in expansion.jobs] == [
        (2, 'a cat, "sitting"', "cat-one"),
        (3, "line one\r\nline two", "line-one-line-two"),
        (5, "a dog", "a-dog"),
    ]


def test_expand_batch_prompts_list_one_job_per_prompt() -> None:
    """Each prompt is one item, labelled with a slug of its first words."""
    expansion = expand(prompts=["A Café at Night, in the rain, very detailed painting", "a dog"])

    assert [(job.values["prompt"], job.label) for job in expansion.jobs] == [
        ("A Café at Night, in the rain, very detailed painting", "a-cafe-at-night-in-the"),
        ("a dog", "a-dog"),
    ]


def test_expand_batch_no_items_one_job_from_defaults() -> None:
    """Without sheet or prompts, the defaults make one item."""
    expansion = expand(defaults={"prompt": "a lighthouse", "steps": 4})

    assert [job.values for job in expansion.jobs] == [{"prompt": "a lighthouse", "steps": 4, "seed": 0}]


def test_expand_batch_defaults_apply_to_every_item() -> None:
    """Defaults reach every job and its bound graph."""
    expansion = expand(prompts=["a", "b"], defaults={"negative_prompt": "ugly", "cfg": 5})

    assert [job.workflow.get_input("3", "text") for job in expansion.jobs] == ["ugly", "ugly"]
    assert [job.values["cfg"] for job in expansion.jobs] == [5.0, 5.0]


def test_expand_batch_cartesian_sweep_multiplies_items() -> None:
    """Every combination of the axes is made for every item."""
    expansion = expand(prompts=["a", "b"], sweep={"axes": {"steps": [1, 2, 3], "cfg": [4.0, 8.0]}})

    combos = {(job.values["prompt"], job.values["steps"], job.values["cfg"]) for job in expansion.jobs}
    assert len(expansion.jobs) == 12
    assert combos == {(p, s, c) for p in "ab" for s in (1, 2, 3) for c in (4.0, 8.0)}


def test_expand_batch_zipped_sweep_advances_together() -> None:
    """A zipped group is one axis whose lists advance together, multiplied with the other axes."""
    sweep = {"axes": {"steps": [1, 2]}, "zipped": [{"width": [1080, 1200], "height": [1920, 632]}]}

    expansion = expand(prompts=["a"], sweep=sweep)

    sizes = [(job.values["steps"], job.values["width"], job.values["height"]) for job in expansion.jobs]
    assert sizes == [(1, 1080, 1920), (1, 1200, 632), (2, 1080, 1920), (2, 1200, 632)]


def test_expand_batch_precedence_sweep_row_defaults_template() -> None:
    """Sweep beats row, row beats defaults, defaults beat the template."""
    frame = pd.DataFrame({"prompt": ["a", "b"], "steps": [7, None], "cfg": [2.0, 3.0]})

    expansion = expand(frame=frame, defaults={"steps": 9, "cfg": 1.0}, sweep={"axes": {"cfg": [11.0]}})

    assert [(job.values["steps"], job.values["cfg"]) for job in expansion.jobs] == [(7, 11.0), (9, 11.0)]
    assert all(job.workflow.get_input("5", "sampler_name") == "euler" for job in expansion.jobs)
    assert all("sampler" not in job.values for job in expansion.jobs)


def test_expand_batch_increment_seeds_are_consecutive() -> None:
    """INCREMENT: item seed = base_seed + item x images_per_item, plus the image index."""
    expansion = expand(prompts=["a", "b"], images_per_item=3, base_seed=100, seed_policy="increment")

    assert [job.seed for job in expansion.jobs] == [100, 101, 102, 103, 104, 105]
    assert [job.workflow.get_input("5", "seed") for job in expansion.jobs] == [100, 101, 102, 103, 104, 105]


def test_expand_batch_fixed_seed_with_many_images_is_a_problem() -> None:
    """FIXED gives every image of an item the item seed, so more than one image per item is refused."""
    problems = problems_of(prompts=["a", "b"], images_per_item=3, base_seed=100, seed_policy=SeedPolicy.FIXED)

    assert problems == [
        "images_per_item: seed_policy 'fixed' gives all 3 images of an item the same seed, so they would "
        "be identical; use 'increment' or 'random', or 1 image per item"
    ]


def test_expand_batch_fixed_seed_one_image_uses_the_item_seed() -> None:
    """FIXED with one image per item: each item renders once, with its item seed."""
    expansion = expand(prompts=["a", "b"], base_seed=100, seed_policy=SeedPolicy.FIXED)

    assert [(job.item, job.seed) for job in expansion.jobs] == [(0, 100), (1, 101)]


def test_expand_batch_random_seeds_are_reproducible() -> None:
    """RANDOM: seeds look random, fit in 48 bits and are the same on every expansion."""
    first = expand(prompts=["a", "b"], images_per_item=4, seed_policy="random", base_seed=5)
    again = expand(prompts=["a", "b"], images_per_item=4, seed_policy="random", base_seed=5)

    seeds = [job.seed for job in first.jobs]
    assert seeds == [job.seed for job in again.jobs]
    assert len(set(seeds)) == 8
    assert all(seed is not None and 0 <= seed < 2**48 for seed in seeds)
    assert seeds != list(range(5, 13))


def test_expand_batch_row_seed_is_the_item_seed() -> None:
    """A seed set by a row is that item's seed; its images count up from it."""
    frame = pd.DataFrame({"prompt": ["a", "b"], "seed": [42, None]})

    expansion = expand(frame=frame, images_per_item=2)

    assert [job.seed for job in expansion.jobs] == [42, 43, 2, 3]


def test_expand_batch_random_policy_with_set_seed_is_a_problem() -> None:
    """Seeds set explicitly while the policy is RANDOM would be ignored, so that is refused."""
    problems = problems_of(prompts=["a"], defaults={"seed": 3}, seed_policy="random")

    assert problems == [
        "seed_policy: seeds are set, but seed_policy 'random' ignores them; use 'fixed' or 'increment'"
    ]


def test_expand_batch_equal_jobs_are_dropped() -> None:
    """Jobs whose graph equals an earlier job's are dropped and counted; indexes stay contiguous."""
    expansion = expand(prompts=["a cat", "a dog", "a cat"], defaults={"seed": 5})

    assert [(job.index, job.item, job.values["prompt"]) for job in expansion.jobs] == [(0, 0, "a cat"), (1, 1, "a dog")]
    assert expansion.duplicates == 1


def test_expand_batch_keys_are_graph_hashes() -> None:
    """A job's key is the first 16 hex digits of its bound graph's hash."""
    expansion = expand(prompts=["a cat"])

    job = expansion.jobs[0]
    assert job.key == job.workflow.content_hash()[:16]
    assert job.workflow == TEMPLATE.bind({"prompt": "a cat", "seed": 0})


def test_expand_batch_unknown_column_lists_offered_names() -> None:
    """An unknown column is named, with the parameters the workflow offers."""
    frame = pd.DataFrame({"prompt": ["a"], "lora": ["x"]})

    problems = problems_of(frame=frame)

    assert problems == [
        "column 'lora': unknown parameter 'lora'; this workflow offers: batch_size, cfg, checkpoint, denoise, "
        "height, negative_prompt, prompt, sampler, scheduler, seed, steps, width"
    ]


def test_expand_batch_comment_columns_ignored_label_used() -> None:
    """Columns starting with # or _ are ignored; a label column names the files."""
    frame = pd.DataFrame({"prompt": ["a cat"], "# note": ["x"], "_id": [7], "label": ["Hero Shot #1"]})

    expansion = expand(frame=frame)

    assert (expansion.jobs[0].label, expansion.jobs[0].values) == ("hero-shot-1", {"prompt": "a cat", "seed": 0})


def test_expand_batch_filename_prefix_is_reserved() -> None:
    """filename_prefix is set by comfybatch per job, never by a request."""
    problems = problems_of(prompts=["a"], defaults={"filename_prefix": "mine"})

    assert problems == [
        "defaults.filename_prefix: 'filename_prefix' is set by comfybatch on every job and cannot be set"
    ]


def test_expand_batch_missing_prompt_is_a_problem() -> None:
    """A workflow that takes a prompt needs something to set it."""
    problems = problems_of(defaults={"steps": 3})

    assert problems == ["prompts: no prompt: set a 'prompt' column, prompts, a sweep axis or a default"]


def test_expand_batch_empty_prompt_cell_names_row() -> None:
    """An empty prompt cell is a problem naming its row."""
    frame = pd.DataFrame({"prompt": ["a cat", "  ", "a dog"], "steps": [1, 2, 3]})

    problems = problems_of(frame=frame)

    assert problems == ["row 3, column 'prompt': the prompt is empty"]


def test_expand_batch_width_not_multiple_of_8_names_row_and_column() -> None:
    """width must be a multiple of 8; the problem names the row and column."""
    frame = pd.DataFrame({"prompt": ["a", "b"], "width": [512, 500]})

    problems = problems_of(frame=frame)

    assert problems == ["row 3, column 'width': must be a multiple of 8, got 500"]


def test_expand_batch_non_integral_int_is_a_problem() -> None:
    """Integral floats are ints, 512.5 is not a whole number."""
    frame = pd.DataFrame({"prompt": ["a", "b", "c"], "width": [512, None, 512.5]})

    problems = problems_of(frame=frame)

    assert problems == ["row 4, column 'width': expected a whole number, got 512.5"]


def test_expand_batch_text_for_number_is_a_problem() -> None:
    """Text in a number column is named as found."""
    problems = problems_of(frame=pd.DataFrame({"prompt": ["a", "b"], "steps": ["10", "many"]}))

    assert problems == ["row 3, column 'steps': expected a number, got 'many'"]


def test_expand_batch_combo_value_not_in_options_with_object_info() -> None:
    """With the server's object_info, a combo value must be one of its options."""
    problems = problems_of(prompts=["a"], defaults={"sampler": "eulerr"}, object_info=OBJECT_INFO)

    assert len(problems) == 1
    assert problems[0].startswith("defaults.sampler: 'eulerr' is not one of the 42 options: euler, ")


def test_expand_batch_object_info_range_applies() -> None:
    """With the server's object_info, declared ranges apply (cfg at most 100)."""
    problems = problems_of(prompts=["a"], defaults={"cfg": 120}, object_info=OBJECT_INFO)

    assert problems == ["defaults.cfg: must be at most 100, got 120"]


def test_expand_batch_zipped_length_mismatch_names_group() -> None:
    """Zipped lists of different lengths are a problem naming the group."""
    problems = problems_of(prompts=["a"], sweep={"zipped": [{"width": [512, 768], "height": [512]}]})

    assert problems == [
        "sweep.zipped group 1: zipped lists advance together and must have equal lengths, got width: 2, height: 1"
    ]


def test_expand_batch_no_seed_with_many_images_is_a_problem() -> None:
    """Several images of an item need a seed to differ."""
    nodes = TEMPLATE.nodes
    nodes["9"] = {"class_type": "PrimitiveInt", "inputs": {"value": 5}}
    nodes["5"]["inputs"]["seed"] = ["9", 0]  # the seed comes from a link: nothing to bind
    spec = make_spec(prompts=["a"], images_per_item=2)

    with pytest.raises(BatchRequestError) as caught:
        expand_batch(spec, ApiWorkflow(nodes))

    assert [problem.field for problem in caught.value.problems] == ["images_per_item"]


def test_expand_batch_collects_all_problems_capped() -> None:
    """Every problem is counted; the first 50 are listed."""
    frame = pd.DataFrame({"prompt": ["a"] * 60, "steps": [0] * 60})

    with pytest.raises(BatchRequestError) as caught:
        expand(frame=frame)

    assert len(caught.value.problems) == 50
    assert caught.value.summary == "batch 'test-batch' is invalid: 60 problem(s), the first 50 listed"


def test_expand_batch_too_many_jobs_states_count() -> None:
    """More than 100,000 jobs is refused before any is built."""
    problems = problems_of(prompts=[f"p{i}" for i in range(101)], images_per_item=1000)

    assert problems == ["prompts: the batch would have 101,000 jobs; at most 100,000 are allowed: split it"]


def test_expand_batch_hostile_prompt_reaches_graph_unchanged() -> None:
    """Quotes, braces, newlines, </script> and emoji are data: bound and serialised as they are."""
    expansion = expand(prompts=[HOSTILE])

    workflow = expansion.jobs[0].workflow
    assert workflow.get_input("2", "text") == HOSTILE
    assert json.loads(workflow.to_json())["2"]["inputs"]["text"] == HOSTILE
    assert expansion.jobs[0].values["prompt"] == HOSTILE


def test_expand_batch_ten_thousand_jobs() -> None:
    """10,000 prompts expand to 10,000 distinct jobs, indexed in order, in well under a few seconds."""
    prompts = [f"a cat number {number}" for number in range(10_000)]

    started = time.perf_counter()
    expansion = expand(prompts=prompts)
    elapsed = time.perf_counter() - started

    assert [job.index for job in expansion.jobs] == list(range(10_000))
    assert len({job.key for job in expansion.jobs}) == 10_000
    assert elapsed < 5
