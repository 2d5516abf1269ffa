"""End-to-end behaviour of `llava-pack build` on real photographs."""

from __future__ import annotations

import hashlib
import json
import shutil
import tarfile
from pathlib import Path

import pytest

from conftest import read_jsonl, run_cli, shard_files, tree_digest
from llava_ov15 import pack


def build(corpus: Path, out: Path, *extra: str) -> dict:
    run_cli("build", "--input", str(corpus), "--output", str(out), "--progress", "quiet", *extra)
    return json.loads((out / "manifest.json").read_text())


def test_every_line_is_a_sample_or_a_reject(mixed_corpus, tmp_path):
    out = tmp_path / "out"
    manifest = build(mixed_corpus, out, "--samples-per-shard", "25")
    lines = len(mixed_corpus.read_text().splitlines())
    rejects = read_jsonl(out / "rejects.jsonl")
    assert manifest["totals"]["samples"] + len(rejects) == lines
    assert manifest["totals"]["records"] == lines
    # Near-duplicates in the corpus are resized copies, not exact ones: only true dups go.
    assert all(r["category"] == "duplicate" for r in rejects)
    seen_keys = set()
    n = 0
    for shard in manifest["shards"]:
        path = out / shard["name"]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == shard["sha256"]
        assert path.stat().st_size == shard["bytes"]
        with tarfile.open(path) as tf:
            members = tf.getnames()
        keys = []
        for m in members:
            key = m.split(".", 1)[0]
            if not keys or keys[-1] != key:
                keys.append(key)
        assert len(keys) == shard["samples"] <= 25
        assert not seen_keys & set(keys), "keys must be unique across shards"
        seen_keys |= set(keys)
        n += len(keys)
    assert n == manifest["totals"]["samples"]


def test_sample_json_carries_texts_and_image_metadata(mixed_corpus, tmp_path):
    out = tmp_path / "out"
    build(mixed_corpus, out)
    source = {
        json.loads(line)["id"]: json.loads(line) for line in mixed_corpus.read_text().splitlines()
    }
    kinds, multi, text_only = set(), 0, 0
    with tarfile.open(shard_files(out)[0]) as tf:
        by_key: dict[str, dict[str, bytes]] = {}
        for m in tf.getmembers():
            key, suffix = m.name.split(".", 1)
            by_key.setdefault(key, {})[suffix] = tf.extractfile(m).read()
    for key, members in by_key.items():
        meta = json.loads(members["json"])
        src = source[meta["id"]]
        kinds.add(meta["kind"])
        for field in ("caption", "conversations", "messages"):
            if field in src:
                assert meta[field] == src[field]
        assert meta["source"]["line"] >= 1 and meta["source"]["key"] == key
        images = meta["images"]
        multi += len(images) > 1
        text_only += not images
        for img in images:
            data = members[img["member"]]
            assert len(data) == img["bytes"]
            assert hashlib.sha256(data).digest()  # member present
            assert len(img["phash"]) == 16 and int(img["phash"], 16) >= 0
            assert img["width"] > 0 and img["height"] > 0
            assert img["format"] in ("jpeg", "png")
    assert kinds == {"caption", "conversations", "messages"}
    assert multi > 0 and text_only > 0


def test_output_is_identical_for_any_worker_count(mixed_corpus, tmp_path):
    a, b = tmp_path / "w1", tmp_path / "w2"
    build(mixed_corpus, a, "--workers", "1", "--samples-per-shard", "17")
    build(mixed_corpus, b, "--workers", "2", "--samples-per-shard", "17")
    assert tree_digest(a) == tree_digest(b)
    assert len(shard_files(a)) > 3


def test_shard_size_bounds_each_shard(mixed_corpus, tmp_path):
    out = tmp_path / "out"
    limit = 400_000
    manifest = build(mixed_corpus, out, "--shard-size", str(limit))
    assert len(manifest["shards"]) > 2
    for s in manifest["shards"]:
        # A shard may exceed the limit only when it holds one sample larger than the limit.
        assert s["bytes"] <= limit + 1024 or s["samples"] == 1


