"""Epoch boundaries, per-rank lengths, equal ranks (`even`) and persistent workers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader

from llava_ov15.data import ShardIterable, ShardLoader
from llava_ov15.data.shards import stream_indices
from loader_fixtures import write_manifest, write_tar


def text_shards(root: Path, sizes: list[int]) -> Path:
    """Shards of text-only samples (keys s00000...), `sizes[i]` samples in shard i."""
    root.mkdir(parents=True, exist_ok=True)
    k = 0
    for i, n in enumerate(sizes):
        samples = []
        for _ in range(n):
            key = f"s{k:05d}"
            samples.append((key, [("json", json.dumps({"key": key, "text": "x"}).encode())]))
            k += 1
        write_tar(root / f"shard-{i:06d}.tar", samples)
    write_manifest(root)
    return root


@pytest.fixture(scope="module")
def shards400(tmp_path_factory) -> Path:
    return text_shards(tmp_path_factory.mktemp("epochs") / "data", [90, 130, 17, 163])


def _keys(batches) -> list[str]:
    out = []
    for b in batches:
        out += [s["key"] for s in (b if isinstance(b, list) else [b])]
    return out


def _collate(items):
    return list(items)


@pytest.mark.parametrize("workers,batch", [(0, None), (2, 3)])
def test_state_saved_after_set_epoch_resumes_the_new_epoch_from_its_start(shards400, workers,
                                                                          batch):
    kw = {"collate_fn": _collate} if batch else {}
    ds = ShardIterable(shards400, rank=1, world_size=2, seed=4, buffer_size=16)
    loader = ShardLoader(ds, batch_size=batch, num_workers=workers, **kw)
    first = _keys(loader)  # epoch 0, to the end
    ds.set_epoch(1)
    state = loader.state_dict()  # saved between set_epoch(1) and the first batch
    assert (state["epoch"], state["batches"]) == (1, 0)
    epoch1 = _keys(loader)
    assert len(epoch1) == len(first) == len(ds) == 200 and epoch1 != first

    ds2 = ShardIterable(shards400, rank=1, world_size=2, seed=4, buffer_size=16)
    resumed = ShardLoader(ds2, batch_size=batch, num_workers=workers, **kw)
    resumed.load_state_dict(state)
    assert _keys(resumed) == epoch1


def test_restore_then_set_epoch_starts_the_other_epoch_fresh(shards400):
    ds = ShardIterable(shards400, seed=2, buffer_size=8, epoch=3)
    loader = ShardLoader(ds, batch_size=None)
    it = iter(loader)
    for _ in range(10):
        next(it)
    state = loader.state_dict()
    ds2 = ShardIterable(shards400, seed=2, buffer_size=8)
    loader2 = ShardLoader(ds2, batch_size=None)
    loader2.load_state_dict(state)
    ds2.set_epoch(4)  # the caller moved on: the restored position no longer applies
    assert len(_keys(loader2)) == 400 and loader2.state_dict()["batches"] == 400


@pytest.mark.parametrize("world,workers,batch", [(3, 0, None), (3, 2, 4), (2, 3, 5), (1, 2, 7)])
def test_len_is_this_ranks_share(shards400, world, workers, batch):
    kw = {"collate_fn": _collate} if batch else {}
    total = 0
    for rank in range(world):
        ds = ShardIterable(shards400, rank=rank, world_size=world, seed=1, buffer_size=8)
        loader = ShardLoader(ds, batch_size=batch, num_workers=workers, **kw)
        batches = list(loader)
        assert len(ds) == len(_keys(batches)) and len(loader) == len(batches)
        total += len(ds)
    assert total == 400


def test_ranks_are_uneven_by_default(shards400):
    counts = [len(ShardIterable(shards400, rank=r, world_size=3)) for r in range(3)]
    assert counts == [133, 133, 134]


@pytest.mark.parametrize("even", ["drop", "pad"])
@pytest.mark.parametrize("workers,batch", [(0, None), (2, 4), (3, 5)])
def test_even_gives_every_rank_the_same_samples_and_batches(shards400, even, workers, batch):
    kw = {"collate_fn": _collate} if batch else {}
    per_rank, batches_per_rank = [], []
    for rank in range(3):
        ds = ShardIterable(shards400, rank=rank, world_size=3, seed=9, buffer_size=8,
                           epoch=1, even=even)
        loader = ShardLoader(ds, batch_size=batch, num_workers=workers, **kw)
        batches = list(loader)
        per_rank.append(_keys(batches))
        batches_per_rank.append(len(batches))
        assert len(loader) == len(batches) and len(ds) == len(per_rank[-1])
    want = 133 if even == "drop" else 134
    assert [len(k) for k in per_rank] == [want] * 3
    assert len(set(batches_per_rank)) == 1  # a DDP loop stays in step
    seen = [k for keys in per_rank for k in keys]
    if even == "drop":  # no sample twice; the one left over is not read this epoch
        assert len(set(seen)) == 399
    else:  # every sample, and two repeated from the stream's start
        assert len(set(seen)) == 400 and len(seen) == 402


def test_even_drop_leaves_out_different_samples_each_epoch(shards400):
    def dropped(epoch):
        seen = set()
        for c in range(3):
            seen |= set(stream_indices([90, 130, 17, 163], c, 3, seed=0, epoch=epoch,
                                       even="drop"))
        return set(range(400)) - seen

    assert len({frozenset(dropped(e)) for e in range(6)}) > 1


def test_even_resumes_exactly(shards400):
    def loader():
        ds = ShardIterable(shards400, rank=2, world_size=3, seed=5, buffer_size=8, even="pad")
        return ShardLoader(ds, batch_size=3, num_workers=2, collate_fn=_collate)

    full = _keys(loader())
    first = loader()
    it = iter(first)
    head = [next(it) for _ in range(9)]
    state = first.state_dict()
    del it
    second = loader()
    second.load_state_dict(state)
    assert _keys(head) + _keys(second) == full
    other = ShardLoader(ShardIterable(shards400, rank=2, world_size=3, seed=5),
                        batch_size=3, num_workers=2, collate_fn=_collate)
    with pytest.raises(ValueError, match="even"):
        other.load_state_dict(state)


def test_bad_even_value_is_refused(shards400):
    with pytest.raises(ValueError, match="even must be"):
        ShardIterable(shards400, even=True)


def test_persistent_workers_are_refused_at_construction(shards400):
    ds = ShardIterable(shards400, seed=1)
    with pytest.raises(ValueError, match="persistent_workers"):
        ShardLoader(ds, batch_size=None, num_workers=2, persistent_workers=True)


def test_persistent_plain_dataloader_stops_instead_of_repeating_the_shuffle(shards400):
    ds = ShardIterable(shards400, seed=1, buffer_size=8)
    loader = DataLoader(ds, batch_size=None, num_workers=1, persistent_workers=True)
    assert len(list(loader)) == 400
    ds.set_epoch(1)
    with pytest.raises(RuntimeError, match="persistent_workers"):
        list(loader)


@settings(max_examples=300, deadline=None)
@given(lengths=st.lists(st.integers(0, 40), min_size=1, max_size=8), world=st.integers(1, 5),
       workers=st.integers(1, 4), epoch=st.integers(0, 3), even=st.sampled_from(["drop", "pad"]))
def test_even_ranks_and_workers_are_equal_for_any_split(lengths, world, workers, epoch, even):
    total = sum(lengths)
    per_rank = total // world if even == "drop" else -(-total // world)
    seen, shapes = [], set()
    for rank in range(world):
        sizes = []
        for w in range(workers):
            got = list(stream_indices(lengths, rank * workers + w, world * workers, seed=1,
                                      epoch=epoch, buffer_size=5, num_workers=workers,
                                      even=even))
            sizes.append(len(got))
            seen += got
        assert sum(sizes) == per_rank
        shapes.add(tuple(sizes))  # every rank's workers split alike: same batch counts
    assert len(shapes) == 1
    if even == "drop":
        assert len(set(seen)) == len(seen) == world * per_rank
    elif total:
        assert set(seen) == set(range(total)) and len(seen) == world * per_rank
