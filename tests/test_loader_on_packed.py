"""The loader on real `llava-pack pack` output: every sub-sample's token count equals the
length the packer recorded, and a pack's collated row holds exactly those samples."""

from __future__ import annotations

import itertools
import json

import pytest

from llava_ov15 import pack as packapi
from llava_ov15.data import SampleProcessor, ShardDataset, collate_packed
from llava_ov15.data.tokenizer import qwen_tokenizer_json
from llava_ov15.demo.corpus import CorpusSpec, write_corpus


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    root = tmp_path_factory.mktemp("packed")
    corpus = write_corpus(root / "c", CorpusSpec(n=40, seed=5, min_side=64, max_side=400,
                                                 multi_image_fraction=0.1, text_only_fraction=0.1,
                                                 shapes=("caption", "conversations", "messages")))
    packapi.build(corpus, root / "shards", progress="quiet")
    tok = str(qwen_tokenizer_json())
    packapi.pack(root / "shards", root / "packed", tok, max_len=1024, progress="quiet")
    return root / "packed", tok


def test_loader_lengths_equal_the_packers(packed):
    out, tok = packed
    ds = ShardDataset(out, transform=SampleProcessor(tok))
    raw = ShardDataset(out)
    assert len(ds) > 1
    n_sub = 0
    for i in range(len(ds)):
        item = ds[i]
        doc = json.loads(bytes(raw[i]["json"]))
        recorded = [s["length"] for s in doc["samples"]]
        assert item["seq_lens"] == recorded
        assert len(item["input_ids"]) == sum(recorded) == doc["total_tokens"] <= 1024
        assert int(item["image_grid_thw"][:, 1:].prod(dim=1).sum()) // 4 == doc["image_tokens"]
        row = collate_packed([item])
        assert row["cu_seqlens"].tolist() == [0, *itertools.accumulate(recorded)]
        starts = row["position_ids"][0] == 0
        assert int(starts.sum()) == len(recorded)  # positions restart once per sub-sample
        n_sub += len(recorded)
    stats = json.loads((out / "pack_stats.json").read_text())
    assert n_sub == stats["samples"]
