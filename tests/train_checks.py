"""Model-level trainer checks, run in a subprocess by tests/test_train_model.py.

They need megatron-core with `llava_ov15.train.cpu_compat` installed and a process group, which
must not leak into the pytest process. Prints one JSON line of results.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch


def main(out_dir: str) -> None:
    from llava_ov15.convert import hf_to_mcore, mcore_to_hf
    from llava_ov15.model.checkpoint import iter_checkpoint
    from llava_ov15.model.testing import tiny_model, word_tokenizer
    from llava_ov15.train import checkpointing as ck
    from llava_ov15.train import trainer
    from llava_ov15.train.config import load_config
    from llava_ov15.train.data import SyntheticPackedSource, load_tokenizer
    from llava_ov15.train.megatron_model import (
        build_model,
        hf_to_megatron,
        segment_ids,
        shifted_targets,
        transformer_config,
    )

    res: dict = {}
    out = Path(out_dir)
    hf = tiny_model(seed=3).float()
    mc = hf.config
    hf_dir = out / "hf"
    hf.save_pretrained(hf_dir)
    # conversion carries the tokenizer HF -> mcore -> HF (mcore-to-hf refuses to write without)
    word_tokenizer(mc).save(str(hf_dir / "tokenizer.json"))

    # 1. megatron model (TP=1) == HF-layout model: per-token loss and logits on a packed batch.
    trainer.init_parallel(1, 1)
    m = build_model(mc, transformer_config(mc), te=False).eval()
    trainer.load_full_state(m, hf_to_megatron(hf.state_dict(), mc), m.config)
    src = SyntheticPackedSource(mc, load_tokenizer("word", mc), 96, 2, seed=5)
    b = next(src)
    args = (b["input_ids"], b["position_ids"], b["cu_seqlens"])
    with torch.no_grad():
        tok = m(*args, b["labels"], b["pixel_values"], b["image_grid_thw"])
        logits = m(*args, None, b["pixel_values"], b["image_grid_thw"])
        ref = hf(b["input_ids"], b["pixel_values"], b["image_grid_thw"],
                 position_ids=b["position_ids"], cu_seqlens=b["cu_seqlens"], labels=b["labels"])
    seg = segment_ids(b["cu_seqlens"], *b["input_ids"].shape)
    valid = shifted_targets(b["labels"], seg) != -100
    res["token_mean_vs_hf"] = abs(float(tok.sum() / valid.sum()) - float(ref.loss))
    res["logits_vs_hf"] = float((logits - ref.logits).abs().max())

    # 2. a packed row's loss == mean of its sub-samples' losses computed separately (pack_mean
    #    per sub-sample, i.e. each sub-sample alone as a one-sample row).
    row = src.pack(0)
    lens = row["seq_lens"][:-1] if row["labels"][-row["seq_lens"][-1]:].eq(-100).all() \
        else row["seq_lens"]
    cu = torch.tensor([0, *torch.tensor(row["seq_lens"]).cumsum(0).tolist()], dtype=torch.int32)
    with torch.no_grad():
        packed = m(row["input_ids"][None], row["position_ids"][None], cu, row["labels"][None],
                   row["pixel_values"], row["image_grid_thw"])
        vseg = segment_ids(cu, 1, cu[-1].item())
        pvalid = shifted_targets(row["labels"][None], vseg) != -100
        per_sub, sub_alone, start, img = [], [], 0, 0
        pix_start = 0
        for n in lens:
            sl = slice(start, start + n)
            ids = row["input_ids"][sl]
            n_img = int((ids == mc.tokens.image).sum())
            grids, k = [], 0
            while k < n_img:
                g = row["image_grid_thw"][img]
                grids.append(g)
                k += int(g.prod()) // 4
                img += 1
            grid = torch.stack(grids)
            npix = int(grid.prod(-1).sum())
            pv = row["pixel_values"][pix_start:pix_start + npix]
            pix_start += npix
            alone = m(ids[None], torch.arange(n)[None], torch.tensor([0, n], dtype=torch.int32),
                      row["labels"][sl][None], pv, grid)
            cnt = int((shifted_targets(row["labels"][sl][None],
                                       torch.zeros(1, n, dtype=torch.long)) != -100).sum())
            sub_alone.append(float(alone.sum()) / cnt)
            per_sub.append(float(packed[0, sl].sum()) / int(pvalid[0, sl].sum()))
            start += n
    res["subsample_losses_diff"] = max(abs(a - b) for a, b in zip(per_sub, sub_alone, strict=True))
    res["n_subsamples"] = len(lens)

    # 3. conversion: HF -> mcore -> HF bit-exact; converted model logits == HF model logits.
    mdir, hf2 = out / "mcore", out / "hf2"
    hf_to_mcore(hf_dir, mdir)
    mcore_to_hf(mdir, hf2)
    a, c = dict(iter_checkpoint(hf_dir)), dict(iter_checkpoint(hf2))
    res["roundtrip_keys_equal"] = sorted(a) == sorted(c)
    res["roundtrip_bitexact"] = all(torch.equal(a[k], c[k]) and a[k].dtype == c[k].dtype
                                    for k in a)
    m2 = build_model(mc, transformer_config(mc), te=False).eval()
    ck.load_model_only(mdir, [m2])
    with torch.no_grad():
        logits2 = m2(*args, None, b["pixel_values"], b["image_grid_thw"])
    res["converted_logits_vs_hf"] = float((logits2 - ref.logits).abs().max())

    # 4. freezing per stage: which parameters get gradients and change in 2 steps.
    for stage in ("1", "1.5", "2"):
        cfg = load_config(None, [f"train.stage={stage}", "train.steps=2", "train.lr=1e-3",
                                 "train.global_batch_size=2", "data.seq_len=96",
                                 f"model.hf_checkpoint={hf_dir}", "log.progress=quiet"])
        rt = trainer.init_runtime(cfg)
        model, raw, _, tcfg = trainer.build_model(cfg, rt)
        opt, sched = trainer.build_optimizer(cfg, model, tcfg)
        before = {n: p.detach().clone() for n, p in raw.named_parameters()}
        data = SyntheticPackedSource(mc, load_tokenizer("word", mc), 96, 1)
        got_grad = set()
        for _ in range(2):
            trainer.train_step(cfg, rt, model, opt, sched, [next(data), next(data)])
            got_grad |= {n for n, p in raw.named_parameters()
                         if getattr(p, "main_grad", None) is not None
                         and float(p.main_grad.abs().sum()) > 0}
        changed = {n for n, p in raw.named_parameters() if not torch.equal(p, before[n])}
        res[f"stage{stage}_changed"] = sorted(changed)
        res[f"stage{stage}_grad"] = sorted(got_grad)
        res[f"stage{stage}_all"] = sorted(before)

    # 5. token_mean loss option == global token mean of the HF model on the same micro-batches.
    cfg = load_config(None, ["train.stage=1.5", "train.steps=1", "train.loss=token_mean",
                             "train.global_batch_size=2", "data.seq_len=96",
                             f"model.hf_checkpoint={hf_dir}", "log.progress=quiet"])
    rt = trainer.init_runtime(cfg)
    model, raw, _, tcfg = trainer.build_model(cfg, rt)
    opt, sched = trainer.build_optimizer(cfg, model, tcfg)
    data = SyntheticPackedSource(mc, load_tokenizer("word", mc), 96, 1, seed=7)
    mbs = [next(data), next(data)]
    r = trainer.train_step(cfg, rt, model, opt, sched, mbs)
    tot = n = 0.0
    row_means = []
    with torch.no_grad():
        for x in mbs:
            o = hf(x["input_ids"], x["pixel_values"], x["image_grid_thw"],
                   position_ids=x["position_ids"], cu_seqlens=x["cu_seqlens"], labels=x["labels"])
            tot += float(o.loss) * o.num_loss_tokens
            n += o.num_loss_tokens
            row_means.append(float(o.loss))
    res["token_mean_loss_diff"] = abs(r["loss"] - tot / n)
    cfg.train.loss = "pack_mean"
    rt = trainer.init_runtime(cfg)
    model, raw, _, tcfg = trainer.build_model(cfg, rt)
    opt, sched = trainer.build_optimizer(cfg, model, tcfg)
    r = trainer.train_step(cfg, rt, model, opt, sched, mbs)
    res["pack_mean_loss_diff"] = abs(r["loss"] - sum(row_means) / len(row_means))
    print("RESULT " + json.dumps(res))


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as d:
        main(sys.argv[1] if len(sys.argv) > 1 else d)
