"""The trainer's data side: a micro-batch source with resumable state.

Interface (`BatchSource`): an iterator of collated micro-batches for *this data-parallel rank*
plus `state_dict()` / `load_state_dict()`. A micro-batch is a dict of

* ``input_ids``   [B, S] int64 — B packed rows (packs) of exactly ``data.seq_len`` tokens;
* ``labels``      [B, S] int64 — aligned with input_ids (the trainer shifts), -100 = not trained;
* ``position_ids``[B, S] int64 — restart at 0 for every sub-sample;
* ``cu_seqlens``  [n+1] int32 — sub-sample boundaries over the flattened B·S tokens (the padding
  at the end of a row is its own sub-sample, with labels -100);
* ``pixel_values``[N, 588] float32 and ``image_grid_thw`` [n_img, 3] int64 — every image of the
  micro-batch in placeholder order (N may be 0).

Two sources implement it: `SyntheticPackedSource` (in-repo, deterministic, CPU tests) and
`PackedShardSource`, the adapter onto the real loader (`llava_ov15.data`: `ShardIterable` +
`ShardLoader` + `SampleProcessor` + `collate_packed`, from the loader branch).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import numpy as np
import torch

from llava_ov15.model.config import LlavaOV15Config
from llava_ov15.model.processor import (
    IM_END,
    MAX_PIXELS,
    MIN_PIXELS,
    expand_image_tokens,
    preprocess_images,
    render_chat,
)

IGNORE_INDEX = -100


class BatchSource(Protocol):
    """Also a row stream: `next_row()` -> one padded row (`pad_row` fields plus ``key``, the
    sample's identity, and ``epoch``); `mbs` rows make a micro-batch (`collate_rows`)."""

    mbs: int

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]: ...
    def next_row(self) -> dict[str, Any]: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


# ---- row helpers --------------------------------------------------------------------------
def pad_row(ids: torch.Tensor, labels: torch.Tensor, seq_lens: Sequence[int], seq_len: int,
            pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[int]]:
    """One pack (1-D) -> fixed-length row; the padding becomes its own sub-sample."""
    n = int(ids.numel())
    if n > seq_len:
        raise ValueError(f"pack of {n} tokens exceeds data.seq_len={seq_len}")
    lens = [int(x) for x in seq_lens if int(x) > 0]
    if sum(lens) != n:
        raise ValueError(f"sub-sample lengths {lens} do not add up to {n} tokens")
    if n < seq_len:
        lens.append(seq_len - n)
        ids = torch.cat([ids, torch.full((seq_len - n,), pad_id, dtype=torch.long)])
        labels = torch.cat([labels, torch.full((seq_len - n,), IGNORE_INDEX, dtype=torch.long)])
    pos = torch.cat([torch.arange(k) for k in lens])
    return ids.long(), labels.long(), pos, lens


