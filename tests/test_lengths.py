"""Token lengths (Rust `LengthCounter`) == the transformers processor + tokenizer on the exact
training strings of the reference (pretraining-form captions, chat-form conversations without
the final newline); loader labels == the reference's targets; `smart_resize` ==
transformers' own function; EXIF orientations 5–8 turn image grids upright."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from PIL import Image, ImageOps

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


VISION = "<|vision_start|><|image_pad|><|vision_end|>"
EOS = "<|im_end|>"  # the generated tokenizer has no tokenizer_config.json: Qwen's eos


def is_caption(doc: dict) -> bool:
    return "caption" in doc and "conversations" not in doc and "messages" not in doc


def training_string(tok, doc: dict, caption_format: str = "pretrain", eos: str = EOS) -> str:
    """Independent rendering of the reference's training string (test oracle): a pretraining
    caption is the images' vision tags + caption + eos; anything else is the chat template
    with its final newline dropped."""
    if is_caption(doc) and caption_format == "pretrain":
        return VISION * len(doc.get("images", [])) + doc["caption"] + eos
    text = tok.apply_chat_template(to_messages(doc), chat_template=CHAT_TEMPLATE, tokenize=False)
    assert text.endswith("<|im_end|>\n")
    return text[:-1]


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


def expand_pads(hf, text: str, images: list[Image.Image]) -> str:
    """Each image's single `<|image_pad|>` → the processor's grid h·w/4 pads (as the
    transformers processor does)."""
    _, proc = hf
    if not images:
        return text
    grids = proc(images=images, return_tensors="np")["image_grid_thw"]
    pieces = text.split("<|image_pad|>")
    assert len(pieces) == len(images) + 1
    return pieces[0] + "".join("<|image_pad|>" * (int(np.prod(g)) // 4) + rest
                               for g, rest in zip(grids, pieces[1:], strict=True))


def hf_ids(hf, doc: dict, images: list[Image.Image], caption_format: str = "pretrain",
           eos: str = EOS) -> list[int]:
    tok, _ = hf
    text = expand_pads(hf, training_string(tok, doc, caption_format, eos), images)
    return tok(text, add_special_tokens=False)["input_ids"]


def hf_length(hf, doc: dict, images: list[Image.Image], caption_format: str = "pretrain") -> int:
    return len(hf_ids(hf, doc, images, caption_format))


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
            for fmt in ("pretrain", "chat"):
                ours = sample_length(doc, tokenizer_path, caption_format=fmt)
                assert ours == hf_length(hf, doc, images, fmt), (fmt, doc)
                checked += 1
    assert checked >= 120


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


def reference_labels(ids: list[int], answer_ids: list[int]) -> list[int]:
    """The reference's VQA targets: the last answer's tokens and the final token, rest -100."""
    ref = [-100] * len(ids)
    ref[-len(answer_ids) - 1:-1] = answer_ids
    ref[-1] = ids[-1]
    return ref


def test_loader_labels_are_the_reference_targets(hf, tokenizer_path):
    tok, _ = hf
    ims = photos()[:3]
    vision_ids = set(tok.convert_tokens_to_ids(["<|vision_start|>", "<|image_pad|>",
                                                "<|vision_end|>"]))
    for fmt in ("pretrain", "chat"):
        st = _native.SampleTokenizer(tokenizer_path, caption_format=fmt)
        for i, im in enumerate(ims):
            cap = {"id": "a", "kind": "caption", "caption": TEXTS[i], "images": meta([im])}
            conv = {"id": "b", "kind": "conversations", "conversations": [
                {"from": "human", "value": "<image>\n" + TEXTS[3]},
                {"from": "gpt", "value": TEXTS[i]}], "images": meta([im])}
            for doc in (cap, conv):
                ids, labels, lens, image_tokens = st.tokenize(json.dumps(doc).encode())
                ids, labels = ids.tolist(), labels.tolist()
                assert ids == hf_ids(hf, doc, [im], fmt), (fmt, doc)
                assert lens == [len(ids)] == [sample_length(doc, tokenizer_path,
                                                            caption_format=fmt)]
                assert image_tokens == [sum(1 for t in ids if t == 151655)]
                if doc is cap and fmt == "pretrain":
                    # The reference labels everything but the vision tokens: caption + eos.
                    assert ids[-1] == tok.convert_tokens_to_ids(EOS)
                    assert labels == [-100 if t in vision_ids else t for t in ids]
                else:
                    answer = doc.get("caption") or doc["conversations"][-1]["value"]
                    answer_ids = tok(answer, add_special_tokens=False)["input_ids"]
                    assert labels == reference_labels(ids, answer_ids), (fmt, doc)


def test_multi_turn_trains_every_answer_and_ends_on_im_end(hf, tokenizer_path):
    tok, _ = hf
    doc = {"id": "m", "kind": "conversations", "conversations": [
        {"from": "human", "value": TEXTS[0]}, {"from": "gpt", "value": TEXTS[1]},
        {"from": "human", "value": TEXTS[2]}, {"from": "gpt", "value": TEXTS[3]}],
        "images": []}
    ids, labels, _, _ = _native.SampleTokenizer(tokenizer_path).tokenize(json.dumps(doc).encode())
    ids, labels = ids.tolist(), labels.tolist()
    assert ids == hf_ids(hf, doc, []) and ids[-1] == tok.convert_tokens_to_ids("<|im_end|>")
    trained = [t for t in labels if t != -100]
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    expected = [t for a in (TEXTS[1], TEXTS[3])
                for t in tok(a, add_special_tokens=False)["input_ids"] + [im_end]]
    assert trained == expected


def test_pretrain_captions_are_shorter_than_chat_captions(tokenizer_path):
    doc = {"id": "a", "kind": "caption", "caption": TEXTS[0],
           "images": [{"width": 56, "height": 56}]}
    pre = sample_length(doc, tokenizer_path, detail=True)
    chat = sample_length(doc, tokenizer_path, caption_format="chat", detail=True)
    # vision_start, vision_end, eos  vs  the system turn, both role headers and <|im_*|>.
    assert pre["special_tokens"] == 3 and pre["image_tokens"] == [4]
    assert chat["total"] - pre["total"] >= 15
    with pytest.raises(ValueError, match="caption format"):
        _native.LengthCounter(tokenizer_path, caption_format="plain")


def test_eos_is_the_tokenizer_configs(tmp_path, tokenizer_path):
    import shutil

    shutil.copy(tokenizer_path, tmp_path / "tokenizer.json")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast",
         "eos_token": "<|endoftext|>"}))
    tok = PreTrainedTokenizerFast.from_pretrained(tmp_path)
    assert tok.eos_token == "<|endoftext|>"
    ours = str(tmp_path / "tokenizer.json")
    assert _native.LengthCounter(ours).eos_token == tok.eos_token
    doc = {"id": "a", "kind": "caption", "caption": TEXTS[1], "images": []}
    assert sample_length(doc, ours) == len(tok(TEXTS[1] + tok.eos_token,
                                               add_special_tokens=False)["input_ids"])
    ids, labels, _, _ = _native.SampleTokenizer(ours).tokenize(json.dumps(doc).encode())
    assert ids[-1] == labels[-1] == tok.eos_token_id
    # An explicit eos token wins; one the vocabulary lacks is a clear error.
    assert _native.LengthCounter(ours, eos_token="<|im_end|>").eos_token == "<|im_end|>"
    with pytest.raises(ValueError, match="lacks special token"):
        _native.LengthCounter(ours, eos_token="<|no such token|>")
    with pytest.raises(ValueError, match="not a special"):  # a plain BPE token
        _native.LengthCounter(ours, eos_token="</s>")


def exif_jpeg(im: Image.Image, orientation: int) -> bytes:
    import io

    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=90, exif=exif.tobytes())
    return buf.getvalue()


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_turns_the_image_grid_upright(hf, tokenizer_path, orientation):
    import io

    _, proc = hf
    stored = photos()[0].resize((300, 120))  # 300×120 → resized 112×308, not square
    data = exif_jpeg(stored, orientation)
    probe = _native.probe_image(data)
    assert (probe["width"], probe["height"], probe["orientation"]) == (300, 120, orientation)
    upright = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
    (_, gh, gw), = proc(images=[upright], return_tensors="np")["image_grid_thw"]
    doc = {"id": "o", "kind": "caption", "caption": TEXTS[0],
           "images": [{"member": "jpg", "width": probe["width"], "height": probe["height"],
                       "orientation": probe["orientation"]}]}
    d = sample_length(doc, tokenizer_path, detail=True)
    assert d["image_sizes"] == [[gh * 14, gw * 14]]
    assert d["image_sizes"] == ([[308, 112]] if orientation >= 5 else [[112, 308]])
    assert d["total"] == hf_length(hf, doc, [upright])
