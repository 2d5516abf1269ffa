"""Shards written by the Rust `ShardWriter` (+ `write_energon_meta`) read by third-party tools.

Builds `crates/packer/examples/write_shards.rs` with cargo (respecting `CARGO_TARGET_DIR`; set it
to a shared target dir to avoid a full rebuild), writes shards with real JPEG/PNG/WebP images,
then checks GNU tar, Python's tarfile, the `webdataset` library and megatron-energon (CPU only)
against the exact input bytes, and compares the `.nv-meta` / `.tar.idx` files with what
energon's own `prepare` writes for the same tars.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import sqlite3
import subprocess
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLES_PER_SHARD = 4


def _cargo() -> str | None:
    found = shutil.which("cargo")
    if found:
        return found
    home = Path.home() / ".cargo" / "bin" / "cargo"
    return str(home) if home.exists() else None


@pytest.fixture(scope="module")
def write_shards_bin() -> Path:
    cargo = _cargo()
    if cargo is None:
        pytest.skip("cargo not found: cannot build crates/packer/examples/write_shards.rs")
    proc = subprocess.run(
        [cargo, "build", "-p", "llava-packer", "--example", "write_shards",
         "--message-format=json-render-diagnostics"],
        cwd=REPO, capture_output=True, text=True, timeout=3600,
    )
    if proc.returncode != 0:
        pytest.fail(f"cargo build failed:\n{proc.stderr[-4000:]}")
    for line in proc.stdout.splitlines():
        try:
            msg = json.loads(line)
        except json.JSONDecodeError:
            continue
        if (msg.get("reason") == "compiler-artifact"
                and msg.get("target", {}).get("name") == "write_shards"
                and msg.get("executable")):
            return Path(msg["executable"])
    pytest.fail("cargo did not report the write_shards executable")


def _image_bytes(fmt: str, width: int, height: int, seed: int) -> bytes:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt)
    return buf.getvalue()


def _make_samples() -> list[tuple[str, list[tuple[str, bytes]]]]:
    from PIL import features

    image_formats = [("jpg", "JPEG"), ("png", "PNG")]
    if features.check("webp"):
        image_formats.append(("webp", "WEBP"))
    samples = []
    for i in range(10):
        key = f"sample_{i:04d}-x"
        members: list[tuple[str, bytes]] = []
        images_meta = []
        shape = i % 4
        if shape == 0:  # single image caption
            ext, fmt = image_formats[i % len(image_formats)]
            members.append((ext, _image_bytes(fmt, 20 + i, 10 + i, i)))
            doc = {"id": key, "kind": "caption", "caption": f"caption {i} ü"}
            images_meta.append({"member": f"{key}.{ext}"})
        elif shape == 1:  # multi-image messages
            for j in range(3):
                ext, fmt = image_formats[(i + j) % len(image_formats)]
                members.append((f"img{j}.{ext}", _image_bytes(fmt, 8 + j, 9 + 2 * j, 100 * i + j)))
                images_meta.append({"member": f"{key}.img{j}.{ext}"})
            doc = {"id": key, "kind": "messages",
                   "messages": [{"role": "user", "content": "<image><image><image> compare"},
                                {"role": "assistant", "content": "same"}]}
        elif shape == 2:  # single png conversations
            members.append(("png", _image_bytes("PNG", 32, 32, i)))
            images_meta.append({"member": f"{key}.png"})
            doc = {"id": key, "kind": "conversations",
                   "conversations": [{"from": "human", "value": "<image>\nwhat?"},
                                     {"from": "gpt", "value": "a square"}]}
        else:  # text only
            doc = {"id": key, "kind": "conversations",
                   "conversations": [{"from": "human", "value": "hi"},
                                     {"from": "gpt", "value": "hello"}]}
        doc["images"] = images_meta
        text = json.dumps(doc, ensure_ascii=False)
        if i == 3:  # json of exactly 512 bytes (no padding after it)
            doc["pad"] = ""
            text = json.dumps(doc, ensure_ascii=False)
            doc["pad"] = "p" * (512 - len(text.encode()))
            text = json.dumps(doc, ensure_ascii=False)
            assert len(text.encode()) == 512
        members.append(("json", text.encode()))
        samples.append((key, members))
    return samples


@pytest.fixture(scope="module")
def dataset(write_shards_bin: Path, tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("shards")
    samples = _make_samples()
    spec_samples = []
    for key, members in samples:
        spec_members = []
        for suffix, data in members:
            path = work / "inputs" / f"{key}.{suffix}"
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(data)
            spec_members.append({"suffix": suffix, "path": str(path)})
        spec_samples.append({"key": key, "members": spec_members})
    spec = work / "spec.json"
    spec.write_text(json.dumps({"prefix": "shard", "samples_per_shard": SAMPLES_PER_SHARD,
                                "samples": spec_samples}))
    out = work / "out"
    proc = subprocess.run([str(write_shards_bin), str(spec), str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    infos = json.loads(proc.stdout)
    return out, samples, infos


def _expected_by_shard(samples):
    return [samples[i:i + SAMPLES_PER_SHARD] for i in range(0, len(samples), SAMPLES_PER_SHARD)]


def test_shard_infos(dataset):
    out, samples, infos = dataset
    names = ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    assert [i["name"] for i in infos] == names
    for info, chunk in zip(infos, _expected_by_shard(samples), strict=False):
        raw = (out / info["name"]).read_bytes()
        assert info["samples"] == len(chunk)
        assert info["bytes"] == len(raw)
        assert info["sha256"] == hashlib.sha256(raw).hexdigest()
        assert not (out / (info["name"] + ".partial")).exists()


@pytest.mark.skipif(shutil.which("tar") is None, reason="GNU tar not installed")
def test_gnu_tar_lists_members(dataset):
    out, samples, infos = dataset
    for info, chunk in zip(infos, _expected_by_shard(samples), strict=False):
        listed = subprocess.run(["tar", "-tf", str(out / info["name"])], check=True,
                                capture_output=True, text=True).stdout.splitlines()
        assert listed == [f"{key}.{suffix}" for key, members in chunk for suffix, _ in members]


def test_python_tarfile_reads_identical_bytes(dataset):
    out, samples, infos = dataset
    for info, chunk in zip(infos, _expected_by_shard(samples), strict=False):
        with tarfile.open(out / info["name"], "r:") as tf:
            members = tf.getmembers()
            expected = [(f"{key}.{suffix}", data) for key, ms in chunk for suffix, data in ms]
            assert [m.name for m in members] == [name for name, _ in expected]
            for m, (_, data) in zip(members, expected, strict=False):
                assert m.isreg() and m.mtime == 0 and m.uid == 0 and m.gid == 0
                assert m.mode == 0o644 and m.uname == "" and m.gname == ""
                assert tf.extractfile(m).read() == data


def test_webdataset_yields_identical_samples(dataset):
    import webdataset as wds

    out, samples, infos = dataset
    urls = [str(out / i["name"]) for i in infos]
    got = []
    for sample in wds.WebDataset(urls, shardshuffle=False):
        parts = {k: v for k, v in sample.items() if not k.startswith("__")}
        got.append((sample["__key__"], parts))
    assert [k for k, _ in got] == [k for k, _ in samples]
    for (_, parts), (_, members) in zip(got, samples, strict=False):
        assert parts == dict(members)


def test_meta_matches_energon_prepare(dataset, tmp_path):
    """Run energon's own indexer on copies of our tars and compare what it writes."""
    import yaml
    from megatron.energon.flavors.webdataset.prepare import WebdatasetPreparator

    out, _, infos = dataset
    names = [i["name"] for i in infos]
    ref = tmp_path / "ref"
    ref.mkdir()
    for name in names:
        shutil.copy(out / name, ref / name)
    WebdatasetPreparator.prepare_dataset(
        ref, names, split_parts_ratio=[("train", 1.0), ("val", 0.0), ("test", 0.0)],
        shuffle_seed=None, workers=1,
    )
    for rel in [f"{n}.idx" for n in names] + [".nv-meta/.info.json", ".nv-meta/split.yaml"]:
        assert (out / rel).read_bytes() == (ref / rel).read_bytes(), rel

    def dump(path):
        con = sqlite3.connect(path)
        try:
            return (
                con.execute(
                    "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY name"
                ).fetchall(),
                con.execute("SELECT * FROM samples ORDER BY tar_file_id, sample_index").fetchall(),
                con.execute("SELECT * FROM sample_parts "
                            "ORDER BY tar_file_id, sample_index, content_byte_offset").fetchall(),
            )
        finally:
            con.close()

    ours, theirs = dump(out / ".nv-meta/index.sqlite"), dump(ref / ".nv-meta/index.sqlite")
    assert ours == theirs
    assert (out / ".nv-meta/index.uuid").read_text().count("-") == 4

    definition = {
        "sample_type": {"__module__": "megatron.energon", "__class__": "InterleavedSample"},
        "sample_loader": "sample_loader.py:sample_loader",
        "part_filter": "sample_loader.py:part_filter",
    }
    assert (out / ".nv-meta/dataset.yaml").read_text() == yaml.dump(definition, sort_keys=False)