def test_image_dedup_rejects_repeated_images_and_points_at_the_first(tmp_path, photo_jpeg):
    (tmp_path / "a.jpg").write_bytes(photo_jpeg)
    shutil.copy(tmp_path / "a.jpg", tmp_path / "b.jpg")
    lines = [
        {"id": "first", "image": "a.jpg", "caption": "x"},
        {"id": "second", "image": "b.jpg", "caption": "y"},
        {"id": "third", "image": "a.jpg", "caption": "z"},
    ]
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps(x) + "\n" for x in lines))
    build(corpus, tmp_path / "out", "--dedup", "image", "--max-reject-rate", "1")
    rejects = read_jsonl(tmp_path / "out" / "rejects.jsonl")
    assert [(r["id"], r["category"], r["reason"]) for r in rejects] == [
        ("second", "duplicate", "duplicate of first"),
        ("third", "duplicate", "duplicate of first"),
    ]
    manifest = build(corpus, tmp_path / "keep", "--dedup", "off")
    assert manifest["totals"]["samples"] == 3
    assert manifest["options"]["dedup"] == "off"


def _vqa_corpus(tmp_path: Path, photo_rgb, images: int, questions: list[str]) -> Path:
    from conftest import jpeg_bytes

    lines = []
    for i in range(images):
        (tmp_path / f"{i}.jpg").write_bytes(jpeg_bytes(photo_rgb[i * 8 : i * 8 + 96, :128]))
        for q, question in enumerate(questions):
            lines.append({"id": f"img{i}-q{q}", "image": f"{i}.jpg", "conversations": [
                {"from": "human", "value": f"<image>\n{question}"},
                {"from": "gpt", "value": f"answer {q}"}]})
    corpus = tmp_path / "vqa.jsonl"
    corpus.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return corpus


def test_default_dedup_keeps_one_image_asked_different_questions(tmp_path, photo_rgb):
    questions = ["What colour is the suit?", "How many people?", "Where is this?"]
    corpus = _vqa_corpus(tmp_path, photo_rgb, 20, questions)
    out = tmp_path / "out"
    manifest = build(corpus, out, "--phash", "off")
    assert manifest["totals"]["samples"] == 60 and manifest["totals"]["rejects"] == 0
    assert manifest["options"]["dedup"] == "sample"  # `exact` is the whole sample
    assert read_jsonl(out / "rejects.jsonl") == []
    # The same explicitly, by either name.
    for mode in ("exact", "sample"):
        m = build(corpus, tmp_path / mode, "--phash", "off", "--dedup", mode)
        assert m["totals"]["samples"] == 60
    # `--dedup image` is the caption-corpus mode: one sample per image.
    m = build(corpus, tmp_path / "image", "--phash", "off", "--dedup", "image",
              "--max-reject-rate", "1")
    assert m["totals"]["samples"] == 20 and m["totals"]["rejects"] == 40


def test_default_dedup_drops_a_repeat_of_images_and_text_up_to_whitespace(tmp_path, photo_jpeg):
    (tmp_path / "a.jpg").write_bytes(photo_jpeg)
    shutil.copy(tmp_path / "a.jpg", tmp_path / "copy.jpg")
    chat = [{"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "A man."}]
    spaced = [{"from": "human", "value": "<image>\n  What is\tit? "},
              {"from": "gpt", "value": "A man.\n"}]
    other_case = [{"from": "human", "value": "<image>\nWhat is it?"},
                  {"from": "gpt", "value": "a man."}]
    text_only = [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]
    lines = [
        {"id": "first", "image": "a.jpg", "conversations": chat},
        {"id": "same-bytes-other-file", "image": "copy.jpg", "conversations": spaced,
         "source": "elsewhere"},
        {"id": "case-differs", "image": "a.jpg", "conversations": other_case},
        {"id": "as-messages", "images": ["a.jpg"], "messages": [
            {"role": "user", "content": "<image>\nWhat is it?"},
            {"role": "assistant", "content": "A man."}]},
        {"id": "text", "conversations": text_only},
        {"id": "text-again", "conversations": text_only},
        {"id": "caption", "image": "a.jpg", "caption": "A man."},
    ]
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps(x) + "\n" for x in lines))
    out = tmp_path / "out"
    manifest = build(corpus, out, "--phash", "off")
    rejects = read_jsonl(out / "rejects.jsonl")
    assert [(r["id"], r["reason"]) for r in rejects] == [
        ("same-bytes-other-file", "duplicate of first"),
        ("as-messages", "duplicate of first"),
        ("text-again", "duplicate of text"),
    ]
    assert manifest["totals"]["samples"] == 4


