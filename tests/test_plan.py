"""Property tests of the epoch plan (loaders/loading/plan.py) over random shard layouts, ranks and batch sizes."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings, strategies as st

from umt.loaders.loading.plan import plan_epoch

SETTINGS = settings(max_examples=300, deadline=None, derandomize=True)
counts_st = st.lists(st.integers(0, 40), min_size=1, max_size=12)  # uneven, tiny and empty shards
case = st.tuples(counts_st, st.integers(0, 2**31), st.integers(0, 50), st.integers(1, 8), st.integers(1, 16))


def ranks(counts, seed, epoch, world, batch, train=True, start=0):
    return [plan_epoch(counts, seed, epoch, r, world, batch, train, start) for r in range(world)]


@SETTINGS
@given(case)
def test_training_ranks_step_alike_and_read_each_sample_at_most_once(args):
    counts, seed, epoch, world, batch = args
    plans = ranks(counts, seed, epoch, world, batch)
    assert len({len(p) for p in plans}) == 1                                  # the same number of batches
    assert all(len(b) == batch for p in plans for b in p.batches())           # whole batches only
    rows = np.concatenate([p.rows for p in plans])
    assert len(np.unique(rows)) == len(rows)                                  # no sample twice
    assert set(rows.tolist()) <= set(range(sum(counts)))
    assert sum(counts) - len(rows) <= world * batch - 1                       # few left out
    for p in plans:
        assert np.array_equal(p.shards(), np.searchsorted(np.cumsum(counts), p.rows, side="right"))
    reads = sum(len(set(p.shards().tolist())) for p in plans)               # a shard is shared only
    assert reads <= sum(c > 0 for c in counts) + world - 1                    # across a rank boundary


@SETTINGS
@given(case)
def test_same_seed_and_epoch_same_plan_other_epoch_other_order(args):
    counts, seed, epoch, world, batch = args
    one, again = ranks(counts, seed, epoch, world, batch), ranks(counts, seed, epoch, world, batch)
    assert all(np.array_equal(a.rows, b.rows) for a, b in zip(one, again))
    assume(sum(counts) >= 8 and sum(counts) // (world * batch) >= 1)
    whole = lambda e: plan_epoch(counts, seed, e, 0, 1, 1, True).rows  # noqa: E731 (all samples)
    assert not np.array_equal(whole(epoch), whole(epoch + 1))


@SETTINGS
@given(case, st.integers(0, 60), st.booleans())
def test_resuming_at_batch_k_gives_batches_k_on(args, k, train):
    counts, seed, epoch, world, batch = args
    for whole, resumed in zip(ranks(counts, seed, epoch, world, batch, train),
                              ranks(counts, seed, epoch, world, batch, train, start=k)):
        assert len(resumed) == max(0, len(whole) - k)
        assert all(np.array_equal(a, b) for a, b in zip(whole.batches()[k:], resumed.batches(), strict=True))


@SETTINGS
@given(case, st.integers(1, 16))
def test_one_rank_order_does_not_depend_on_the_batch_size(args, other):
    counts, seed, epoch, _, batch = args
    a, b = (plan_epoch(counts, seed, epoch, 0, 1, n, True).rows for n in (batch, other))
    common = min(len(a), len(b))
    assert np.array_equal(a[:common], b[:common])


@SETTINGS
@given(case)
def test_evaluation_reads_every_sample_once_in_order(args):
    counts, seed, epoch, world, batch = args
    plans = ranks(counts, seed, epoch, world, batch, train=False)
    assert np.array_equal(np.concatenate([p.rows for p in plans]), np.arange(sum(counts)))
    assert max(len(p) for p in plans) - min(len(p) for p in plans) <= 1
    assert all(len(b) == batch for p in plans for b in p.batches()[:-1])


def test_a_class_sorted_shard_order_is_mixed_within_shards():
    """The plan shuffles inside each shard: batches of a shard holding rows 0..63 are not runs."""
    rows = plan_epoch([64, 64], 0, 0, 0, 1, 8, True).rows
    assert not np.array_equal(np.sort(rows[:64]), rows[:64])


@st.composite
def elastic_case(draw):
    """A shard layout, a global batch G split into C streams, two world sizes dividing G, a kill point."""
    streams = draw(st.integers(1, 4))
    glob = streams * draw(st.integers(1, 6))
    divisors = [w for w in range(1, glob + 1) if glob % w == 0]
    return (draw(counts_st), draw(st.integers(0, 2**31)), draw(st.integers(0, 50)), glob, streams,
            draw(st.sampled_from(divisors)), draw(st.sampled_from(divisors)), draw(st.integers(0, 20)))


def global_batches(counts, seed, epoch, glob, streams, world, start=0) -> list[list[int]]:
    """Each global batch from `start` on: the ranks' batches concatenated in rank order."""
    plans = [plan_epoch(counts, seed, epoch, r, world, glob // world, True, start, streams) for r in range(world)]
    assert len({len(p) for p in plans}) == 1
    return [np.concatenate([p.batches()[k] for p in plans]).tolist() for k in range(len(plans[0]))]


@SETTINGS
@given(elastic_case())
def test_a_run_resumed_on_another_world_size_reads_the_same_global_batches(args):
    counts, seed, epoch, glob, streams, world, other, kill = args
    whole = global_batches(counts, seed, epoch, glob, streams, world)
    assert len(whole) == sum(counts) // glob                                  # the same epoch boundaries
    assert all(len(b) == glob for b in whole)
    flat = [r for b in whole for r in b]
    assert len(set(flat)) == len(flat) and set(flat) <= set(range(sum(counts)))
    resumed = global_batches(counts, seed, epoch, glob, streams, other, start=kill)
    assert whole[:kill] + resumed == whole                                    # nothing skipped or repeated
    if streams == world:  # started with the default streams: the plan that a non-elastic run has always had
        assert global_batches(counts, seed, epoch, glob, None, world) == whole


def test_streams_must_divide_the_global_batch():
    with pytest.raises(ValueError, match="global batch of 6 does not split into 4 streams"):
        plan_epoch([10, 10], 0, 0, 0, 2, 3, True, streams=4)
