"""Helpers for the loader tests: plain shards from `llava_ov15.pack.build`, and packed shards
written with `tarfile` in the packed layout (one tar sample = one pack)."""

from __future__ import annotations

import io
import json
import struct
import tarfile
from pathlib import Path

from llava_ov15 import _native


def tar_members(path: Path) -> list[tuple[str, list[tuple[str, bytes]]]]:
    """(key, [(suffix, bytes)]) per sample, read with Python's tarfile (the independent peer)."""
    out: list[tuple[str, list[tuple[str, bytes]]]] = []
    with tarfile.open(path) as tf:
        for m in tf:
            key, suffix = m.name.split(".", 1)
            data = tf.extractfile(m).read()
            if out and out[-1][0] == key:
                out[-1][1].append((suffix, data))
            else:
                out.append((key, [(suffix, data)]))
    return out


def member_suffix(key: str, member: str) -> str:
    """`images[i].member` is the suffix (`img0.jpg`) in build output; accept full names too."""
    return member[len(key) + 1:] if member.startswith(key + ".") else member


def write_tar(path: Path, samples: list[tuple[str, list[tuple[str, bytes]]]],
              names: dict[str, str] | None = None) -> None:
    """Write a shard + `.tar.idx` (ustar, end blocks) as the format specifies. `names` maps a
    member name to a replacement written into the header (to build hostile tars)."""
    buf = io.BytesIO()
    offsets = []
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for key, members in samples:
            offsets.append(buf.tell())
            for suffix, data in members:
                name = f"{key}.{suffix}"
                info = tarfile.TarInfo((names or {}).get(name, name))
                info.size, info.mode = len(data), 0o644
                tf.addfile(info, io.BytesIO(data))
        offsets.append(buf.tell())
    raw = buf.getvalue()
    end = offsets[-1]
    path.write_bytes(raw[:end + 1024])
    Path(f"{path}.idx").write_bytes(b"".join(struct.pack("<Q", o) for o in offsets))


def write_manifest(out: Path, kind: str | None = None, **extra) -> None:
    shards = []
    for p in sorted(out.glob("*.tar")):
        n = len(Path(f"{p}.idx").read_bytes()) // 8 - 1
        shards.append({"name": p.name, "samples": n, "bytes": p.stat().st_size})
    m = {"format_version": 1, "shards": shards, **extra}
    if kind:
        m["kind"] = kind
    (out / "manifest.json").write_text(json.dumps(m))


def write_packed(plain: Path, out: Path, tokenizer: Path, max_len: int = 4096,
                 per_shard: int = 7, **lengths_kw) -> list[list[str]]:
    """Greedy first-fit packs of the plain dataset's samples, in the packed layout. Returns
    the source keys of each pack."""
    counter = _native.LengthCounter(str(tokenizer), **lengths_kw)
    out.mkdir(parents=True)
    items = []
    for p in sorted(plain.glob("*.tar")):
        for key, members in tar_members(p):
            md = dict(members)
            doc = json.loads(md["json"])
            length = counter.sample_length(md["json"])
            if length["total"] <= max_len:
                items.append((p.name, key, doc, md, length))
    packs: list[list] = []
    for it in items:
        for pk in packs:
            if sum(x[4]["total"] for x in pk) + it[4]["total"] <= max_len:
                pk.append(it)
                break
        else:
            packs.append([it])
    tar_samples = []
    for n, pk in enumerate(packs):
        pkey, members, subs, i = f"pack{n:05d}", [], [], 0
        for shard, key, doc, md, length in pk:
            ims = []
            for im in doc.get("images", []):
                ext = im["member"].rsplit(".", 1)[-1]
                members.append((f"img{i}.{ext}", md[member_suffix(key, im["member"])]))
                ims.append(f"img{i}.{ext}")
                i += 1
            subs.append({"source_shard": shard, "source_key": key, "length": length["total"],
                         "image_tokens": length["image_tokens"], "images": ims, "sample": doc})
        doc = {"format_version": 1, "kind": "pack", "max_len": max_len,
               "total_tokens": sum(s["length"] for s in subs),
               "image_tokens": sum(sum(s["image_tokens"]) for s in subs), "samples": subs}
        members.append(("json", json.dumps(doc).encode()))
        tar_samples.append((pkey, members))
    for s in range(0, len(tar_samples), per_shard):
        write_tar(out / f"shard-{s // per_shard:06d}.tar", tar_samples[s:s + per_shard])
    write_manifest(out, kind="packed")
    return [[x[1] for x in pk] for pk in packs]
