"""`llava-pack pack` / `buckets` end to end on shards built from the demo corpus."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import tarfile
import time
from collections import Counter
from pathlib import Path

import pytest

from conftest import run_cli, tree_digest
from llava_ov15 import _native
from llava_ov15.data import sample_length
from llava_ov15.data.pack_manifest import PackInfo
from llava_ov15.data.tokenizer import qwen_tokenizer_json
from llava_ov15.demo.corpus import CorpusSpec, write_corpus

MAX_LEN = 2048
ARGS = ["--max-len", str(MAX_LEN), "--packs-per-shard", "7", "--progress", "quiet"]
DIGEST = ("*.tar", "*.tar.idx", "manifest.json", "rejects.jsonl", "tokenizer.json",
          ".nv-meta/*.json", ".nv-meta/*.yaml", ".nv-meta/index.uuid")


@pytest.fixture(scope="module")
def tokenizer() -> str:
    return str(qwen_tokenizer_json())


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """~150 built samples (caption / LLaVA / messages, multi-image, text-only) in 10 shards;
    image sides up to 1600 px so a few samples exceed MAX_LEN."""
    root = tmp_path_factory.mktemp("packsrc")
    corpus = write_corpus(root, CorpusSpec(n=150, seed=3, min_side=128, max_side=1600,
                                           near_dup_fraction=0.0, multi_image_fraction=0.15,
                                           text_only_fraction=0.05,
                                           shapes=("caption", "conversations", "messages")))
    out = root / "shards"
    run_cli("build", "--input", str(corpus), "--output", str(out), "--samples-per-shard", "16",
            "--phash", "off", "--progress", "quiet")
    return out


def run_pack(shards, out, tokenizer, *extra):
    return run_cli("pack", "--input", str(shards), "--output", str(out), "--tokenizer", tokenizer,
                   *ARGS, *extra)


@pytest.fixture(scope="module")
def packed(shards, tokenizer, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("packed") / "out"
    t0 = time.monotonic()
    run_pack(shards, out, tokenizer, "--workers", "1")
    out.joinpath(".seconds").write_text(str(time.monotonic() - t0))
    return out


def read_tar(path: Path) -> list[tuple[str, dict[str, bytes]]]:
    """Samples of a tar as (key, {suffix: bytes}) in order (webdataset grouping)."""
    samples: list[tuple[str, dict[str, bytes]]] = []
    with tarfile.open(path) as tf:
        for m in tf.getmembers():
            key, suffix = m.name.split(".", 1)
            if not samples or samples[-1][0] != key:
                samples.append((key, {}))
            samples[-1][1][suffix] = tf.extractfile(m).read()
    return samples


def source_samples(shards: Path) -> dict[tuple[str, str], dict[str, bytes]]:
    return {(tar.name, key): members for tar in sorted(shards.glob("*.tar"))
            for key, members in read_tar(tar)}


def packs(out: Path):
    for tar in sorted(out.glob("*.tar")):
        for key, members in read_tar(tar):
            yield tar.name, key, members, json.loads(members["json"])


def test_every_sample_exactly_once_within_caps(shards, packed, tokenizer):
    src = source_samples(shards)
    seen = Counter()
    n_packs = 0
    for _, _key, members, doc in packs(packed):
        n_packs += 1
        assert doc["kind"] == "pack" and doc["max_len"] == MAX_LEN
        assert sum(s["length"] for s in doc["samples"]) == doc["total_tokens"] <= MAX_LEN
        assert sum(sum(s["image_tokens"]) for s in doc["samples"]) == doc["image_tokens"]
        img_i = 0
        for s in doc["samples"]:
            seen[(s["source_shard"], s["source_key"])] += 1
            source = src[(s["source_shard"], s["source_key"])]
            # The embedded sample is the source json verbatim; its length is sample_length's.
            assert s["sample"] == json.loads(source["json"])
            assert s["length"] == sample_length(source["json"], tokenizer)
            # Image members: renumbered across the pack, bytes identical to the source.
            for name, im in zip(s["images"], s["sample"]["images"], strict=False):
                assert name == f"img{img_i}.{im['member'].rsplit('.', 1)[-1]}"
                suffix = im["member"].removeprefix(s["source_key"] + ".")
                assert members[name] == source[suffix]
                img_i += 1
        assert sorted(members) == sorted([*(n for s in doc["samples"] for n in s["images"]),
                                          "json"])
    rejects = [json.loads(line) for line in (packed / "rejects.jsonl").read_text().splitlines()]
    for r in rejects:
        seen[(r["source_shard"], r["key"])] += 1
        assert r["length"] > MAX_LEN and "max_len" in r["reason"]
    assert set(seen) == set(src) and set(seen.values()) == {1}
    assert rejects, "the corpus is built to contain over-long samples"
    assert {json.loads(m["json"])["kind"] for m in src.values()} >= {"caption", "conversations"}
    stats = json.loads((packed / "pack_stats.json").read_text())
    assert stats["packs"] == n_packs and stats["rejects"] == len(rejects)
    assert stats["samples"] + stats["rejects"] == len(src) == stats["source_samples"]
    assert stats["lower_bound"] <= n_packs
    assert stats["fill_efficiency"] == pytest.approx(stats["lower_bound"] / n_packs)
    manifest = json.loads((packed / "manifest.json").read_text())
    assert manifest["kind"] == "packed" and manifest["options"]["max_len"] == MAX_LEN
    assert len(manifest["options"]["tokenizer_sha256"]) == 64
    assert sum(s["samples"] for s in manifest["shards"]) == n_packs


def test_manifest_records_what_training_needs(shards, packed, tokenizer):
    info = PackInfo.load(packed)
    assert (info.caption_format, info.max_len, info.max_image_tokens) == ("pretrain", MAX_LEN, None)
    assert (info.min_pixels, info.max_pixels) == (3136, 2_560_000)
    assert info.eos_token == "<|im_end|>" and info.system == "You are a helpful assistant."
    assert info.caption_prompt == "" and info.path == packed.resolve()
    # The pack carries the tokenizer it was measured with.
    assert info.tokenizer_file == packed.resolve() / "tokenizer.json"
    assert info.tokenizer_file.read_bytes() == Path(tokenizer).read_bytes()
    assert info.tokenizer_matches(tokenizer) and len(info.tokenizer_sha256) == 64
    # A loader built from the manifest alone reproduces every recorded length.
    st = _native.SampleTokenizer(str(info.tokenizer_file), **info.sample_tokenizer_kwargs())
    for _, _, members, doc in packs(packed):
        _, _, lens, _ = st.tokenize(members["json"])
        assert lens == [s["length"] for s in doc["samples"]]
    with pytest.raises(ValueError, match="run llava-pack pack first"):
        PackInfo.load(shards)
    with pytest.raises(ValueError, match="not a `llava-pack pack` output"):
        PackInfo.load(shards.parent)


def test_chat_caption_format_is_recorded_and_refused_on_resume(shards, packed, tokenizer,
                                                               tmp_path):
    out = tmp_path / "chat"
    run_pack(shards, out, tokenizer, "--caption-format", "chat")
    assert PackInfo.load(out).caption_format == "chat"
    longer = 0
    for _, _, _, doc in packs(out):
        for s in doc["samples"]:
            assert s["length"] == sample_length(s["sample"], tokenizer, caption_format="chat")
            pre = sample_length(s["sample"], tokenizer)
            longer += s["length"] > pre
            assert s["length"] >= pre
    assert longer > 0
    p = run_cli("pack", "--input", str(shards), "--output", str(packed), "--tokenizer", tokenizer,
                *ARGS, "--caption-format", "chat", "--resume", check=False)
    assert p.returncode == 1 and "different input or options" in p.stderr


def test_tar_idx_matches_members(packed):
    for tar in sorted(packed.glob("*.tar")):
        raw = (packed / (tar.name + ".idx")).read_bytes()
        idx = [int.from_bytes(raw[i:i + 8], "little") for i in range(0, len(raw), 8)]
        with tarfile.open(tar) as tf:
            firsts, last_key = [], None
            for m in tf.getmembers():
                key = m.name.split(".", 1)[0]
                if key != last_key:
                    firsts.append(m.offset)
                    last_key = key
        assert idx[:-1] == firsts
        assert idx[-1] == tar.stat().st_size - 1024


def test_deterministic_across_runs_and_workers(shards, packed, tokenizer, tmp_path):
    ref = tree_digest(packed, DIGEST)
    for workers in ("2", "1"):
        out = tmp_path / f"w{workers}"
        run_pack(shards, out, tokenizer, "--workers", workers)
        assert tree_digest(out, DIGEST) == ref


def test_kill_9_then_resume_is_byte_identical(shards, packed, tokenizer, tmp_path):
    ref = tree_digest(packed, DIGEST)
    seconds = float((packed / ".seconds").read_text())
    rng = random.Random(0)
    kills = 0
    for attempt in range(3):
        out = tmp_path / f"k{attempt}"
        cmd = [sys.executable, "-m", "llava_ov15.cli.pack", "pack", "--input", str(shards),
               "--output", str(out), "--tokenizer", tokenizer, "--workers", "1", *ARGS]
        for _ in range(2):
            p = subprocess.Popen(cmd + (["--resume"] if out.exists() else []),
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(rng.uniform(0.05, max(0.1, seconds * 0.7)))
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                kills += 1
            p.wait()
            for tar in out.glob("*.tar"):  # a final name always means a complete shard
                assert (out / (tar.name + ".idx")).exists()
        run_pack(shards, out, tokenizer, "--workers", "1", "--resume")
        assert tree_digest(out, DIGEST) == ref, f"attempt {attempt}"
        assert not list(out.glob("*.partial"))
    assert kills >= 1


def test_resume_of_complete_and_option_mismatch(shards, packed, tokenizer):
    before = tree_digest(packed, DIGEST)
    p = run_cli("pack", "--input", str(shards), "--output", str(packed), "--tokenizer", tokenizer,
                *ARGS[:-2], "--progress", "log", "--resume")
    assert "already complete" in p.stderr and tree_digest(packed, DIGEST) == before
    p = run_cli("pack", "--input", str(shards), "--output", str(packed), "--tokenizer", tokenizer,
                "--max-len", "4096", "--resume", check=False)
    assert p.returncode == 1 and "different input or options" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
    p = run_cli("pack", "--input", str(shards), "--output", str(packed), "--tokenizer", tokenizer,
                *ARGS, check=False)
    assert p.returncode == 1 and "--resume" in p.stderr and "--overwrite" in p.stderr


def test_image_token_cap(shards, tokenizer, tmp_path):
    out = tmp_path / "cap"
    run_pack(shards, out, tokenizer, "--max-image-tokens", "1200")
    total = 0
    for _, _, _, doc in packs(out):
        assert doc["image_tokens"] <= 1200 and doc["total_tokens"] <= MAX_LEN
        total += len(doc["samples"])
    rejects = (out / "rejects.jsonl").read_text().splitlines()
    assert any("max_image_tokens" in r for r in rejects)
    assert total + len(rejects) == len(source_samples(shards))


def test_readers_open_packed_output(packed):
    import webdataset as wds

    tars = sorted(packed.glob("*.tar"))
    listing = subprocess.run(["tar", "-tf", str(tars[0])], capture_output=True, text=True,
                             check=True).stdout.split()
    assert listing[-1].endswith(".json") and ".img0." in listing[0]
    expected = [(k, m) for t in tars for k, m in read_tar(t)]
    got = [(s["__key__"], {k: v for k, v in s.items() if not k.startswith("__")})
           for s in wds.WebDataset([str(t) for t in tars], shardshuffle=False)]
    assert got == expected


def test_energon_loads_packs(packed):
    pytest.importorskip("megatron.energon")
    from megatron.energon import WorkerConfig, get_loader, get_val_dataset

    expected = {k: m for t in sorted(packed.glob("*.tar")) for k, m in read_tar(t)}
    wc = WorkerConfig(rank=0, world_size=1, num_workers=0)
    loaded = list(get_loader(get_val_dataset(packed, split_part="train", worker_config=wc,
                                             batch_size=None)))
    assert sorted(s.__key__ for s in loaded) == sorted(expected)
    for s in loaded:
        *images, text = s.sequence
        doc = json.loads(text)
        assert doc == json.loads(expected[s.__key__]["json"])
        assert len(images) == sum(len(x["images"]) for x in doc["samples"])


def test_buckets(shards, tokenizer, tmp_path):
    out = tmp_path / "report"
    p = run_cli("buckets", "--input", str(shards), "--output", str(out), "--tokenizer", tokenizer,
                "--progress", "quiet")
    doc = json.loads((out / "buckets.json").read_text())
    n = len(source_samples(shards))
    assert doc["samples"] + doc["invalid_samples"] == n
    assert sum(b["samples"] for b in doc["buckets"]) == doc["samples"]
    assert sum(doc["histograms"]["sample_tokens"]["counts"]) == doc["samples"]
    assert sum(doc["histograms"]["log2_aspect_ratio"]["counts"]) == doc["images"]
    for name in ("aspect_ratios.png", "native_sizes.png", "token_counts.png", "buckets.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "buckets.json" in p.stdout


def test_cli_errors_are_one_line(tmp_path, tokenizer):
    p = run_cli("pack", "--input", str(tmp_path / "missing"), "--output", str(tmp_path / "o"),
                "--tokenizer", tokenizer, check=False)
    assert p.returncode == 1 and p.stderr.count("\n") == 1 and "error" in p.stderr
    p = run_cli("pack", "--input", str(tmp_path), "--output", str(tmp_path / "o"),
                "--tokenizer", tokenizer, "--max-len", "0", check=False)
    assert p.returncode == 2 and "--max-len" in p.stderr


def test_pack_info_refuses_old_or_broken_manifests(tmp_path):
    opts = {"caption_format": "pretrain", "tokenizer_sha256": "0" * 64,
            "tokenizer_file": "tokenizer.json", "max_len": 8, "max_image_tokens": None,
            "min_pixels": 3136, "max_pixels": 2_560_000, "system": None, "caption_prompt": "",
            "eos_token": "<|im_end|>"}

    def load(manifest):
        (tmp_path / "manifest.json").write_text(manifest if isinstance(manifest, str)
                                                else json.dumps(manifest))
        return PackInfo.load(tmp_path)

    info = load({"kind": "packed", "options": opts, "totals": {"packs": 2, "samples": 3}})
    assert info.tokenizer_file is None and info.system is None and (info.packs, info.samples) \
        == (2, 3)
    old = {k: v for k, v in opts.items() if k not in ("caption_format", "eos_token")}
    with pytest.raises(ValueError, match="older llava-pack"):
        load({"kind": "packed", "options": old})
    with pytest.raises(ValueError, match="options.max_len is True"):
        load({"kind": "packed", "options": {**opts, "max_len": True}})
    with pytest.raises(ValueError, match="caption_format 'plain'"):
        load({"kind": "packed", "options": {**opts, "caption_format": "plain"}})
    with pytest.raises(ValueError, match="unreadable manifest"):
        load("{")
