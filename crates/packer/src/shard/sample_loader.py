# Written by llava-pack (llava-ov15 shard format_version 1); see docs/format.md.
#
# megatron-energon sample loader for llava-ov15 shards. energon decodes the parts first (images
# to tensors with the dataset's image decoder, `json` to a dict), then calls sample_loader(raw)
# and builds an `InterleavedSample` from the returned fields:
#
#   sequence = [image_0, image_1, ..., image_{n-1}, json_text]
#
# The images come in member order (`{key}.jpg` for a single image, `{key}.img0.*`,
# `{key}.img1.*`, ... for several); the last element is the sample's json document as a
# string (json.loads it to get `id`, `kind`, the text fields, `images` metadata, ...).
# Text-only samples give `[json_text]`.

import json
import re

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff")
_MULTI_IMAGE = re.compile(r"img(\d+)\.(" + "|".join(IMAGE_EXTENSIONS) + r")")


def _image_order(part):
    if part in IMAGE_EXTENSIONS:
        return 0
    m = _MULTI_IMAGE.fullmatch(part)
    return None if m is None else int(m.group(1))


def sample_loader(raw: dict) -> dict:
    images = []
    for part, value in raw.items():
        if part.startswith("__"):
            continue
        order = _image_order(part)
        if order is not None:
            images.append((order, value))
    images.sort(key=lambda item: item[0])
    doc = raw["json"]
    if isinstance(doc, (bytes, bytearray)):
        text = bytes(doc).decode("utf-8")
    elif isinstance(doc, str):
        text = doc
    else:
        text = json.dumps(doc, ensure_ascii=False)
    return dict(sequence=[image for _, image in images] + [text])


def part_filter(part: str) -> bool:
    return part == "json" or _image_order(part) is not None
