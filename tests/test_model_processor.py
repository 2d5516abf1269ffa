"""Image preprocessing vs transformers' Qwen2-VL processor; chat template; placeholder expansion."""

import numpy as np
import pytest
import torch
from PIL import Image

from llava_ov15.model.processor import (
    IMAGE_MEAN,
    IMAGE_STD,
    Processor,
    expand_image_token_ids,
    expand_image_tokens,
    num_image_tokens,
    preprocess_images,
    render_chat,
    smart_resize,
)


def _hf_processor(min_pixels, max_pixels):
    import transformers.models.qwen2_vl.image_processing_pil_qwen2_vl as m

    return m.Qwen2VLImageProcessorPil(
        temporal_patch_size=1, patch_size=14, merge_size=2, min_pixels=min_pixels,
        max_pixels=max_pixels, image_mean=list(IMAGE_MEAN), image_std=list(IMAGE_STD))


@pytest.fixture(scope="module")
def photos():
    from skimage import data

    imgs = [data.astronaut(), data.chelsea(), data.coffee()]
    pil = [Image.fromarray(a) for a in imgs]
    pil.append(pil[1].crop((5, 17, 305, 120)))  # wide, odd sizes
    pil.append(pil[0].convert("L").crop((0, 0, 61, 333)))  # tall, grayscale
    return pil


@pytest.mark.parametrize("min_pixels,max_pixels", [(3136, 2_560_000), (200_704, 2_560_000),
                                                   (3136, 50_000)])
def test_pixel_values_match_transformers(photos, min_pixels, max_pixels):
    hf = _hf_processor(min_pixels, max_pixels)
    pv, grid = preprocess_images(photos, min_pixels, max_pixels)
    ref = hf(images=photos, return_tensors="np")
    assert grid.tolist() == ref["image_grid_thw"].tolist()
    assert pv.shape == ref["pixel_values"].shape and pv.shape[1] == 588
    assert pv.dtype == torch.float32
    assert np.abs(pv.numpy() - ref["pixel_values"]).max() <= 1e-5


def test_smart_resize_matches_transformers_including_ties():
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as ref

    rng = np.random.default_rng(0)
    sizes = [(42, 42), (70, 70), (98, 126), (14, 14), (10, 1900), (1, 150), (4000, 3000),
             (28 * 7 + 14, 28 * 3 + 14)]  # exact .5 ties: round-half-to-even
    sizes += [tuple(int(x) for x in rng.integers(8, 5000, 2)) for _ in range(300)]
    for h, w in sizes:
        if max(h, w) / min(h, w) > 200:
            continue
        for mn, mx in [(3136, 2_560_000), (200_704, 2_560_000)]:
            assert smart_resize(h, w, 28, mn, mx) == ref(h, w, 28, mn, mx), (h, w)
    assert smart_resize(28 * 7 + 14, 28 * 3 + 14) == (28 * 8, 28 * 4)
    assert smart_resize(28 * 2 + 14, 28 * 2 + 14, min_pixels=1) == (28 * 2, 28 * 2)
    with pytest.raises(ValueError):
        smart_resize(10, 2500)
    assert num_image_tokens(448, 448) == 256


def test_render_chat_qwen25vl_template():
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi?"}]},
            {"role": "assistant", "content": "Yes."}]
    assert render_chat(msgs) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Hi?<|im_end|>\n"
        "<|im_start|>assistant\nYes.<|im_end|>\n")
    sys_first = [{"role": "system", "content": "S"}, {"role": "user", "content": "q"}]
    assert render_chat(sys_first, add_generation_prompt=True) == (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nq<|im_end|>\n"
        "<|im_start|>assistant\n")


def test_render_chat_matches_jinja_template():
    """Cross-check against the Qwen2.5-VL jinja template rendered by transformers' engine."""
    from transformers.utils.chat_template_utils import render_jinja_template

    tmpl = (
        "{% set image_count = namespace(value=0) %}{% for message in messages %}"
        "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\n"
        "You are a helpful assistant.<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n"
        "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n{% else %}"
        "{% for content in message['content'] %}{% if content['type'] == 'image' or 'image' in "
        "content or 'image_url' in content %}{% set image_count.value = image_count.value + 1 %}"
        "<|vision_start|><|image_pad|><|vision_end|>{% elif 'text' in content %}"
        "{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    msgs = [{"role": "user", "content": [{"type": "text", "text": "A"}, {"type": "image"},
                                         {"type": "image"}, {"type": "text", "text": "B"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "C"}]},
            {"role": "user", "content": "D"}]
    ref, _ = render_jinja_template(conversations=[msgs], chat_template=tmpl,
                                   add_generation_prompt=True)
    assert render_chat(msgs, add_generation_prompt=True) == ref[0]


def test_expand_image_tokens():
    text = "a<|image_pad|>b<|image_pad|>c"
    grid = torch.tensor([[1, 4, 6], [1, 2, 2]])
    assert expand_image_tokens(text, grid) == "a" + "<|image_pad|>" * 6 + "b<|image_pad|>c"
    with pytest.raises(ValueError):
        expand_image_tokens(text, grid[:1])
    assert expand_image_token_ids([1, 9, 2, 9], 9, [3, 1]) == [1, 9, 9, 9, 2, 9]
    with pytest.raises(ValueError):
        expand_image_token_ids([1, 9], 9, [3, 1])


def test_processor_end_to_end(photos):
    from llava_ov15.model.testing import tiny_model, word_tokenizer

    m = tiny_model()
    tok = word_tokenizer(m.config, ["describe", "the", "cat"])
    proc = Processor(tok, max_pixels=40_000)
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text",
                                                             "text": "describe the cat"}]}]
    enc = proc(msgs, [photos[1]])
    ids = enc["input_ids"]
    t = m.config.tokens
    assert ids.count(t.image) == enc["image_grid_thw"].prod(-1).item() // 4
    assert ids[0] == t.im_start and ids.count(t.vision_start) == 1
    assert proc.decode(ids[-3:], skip_special_tokens=False) == "<|im_end|> <|im_start|> assistant"
    with torch.no_grad():
        out = m(torch.tensor([ids]), enc["pixel_values"], enc["image_grid_thw"])
    assert out.logits.shape == (1, len(ids), m.config.text.vocab_size)
