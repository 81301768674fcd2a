"""What the stages of a run share."""

from tasks.session import GroupedBatchSampler


def test_grouped_batches__one_group_per_batch_each_item_once_reshuffled_per_epoch():
    groups = [0] * 10 + [1] * 7
    sampler = GroupedBatchSampler(groups, batch_size=3, seed=1)
    sampler.set_epoch(0)
    first = list(sampler)
    assert len(first) == len(sampler) == 3 + 2  # full batches only
    assert all(len(b) == 3 and len({groups[i] for i in b}) == 1 for b in first)
    flat = [i for b in first for i in b]
    assert len(set(flat)) == len(flat)
    sampler.set_epoch(0)
    assert list(sampler) == first  # the same epoch gives the same batches on every process
    sampler.set_epoch(1)
    assert list(sampler) != first
