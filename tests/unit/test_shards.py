"""How a batch's jobs still to render are cut into shards."""

from comfybatch.flows.shards import ShardSpec, split


def _ranges(shards: list[ShardSpec]) -> list[tuple[int, int]]:
    return [(shard.start, shard.stop) for shard in shards]


def test_split_cuts_even_shards_no_larger_than_the_size() -> None:
    """400 jobs at size 100 are four shards of 100, numbered 1 to 4 of 4, naming their parent and folder."""
    shards = split(list(range(400)), 100, batch_dir="big", parent_run="run-1")

    assert _ranges(shards) == [(0, 100), (100, 200), (200, 300), (300, 400)]
    assert [(shard.number, shard.count) for shard in shards] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert {(shard.batch_dir, shard.parent_run, shard.attempt) for shard in shards} == {("big", "run-1", 1)}


def test_split_balances_a_remainder_across_shards() -> None:
    """250 jobs at size 100 are three shards of 83 or 84, not 100 + 100 + 50."""
    shards = split(list(range(250)), 100, batch_dir="b", parent_run="r")

    sizes = [shard.stop - shard.start for shard in shards]
    assert sorted(sizes) == [83, 83, 84]
    assert sum(sizes) == 250


def test_split_spans_only_the_positions_still_to_render() -> None:
    """On a resumed batch the shards cover the unrendered positions, each range from its first to its last job."""
    shards = split([3, 4, 10, 11, 12, 40], 3, batch_dir="b", parent_run="r")

    assert _ranges(shards) == [(3, 11), (11, 41)]
    assert split([], 3, batch_dir="b", parent_run="r") == []


def test_shard_run_names_count_attempts() -> None:
    """The first run of a shard is `<batch>-shard-2-of-4`; a rerun after a crash says its attempt."""
    shard = ShardSpec(number=2, count=4, start=0, stop=10, batch_dir="b", parent_run="r")

    assert shard.run_name("foxes") == "foxes-shard-2-of-4"
    assert shard.model_copy(update={"attempt": 2}).run_name("foxes") == "foxes-shard-2-of-4-attempt-2"
