"""Preprocessing equals transformers: pixel_values vs `Qwen2VLImageProcessor`, input_ids/labels
vs the HF tokenizer + Qwen2-VL chat template, lengths vs the packer's `LengthCounter`; packed
and padded collation."""

from __future__ import annotations

import io
import json
import re
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import jpeg_bytes, png_bytes
from llava_ov15 import _native
from llava_ov15.data import (
    SampleProcessor,
    ShardDataset,
    block_diagonal_causal_mask,
    collate_packed,
    collate_padded,
    preprocess_images,
)
from llava_ov15.data.preprocess import reference_pixel_values
from loader_fixtures import write_packed


def hf_processor(min_pixels, max_pixels):
    from transformers import Qwen2VLImageProcessor

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # Without torchvision transformers 5.23 returns its PIL backend for this class.
        return Qwen2VLImageProcessor(temporal_patch_size=1, patch_size=14, merge_size=2,
                                     min_pixels=min_pixels, max_pixels=max_pixels)


def _photos():
    from skimage import data

    out = []
    for name in ("astronaut", "chelsea", "coffee", "rocket"):
        img = getattr(data, name)()
        out += [(name, img), (f"{name}-crop", img[17:17 + 203, 5:5 + 371]),
                (f"{name}-tall", img[:, :90])]
    return out


@pytest.mark.parametrize("min_pixels,max_pixels", [(3136, 2_560_000), (200_704, 2_560_000),
                                                   (3136, 60_000)])
def test_pixel_values_equal_qwen2vl_image_processor(min_pixels, max_pixels):
    proc = hf_processor(min_pixels, max_pixels)
    assert type(proc).__name__ in ("Qwen2VLImageProcessor", "Qwen2VLImageProcessorPil")
    for name, img in _photos():
        for enc in (jpeg_bytes(img), png_bytes(img)):
            ref = proc(images=[Image.open(io.BytesIO(enc))], return_tensors="np")
            pv, grid = preprocess_images([enc], min_pixels=min_pixels, max_pixels=max_pixels)
            assert grid.tolist() == ref["image_grid_thw"].tolist(), name
            assert pv.dtype == np.float32 and pv.shape == ref["pixel_values"].shape
            err = np.abs(pv - ref["pixel_values"]).max()
            assert err <= 1e-5, (name, err)
            rp, rg = reference_pixel_values([enc], min_pixels=min_pixels, max_pixels=max_pixels)
            assert np.array_equal(rp, pv) and np.array_equal(rg, grid)


def test_several_images_concatenate_and_bad_images_raise():
    imgs = [jpeg_bytes(img) for _, img in _photos()[:3]]
    pv, grid = preprocess_images(imgs)
    assert len(pv) == int((grid[:, 1] * grid[:, 2]).sum()) and grid.shape == (3, 3)
    with pytest.raises(ValueError, match="image 1"):
        preprocess_images([imgs[0], imgs[1][:300]])


# The Qwen2-VL chat template (HF), image placeholders expanded afterwards like the processor.
TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}"
    "<|im_end|>\n{% endif %}{% endfor %}"
)


def _hf_messages(doc):
    def parts(text):
        out = []
        for i, piece in enumerate(text.split("<image>")):
            if i:
                out.append({"type": "image"})
            if piece:
                out.append({"type": "text", "text": piece})
        return out

    n = len(doc.get("images", []))
    if doc["kind"] == "caption":
        return [{"role": "user", "content": [{"type": "image"}] * n},
                {"role": "assistant", "content": [{"type": "text", "text": doc["caption"]}]}]
    if doc["kind"] == "conversations":
        role = {"human": "user", "gpt": "assistant", "system": "system"}
        msgs = [{"role": role[t["from"]], "content": parts(t["value"])}
                for t in doc["conversations"]]
    else:
        msgs = [dict(m) for m in doc["messages"]]
        for m in msgs:
            if isinstance(m["content"], str):
                m["content"] = [{"type": "text", "text": m["content"]}]
    placed = sum(c["type"] == "image" for m in msgs for c in m["content"])
    if placed == 0 and n:
        first = next(m for m in msgs if m["role"] == "user")
        first["content"] = [{"type": "image"}] * n + first["content"]
    return msgs


VISION = "<|vision_start|><|image_pad|><|vision_end|>"


