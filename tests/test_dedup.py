"""`llava-pack dedup` end to end: real photos with planted near-duplicates (rescaled, re-encoded,
PNG copies) are found and dropped, distinct photos are kept, and the consumers honour drop.txt.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import read_jsonl, run_cli
from llava_ov15 import pack

# Distinct scikit-image photos (`cat` is `chelsea` again, so it is left out).
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field",
          "colorwheel", "camera", "moon", "brick", "grass", "gravel", "coins", "clock", "page")


def _photos() -> dict[str, Image.Image]:
    from skimage import data

    out = {}
    for name in PHOTOS:
        a = getattr(data, name)()
        out[name] = Image.fromarray(a).convert("RGB")
    return out


def _save(im: Image.Image, path: Path, fmt: str, quality: int = 90) -> None:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **({"quality": quality} if fmt == "JPEG" else {}))
    path.write_bytes(buf.getvalue())


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> tuple[Path, set[str], set[str]]:
    """A built corpus: one original per photo, plus planted copies of the first six photos.
    Returns (shards, planted copy ids, original ids). Originals are the largest of their
    cluster, so `--keep largest` keeps them."""
    root = tmp_path_factory.mktemp("dedup_corpus")
    photos = _photos()
    records, copies, originals = [], set(), set()
    for name, im in photos.items():
        _save(im, root / f"{name}.jpg", "JPEG", 95)
        records.append({"id": f"orig-{name}", "image": f"{name}.jpg", "caption": name})
        originals.add(f"orig-{name}")
    variants = [
        ("half", lambda im: im.resize((im.width // 2, im.height // 2), Image.LANCZOS), "JPEG", 60),
        ("q40", lambda im: im.resize((im.width * 9 // 10, im.height * 9 // 10)), "JPEG", 40),
        ("png", lambda im: im.resize((im.width * 3 // 4, im.height * 3 // 4)), "PNG", 0),
    ]
    for name in PHOTOS[:6]:
        for tag, fn, fmt, q in variants:
            fname = f"{name}-{tag}.{'png' if fmt == 'PNG' else 'jpg'}"
            _save(fn(photos[name]), root / fname, fmt, q)
            records.append({"id": f"copy-{name}-{tag}", "image": fname, "caption": f"{name} {tag}"})
            copies.add(f"copy-{name}-{tag}")
    # A two-image sample whose second image is a copy of `coins`, first one unique.
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 255, (96, 128, 3), np.uint8))
    _save(noise, root / "noise.png", "PNG")
    _save(photos["coins"].resize((192, 151)), root / "coins-small.jpg", "JPEG", 80)
    records.append({"id": "multi", "images": ["noise.png", "coins-small.jpg"],
                    "conversations": [{"from": "human", "value": "<image><image>compare"},
                                      {"from": "gpt", "value": "ok"}]})
    (root / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    out = root / "shards"
    pack.build(str(root / "corpus.jsonl"), str(out), samples_per_shard=7, progress="quiet")
    return out, copies, originals


def _drop(out: Path) -> dict[str, str]:
    lines = (out / "drop.txt").read_text().splitlines()
    assert lines == sorted(lines)
    return dict(line.split("\t", 1) for line in lines)


def test_planted_near_duplicates_are_dropped_and_originals_kept(planted, tmp_path):
    shards, copies, originals = planted
    stats = pack.dedup(shards, tmp_path / "d", progress="quiet")
    drop = _drop(tmp_path / "d")
    assert copies <= set(drop), f"missed: {sorted(copies - set(drop))}"
    assert not originals & set(drop), f"originals dropped: {sorted(originals & set(drop))}"
    assert drop["copy-coffee-half"] == "near-duplicate of orig-coffee"
    assert drop["multi"] == "near-duplicate of orig-coins"   # --multi-image any
    assert stats["dropped"]["near_duplicate"] == len(copies) + 1
    assert stats["kept_samples"] == len(originals)
    clusters = read_jsonl(tmp_path / "d" / "clusters.jsonl")
    assert all(sum(m["kept"] for m in c["members"]) == 1 for c in clusters)
    assert sum(stats["distance_histogram"]) == stats["pairs"]
    sheet = tmp_path / "d" / "contact_sheet.png"
    assert sheet.is_file() and Image.open(sheet).width > 0


def test_multi_image_all_keeps_a_sample_with_one_unique_image(planted, tmp_path):
    shards, _, _ = planted
    pack.dedup(shards, tmp_path / "d", multi_image="all", contact_sheet=False, progress="quiet")
    assert "multi" not in _drop(tmp_path / "d")


def test_near_duplicates_api_matches_brute_force():
    rng = np.random.default_rng(3)
    base = rng.integers(0, 2**63, 300, dtype=np.uint64)
    flips = np.uint64(1) << rng.integers(0, 64, 300).astype(np.uint64)
    h = np.concatenate([base, base ^ flips, np.zeros(5, np.uint64)])
    got = pack.near_duplicates(h, 6)
    assert got.dtype == np.int64 and got.shape[1] == 3
    x = h[:, None] ^ h[None, :]
    dist = np.array([[bin(int(v)).count("1") for v in row] for row in x])
    i, j = np.nonzero(np.triu(dist <= 6, k=1))
    want = np.stack([i, j, dist[i, j]], axis=1)
    np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match="0..16"):
        pack.near_duplicates(h, 17)


def test_cli_dedup_errors_are_one_line(planted, tmp_path):
    shards, _, _ = planted
    out = tmp_path / "d"
    out.mkdir()
    p = run_cli("dedup", "--input", str(shards), "--output", str(out), check=False)
    assert p.returncode == 2 and "--overwrite" in p.stderr and "Traceback" not in p.stderr
    p = run_cli("dedup", "--input", str(shards), "--output", str(tmp_path / "e"),
                "--max-distance", "20", check=False)
    assert p.returncode == 2 and "0..16" in p.stderr
    p = run_cli("dedup", "--input", str(tmp_path / "nope"), "--output", str(tmp_path / "f"),
                check=False)
    assert p.returncode == 1 and "nope" in p.stderr and "Traceback" not in p.stderr
    p = run_cli("dedup", "--input", str(shards), "--output", str(tmp_path / "g"),
                "--no-contact-sheet", "--progress", "log")
    assert "dropped:" in p.stdout and "llava-pack dedup:" in p.stderr


def test_phash_off_build_is_refused(tmp_path):
    (tmp_path / "a.png").write_bytes(_png(np.zeros((32, 32, 3), np.uint8)))
    (tmp_path / "c.jsonl").write_text(json.dumps({"image": "a.png", "caption": "x"}) + "\n")
    pack.build(str(tmp_path / "c.jsonl"), str(tmp_path / "s"), phash="off", progress="quiet")
    with pytest.raises(pack.InputError, match="--phash off"):
        pack.dedup(tmp_path / "s", tmp_path / "d", progress="quiet")
    assert not (tmp_path / "d").exists()


def _png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def test_pack_buckets_and_loader_honour_the_drop_list(planted, tmp_path, qwen_tokenizer):
    from llava_ov15.data.shards import ShardDataset, ShardIterable

    shards, copies, originals = planted
    pack.dedup(shards, tmp_path / "d", contact_sheet=False, progress="quiet")
    drop_txt = tmp_path / "d" / "drop.txt"
    drop = _drop(tmp_path / "d")
    # pack: excluded samples are rejects with the dedup reason, not counted in the reject rate.
    s = pack.pack(shards, tmp_path / "p", qwen_tokenizer, exclude=drop_txt, progress="quiet")
    rejects = {r["key"]: r["reason"] for r in read_jsonl(tmp_path / "p" / "rejects.jsonl")}
    assert rejects == drop
    assert s["stats"]["rejects_by_reason"] == {"excluded": len(drop)}
    assert s["samples"] == len(originals)
    packed = ShardDataset(tmp_path / "p")
    keys = {sub["source_key"] for i in range(len(packed))
            for sub in json.loads(bytes(packed[i]["json"]))["samples"]}
    assert keys == originals
    # buckets
    b = pack.buckets(shards, tmp_path / "b", qwen_tokenizer, plots=False, exclude=drop_txt,
                     progress="quiet")
    assert b["excluded_samples"] == len(drop) and b["samples"] == len(originals)
    # loader, map-style and stream
    ds = ShardDataset(shards, exclude=drop_txt)
    assert len(ds) == len(originals) and ds.excluded == len(drop)
    assert {ds[i]["key"] for i in range(len(ds))} == originals
    it = ShardIterable(shards, exclude=drop_txt, world_size=1, rank=0, seed=1)
    assert len(it) == len(originals)
    assert sorted(x["key"] for x in it) == sorted(originals)
    # CLI: pack --exclude
    p = run_cli("pack", "--input", str(shards), "--output", str(tmp_path / "p2"),
                "--tokenizer", str(qwen_tokenizer), "--exclude", str(drop_txt),
                "--progress", "quiet")
    assert "excluded" in p.stdout


def _mme(data: Path, images: list[bytes]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    (data / "MME" / "data").mkdir(parents=True)
    n = len(images)
    table = pa.table({
        "question_id": [f"q{i}" for i in range(n)], "question": ["Is it?"] * n,
        "answer": ["Yes"] * n, "category": ["existence"] * n,
        "image": [{"bytes": b, "path": None} for b in images],
    })
    pq.write_table(table, data / "MME" / "data" / "test-00000-of-00001.parquet")


def test_benchmark_images_contaminate_whatever_the_keeper(planted, tmp_path):
    shards, _, _ = planted
    photos = _photos()
    buf = io.BytesIO()
    photos["clock"].resize((200, 150)).save(buf, format="JPEG", quality=70)
    noise = np.random.default_rng(5).integers(0, 255, (64, 64, 3), np.uint8)
    _mme(tmp_path / "DATA", [_png(noise), buf.getvalue()])
    stats = pack.dedup(shards, tmp_path / "d", against=tmp_path / "DATA", benchmarks=["mme"],
                       progress="quiet")
    sheet = Image.open(tmp_path / "d" / "contact_sheet.png")
    assert sheet.height >= 100 * (1 + min(12, stats["clusters"]))
    drop = _drop(tmp_path / "d")
    assert drop["orig-clock"] == "contaminates mme row 1"
    assert stats["dropped"]["contamination"] == 1 and stats["reference_images"] == 2
    rows = read_jsonl(tmp_path / "d" / "contamination.jsonl")
    assert [(r["key"], r["benchmark"], r["row"]) for r in rows] == [("orig-clock", "mme", 1)]
    # A layout that is not the eval one, and an --against that is not a build: one-line errors.
    p = run_cli("dedup", "--input", str(shards), "--output", str(tmp_path / "e"), "--against",
                str(tmp_path), "--benchmarks", "mme", check=False)
    assert p.returncode == 2 and "no data files found" in p.stderr, p.stderr
    p = run_cli("dedup", "--input", str(shards), "--output", str(tmp_path / "f"), "--against",
                str(tmp_path / "DATA"), check=False)
    assert p.returncode == 2 and "not a llava-pack build output" in p.stderr, p.stderr


def test_verify_dhash_rejects_pairs_and_needs_a_dhash_build(planted, tmp_path):
    shards, copies, originals = planted
    with pytest.raises(pack.InputError, match=r"manifest\.json.*--dhash"):
        pack.dedup(shards, tmp_path / "x", verify="dhash", progress="quiet")
    assert not (tmp_path / "x").exists()
    dh = tmp_path / "s"
    pack.build(str(shards.parent / "corpus.jsonl"), str(dh), samples_per_shard=7, dhash=True,
               progress="quiet")
    plain = pack.dedup(dh, tmp_path / "a", contact_sheet=False, progress="quiet")
    v = pack.dedup(dh, tmp_path / "v", verify="dhash", contact_sheet=False, progress="quiet")
    assert (v["verify"], v["verify_distance"], plain["verify"]) == ("dhash", 10, "off")
    # Verification only removes pairs: every phash pair is either kept or counted as rejected.
    assert v["pairs"] + v["pairs_rejected_by_verify"] == plain["pairs"]
    assert copies <= set(_drop(tmp_path / "v")), "planted copies are within 10 dhash bits"
    strict = pack.dedup(dh, tmp_path / "z", verify="dhash", verify_distance=0,
                        contact_sheet=False, progress="quiet")
    assert strict["pairs_rejected_by_verify"] > 0
    assert strict["dropped"]["near_duplicate"] < plain["dropped"]["near_duplicate"]
    p = run_cli("dedup", "--input", str(dh), "--output", str(tmp_path / "c"), "--verify", "dhash",
                "--verify-distance", "3", "--no-contact-sheet", "--progress", "quiet")
    assert "rejected by dhash (> 3 bits)" in p.stdout
    with pytest.raises(ValueError, match="0..16"):
        pack.dedup(dh, tmp_path / "e", verify="dhash", verify_distance=17)


def test_rewrite_writes_a_build_without_the_dropped_samples(planted, tmp_path, qwen_tokenizer):
    from megatron.energon import WorkerConfig, get_loader, get_val_dataset
    from megatron.energon.flavors.webdataset.prepare import WebdatasetPreparator

    from llava_ov15.data.shards import ShardDataset

    shards, copies, originals = planted
    out = tmp_path / "clean"
    s = pack.dedup(shards, tmp_path / "d", rewrite=out, contact_sheet=False, progress="quiet")
    drop = _drop(tmp_path / "d")
    assert s["rewrite"]["samples"] == len(originals) and s["rewrite"]["dropped"] == len(drop)
    assert not (tmp_path / "clean.partial").exists()
    # The loader sees exactly the kept samples, members byte for byte as in the input.
    src = {x["key"]: x for x in ShardDataset(shards)}
    ds = ShardDataset(out)
    assert [x["key"] for x in ds] == [k for k in src if k not in drop]
    def raw(x):
        return {k: bytes(v) for k, v in x["members"].items()}

    for x in ds:
        assert raw(x) == raw(src[x["key"]])
    # manifest.json / stats.json / rejects.jsonl as a build writes them.
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["totals"]["samples"] == len(originals)
    assert manifest["options"]["phash"] == "fast"
    assert manifest["rewrite"]["dedup"]["keep"] == "largest"
    stats = json.loads((out / "stats.json").read_text())
    assert (stats["samples"], stats["rejects"]) == (len(originals), len(drop))
    assert stats["rejects_by_reason"] == {"near_duplicate": len(drop)}
    assert stats["images"] == len(originals) and stats["kinds"] == {"caption": len(originals)}
    assert {r["key"]: r["reason"] for r in read_jsonl(out / "rejects.jsonl")} == drop
    # .nv-meta equals what energon's own indexer writes for the same tars, and energon loads
    # every kept sample once.
    names = [sh["name"] for sh in manifest["shards"]]
    ref = tmp_path / "ref"
    ref.mkdir()
    for name in names:
        (ref / name).write_bytes((out / name).read_bytes())
    WebdatasetPreparator.prepare_dataset(
        ref, names, split_parts_ratio=[("train", 1.0), ("val", 0.0), ("test", 0.0)],
        shuffle_seed=None, workers=1)
    for rel in [f"{n}.idx" for n in names] + [".nv-meta/.info.json", ".nv-meta/split.yaml"]:
        assert (out / rel).read_bytes() == (ref / rel).read_bytes(), rel
    wc = WorkerConfig(rank=0, world_size=1, num_workers=0)
    val = get_val_dataset(out, split_part="train", worker_config=wc, batch_size=None)
    assert sorted(x.__key__ for x in get_loader(val)) == sorted(originals)
    # pack reads it as a build; a second dedup finds nothing left to drop.
    p = pack.pack(out, tmp_path / "p", qwen_tokenizer, progress="quiet")
    assert p["samples"] == len(originals)
    again = pack.dedup(out, tmp_path / "d2", contact_sheet=False, progress="quiet")
    assert again["kept_samples"] == len(originals) and again["clusters"] == 0
    # An existing OUT needs --overwrite; OUT may not be the input.
    p = run_cli("dedup", "--input", str(shards), "--output", str(tmp_path / "d3"), "--rewrite",
                str(out), "--no-contact-sheet", check=False)
    assert p.returncode == 1 and "--overwrite" in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "d3").exists()
    p = run_cli("dedup", "--input", str(shards), "--output", str(tmp_path / "d4"), "--rewrite",
                str(shards), "--no-contact-sheet", check=False)
    assert p.returncode == 2 and "outside --input" in p.stderr
    p = run_cli("dedup", "--input", str(shards), "--output", str(tmp_path / "d"), "--rewrite",
                str(out), "--overwrite", "--no-contact-sheet", "--progress", "quiet")
    assert f"rewrite:  {len(originals)} samples" in p.stdout


def test_pack_resume_refuses_a_changed_exclude_list(planted, tmp_path, qwen_tokenizer):
    """The exclude list's content (not its path) is part of pack's resume fingerprint: a resume
    with another list, or none, is refused instead of mixing two selections in one output."""
    shards, copies, _ = planted
    drop = tmp_path / "drop.txt"
    keys = sorted(copies)
    drop.write_text("".join(f"{k}\tnear-duplicate of x\n" for k in keys))
    out = tmp_path / "p"
    args = ("pack", "--input", str(shards), "--output", str(out), "--tokenizer",
            str(qwen_tokenizer), "--progress", "quiet")
    run_cli(*args, "--exclude", str(drop))
    manifest = (out / "manifest.json").read_bytes()
    same = tmp_path / "same.txt"
    same.write_bytes(drop.read_bytes())
    run_cli(*args, "--exclude", str(same), "--resume")   # same content elsewhere: the same job
    drop.write_text("".join(f"{k}\tnear-duplicate of x\n" for k in keys[1:]))
    for extra in (("--exclude", str(drop)), ()):
        p = run_cli(*args, *extra, "--resume", check=False)
        assert p.returncode == 1 and "different input or options" in p.stderr, p.stderr
    assert (out / "manifest.json").read_bytes() == manifest