def collate_rows(rows: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Fixed-length rows (from `pad_row`) + their images -> one micro-batch."""
    lens = [k for r in rows for k in r["seq_lens"]]
    cu = torch.zeros(len(lens) + 1, dtype=torch.int32)
    cu[1:] = torch.tensor(lens).cumsum(0)
    pv = [r["pixel_values"] for r in rows if r["pixel_values"] is not None
          and len(r["pixel_values"])]
    grid = [r["image_grid_thw"] for r in rows if r["image_grid_thw"] is not None
            and len(r["image_grid_thw"])]
    return {
        "keys": [r.get("key") for r in rows],  # per row, for hard-sample mining (not broadcast)
        "input_ids": torch.stack([r["input_ids"] for r in rows]),
        "labels": torch.stack([r["labels"] for r in rows]),
        "position_ids": torch.stack([r["position_ids"] for r in rows]),
        "cu_seqlens": cu,
        "pixel_values": torch.cat(pv) if pv else torch.zeros(0, 588),
        "image_grid_thw": torch.cat(grid).long() if grid else torch.zeros(0, 3, dtype=torch.long),
    }


def load_tokenizer(spec: str, mc: LlavaOV15Config):
    """"word" = the model's test tokenizer (fast), "qwen" = the real Qwen2 tokenizer, or a path."""
    from tokenizers import Tokenizer

    if spec == "word":
        from llava_ov15.model.testing import word_tokenizer

        return word_tokenizer(mc, ["describe", "the", "image"])
    if spec == "qwen":
        from llava_ov15.data.tokenizer import qwen_tokenizer_json

        return Tokenizer.from_file(str(qwen_tokenizer_json()))
    return Tokenizer.from_file(spec)


# ---- synthetic packed dataset -------------------------------------------------------------
class SyntheticPackedSource:
    """Deterministic packs of (image, caption) chats; pack g depends only on (seed, g).

    Each sub-sample is a colour-class image (solid colour + noise, random size) and a caption
    whose words are drawn from that class's vocabulary, so the adapter can learn something. Rows
    go through the model's real processor (smart_resize, patchify, chat template, placeholder
    expansion) and a tokenizer. Labels cover the answer tokens and the closing <|im_end|>.

    Micro-batch k of data-parallel rank r holds packs (k·dp + r)·B ... +B-1, so any (dp, B) split
    of a global batch reads the same packs; the state is the global number of packs consumed.
    """

    def __init__(self, mc: LlavaOV15Config, tokenizer, seq_len: int, micro_batch_size: int,
                 dp_rank: int = 0, dp_size: int = 1, seed: int = 0,
                 image_sizes: Sequence[int] = (28, 84), caption_words: Sequence[int] = (3, 12),
                 num_classes: int = 8, images_per_sample: int = 1,
                 min_pixels: int = MIN_PIXELS, max_pixels: int = MAX_PIXELS,
                 num_packs: int | None = None,
                 packed: bool = True):
        self.mc, self.tok = mc, tokenizer
        self.packed = packed
        self.num_packs = num_packs
        self.seq_len, self.mbs = seq_len, micro_batch_size
        self.dp_rank, self.dp_size, self.seed = dp_rank, dp_size, seed
        self.image_sizes, self.caption_words = tuple(image_sizes), tuple(caption_words)
        self.num_classes, self.images_per_sample = num_classes, images_per_sample
        self.min_pixels, self.max_pixels = min_pixels, max_pixels
        self.rows = 0  # rows this rank has yielded
        # Caption words: "w<k>" exist in the test word tokenizer; any BPE tokenizer splits them.
        self.vocab = [[f"w{20 + 6 * c + j}" for j in range(6)] for c in range(num_classes)]
        self.colours = np.random.default_rng(seed + 99).integers(0, 256, (num_classes, 3))
        self._pad = mc.tokens.endoftext

    # one chat sample -> (ids, labels, pixel_values, grid)
    def _sample(self, rng: np.random.Generator):
        lo, hi = self.image_sizes
        cls = int(rng.integers(self.num_classes))
        images = []
        for _ in range(self.images_per_sample):
            h, w = (int(rng.integers(lo // 28, hi // 28 + 1)) * 28 for _ in range(2))
            img = self.colours[cls][None, None] + rng.normal(0, 20, (h, w, 3))
            images.append(np.clip(img, 0, 255).astype(np.uint8))
        n_words = int(rng.integers(self.caption_words[0], self.caption_words[1] + 1))
        caption = " ".join(self.vocab[cls][int(i)] for i in rng.integers(0, 6, n_words))
        pv, grid = preprocess_images(images, self.min_pixels, self.max_pixels)
        content = [{"type": "image"} for _ in images] + [{"type": "text",
                                                         "text": "describe the image"}]
        prompt = expand_image_tokens(
            render_chat([{"role": "user", "content": content}], add_generation_prompt=True), grid)
        enc = self.tok.encode
        p_ids = enc(prompt, add_special_tokens=False).ids
        a_ids = enc(caption + IM_END, add_special_tokens=False).ids
        t_ids = enc("\n", add_special_tokens=False).ids
        ids = p_ids + a_ids + t_ids
        labels = [IGNORE_INDEX] * len(p_ids) + a_ids + [IGNORE_INDEX] * len(t_ids)
        return ids, labels, pv, grid

    def pack(self, g: int) -> dict[str, Any]:
        """Pack number g: sub-samples appended until the next does not fit."""
        if self.num_packs:
            g %= self.num_packs
        rng = np.random.default_rng([self.seed, g])
        ids: list[int] = []
        labels: list[int] = []
        lens: list[int] = []
        pvs, grids = [], []
        while True:
            s_ids, s_labels, pv, grid = self._sample(rng)
            if len(s_ids) > self.seq_len:
                raise ValueError(f"a synthetic sample ({len(s_ids)} tokens) exceeds "
                                 f"data.seq_len={self.seq_len}")
            if len(ids) + len(s_ids) > self.seq_len:
                break
            ids += s_ids
            labels += s_labels
            lens.append(len(s_ids))
            pvs.append(pv)
            grids.append(grid)
            if not self.packed:
                break
        i, lab, pos, lens = pad_row(torch.tensor(ids), torch.tensor(labels), lens, self.seq_len,
                                    self._pad)
        return {"input_ids": i, "labels": lab, "position_ids": pos, "seq_lens": lens,
                "pixel_values": torch.cat(pvs), "image_grid_thw": torch.cat(grids),
                "num_samples": len(pvs)}

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        return self

    @property
    def step(self) -> int:  # micro-batches this rank has yielded
        return self.rows // self.mbs

    def next_row(self) -> dict[str, Any]:
        k, j = divmod(self.rows, self.mbs)
        g = (k * self.dp_size + self.dp_rank) * self.mbs + j
        self.rows += 1
        row = self.pack(g)
        row["key"] = f"pack{g % self.num_packs if self.num_packs else g}"
        row["epoch"] = g // self.num_packs if self.num_packs else 0
        return row

    def __next__(self) -> dict[str, torch.Tensor]:
        return collate_rows([self.next_row() for _ in range(self.mbs)])

    def state_dict(self) -> dict[str, Any]:
        return {"kind": "synthetic", "seed": self.seed, "seq_len": self.seq_len,
                "packs_consumed": self.step * self.dp_size * self.mbs,
                "row": self.rows % self.mbs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("kind") != "synthetic" or state["seed"] != self.seed:
            raise ValueError(f"data state {state} does not belong to this synthetic dataset")
        per = self.dp_size * self.mbs
        if state["packs_consumed"] % per:
            raise ValueError(f"{state['packs_consumed']} packs consumed is not a multiple of "
                             f"dp·micro_batch_size = {per}")
        self.rows = state["packs_consumed"] // per * self.mbs + int(state.get("row", 0))


# ---- adapter onto the real loader (llava_ov15.data) ----------------------------------------
def split_pack(item: dict[str, Any], image_token: int, merge: int = 2) -> list[dict[str, Any]]:
    """A pack's sub-samples as separate items (for ``data.packed: false``): ids/labels sliced at
    ``seq_lens``, each with its own images (counted by its image-pad tokens)."""
    ids, labels = torch.as_tensor(item["input_ids"]), torch.as_tensor(item["labels"])
    pv, grid = torch.as_tensor(item["pixel_values"]), torch.as_tensor(item["image_grid_thw"])
    out, start, img, pix = [], 0, 0, 0
    for n in (int(x) for x in item["seq_lens"] if int(x) > 0):
        sub = ids[start:start + n]
        want, got, first = int((sub == image_token).sum()), 0, img
        while got < want and img < len(grid):
            got += int(grid[img].prod()) // merge**2
            img += 1
        if got != want:
            raise ValueError(f"sub-sample at token {start} has {want} image tokens but its "
                             f"images give {got}")
        npix = int(grid[first:img].prod(-1).sum()) if img > first else 0
        out.append({"key": f"{item.get('key')}#{len(out)}",
                    "input_ids": sub, "labels": labels[start:start + n], "seq_lens": [n],
                    "pixel_values": pv[pix:pix + npix], "image_grid_thw": grid[first:img]})
        start, pix = start + n, pix + npix
    return out


class PackedShardSource:
    """`llava-pack pack` shards through the real loader -> fixed-length micro-batches.

    ``ShardIterable`` + ``ShardLoader`` + ``SampleProcessor`` (built from the pack's manifest) give
    per pack ``input_ids``/``labels`` (1-D, unshifted, -100 = not trained), ``seq_lens`` (one per
    sub-sample), ``pixel_values`` [Σhw, 588], ``image_grid_thw`` [n, 3]. ``packed=True``: each
    pack is one row; ``packed=False``: each of its sub-samples is a row of its own. Rows are
    padded to ``seq_len`` with a padding sub-sample. Resume state = the loader's own state (per
    data-parallel rank) plus, when a pack's sub-samples are only partly used, how many were.
    """

    def __init__(self, path: str, tokenizer_json: str, seq_len: int, micro_batch_size: int,
                 dp_rank: int, dp_size: int, seed: int, pad_id: int, num_workers: int = 0,
                 min_pixels: int | None = None, max_pixels: int | None = None,
                 caption_format: str | None = None, packed: bool = True,
                 image_token: int | None = None, merge: int = 2):
        from llava_ov15.data import ShardIterable, ShardLoader

        ds = ShardIterable(path, rank=dp_rank, world_size=dp_size, seed=seed,
                           transform=sample_processor(path, tokenizer_json, min_pixels,
                                                      max_pixels, caption_format))
        self.loader = ShardLoader(ds, batch_size=None, num_workers=num_workers)
        self.seq_len, self.mbs, self.pad_id = seq_len, micro_batch_size, pad_id
        self.packed, self.image_token, self.merge = packed, image_token, merge
        self._it: Iterator | None = None
        self.epoch = 0
        self._pending: list[dict] = []  # packed=False: the current pack's unused sub-samples
        self._taken = 0  # ... and how many of them were used
        self._skip = 0  # after a restore: sub-samples of the next pack already used

    def _next_item(self) -> dict:
        while True:
            if self._it is None:
                self._it = iter(self.loader)
            try:
                return next(self._it)
            except StopIteration:  # next epoch
                self._it = None
                self.epoch += 1
                self.loader.dataset.set_epoch(self.epoch)

    def _next_row(self) -> dict:
        if self.packed:
            return self._next_item()
        while not self._pending:
            self._pending = split_pack(self._next_item(), self.image_token, self.merge)
            self._taken, self._skip = self._skip, 0
            del self._pending[:self._taken]
        self._taken += 1
        return self._pending.pop(0)

    def __iter__(self):
        return self

    def next_row(self) -> dict[str, Any]:
        it = self._next_row()
        n = len(it["input_ids"])
        if n > self.seq_len:
            from .config import ConfigError

            raise ConfigError(f"a pack of {n} tokens does not fit data.seq_len={self.seq_len}")
        ids, lab, pos, lens = pad_row(torch.as_tensor(it["input_ids"]),
                                      torch.as_tensor(it["labels"]), list(it["seq_lens"]),
                                      self.seq_len, self.pad_id)
        return {"input_ids": ids, "labels": lab, "position_ids": pos, "seq_lens": lens,
                "pixel_values": torch.as_tensor(it["pixel_values"]),
                "image_grid_thw": torch.as_tensor(it["image_grid_thw"]),
                "key": str(it.get("key")), "epoch": self.epoch}

    def __next__(self) -> dict[str, torch.Tensor]:
        return collate_rows([self.next_row() for _ in range(self.mbs)])

    def state_dict(self) -> dict[str, Any]:
        loader = dict(self.loader.state_dict())
        skip = 0
        if self._pending:  # re-read the current pack on resume and skip what was used
            loader["batches"] -= 1
            skip = self._taken
        return {"kind": "packed", "epoch": self.epoch, "loader": loader, "skip": skip}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch = state["epoch"]
        self.loader.dataset.set_epoch(self.epoch)
        self.loader.load_state_dict(state["loader"])
        self._it = None
        self._pending, self._taken, self._skip = [], 0, int(state.get("skip", 0))


def sample_processor(path: str, tokenizer_json: str, min_pixels: int | None,
                     max_pixels: int | None, caption_format: str | None):
    """The loader's transform rendering samples exactly as the packer measured them: the
    manifest's settings (system prompt, caption prompt, eos...) with the config's resolved
    values, which `resolve` has already checked against the manifest."""
    from llava_ov15.data import SampleProcessor

    kw = {k: v for k, v in (("min_pixels", min_pixels), ("max_pixels", max_pixels),
                            ("caption_format", caption_format)) if v is not None}
    return SampleProcessor.from_pack(path, tokenizer=tokenizer_json, **kw)


def build_source(cfg, mc: LlavaOV15Config, dp_rank: int, dp_size: int) -> BatchSource:
    """The run's batches; `cfg` has been through `resolve.resolve_inputs` (no None left)."""
    d = cfg.data
    if d.kind == "synthetic":
        tok = load_tokenizer(d.tokenizer, mc)
        return SyntheticPackedSource(
            mc, tok, d.seq_len, d.micro_batch_size, dp_rank, dp_size, d.seed, d.image_sizes,
            d.caption_words, d.num_classes, d.images_per_sample, d.min_pixels, d.max_pixels,
            d.num_packs, d.packed)
    from .resolve import tokenizer_file

    return PackedShardSource(d.path, str(tokenizer_file(d.tokenizer)), d.seq_len,
                             d.micro_batch_size, dp_rank, dp_size, d.seed, mc.tokens.endoftext,
                             d.num_workers, d.min_pixels, d.max_pixels, d.caption_format,
                             d.packed, mc.tokens.image, mc.vision.spatial_merge_size)
