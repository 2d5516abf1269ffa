"""The instruction shape `{"image"|"images", "instruction", "response"}` (+ optional `"system"`):
its token lengths equal the transformers processor + tokenizer on the two-turn chat it stands
for, the loader's labels train the response and its `<|im_end|>`, and `llava-pack build` → `pack`
agree with both."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("transformers")
from llava_ov15 import _native  # noqa: E402
from llava_ov15.data import sample_length  # noqa: E402
from test_lengths import (  # noqa: E402  (fixtures and oracle helpers, not tests)
    CHAT_TEMPLATE,
    expand_pads,
    hf,
    meta,
    photos,
    tokenizer_path,
)

__all__ = ["hf", "tokenizer_path"]  # fixtures used by name


def oracle_messages(doc: dict) -> list[dict]:
    """Independent reading of the documented mapping: system turn if given; user = every image
    in place of its `<image>` (leading when there is none) + the instruction; assistant =
    response."""
    n = len(doc.get("images", []))
    pieces = doc["instruction"].split("<image>")
    user = []
    if len(pieces) == 1:
        user += [{"type": "image"}] * n
    for k, piece in enumerate(pieces):
        if k:
            user.append({"type": "image"})
        if piece:
            user.append({"type": "text", "text": piece})
    msgs = [{"role": "system", "content": doc["system"]}] if "system" in doc else []
    return msgs + [{"role": "user", "content": user},
                   {"role": "assistant", "content": doc["response"]}]


def oracle_ids(hf, doc: dict, images) -> list[int]:
    tok, _ = hf
    text = tok.apply_chat_template(oracle_messages(doc), chat_template=CHAT_TEMPLATE,
                                   tokenize=False)
    assert text.endswith("<|im_end|>\n")
    return tok(expand_pads(hf, text[:-1], images), add_special_tokens=False)["input_ids"]


def docs(images):
    one, two = images[:1], images[:2]
    return [
        ({"kind": "instruction", "instruction": "What is in the picture?",
          "response": "A cat on a sofa.", "images": meta(one)}, one),
        ({"kind": "instruction", "instruction": "Compare <image> with <image>, briefly.",
          "response": "Both are 漢字 posters — same size.", "system": "Answer tersely.",
          "images": meta(two)}, two),
        ({"kind": "instruction", "instruction": "", "response": "An astronaut.",
          "images": meta(one)}, one),
        ({"kind": "instruction", "instruction": "Say hello\nin two lines.",
          "response": "Hello\nthere", "images": []}, []),
    ]


def test_instruction_lengths_and_labels_equal_transformers(hf, tokenizer_path):
    tok, _ = hf
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    st = _native.SampleTokenizer(tokenizer_path)
    for doc, images in docs(photos()[:2]):
        want = oracle_ids(hf, doc, images)
        # Captions' pretrain/chat switch does not apply: the same chat string either way.
        for fmt in ("pretrain", "chat"):
            assert sample_length(doc, tokenizer_path, caption_format=fmt) == len(want), doc
        ids, labels, lens, _ = st.tokenize(json.dumps(doc).encode())
        assert ids.tolist() == want and lens == [len(want)]
        trained = [t for t in labels.tolist() if t != -100]
        assert trained == tok(doc["response"], add_special_tokens=False)["input_ids"] + [im_end]


def test_the_documented_example_length(tokenizer_path):
    # docs/format.md §3.2: 20 + (256 + 2) + 6 + 6 with the default system prompt.
    doc = {"kind": "instruction", "instruction": "What is in the picture?",
           "response": "A cat on a sofa.", "images": [{"width": 448, "height": 448}]}
    assert sample_length(doc, tokenizer_path) == 290
    # A given system turn: 5 + T(system) instead of the default's 11 ("Be brief." is 3).
    assert sample_length(doc | {"system": "Be brief."}, tokenizer_path) == 290 - 11 + 5 + 3


def test_built_and_packed_instruction_samples_have_the_transformers_lengths(
        tmp_path, photo_jpeg, hf, tokenizer_path):
    import io
    import tarfile

    from PIL import Image

    from llava_ov15.data.pack_manifest import PackInfo
    from llava_ov15.pack import build, pack

    (tmp_path / "a.jpg").write_bytes(photo_jpeg)
    (tmp_path / "b.jpg").write_bytes(photo_jpeg[:-2] + b"\x01" + photo_jpeg[-2:])
    records = [
        {"id": "one", "image": "a.jpg", "instruction": "What is it?", "response": "A photo."},
        {"id": "two", "images": ["a.jpg", "b.jpg"], "instruction": "<image> vs <image>?",
         "response": "The same.", "system": "Be brief."},
        {"id": "txt", "instruction": "Hi", "response": "Hello."},
    ]
    src = tmp_path / "data.json"
    src.write_text(json.dumps(records, indent=2))
    build(src, tmp_path / "shards", phash="off", progress="quiet")
    pack(tmp_path / "shards", tmp_path / "packed", tokenizer_path, max_len=4096,
         progress="quiet")
    info = PackInfo.load(tmp_path / "packed")
    st = _native.SampleTokenizer(str(info.tokenizer_file), **info.sample_tokenizer_kwargs())
    photo = Image.open(io.BytesIO(photo_jpeg))
    lengths = {}
    for tar in sorted((tmp_path / "packed").glob("*.tar")):
        with tarfile.open(tar) as tf:
            for m in tf.getmembers():
                if m.name.endswith(".json"):
                    raw = tf.extractfile(m).read()
                    doc = json.loads(raw)
                    _, _, lens, _ = st.tokenize(raw)  # the loader, from the manifest alone
                    assert lens == [s["length"] for s in doc["samples"]]
                    lengths |= {s["sample"]["id"]: (s["sample"], s["length"])
                                for s in doc["samples"]}
    assert sorted(lengths) == ["one", "two", "txt"]
    for rec in records:
        sample, length = lengths[rec["id"]]
        assert sample["kind"] == "instruction"
        images = [photo] * len(sample["images"])
        assert length == len(oracle_ids(hf, rec | {"images": sample["images"]}, images))
