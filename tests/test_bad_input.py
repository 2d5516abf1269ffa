"""Bad input: every case is a recorded reject or a clear one-line error — never a crash,
never silent loss (input lines = samples + rejects)."""

from __future__ import annotations

import io
import json
import struct
import tarfile
import zlib

import numpy as np
import pytest
from PIL import Image

from conftest import jpeg_bytes, png_bytes, read_jsonl, run_cli, shard_files


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(w: int = 50_000, h: int = 50_000) -> bytes:
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def exif_rotated_jpeg(rgb: np.ndarray) -> bytes:
    im = Image.fromarray(rgb)
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90° CW on display
    return jpeg_bytes(im, exif=exif.tobytes())


@pytest.fixture()
def bad_corpus(tmp_path, photo_rgb):
    rgb = photo_rgb[:200, :300]
    good = jpeg_bytes(rgb)
    files = {
        "good.jpg": good,
        "empty.jpg": b"",
        "truncated.jpg": good[: len(good) // 2],
        "badcrc.png": (lambda b: b[:40] + bytes([b[40] ^ 0xFF]) + b[41:])(png_bytes(rgb)),
        "really_png.jpg": png_bytes(rgb[:, ::-1]),
        "cmyk.jpg": jpeg_bytes(Image.fromarray(rgb).convert("CMYK")),
        "gray16.png": png_bytes(Image.fromarray(rgb[..., 0].astype(np.uint16) * 257)),
        "palette.png": png_bytes(Image.fromarray(rgb).convert("P")),
        "alpha.png": png_bytes(np.dstack([rgb, np.full(rgb.shape[:2], 128, np.uint8)])),
        "rotated.jpg": exif_rotated_jpeg(rgb[::-1]),
        "bomb.png": bomb_png(),
        "text.jpg": b"this is not an image at all",
    }
    frames = [Image.fromarray(np.roll(rgb, 20 * i, axis=1)).convert("P") for i in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    files["animated.gif"] = buf.getvalue()
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)

    def rec(i, image, **kw):
        return json.dumps({"id": i, "image": image, "caption": f"caption {i}", **kw}).encode()

    lines = [
        rec("ok", "good.jpg", license="cc-by", extra={"nested": [1, 2]}),
        rec("missing", "nope.jpg"),
        rec("empty", "empty.jpg"),
        rec("truncated", "truncated.jpg"),
        rec("badcrc", "badcrc.png"),
        rec("sniffed", "really_png.jpg"),
        rec("cmyk", "cmyk.jpg"),
        rec("gray16", "gray16.png"),
        rec("palette", "palette.png"),
        rec("alpha", "alpha.png"),
        rec("rotated", "rotated.jpg"),
        rec("animated", "animated.gif"),
        rec("bomb", "bomb.png"),
        rec("notimage", "text.jpg"),
        b'{"id": "malformed", "image": "good.jpg", "caption": ',
        b'{"id": "latin1", "image": "good.jpg", "caption": "caf\xe9"}',
        json.dumps({"id": "emptycap", "image": "good.jpg", "caption": "  "}).encode(),
        json.dumps({"id": "noshape", "image": "good.jpg"}).encode(),
        b"[1, 2, 3]",
        rec("url", "https://example.org/cat.jpg"),
        rec("s3", ["good.jpg", "s3://bucket/cat.jpg"]),
        rec("datauri", "data:image/jpeg;base64," + "A" * 4000),
    ]
    corpus = tmp_path / "bad.jsonl"
    corpus.write_bytes(b"\n".join(lines) + b"\n")
    return corpus, len(lines)


ACCEPTED = {"ok", "sniffed", "cmyk", "gray16", "palette", "alpha", "rotated", "animated"}
REJECTED = {  # id → (category, words the reason must contain)
    "missing": ("missing_file", "nope.jpg"),
    "empty": ("empty_file", "empty.jpg"),
    "truncated": ("truncated", "truncated"),
    "badcrc": ("corrupt", "badcrc.png"),
    "bomb": ("decompression_bomb", "50000x50000"),
    "notimage": ("unknown_format", "text.jpg"),
    "emptycap": ("invalid_record", "empty caption"),
    "noshape": ("invalid_record", "shape"),
    "url": ("remote_image_unsupported", "https:// URLs are not fetched"),
    "s3": ("remote_image_unsupported", "image 1 (s3://bucket/cat.jpg): s3:// URLs are not"),
    "datauri": ("remote_image_unsupported", "data: URIs are not decoded"),
}
# Over half the bad corpus is rejected, on purpose: these tests read every reject.
ACCEPT_ALL = ("--max-reject-rate", "1")


@pytest.mark.parametrize("phash", ["fast", "exact"])
def test_each_bad_input_is_a_reject_or_accepted_correctly(bad_corpus, tmp_path, phash):
    corpus, n_lines = bad_corpus
    out = tmp_path / f"out-{phash}"
    run_cli(
        "build",
        "--input",
        str(corpus),
        "--output",
        str(out),
        "--progress",
        "quiet",
        "--phash",
        phash,
        "--dedup",
        "off",
        *ACCEPT_ALL,
    )
    rejects = read_jsonl(out / "rejects.jsonl")
    metas = {}
    for shard in shard_files(out):
        with tarfile.open(shard) as tf:
            names = tf.getnames()
            for m in tf.getmembers():
                if m.name.endswith(".json"):
                    metas[json.loads(tf.extractfile(m).read())["id"]] = (m.name, names)
    assert len(metas) + len(rejects) == n_lines
    assert set(metas) == ACCEPTED
    by_id = {r["id"]: r for r in rejects if r["id"]}
    for rid, (category, words) in REJECTED.items():
        assert by_id[rid]["category"] == category, by_id[rid]
        assert words in by_id[rid]["reason"], by_id[rid]
    by_line = {r["line"]: r for r in rejects}
    assert "malformed JSON" in by_line[15]["reason"]
    assert "UTF-8" in by_line[16]["reason"]
    assert "object" in by_line[19]["reason"]
    assert all(r["reason"] for r in rejects)
    # A data: URI is not copied whole into the reason.
    assert len(by_id["datauri"]["reason"]) < 300


def test_accepted_oddities_keep_their_facts(bad_corpus, tmp_path):
    corpus, _ = bad_corpus
    out = tmp_path / "out"
    run_cli(
        "build",
        "--input",
        str(corpus),
        "--output",
        str(out),
        "--progress",
        "quiet",
        "--dedup",
        "off",
        *ACCEPT_ALL,
    )
    metas = {}
    with tarfile.open(shard_files(out)[0]) as tf:
        names = set(tf.getnames())
        for m in tf.getmembers():
            if m.name.endswith(".json"):
                meta = json.loads(tf.extractfile(m).read())
                metas[meta["id"]] = meta
    assert metas["sniffed"]["images"][0]["format"] == "png"
    assert "sniffed.png" in names and "sniffed.jpg" not in names
    assert metas["rotated"]["images"][0]["orientation"] == 6
    assert metas["animated"]["images"][0]["animated"] is True
    assert metas["cmyk"]["images"][0]["format"] == "jpeg"
    assert metas["ok"]["license"] == "cc-by" and metas["ok"]["extra"] == {"nested": [1, 2]}
    stats = json.loads((out / "stats.json").read_text())
    assert stats["exif_rotated"] == 1 and stats["animated"] == 1


def test_bomb_limit_is_configurable(tmp_path):
    (tmp_path / "big.png").write_bytes(bomb_png(3000, 3000))
    corpus = tmp_path / "c.jsonl"
    corpus.write_text(json.dumps({"id": "b", "image": "big.png", "caption": "x"}) + "\n")
    # Its only record is rejected: no samples, so the build fails after writing its rejects.
    p = run_cli(
        "build",
        "--input",
        str(corpus),
        "--output",
        str(tmp_path / "o"),
        "--progress",
        "quiet",
        "--max-image-pixels",
        "1000000",
        check=False,
    )
    assert p.returncode == 1 and "no samples" in p.stderr, p.stderr
    [r] = read_jsonl(tmp_path / "o" / "rejects.jsonl")
    assert r["category"] == "decompression_bomb" and "3000x3000" in r["reason"]


def test_input_not_found_is_one_line_error(tmp_path):
    p = run_cli(
        "build",
        "--input",
        str(tmp_path / "nope.jsonl"),
        "--output",
        str(tmp_path / "o"),
        check=False,
    )
    assert p.returncode == 1
    assert "nope.jsonl" in p.stderr and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


def test_output_not_writable_is_one_line_error(tmp_path, mixed_corpus):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for target in (blocker / "sub", "/proc/llava-pack-test"):
        p = run_cli("build", "--input", str(mixed_corpus), "--output", str(target), check=False)
        assert p.returncode == 1, p.stderr
        assert "output error" in p.stderr and "Traceback" not in p.stderr


def test_output_with_foreign_files_is_refused(tmp_path, mixed_corpus):
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    p = run_cli("build", "--input", str(mixed_corpus), "--output", str(out), check=False)
    assert p.returncode == 1 and "not empty" in p.stderr
    assert (out / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize(
    "args,words",
    [
        (["--shard-size", "10"], "--shard-size"),
        (["--shard-size", "lots"], "not a size"),
        (["--samples-per-shard", "0"], "--samples-per-shard"),
        (["--prefix", "a/b"], "--prefix"),
        (["--phash", "slow"], "invalid choice"),
        (["--workers", "-3"], "workers"),
    ],
)
def test_invalid_options_give_one_line_errors(tmp_path, mixed_corpus, args, words):
    p = run_cli(
        "build", "--input", str(mixed_corpus), "--output", str(tmp_path / "o"), *args, check=False
    )
    assert p.returncode == 2, p.stderr
    assert words in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "o").exists()


def test_rebuilding_into_a_finished_output_needs_a_flag(tmp_path, mixed_corpus):
    out = tmp_path / "o"
    run_cli("build", "--input", str(mixed_corpus), "--output", str(out), "--progress", "quiet")
    p = run_cli("build", "--input", str(mixed_corpus), "--output", str(out), check=False)
    assert p.returncode == 1 and "--resume" in p.stderr
    run_cli(
        "build",
        "--input",
        str(mixed_corpus),
        "--output",
        str(out),
        "--overwrite",
        "--progress",
        "quiet",
    )
    p = run_cli(
        "build",
        "--input",
        str(mixed_corpus),
        "--output",
        str(out),
        "--resume",
        "--samples-per-shard",
        "3",
        check=False,
    )
    assert p.returncode == 1 and "different" in p.stderr