def _check_energon_samples(loaded, samples):
    import numpy as np
    import torch
    from megatron.energon import InterleavedSample
    from PIL import Image

    by_key = dict(samples)
    seen = [s.__key__ for s in loaded]
    assert sorted(seen) == sorted(by_key), "every sample exactly once"
    assert len(seen) == len(set(seen))
    for s in loaded:
        assert isinstance(s, InterleavedSample)
        members = by_key[s.__key__]
        *images, text = s.sequence
        assert isinstance(text, str)
        assert json.loads(text) == json.loads(dict(members)["json"])
        expected_images = [data for suffix, data in members if suffix != "json"]
        assert len(images) == len(expected_images)
        for tensor, data in zip(images, expected_images, strict=False):
            assert isinstance(tensor, torch.Tensor)
            ref = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.float32) / 255.0
            np.testing.assert_allclose(tensor.permute(1, 2, 0).numpy(), ref, atol=1e-6)


def test_energon_loads_every_sample_once(dataset):
    from megatron.energon import WorkerConfig, get_loader, get_train_dataset, get_val_dataset

    out, samples, _ = dataset
    wc = WorkerConfig(rank=0, world_size=1, num_workers=0)

    val = get_val_dataset(out, split_part="train", worker_config=wc, batch_size=None)
    loaded = list(get_loader(val))
    assert [s.__key__ for s in loaded] == [k for k, _ in samples]
    _check_energon_samples(loaded, samples)

    train = get_train_dataset(out, worker_config=wc, batch_size=None, shuffle_buffer_size=None,
                              max_samples_per_sequence=None, repeat=False)
    _check_energon_samples(list(get_loader(train)), samples)


def test_meta_is_deterministic(dataset, write_shards_bin, tmp_path):
    out, _, _ = dataset
    spec = out.parent / "spec.json"
    again = tmp_path / "again"
    subprocess.run([str(write_shards_bin), str(spec), str(again)], check=True,
                   capture_output=True, timeout=300)
    ours = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert ours == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for rel in ours:
        assert (out / rel).read_bytes() == (again / rel).read_bytes(), rel

