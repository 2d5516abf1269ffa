"""Token lengths (Rust `LengthCounter`) == the transformers processor + tokenizer + Qwen2-VL
chat template on the same sample; `smart_resize` == transformers' own function."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("transformers")
from transformers import PreTrainedTokenizerFast  # noqa: E402
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (  # noqa: E402
    Qwen2VLImageProcessorPil,
)
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (  # noqa: E402
    smart_resize as hf_smart_resize,
)

from llava_ov15 import _native  # noqa: E402
from llava_ov15.data import sample_length  # noqa: E402
from llava_ov15.data.tokenizer import qwen_tokenizer_json  # noqa: E402

MIN_PIXELS, MAX_PIXELS = 3136, 2_560_000

# The Qwen2-VL / Qwen2.5-VL chat template (images only), as a Jinja string: default system
# turn unless the conversation starts with one; image parts become vision_start/pad/end.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}"
)


@pytest.fixture(scope="module")
def tokenizer_path() -> str:
    return str(qwen_tokenizer_json())


@pytest.fixture(scope="module")
def hf(tokenizer_path):
    tok = PreTrainedTokenizerFast(tokenizer_file=tokenizer_path)
    proc = Qwen2VLImageProcessorPil(temporal_patch_size=1, patch_size=14, merge_size=2,
                                    min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS)
    return tok, proc


def to_messages(doc: dict) -> list[dict]:
    """Independent conversion of a per-sample json to chat messages (test oracle)."""
    n = len(doc.get("images", []))
    if "caption" in doc:
        return [{"role": "user", "content": [{"type": "image"}] * n},
                {"role": "assistant", "content": doc["caption"]}]
    msgs = []
    if "conversations" in doc:
        roles = {"human": "user", "gpt": "assistant", "system": "system"}
        for turn in doc["conversations"]:
            parts = []
            for k, piece in enumerate(turn["value"].split("<image>")):
                if k:
                    parts.append({"type": "image"})
                if piece:
                    parts.append({"type": "text", "text": piece})
            msgs.append({"role": roles[turn["from"]], "content": parts})
    else:
        msgs = [dict(m) for m in doc["messages"]]
    tags = sum(1 for m in msgs if not isinstance(m["content"], str)
               for p in m["content"] if p["type"] == "image")
    if tags == 0 and n:
        first = next(m for m in msgs if m["role"] == "user")
        content = first["content"]
        content = [{"type": "text", "text": content}] if isinstance(content, str) else content
        first["content"] = [{"type": "image"}] * n + content
    return msgs


def hf_length(hf, doc: dict, images: list[Image.Image]) -> int:
    tok, proc = hf
    text = tok.apply_chat_template(to_messages(doc), chat_template=CHAT_TEMPLATE, tokenize=False)
    if images:
        grids = proc(images=images, return_tensors="np")["image_grid_thw"]
        pieces = text.split("<|image_pad|>")
        assert len(pieces) == len(images) + 1
        text = pieces[0] + "".join("<|image_pad|>" * (int(np.prod(g)) // 4) + rest
                                   for g, rest in zip(grids, pieces[1:], strict=False))
    return len(tok(text, add_special_tokens=False)["input_ids"])


def photos() -> list[Image.Image]:
    from skimage import data

    out = []
    for name, sizes in (("astronaut", [(512, 512), (97, 333), (1920, 1080)]),
                        ("chelsea", [(451, 300), (2800, 1900)]),
                        ("coffee", [(600, 400), (41, 1200)]),
                        ("rocket", [(427, 640), (15, 15), (3000, 4000)])):
        base = Image.fromarray(getattr(data, name)())
        out += [base] + [base.resize(s, Image.Resampling.BICUBIC) for s in sizes]
    return out


def meta(images: list[Image.Image]) -> list[dict]:
    return [{"member": f"k.img{i}.jpg", "width": im.width, "height": im.height}
            for i, im in enumerate(images)]


TEXTS = ["A photograph of a cat.", "Ünïcödé — 漢字 and emoji 🚀, numbers 12345.",
         "  leading spaces\nand\n\nnewlines\t tabs ", "What's in the image? Be brief."]


def test_real_photos_all_shapes(hf, tokenizer_path):
    ims = photos()
    rng = random.Random(0)
    checked = 0
    for i, im in enumerate(ims):
        two = [im, ims[(i + 3) % len(ims)]]
        docs = [
            ({"id": "a", "kind": "caption", "caption": TEXTS[i % 4], "images": meta([im])}, [im]),
            ({"id": "b", "kind": "conversations", "conversations": [
                {"from": "human", "value": "<image>\n" + TEXTS[(i + 1) % 4]},
                {"from": "gpt", "value": TEXTS[(i + 2) % 4]}], "images": meta([im])}, [im]),
            ({"id": "c", "kind": "conversations", "conversations": [  # multi-image, multi-turn
                {"from": "human", "value": "Compare <image> with"},
                {"from": "gpt", "value": "Which one?"},
                {"from": "human", "value": "this one: <image>"},
                {"from": "gpt", "value": TEXTS[i % 4]}], "images": meta(two)}, two),
            ({"id": "d", "kind": "messages", "messages": [
                {"role": "system", "content": "Answer tersely."},
                {"role": "user", "content": [{"type": "image"}, {"type": "image"},
                                             {"type": "text", "text": TEXTS[3]}]},
                {"role": "assistant", "content": "Two pictures."}], "images": meta(two)}, two),
            ({"id": "e", "kind": "conversations", "conversations": [  # images without tags
                {"from": "human", "value": TEXTS[rng.randrange(4)]},
                {"from": "gpt", "value": "ok"}], "images": meta([im])}, [im]),
        ]
        for doc, images in docs:
            ours = sample_length(doc, tokenizer_path)
            assert ours == hf_length(hf, doc, images), doc
            checked += 1
    assert checked >= 60


def test_text_only_and_bytes_input(hf, tokenizer_path):
    doc = {"id": "t", "kind": "messages", "messages": [
        {"role": "user", "content": TEXTS[1]}, {"role": "assistant", "content": TEXTS[2]},
        {"role": "user", "content": "again?"}, {"role": "assistant", "content": "yes"}],
        "images": []}
    n = hf_length(hf, doc, [])
    assert sample_length(doc, tokenizer_path) == n
    assert sample_length(json.dumps(doc).encode(), tokenizer_path) == n
    d = sample_length(doc, tokenizer_path, detail=True)
    assert d["total"] == n and d["image_tokens"] == []


def test_image_tokens_follow_the_processor_grid(hf, tokenizer_path):
    _, proc = hf
    counter = _native.LengthCounter(tokenizer_path)
    for im in photos():
        (t, h, w), = proc(images=[im], return_tensors="np")["image_grid_thw"]
        assert counter.image_grid(im.width, im.height)[2:] == (h * w, h * w // 4)


def test_invalid_samples_raise(tokenizer_path):
    with pytest.raises(ValueError):
        sample_length({"id": "x"}, tokenizer_path)
    with pytest.raises(ValueError):  # two placeholders, one image
        sample_length({"conversations": [{"from": "human", "value": "<image><image>"}],
                       "images": [{"width": 10, "height": 10}]}, tokenizer_path)


def test_smart_resize_matches_transformers_on_random_sizes():
    rng = random.Random(1234)
    cases = []
    for _ in range(6000):
        cases.append((rng.randint(1, 5000), rng.randint(1, 5000)))
    for _ in range(2500):  # exact .5 ties: 28k + 14
        cases.append((28 * rng.randint(0, 150) + 14, 28 * rng.randint(0, 150) + 14))
        cases.append((28 * rng.randint(0, 150) + 14, rng.randint(1, 4000)))
    for _ in range(1000):  # min-pixel branch (tiny) and max-pixel branch (huge)
        cases.append((rng.randint(1, 60), rng.randint(1, 120)))
        cases.append((rng.randint(2000, 20000), rng.randint(2000, 20000)))
    ties = branches_min = branches_max = 0
    for h, w in cases:
        for lo, hi in ((MIN_PIXELS, MAX_PIXELS), (200_704, 1_003_520)):
            try:
                expected = hf_smart_resize(h, w, factor=28, min_pixels=lo, max_pixels=hi)
            except ValueError:
                with pytest.raises(ValueError):
                    _native.smart_resize(h, w, 28, lo, hi)
                continue
            assert _native.smart_resize(h, w, 28, lo, hi) == tuple(expected), (h, w, lo, hi)
            rh, rw = round(h / 28) * 28, round(w / 28) * 28
            ties += h % 28 == 14
            branches_min += rh * rw < lo
            branches_max += rh * rw > hi
    assert len(cases) >= 10_000 and ties > 1000 and branches_min > 500 and branches_max > 500