def test_duplicate_and_missing_ids_get_unique_stable_keys(tmp_path, photo_jpeg):
    from PIL import Image  # noqa: F401  (photo fixture needs Pillow)

    for i in range(4):
        (tmp_path / f"{i}.jpg").write_bytes(photo_jpeg[:-2] + bytes([i]) + photo_jpeg[-2:])
    lines = [
        {"id": "same", "image": "0.jpg", "caption": "a"},
        {"id": "same", "image": "1.jpg", "caption": "b"},
        {"image": "2.jpg", "caption": "c"},
        {"id": "we/ird.id", "image": "3.jpg", "caption": "d"},
    ]
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps(x) + "\n" for x in lines))
    build(corpus, tmp_path / "out", "--phash", "off")
    with tarfile.open(shard_files(tmp_path / "out")[0]) as tf:
        keys = [m.name.split(".", 1)[0] for m in tf.getmembers() if m.name.endswith(".json")]
    assert keys == ["same", "same+1", "L000000003", "we_ird_id"]


def test_max_pixels_reencodes_only_large_images(tmp_path, photo_rgb):
    from PIL import Image

    from conftest import jpeg_bytes

    big = Image.fromarray(photo_rgb).resize((1200, 800))
    small = Image.fromarray(photo_rgb).resize((300, 200))
    (tmp_path / "big.jpg").write_bytes(jpeg_bytes(big))
    (tmp_path / "small.jpg").write_bytes(jpeg_bytes(small))
    corpus = tmp_path / "c.jsonl"
    corpus.write_text(
        json.dumps({"id": "big", "image": "big.jpg", "caption": "b"})
        + "\n"
        + json.dumps({"id": "small", "image": "small.jpg", "caption": "s"})
        + "\n"
    )
    out = tmp_path / "out"
    build(corpus, out, "--max-pixels", "250000")
    with tarfile.open(shard_files(out)[0]) as tf:
        metas = {
            m.name: json.loads(tf.extractfile(m).read())
            for m in tf.getmembers()
            if m.name.endswith(".json")
        }
        big_meta = metas["big.json"]["images"][0]
        assert big_meta["width"] * big_meta["height"] <= 250_000
        assert big_meta["reencoded"] == {
            "from_width": 1200,
            "from_height": 800,
            "from_bytes": (tmp_path / "big.jpg").stat().st_size,
        }
        im = Image.open(tf.extractfile("big.jpg"))
        assert im.size == (big_meta["width"], big_meta["height"])
        # Aspect ratio kept (within a pixel of rounding).
        assert abs(im.size[0] / im.size[1] - 1.5) < 0.01
        assert "reencoded" not in metas["small.json"]["images"][0]
        assert tf.extractfile("small.jpg").read() == (tmp_path / "small.jpg").read_bytes()
    stats = json.loads((out / "stats.json").read_text())
    assert stats["reencoded"] == 1


def test_python_api_matches_cli(mixed_corpus, tmp_path):
    run_cli(
        "build",
        "--input",
        str(mixed_corpus),
        "--output",
        str(tmp_path / "cli"),
        "--progress",
        "quiet",
    )
    summary = pack.build(mixed_corpus, tmp_path / "api", progress="quiet")
    assert summary["samples"] + summary["rejects"] == summary["records"]
    assert tree_digest(tmp_path / "cli") == tree_digest(tmp_path / "api")


def test_stats_report_formats_histograms_and_rejects(mixed_corpus, tmp_path):
    out = tmp_path / "out"
    build(mixed_corpus, out)
    stats = json.loads((out / "stats.json").read_text())
    assert sum(stats["formats"].values()) == stats["images"]
    assert sum(b["images"] for b in stats["histograms"]["long_side"]) == stats["images"]
    assert stats["throughput"]["records_per_second"] > 0
    assert stats["samples"] + stats["rejects"] == stats["records"]
    assert set(stats["kinds"]) == {"caption", "conversations", "messages"}


