"""Text cleaning in `llava-pack build` (`--text-clean`, per-rule switches, `--dedup-text`,
`--text-report`), through the CLI and the Python API."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from conftest import jpeg_bytes, read_jsonl, run_cli
from llava_ov15 import pack

ZH_JA = [
    "一只橘猫趴在窗台上晒太阳，旁边有一盆绿萝。",
    "夕暮れの海辺で、犬が砂浜を走っている。",
    "東京タワーと青空（2019年撮影）",
    "写真　富士山と桜の花",
    "A bowl of 拉面 with ゆで卵 on top！",
]


def _corpus(root: Path, records: list[dict], n_images: int = 0) -> Path:
    """Write `records` as JSONL next to `n_images` distinct small JPEGs img0.jpg, img1.jpg…"""
    rng = np.random.default_rng(0)
    for i in range(n_images):
        arr = rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)
        (root / f"img{i}.jpg").write_bytes(jpeg_bytes(arr))
    path = root / "corpus.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return path


def _written(out: Path) -> dict[str, dict]:
    """Per-sample JSON of every written sample, by id."""
    docs = {}
    for tar in sorted(out.glob("*.tar")):
        with tarfile.open(tar) as tf:
            for m in tf.getmembers():
                if m.name.endswith(".json"):
                    d = json.loads(tf.extractfile(m).read())
                    docs[d["id"]] = d
    return docs


def _build(corpus: Path, out: Path, **kw) -> dict:
    kw.setdefault("progress", "quiet")
    kw.setdefault("max_reject_rate", None)
    return pack.build(corpus, out, **kw)


def test_written_json_carries_cleaned_text_and_dedup_sees_it(tmp_path):
    recs = [
        {"id": "a", "image": "img0.jpg", "caption": "  <b>A cat</b> &amp; a\u200b dog ",
         "source": "web", "license": "cc-by"},
        # Same image, same text once cleaned: an exact duplicate of "a".
        {"id": "b", "image": "img0.jpg", "caption": "A cat & a dog"},
        {"id": "c", "image": "img1.jpg", "caption": "cafÃ© au lait"},
        {"id": "d", "image": "img2.jpg", "conversations": [
            {"from": "human", "value": "<image>\nWhat is this?  \r\n"},
            {"from": "gpt", "value": "A cat.\n\n\n\n- It sleeps.\n- It purrs."}]},
    ]
    out = tmp_path / "out"
    s = _build(_corpus(tmp_path, recs, 3), out)
    docs = _written(out)
    assert docs["a"]["caption"] == "A cat & a dog"
    assert (docs["a"]["orig_source"], docs["a"]["license"]) == ("web", "cc-by")
    assert docs["c"]["caption"] == "café au lait"
    conv = docs["d"]["conversations"]
    assert conv[0]["value"] == "<image>\nWhat is this?"
    assert conv[1]["value"] == "A cat.\n\n- It sleeps.\n- It purrs."
    rejects = read_jsonl(out / "rejects.jsonl")
    assert [(r["id"], r["category"]) for r in rejects] == [("b", "duplicate")]
    text = json.loads((out / "stats.json").read_text())["text"]
    assert text["samples_changed"] == 3
    assert text["changed"]["html"] == 1 and text["changed"]["mojibake"] == 1
    assert text["changed"]["whitespace"] == 2 and text["changed"]["nfc"] == 0
    assert set(text["rejected"]) >= {"empty", "url", "filename", "boilerplate", "repetition",
                                      "placeholders", "roles"}
    assert "examples" not in text
    assert s["samples"] + s["rejects"] == len(recs)


def test_each_rule_rejects_with_its_own_category(tmp_path):
    caps = {
        "empty": "\u200b \ufeff",
        "url": "https://example.com/photos/cat",
        "filename": "IMG_1234.JPG",
        "boilerplate": "No description available.",
        "repetition": "a photo of a cat " * 12,
        "repetition_zh": "好看好看" * 12,
    }
    recs = [
        {"id": k, "image": f"img{i}.jpg", "caption": v} for i, (k, v) in enumerate(caps.items())
    ]
    recs += [
        {"id": "ends_on_user", "conversations": [{"from": "human", "value": "Hello?"}]},
        {"id": "user_twice", "messages": [
            {"role": "user", "content": "a"}, {"role": "user", "content": "b"},
            {"role": "assistant", "content": "c"}]},
        {"id": "ok", "image": f"img{len(caps)}.jpg", "caption": "A cat on IMG_1234.JPG paper"},
    ]
    out = tmp_path / "out"
    s = _build(_corpus(tmp_path, recs, len(caps) + 1), out)
    got = {r["id"]: r["category"] for r in read_jsonl(out / "rejects.jsonl")}
    assert got == {
        "empty": "text_empty", "url": "text_url", "filename": "text_filename",
        "boilerplate": "text_boilerplate", "repetition": "text_repetition",
        "repetition_zh": "text_repetition", "ends_on_user": "text_roles",
        "user_twice": "text_roles",
    }
    assert s["samples"] == 1 and s["samples"] + s["rejects"] == len(recs)
    stats = json.loads((out / "stats.json").read_text())
    assert stats["text"]["rejected"]["repetition"] == 2
    assert stats["rejects_by_reason"]["text_roles"] == 2
    # Every rule can be switched off on its own.
    out2 = tmp_path / "out2"
    s2 = _build(tmp_path / "corpus.jsonl", out2, text_rules="-url,-filename,-roles")
    left = {r["category"] for r in read_jsonl(out2 / "rejects.jsonl")}
    assert not left & {"text_url", "text_filename", "text_roles"}
    assert s2["samples"] == 1 + 2 + 2


def test_chinese_and_japanese_text_passes_unchanged(tmp_path):
    recs = [{"id": f"c{i}", "image": f"img{i}.jpg", "caption": c} for i, c in enumerate(ZH_JA)]
    recs.append({"id": "conv", "image": f"img{len(ZH_JA)}.jpg", "conversations": [
        {"from": "human", "value": "<image>\n这张图片里有什么？"},
        {"from": "gpt", "value": "图片中有一只猫。\n它正在睡觉。"},
        {"from": "human", "value": "猫は何色ですか？"},
        {"from": "gpt", "value": "オレンジ色です。「とても可愛い」！"}]})
    out = tmp_path / "out"
    s = _build(_corpus(tmp_path, recs, len(recs)), out, text_clean="strict")
    assert s["rejects"] == 0
    docs = _written(out)
    for r in recs:
        d = docs[r["id"]]
        if "caption" in r:
            assert d["caption"] == r["caption"]
        else:
            assert d["conversations"] == r["conversations"]
    assert json.loads((out / "stats.json").read_text())["text"]["samples_changed"] == 0


def test_missing_placeholder_is_prepended_or_rejected_when_strict(tmp_path):
    recs = [{"id": "q", "image": "img0.jpg", "conversations": [
        {"from": "human", "value": "What is it?"}, {"from": "gpt", "value": "A cat."}]}]
    corpus = _corpus(tmp_path, recs, 1)
    s = _build(corpus, tmp_path / "default")
    assert s["samples"] == 1  # the template puts the image first; valid
    with pytest.raises(pack.RejectsError) as e:  # no sample written
        _build(corpus, tmp_path / "strict", text_clean="strict")
    assert e.value.summary["stats"]["rejects_by_reason"] == {"text_placeholders": 1}
    out = tmp_path / "fixed"
    s = _build(corpus, out, text_clean="strict", fix_placeholders="prepend")
    assert _written(out)["q"]["conversations"][0]["value"] == "<image>\nWhat is it?"
    assert s["stats"]["text"]["changed"]["placeholder_prepend"] == 1


def test_dedup_text_drops_repeated_captions_after_normalisation(tmp_path):
    recs = [
        {"id": "first", "image": "img0.jpg", "caption": "A red bus on a street."},
        {"id": "again", "image": "img1.jpg", "caption": " A red  bus on a street.\u200b"},
        {"id": "other", "image": "img2.jpg", "caption": "A blue bus."},
    ]
    corpus = _corpus(tmp_path, recs, 3)
    assert _build(corpus, tmp_path / "plain")["samples"] == 3
    out = tmp_path / "dedup"
    s = _build(corpus, out, dedup_text=True)
    assert s["samples"] == 2
    (r,) = read_jsonl(out / "rejects.jsonl")
    assert (r["id"], r["category"]) == ("again", "duplicate_text")
    assert "first" in r["reason"]


def test_text_report_holds_before_after_examples_per_step(tmp_path):
    recs = [{"id": f"w{i}", "image": f"img{i}.jpg", "caption": f"  cat  number {i} "}
            for i in range(4)]
    recs.append({"id": "u", "image": "img4.jpg", "caption": "http://example.com/x"})
    out = tmp_path / "out"
    run_cli("build", "--input", str(_corpus(tmp_path, recs, 5)), "--output", str(out),
            "--progress", "quiet", "--text-report", "2", "--samples-per-shard", "2")
    lines = read_jsonl(out / "text_report.jsonl")
    ws = [x for x in lines if x["step"] == "whitespace"]
    assert [x["id"] for x in ws] == ["w0", "w1"]
    assert ws[0]["before"] == "  cat  number 0 " and ws[0]["after"] == "cat number 0"
    (url,) = [x for x in lines if x["step"] == "url"]
    assert url["action"] == "rejected" and url["reason"] == "caption is only a URL"
    # A rerun without the report removes a stale one.
    run_cli("build", "--input", str(tmp_path / "corpus.jsonl"), "--output", str(out),
            "--progress", "quiet", "--overwrite")
    assert not (out / "text_report.jsonl").exists()


def test_off_keeps_text_verbatim_and_resume_refuses_other_text_options(tmp_path):
    recs = [{"id": "x", "image": "img0.jpg", "caption": "  IMG_1234.JPG \u200b"}]
    corpus = _corpus(tmp_path, recs, 1)
    out = tmp_path / "out"
    _build(corpus, out, text_clean="off")
    assert _written(out)["x"]["caption"] == recs[0]["caption"]
    with pytest.raises(pack.ResumeError):
        _build(corpus, out, resume=True)
    _build(corpus, out, resume=True, text_clean="off")


def test_bad_text_options_are_one_line_errors(tmp_path):
    corpus = _corpus(tmp_path, [{"image": "img0.jpg", "caption": "a cat"}], 1)
    base = ["build", "--input", str(corpus), "--output", str(tmp_path / "o")]
    for extra, word in [
        (["--text-rules", "+bogus"], "bogus"),
        (["--boilerplate", str(tmp_path / "missing.txt")], "--boilerplate"),
        (["--max-repeats", "1"], "--max-repeats"),
        (["--text-clean", "loose"], "--text-clean"),
        (["--text-report", "-1"], "text_report"),
        (["--max-repeats", "-3"], "max_repeats"),
    ]:
        p = run_cli(*base, *extra, check=False)
        assert p.returncode == 2, (extra, p.stderr)
        assert word in p.stderr and "Traceback" not in p.stderr


def test_boilerplate_list_is_configurable(tmp_path):
    recs = [{"id": "a", "image": "img0.jpg", "caption": "Sponsored content"},
            {"id": "b", "image": "img1.jpg", "caption": "Photo."}]
    corpus = _corpus(tmp_path, recs, 2)
    lst = tmp_path / "boiler.txt"
    lst.write_text("# ours\nsponsored content\n")
    out = tmp_path / "out"
    _build(corpus, out, boilerplate=lst)
    # The file replaces the built-in list: "Photo." now passes.
    assert [r["id"] for r in read_jsonl(out / "rejects.jsonl")] == ["a"]


def test_clean_captions_api_matches_the_build():
    got = pack.clean_captions(["  A&amp;B ", "IMG_1.jpg", ZH_JA[0]], text_clean="default")
    assert got == [("A&B", None), ("IMG_1.jpg", "filename"), (ZH_JA[0], None)]
    assert pack.clean_captions([" x "], text_clean="off") == [(" x ", None)]
