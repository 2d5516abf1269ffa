"""Model-level checks of the issue-18 trainer extras, run in a subprocess by
tests/test_train_extras.py (megatron-core on CPU needs a process group that must not leak into
pytest). Prints one JSON line of results."""

from __future__ import annotations

import json

import torch


def _setup(sets: list[str]):
    from llava_ov15.train import trainer
    from llava_ov15.train.config import load_config

    cfg = load_config(None, ["train.steps=2", "train.lr=1e-3", "data.seq_len=96",
                             "log.progress=quiet", *sets])
    rt = trainer.init_runtime(cfg)
    model, raw, mc, tcfg = trainer.build_model(cfg, rt)
    opt, sched = trainer.build_optimizer(cfg, model, tcfg)
    return cfg, rt, model, raw, mc, opt, sched


def _grads(raw) -> dict[str, torch.Tensor]:
    return {n: p.main_grad.detach().clone() for n, p in raw.named_parameters()
            if getattr(p, "main_grad", None) is not None and float(p.main_grad.abs().sum()) > 0}


def main() -> None:
    from llava_ov15.train import trainer
    from llava_ov15.train.data import SyntheticPackedSource, collate_rows, load_tokenizer

    res: dict = {}
    # 1. stage 1 + contrastive: gradients only on the adapter and the temperature
    cfg, rt, model, raw, mc, opt, sched = _setup(
        ["train.stage=1", "train.global_batch_size=2", "data.micro_batch_size=2",
         "train.contrastive_weight=1.0"])
    src = SyntheticPackedSource(mc, load_tokenizer("word", mc), 96, 2, seed=4)
    t0 = float(raw.contrastive.logit_scale.detach()[0])
    r = trainer.train_step(cfg, rt, model, opt, sched, [next(src)])
    res["contrastive_loss"] = r["contrastive_loss"]
    res["stage1_grad"] = sorted(_grads(raw))
    res["temperature_changed"] = float(raw.contrastive.logit_scale.detach()[0]) != t0

    # 2. forward_step's loss = LM loss + weight · contrastive
    w = 0.7
    b = next(src)
    head = raw.contrastive
    out, lf = trainer.forward_step(rt.device, False, iter([b]), model[0],
                                   contrastive=(head, w, mc.tokens.image, None))
    loss, d = lf(out)
    lm = float(d["loss"][0] / d["loss"][1])
    res["weighted_total_diff"] = abs(float(loss) - (lm + w * float(d["contrastive"][0])))

    # 3. two micro-batches of one row == one micro-batch of both rows (loss and gradients)
    for mode in ("token_mean", "pack_mean"):
        got = {}
        for mbs in (1, 2):
            cfg, rt, model, raw, mc, opt, sched = _setup(
                ["train.stage=1.5", "train.global_batch_size=2", f"data.micro_batch_size={mbs}",
                 f"train.loss={mode}"])
            s = SyntheticPackedSource(mc, load_tokenizer("word", mc), 96, 1, seed=7)
            rows = [s.next_row(), s.next_row()]
            batches = [collate_rows([x]) for x in rows] if mbs == 1 else [collate_rows(rows)]
            r = trainer.train_step(cfg, rt, model, opt, sched, batches)
            got[mbs] = (r["loss"], _grads(raw))
        (l1, g1), (l2, g2) = got[1], got[2]
        res[f"{mode}_loss_diff"] = abs(l1 - l2)
        scale = max(float(g.abs().max()) for g in g1.values())
        res[f"{mode}_grad_rel_diff"] = 1.0 if sorted(g1) != sorted(g2) else max(
            float((g1[n] - g2[n]).abs().max()) for n in g1) / scale
    print("RESULT " + json.dumps(res))


if __name__ == "__main__":
    main()