def _hf_ids_labels(tok, doc, image_tokens):
    """The reference's training strings: a caption is vision tags + caption + eos (all but the
    vision tokens trained); a chat is the template's text without its final newline."""
    if doc["kind"] == "caption":
        text = VISION * len(doc.get("images", [])) + doc["caption"] + "<|im_end|>"
    else:
        text = tok.apply_chat_template(_hf_messages(doc), chat_template=TEMPLATE,
                                       tokenize=False)
        assert text.endswith("<|im_end|>\n")
        text = text[:-1]
    it = iter(image_tokens)
    text = re.sub(re.escape("<|image_pad|>"), lambda _: "<|image_pad|>" * next(it), text)
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    if doc["kind"] == "caption":
        vision = {tok.convert_tokens_to_ids(t) for t in
                  ("<|vision_start|>", "<|image_pad|>", "<|vision_end|>")}
        return enc["input_ids"], [-100 if t in vision else t for t in enc["input_ids"]]
    spans = [(m.start(1), m.end(1)) for m in
             re.finditer(r"<\|im_start\|>assistant\n(.*?)<\|im_end\|>", text, re.S)]
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    labels = []
    for tid, (a, _) in zip(enc["input_ids"], enc["offset_mapping"], strict=True):
        answer = any(s <= a < e for s, e in spans)
        closing = tid == im_end and any(a == e for _, e in spans)
        labels.append(tid if answer or closing else -100)
    return enc["input_ids"], labels


def test_tokens_and_labels_equal_hf_template_and_lengths(plain_shards, qwen_tokenizer):
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_file=str(qwen_tokenizer))
    ours = _native.SampleTokenizer(str(qwen_tokenizer))
    counter = _native.LengthCounter(str(qwen_tokenizer))
    reader = _native.ShardReader(str(plain_shards))
    kinds = set()
    for i in range(len(reader)):
        raw = reader.sample(i, images=False)["json"]
        doc = json.loads(raw)
        kinds.add(doc["kind"])
        ids, labels, seq_lens, image_tokens = ours.tokenize(raw)
        assert seq_lens == [len(ids)] == [counter.sample_length(raw)["total"]]
        ref_ids, ref_labels = _hf_ids_labels(tok, doc, image_tokens)
        assert ids.tolist() == ref_ids, doc["id"]
        assert labels.tolist() == ref_labels, doc["id"]
        assert labels.tolist()[-1] == ids[-1] == 151645  # ends on a trained <|im_end|>
    assert kinds == {"caption", "conversations", "messages"}


def test_sample_processor_and_padded_collation(plain_shards, qwen_tokenizer):
    ds = ShardDataset(plain_shards, transform=SampleProcessor(qwen_tokenizer))
    items = [ds[i] for i in range(6)]
    for it in items:
        pads = int((it["input_ids"] == 151655).sum())
        assert pads == int((it["image_grid_thw"][:, 1] * it["image_grid_thw"][:, 2]).sum()) // 4
    b = collate_padded(items)
    n = max(len(it["input_ids"]) for it in items)
    assert b["input_ids"].shape == b["labels"].shape == b["attention_mask"].shape == (6, n)
    for i, it in enumerate(items):
        k = len(it["input_ids"])
        assert b["attention_mask"][i].sum() == k
        assert (b["labels"][i, k:] == -100).all()
        assert (b["input_ids"][i, :k] == it["input_ids"]).all()
    assert len(b["pixel_values"]) == sum(len(it["pixel_values"]) for it in items)


@pytest.fixture(scope="module")
def packed_shards(plain_shards, qwen_tokenizer, tmp_path_factory):
    out = tmp_path_factory.mktemp("packed") / "out"
    keys = write_packed(plain_shards, out, qwen_tokenizer, max_len=3000)
    return out, keys


def test_packed_rows(packed_shards, qwen_tokenizer):
    out, keys = packed_shards
    reader = _native.ShardReader(str(out))
    assert reader.packed and len(reader) == len(keys)
    proc = SampleProcessor(qwen_tokenizer)
    counter = _native.LengthCounter(str(qwen_tokenizer))
    multi = 0
    for i in range(len(reader)):
        s = reader.sample(i)
        doc = json.loads(s["json"])
        item = proc(s)
        assert item["seq_lens"] == [sub["length"] for sub in doc["samples"]]
        totals = [counter.sample_length(json.dumps(sub["sample"]).encode())["total"]
                  for sub in doc["samples"]]
        assert item["seq_lens"] == totals
        row = collate_packed([item])
        lens = item["seq_lens"]
        multi += len(lens) > 1
        assert row["input_ids"].shape == (1, sum(lens))
        assert row["cu_seqlens"].tolist() == [0, *np.cumsum(lens).tolist()]
        assert row["max_seqlen"] == max(lens)
        pos = row["position_ids"][0]
        for a, b in zip(row["cu_seqlens"][:-1].tolist(), row["cu_seqlens"][1:].tolist(),
                        strict=True):
            assert pos[a:b].tolist() == list(range(b - a))
        assert len(row["pixel_values"]) == int((row["image_grid_thw"][:, 1:].prod(1)).sum())
    assert multi > 0


def test_block_diagonal_causal_mask():
    m = block_diagonal_causal_mask(torch.tensor([0, 2, 5], dtype=torch.int32))
    expect = torch.zeros(5, 5, dtype=torch.bool)
    expect[:2, :2] = torch.ones(2, 2).tril().bool()
    expect[2:, 2:] = torch.ones(3, 3).tril().bool()
    assert torch.equal(m, expect)
