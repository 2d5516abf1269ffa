"""Zero-copy reading of `llava-pack build` output through the Rust mmap reader."""

from __future__ import annotations

import gc
import json

import numpy as np
import pytest

from llava_ov15 import _native
from llava_ov15.data import ShardDataset
from loader_fixtures import member_suffix, tar_members


def _expected(plain_shards):
    return [(p.name, k, m) for p in sorted(plain_shards.glob("*.tar")) for k, m in tar_members(p)]


def test_every_sample_matches_tarfile(plain_shards):
    reader = _native.ShardReader(str(plain_shards))
    expected = _expected(plain_shards)
    assert len(reader) == len(expected) > 100
    assert not reader.packed
    assert sum(reader.shard_lengths) == len(expected)
    assert len(set(reader.shard_lengths)) > 1, "uneven shards"
    for i, (shard, key, members) in enumerate(expected):
        s = reader.sample(i)
        assert (s["shard"], s["key"]) == (shard, key)
        md = dict(members)
        assert s["json"] == md["json"]
        doc = json.loads(md["json"])
        want = [md[member_suffix(key, im["member"])] for im in doc["images"]]
        assert [v.tobytes() for v in s["images"]] == want
        assert {k: v.tobytes() for k, v in s["members"].items()} == {
            k: v for k, v in members if k != "json"}


def test_image_views_are_zero_copy_into_the_mapping(plain_shards):
    reader = _native.ShardReader(str(plain_shards))
    i = next(i for i in range(len(reader)) if reader.sample(i)["images"])
    s = reader.sample(i)
    view = s["images"][0]
    shard = reader.shard_names.index(s["shard"])
    mapping = reader.mapping(shard)
    addr, size = mapping.span
    ptr = view.__array_interface__["data"][0]
    assert addr <= ptr and ptr + view.nbytes <= addr + size, "view points into the mmap"
    assert view.base is not None and isinstance(view.base, _native.MappedShard)
    assert not view.flags.writeable and not view.flags.owndata
    # Two reads of the same member share memory: nothing was copied.
    again = reader.sample(i)["images"][0]
    assert np.shares_memory(view, again)
    expected = view.tobytes()
    # The view keeps the mapping alive after the reader and the sample dicts are gone.
    del reader, s, again, mapping
    gc.collect()
    assert view.tobytes() == expected
    assert bytes(memoryview(view)) == expected


def test_map_style_dataset(plain_shards):
    ds = ShardDataset(plain_shards)
    assert len(ds) == len(_native.ShardReader(str(plain_shards)))
    assert ds[-1]["key"] == ds[len(ds) - 1]["key"]


    with pytest.raises(IndexError):
        ds[len(ds)]


def test_energon_still_loads_the_same_directory(plain_shards):
    from megatron.energon import WorkerConfig, get_loader, get_val_dataset

    wc = WorkerConfig(rank=0, world_size=1, num_workers=0)
    loaded = list(get_loader(get_val_dataset(plain_shards, split_part="train", worker_config=wc,
                                             batch_size=None)))
    reader = _native.ShardReader(str(plain_shards))
    assert [s.__key__ for s in loaded] == [reader.sample(i)["key"] for i in range(len(reader))]
    for s in loaded[:10]:
        *images, text = s.sequence
        assert len(images) == len(json.loads(text)["images"])
