"""Exactly-once sharding across ranks × workers, deterministic shuffle, exact resume."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader

from llava_ov15.data import ShardIterable, ShardLoader
from llava_ov15.data.shards import items_per_worker, stream_indices


@settings(max_examples=300, deadline=None)
@given(lengths=st.lists(st.integers(0, 40), min_size=1, max_size=12),
       world=st.integers(1, 5), workers=st.integers(1, 6), seed=st.integers(0, 3),
       epoch=st.integers(0, 3), buffer=st.integers(0, 50), shuffle=st.booleans())
def test_every_sample_exactly_once(lengths, world, workers, seed, epoch, buffer, shuffle):
    consumers = world * workers  # often more consumers than shards
    seen = []
    for c in range(consumers):
        got = list(stream_indices(lengths, c, consumers, seed=seed, epoch=epoch,
                                  shuffle=shuffle, buffer_size=buffer))
        assert abs(len(got) - sum(lengths) / consumers) < 1  # balanced to within one
        seen += got
    assert sorted(seen) == list(range(sum(lengths)))


def test_shuffle_is_deterministic_and_changes_with_epoch():
    lengths = [50, 13, 0, 77, 20]
    a = list(stream_indices(lengths, 1, 3, seed=7, epoch=2, buffer_size=16))
    assert a == list(stream_indices(lengths, 1, 3, seed=7, epoch=2, buffer_size=16))
    assert a != list(stream_indices(lengths, 1, 3, seed=7, epoch=3, buffer_size=16))
    assert a != list(stream_indices(lengths, 1, 3, seed=8, epoch=2, buffer_size=16))


@settings(max_examples=200, deadline=None)
@given(lengths=st.lists(st.integers(0, 30), min_size=1, max_size=5), batch=st.integers(1, 4),
       data=st.data())
def test_items_per_worker_matches_round_robin(lengths, batch, data):
    per = [-(-n // batch) for n in lengths]
    k = data.draw(st.integers(0, sum(per)))
    # Simulate the in-order loader: one batch per active worker, in worker order.
    taken, order = [0] * len(lengths), []
    while any(t < p for t, p in zip(taken, per, strict=True)):
        for w in range(len(lengths)):
            if taken[w] < per[w]:
                taken[w] += 1
                order.append(w)
    done = [0] * len(lengths)
    for w in order[:k]:
        done[w] = min(lengths[w], done[w] + batch)
    nxt = order[k] if k < len(order) else None
    got, got_next = items_per_worker(lengths, batch, k)
    assert got == done
    if nxt is not None:
        assert got_next == nxt


def _keys(loader):
    out = []
    for b in loader:
        out += [s["key"] for s in (b if isinstance(b, list) else [b])]
    return out


@pytest.mark.parametrize("world,workers", [(1, 0), (1, 2), (2, 2), (3, 1), (2, 3)])
def test_dataloader_ranks_x_workers_cover_the_directory_once(plain_shards, world, workers):
    keys = []
    for rank in range(world):
        ds = ShardIterable(plain_shards, rank=rank, world_size=world, seed=3, buffer_size=8)
        keys += _keys(DataLoader(ds, batch_size=None, num_workers=workers))
    n = len(ShardIterable(plain_shards))
    assert len(keys) == n and len(set(keys)) == n


def _collate(items):
    return list(items)


@pytest.mark.parametrize("workers,batch", [(0, None), (2, None), (3, 4), (2, 5)])
@pytest.mark.parametrize("stop", [0, 1, 7, 33])
def test_resume_gives_exactly_the_remaining_stream(plain_shards, workers, batch, stop):
    def loader():
        ds = ShardIterable(plain_shards, seed=11, buffer_size=10, epoch=1)
        kw = {"collate_fn": _collate} if batch else {}
        return ShardLoader(ds, batch_size=batch, num_workers=workers, **kw)

    full = list(loader())
    first = loader()
    it = iter(first)
    head = [next(it) for _ in range(min(stop, len(full)))]
    state = first.state_dict()
    del it
    second = loader()
    second.load_state_dict(state)
    rest = list(second)
    assert _keys(head) + _keys(rest) == _keys(full)
    # The restored loader's position keeps counting for the next save.
    assert second.state_dict()["batches"] == len(full)
    with pytest.raises(ValueError, match="num_workers"):
        other = ShardLoader(ShardIterable(plain_shards, seed=11), batch_size=batch,
                            num_workers=workers + 1)
        other.load_state_dict(state)


def test_in_process_iteration_resumes(plain_shards):
    ds = ShardIterable(plain_shards, seed=5, buffer_size=4)
    full = [s["key"] for s in ds]
    ds2 = ShardIterable(plain_shards, seed=5, buffer_size=4)
    it = iter(ds2)
    head = [next(it)["key"] for _ in range(20)]
    state = ds2.state_dict()
    ds3 = ShardIterable(plain_shards, seed=5, buffer_size=4)
    ds3.load_state_dict(state)
    assert head + [s["key"] for s in ds3] == full
    assert ds3.state_dict()["consumed"] == len(full)
