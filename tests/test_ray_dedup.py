"""`dedup` on Ray (a private local Ray, 2 CPUs, shared by the module) writes the same files as
one process — drop.txt, clusters.jsonl, contamination.jsonl, dedup_stats.json (its timing
apart), the contact sheet and a --rewrite directory — on a corpus with near-duplicates,
multi-image samples and an --against build output, also when a read worker is killed."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

pytest.importorskip("ray")

from conftest import run_and_kill_a_task, run_cli  # noqa: E402
from llava_ov15 import pack  # noqa: E402
from llava_ov15.demo.corpus import CorpusSpec, write_corpus  # noqa: E402
from llava_ov15.distributed.dedup import READ_PHASE  # noqa: E402
from llava_ov15.distributed.tasks import FAULT_PAUSE_ENV  # noqa: E402

OUTPUTS = ("drop.txt", "clusters.jsonl", "contamination.jsonl", "contact_sheet.png")
# --against an older build, and a variant with every option that changes the job's result.
VARIANTS = {
    "against": {},
    "verify-all-first-rewrite": {"verify": "dhash", "multi_image": "all", "keep": "first",
                                 "max_distance": 10, "verify_distance": 2},
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, Path]:
    """(input, against): 48 samples (near-duplicates, multi-image, text-only) in 6 shards
    built with dhashes, and an older build holding copies of 5 of its samples."""
    root = tmp_path_factory.mktemp("raydedup")
    jsonl = write_corpus(root, CorpusSpec(n=48, seed=11, min_side=64, max_side=320,
                                          near_dup_fraction=0.3, multi_image_fraction=0.2,
                                          text_only_fraction=0.05,
                                          shapes=("caption", "conversations")))
    old = root / "old.jsonl"
    old.write_text("".join(jsonl.read_text().splitlines(keepends=True)[10:15]))
    common = dict(samples_per_shard=8, dhash=True, progress="quiet", workers=1)
    pack.build(str(jsonl), str(root / "shards"), **common)
    pack.build(str(old), str(root / "old"), **common)
    return root / "shards", root / "old"


def _options(corpus, variant: str, out: Path) -> dict:
    shards, old = corpus
    o = {"against": [str(old)], "progress": "quiet", **VARIANTS[variant]}
    if "rewrite" in variant:
        o["rewrite"] = str(out.with_name(out.name + "-rewrite"))
    return o


def _digest(out: Path) -> dict:
    d = {name: hashlib.sha256((out / name).read_bytes()).hexdigest() for name in OUTPUTS}
    stats = json.loads((out / "dedup_stats.json").read_text())
    assert stats.pop("seconds") >= 0
    if "rewrite" in stats:  # the folder written, different per run
        assert stats["rewrite"].pop("path") == str(out) + "-rewrite"
    d["dedup_stats.json"] = stats
    rewrite = out.with_name(out.name + "-rewrite")
    for p in sorted(x for x in rewrite.rglob("*") if x.is_file()):
        # Its manifest names the dedup output it came from, a different folder per run.
        data = p.read_bytes().replace(str(out).encode(), b"OUT")
        d[f"rewrite/{p.relative_to(rewrite)}"] = hashlib.sha256(data).hexdigest()
    return d


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory) -> dict[str, dict]:
    refs = {}
    for v in VARIANTS:
        out = tmp_path_factory.mktemp(f"ref-{v}") / "out"
        s = pack.dedup(corpus[0], out, **_options(corpus, v, out))
        refs[v] = _digest(out)
        assert s["dropped"]["near_duplicate"] > 0
    # The corpus exercises what the equality is about.
    assert refs["against"]["dedup_stats.json"]["dropped"]["contamination"] >= 5
    assert refs["verify-all-first-rewrite"]["dedup_stats.json"]["pairs_rejected_by_verify"] > 0
    return refs


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_dedup_on_ray_writes_the_same_files_as_one_process(corpus, reference, cluster, tmp_path,
                                                          variant):
    out = tmp_path / "out"
    s = pack.dedup(corpus[0], out, ray_address="local", **_options(corpus, variant, out))
    assert _digest(out) == reference[variant]
    r = s["ray"]
    n_shards = sum(len(list(d.glob("*.tar"))) for d in corpus)
    assert r["shards"] == n_shards
    assert r["phases"][READ_PHASE]["tasks"] == r["read_tasks"] > 1
    # Keys and hashes cross the object store, far less than the shards hold.
    shard_bytes = sum(p.stat().st_size for d in corpus for p in d.glob("*.tar"))
    assert 0 < r["object_store_bytes"] < shard_bytes / 50


def test_killing_a_read_worker_gives_the_same_files(corpus, reference, cluster, tmp_path,
                                                    monkeypatch):
    # Each read task pauses 1 s after reading, before reporting: a kill then is mid-task.
    monkeypatch.setenv(FAULT_PAUSE_ENV, f"{READ_PHASE}=1.0")
    out = tmp_path / "out"
    stats, killed = run_and_kill_a_task(
        lambda: pack.dedup(corpus[0], out, ray_address="local",
                           **_options(corpus, "against", out)),
        f"llava-{READ_PHASE}", "read")
    assert _digest(out) == reference["against"]
    reads = stats["ray"]["tasks"]
    assert killed not in {x["pid"] for x in reads}


def test_directory_checks_fail_before_any_task_and_leave_no_output(corpus, cluster, tmp_path):
    root = tmp_path / "src"
    jsonl = write_corpus(root, CorpusSpec(n=4, seed=2, min_side=64, max_side=96))
    off = root / "off"
    pack.build(str(jsonl), str(off), phash="off", progress="quiet", workers=1)
    errors = []
    for ray in (None, "local"):
        out = tmp_path / f"out-{ray}"
        with pytest.raises(Exception) as e:
            pack.dedup(off, out, progress="quiet", ray_address=ray)
        errors.append((type(e.value), str(e.value)))
        assert not out.exists()
    assert errors[0] == errors[1]
    assert "--phash off" in errors[0][1]


def test_cli_dedup_takes_a_ray_address(corpus, reference, tmp_path):
    # The command line starts (and stops) its own private Ray in its process.
    shards, old = corpus
    out = tmp_path / "out"
    p = run_cli("dedup", "--input", str(shards), "--output", str(out), "--against", str(old),
                "--progress", "log", "--ray", "local")
    assert _digest(out) == reference["against"]
    assert "dropped:" in p.stdout
    assert "ray:" in p.stderr and "through the object store" in p.stderr
