"""Bad shards: clear errors naming shard and offset, or counted skips; nothing hangs, nothing
is written."""

from __future__ import annotations

import json
import shutil
import threading

import pytest
from torch.utils.data import DataLoader

from conftest import jpeg_bytes
from llava_ov15.data import SampleProcessor, ShardDataset, ShardError, ShardIterable
from loader_fixtures import write_manifest, write_tar


def within(seconds, fn):
    """Run `fn` in a thread; fail if it does not finish in time (a hang)."""
    box = {}

    def run():
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - re-raised in the test thread
            box["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"hung for {seconds}s"
    if "error" in box:
        raise box["error"]
    return box.get("value")


def _doc(key, images=()):
    return json.dumps({"id": key, "kind": "caption", "caption": "A photo.",
                       "images": [{"member": m, "width": w, "height": h} for m, w, h in images]}
                      ).encode()


@pytest.fixture
def good(tmp_path, photo_rgb):
    """Two shards of 4 samples, one image each (the photo is 256×320)."""
    img = jpeg_bytes(photo_rgb[:256, :320])
    out = tmp_path / "ds"
    out.mkdir()
    for s in range(2):
        write_tar(out / f"shard-{s:06d}.tar",
                  [(f"k{s}{i}", [("jpg", img), ("json", _doc(f"k{s}{i}", [("jpg", 320, 256)]))])
                   for i in range(4)])
    write_manifest(out)
    return out


def _all(ds_path, **kw):
    return within(60, lambda: list(DataLoader(ShardIterable(ds_path, shuffle=False, **kw),
                                              batch_size=None, num_workers=2, timeout=30)))


def test_good_fixture_loads(good):
    assert len(_all(good)) == 8


def test_truncated_tar(good):
    p = good / "shard-000001.tar"
    p.write_bytes(p.read_bytes()[:-3000])
    with pytest.raises(ShardError, match=r"shard-000001\.tar @ offset \d+: truncated"):
        ShardDataset(good)
    ds = ShardDataset(good, skip_errors=True)
    assert (len(ds), ds.skipped) == (4, 1)
    assert len(_all(good, skip_errors=True)) == 4


@pytest.mark.parametrize("damage", ["stale", "garbage", "shifted"])
def test_corrupt_or_stale_index(good, damage):
    idx = good / "shard-000000.tar.idx"
    raw = bytearray(idx.read_bytes())
    if damage == "stale":
        raw = raw[:-16] + raw[-8:]  # one sample missing: counts disagree with the manifest
    elif damage == "garbage":
        raw = raw[:-3]
    else:
        # Point sample 1 into the middle of sample 0's image data; counts still match.
        raw[8:16] = (int.from_bytes(raw[8:16], "little") - 1024).to_bytes(8, "little")
    idx.write_bytes(bytes(raw))
    if damage == "shifted":
        ds = ShardDataset(good)
        with pytest.raises(ShardError, match=r"shard-000000\.tar @ offset \d+"):
            ds[0]
        skipping = ShardDataset(good, skip_errors=True)
        assert skipping[1] is None and skipping.skipped == 1
    else:
        with pytest.raises(ShardError, match=r"shard-000000\.tar @ offset \d+: bad \.tar\.idx"):
            ShardDataset(good)
        assert len(ShardDataset(good, skip_errors=True)) == 4


def test_missing_member(tmp_path, photo_jpeg):
    out = tmp_path / "ds"
    out.mkdir()
    write_tar(out / "shard-000000.tar",
              [("a", [("jpg", photo_jpeg), ("json", _doc("a", [("jpg", 320, 256)]))]),
               ("b", [("json", _doc("b", [("img0.jpg", 320, 256)]))]),
               ("c", [("json", _doc("c"))])])
    write_manifest(out)
    msg = r'shard-000000\.tar @ offset \d+: sample "b" has no member'
    with pytest.raises(ShardError, match=msg):
        _all(out)
    keys = [s["key"] for s in _all(out, skip_errors=True)]
    assert keys == ["a", "c"]


@pytest.mark.parametrize("bad_name", ["../evil.jpg", "/abs/evil.jpg", "x/../../evil.jpg"])
def test_unsafe_member_names_are_refused_and_nothing_is_written(tmp_path, photo_jpeg, bad_name):
    out = tmp_path / "ds"
    out.mkdir()
    write_tar(out / "shard-000000.tar",
              [("a", [("jpg", photo_jpeg), ("json", _doc("a", [("jpg", 320, 256)]))]),
               ("b", [("jpg", photo_jpeg), ("json", _doc("b", [("jpg", 320, 256)]))])],
              names={"b.jpg": bad_name})
    write_manifest(out)
    before = sorted(p for p in tmp_path.rglob("*"))
    with pytest.raises(ShardError, match=r"shard-000000\.tar @ offset \d+: unsafe member name"):
        ShardDataset(out)[1]
    assert [s["key"] for s in _all(out, skip_errors=True)] == ["a"]
    assert sorted(p for p in tmp_path.rglob("*")) == before
    assert not (tmp_path / "evil.jpg").exists()


def test_undecodable_image(tmp_path, photo_jpeg, qwen_tokenizer):
    out = tmp_path / "ds"
    out.mkdir()
    write_tar(out / "shard-000000.tar",
              [("a", [("jpg", photo_jpeg), ("json", _doc("a", [("jpg", 320, 256)]))]),
               ("b", [("jpg", photo_jpeg[:2000]), ("json", _doc("b", [("jpg", 320, 256)]))]),
               ("c", [("jpg", b"not an image"), ("json", _doc("c", [("jpg", 320, 256)]))])])
    write_manifest(out)
    proc = SampleProcessor(qwen_tokenizer)
    with pytest.raises(ShardError, match=r"shard-000000\.tar @ offset \d+ \(sample 'b'\)"):
        _all(out, transform=proc)
    ds = ShardIterable(out, shuffle=False, transform=proc, skip_errors=True)
    got = within(60, lambda: list(ds))
    assert [g["key"] for g in got] == ["a"] and ds.skipped == 2


def test_plain_copy_is_untouched(plain_shards, tmp_path):
    # The reader never writes: the directory is byte-identical after a full pass.
    out = tmp_path / "copy"
    shutil.copytree(plain_shards, out)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    list(ShardIterable(out))
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