@pytest.mark.parametrize("variant", ["zst", "glob"])
def test_compressed_and_globbed_inputs_give_the_same_samples(mixed_corpus, tmp_path, variant):
    import zstandard

    plain = tmp_path / "plain"
    build(mixed_corpus, plain)
    text = mixed_corpus.read_text()
    if variant == "zst":
        src = mixed_corpus.parent / "corpus.jsonl.zst"
        src.write_bytes(zstandard.ZstdCompressor().compress(text.encode()))
        arg = str(src)
    else:
        lines = text.splitlines(keepends=True)
        half = len(lines) // 2
        (mixed_corpus.parent / "part-a.jsonl").write_text("".join(lines[:half]))
        (mixed_corpus.parent / "part-b.jsonl").write_text("".join(lines[half:]))
        arg = str(mixed_corpus.parent / "part-*.jsonl")
    other = tmp_path / "other"
    build(Path(arg), other)

    def samples(out):
        res = []
        for shard in shard_files(out):
            with tarfile.open(shard) as tf:
                for m in tf.getmembers():
                    data = tf.extractfile(m).read()
                    if m.name.endswith(".json"):
                        meta = json.loads(data)
                        meta.pop("source")
                        res.append(meta)
                    else:
                        res.append(hashlib.sha256(data).hexdigest())
        return res

    assert samples(plain) == samples(other)


def _members_by_key(out: Path) -> dict[str, dict[str, bytes]]:
    res: dict[str, dict[str, bytes]] = {}
    for shard in shard_files(out):
        with tarfile.open(shard) as tf:
            for m in tf.getmembers():
                key, suffix = m.name.split(".", 1)
                res.setdefault(key, {})[suffix] = tf.extractfile(m).read()
    return res


def test_build_output_reads_in_tar_webdataset_and_energon(mixed_corpus, tmp_path):
    import subprocess

    import webdataset as wds
    from megatron.energon import WorkerConfig, get_loader, get_val_dataset

    out = tmp_path / "out"
    build(mixed_corpus, out, "--samples-per-shard", "30")
    expected = _members_by_key(out)

    listed = []
    for shard in shard_files(out):
        tar_t = subprocess.run(
            ["tar", "-tf", str(shard)], check=True, capture_output=True, text=True
        ).stdout.split()
        listed += tar_t
    assert sorted(listed) == sorted(f"{k}.{s}" for k, ms in expected.items() for s in ms)

    urls = [str(p) for p in shard_files(out)]
    got = {}
    for sample in wds.WebDataset(urls, shardshuffle=False, empty_check=False):
        got[sample["__key__"]] = {k: v for k, v in sample.items() if not k.startswith("__")}
    assert got == expected

    wc = WorkerConfig(rank=0, world_size=1, num_workers=0)
    ds = get_val_dataset(out, split_part="train", worker_config=wc, batch_size=None)
    loaded = list(get_loader(ds))
    assert [s.__key__ for s in loaded] == list(expected)
    for s in loaded:
        *images, text = s.sequence
        meta = json.loads(text)
        assert meta == json.loads(expected[s.__key__]["json"])
        assert len(images) == len(meta["images"])
        for tensor, img in zip(images, meta["images"], strict=False):
            assert tuple(tensor.shape[-2:]) == (img["height"], img["width"])


def test_parquet_with_embedded_images_builds_like_the_mid_training_corpus(tmp_path, photo_rgb):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from conftest import jpeg_bytes

    rows = []
    for i in range(12):
        crop = photo_rgb[i * 10 : i * 10 + 200, i * 5 : i * 5 + 260]
        rows.append({"id": f"mid-{i}", "image": {"bytes": jpeg_bytes(crop), "path": f"{i}.jpg"},
                     "caption": f"caption {i}"})
    rows.append({"id": "mid-null", "image": None, "caption": "no image"})
    table = pa.Table.from_pylist(rows)
    for part in range(2):  # a glob over two files, as the published corpus is split
        pq.write_table(table.slice(part * 7, 7), tmp_path / f"part-{part}.parquet",
                       row_group_size=3)
    out = tmp_path / "out"
    manifest = build(Path(str(tmp_path / "part-*.parquet")), out)
    assert manifest["totals"]["records"] == 13
    assert manifest["totals"]["samples"] == 12
    [rej] = read_jsonl(out / "rejects.jsonl")
    assert rej["file"].endswith("part-1.parquet") and "null" in rej["reason"]
    members = _members_by_key(out)
    assert sorted(members) == sorted(f"mid-{i}" for i in range(12))
    for i in range(12):
        meta = json.loads(members[f"mid-{i}"]["json"])
        assert meta["caption"] == f"caption {i}"
        assert meta["images"][0]["path"] == f"{i}.jpg"
        assert members[f"mid-{i}"]["jpg"] == rows[i]["image"]["bytes"]
