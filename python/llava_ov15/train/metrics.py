"""Step metrics: FLOP counting (LLM *and* vision tower), MFU, JSONL + TensorBoard, progress line.

FLOPs are counted from the actual micro-batches: every matmul costs 2·m·n·k forward; its
backward costs 2× that when its weights train, 1× when only the input gradient is needed
(a frozen module with trainable modules before it), 0 when nothing before it trains (e.g. the
frozen vision tower in stage 1: autograd never enters it). Attention score/value products are
counted per sub-sample (causal halves for the LLM, full per image for the ViT). With activation
recompute the recomputed forward is added too (full: whole layers; selective: the attention
core's score/value products only), so the figure is *hardware* FLOPs utilisation (HFU, the
reference's 45% claim); without recompute it is MFU. With the fused chunked loss
(`labelled_head_only`) the output layer runs on labelled tokens only, and only those count.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from llava_ov15.model.config import LlavaOV15Config

# Dense bf16 peak TFLOP/s per device, for MFU when `log.peak_tflops` is not given.
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "H800": 989.0, "A100": 312.0, "A800": 312.0,
               "L40S": 362.0, "A10": 125.0, "4090": 165.0}


def device_peak_tflops() -> float | None:
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    for key, v in PEAK_TFLOPS.items():
        if key in name:
            return v
    return None


@dataclass
class FlopCounter:
    mc: LlavaOV15Config
    vision_trains: bool  # any vision-tower weights train (stage 1.5 / 2)
    adapter_trains: bool
    llm_trains: bool
    recompute: bool | str = False  # True/"full", "selective", False/"off"
    labelled_head_only: bool = False  # train.loss_chunk_tokens > 0

    @property
    def _mode(self) -> str:
        if isinstance(self.recompute, bool):
            return "full" if self.recompute else "off"
        return self.recompute

    def _factor(self, weights_train: bool, grad_flows: bool) -> float:
        """fwd + bwd (+ recompute fwd) multiple of the forward FLOPs."""
        bwd = 2.0 if weights_train else (1.0 if grad_flows else 0.0)
        return 1.0 + bwd + (1.0 if self._mode == "full" and bwd else 0.0)

    def _selective(self, weights_train: bool, grad_flows: bool) -> float:
        """Extra multiple of the attention-core FLOPs under selective recompute."""
        return 1.0 if self._mode == "selective" and (weights_train or grad_flows) else 0.0

    def vision_forward(self, grid_thw: torch.Tensor) -> tuple[float, float]:
        """(vision-tower forward FLOPs, merger forward FLOPs) for these images."""
        v = self.mc.vision
        d, f = v.hidden_size, v.intermediate_size
        n_per = (grid_thw.prod(-1) + 1).double()  # +CLS
        n = float(n_per.sum())
        per_tok = 2 * (3 * d * d + d * d + 2 * d * f)  # qkv, proj, fc1, fc2
        attn = float((4 * n_per**2 * d).sum())  # QK^T and PV, full attention per image
        tower = v.num_layers * (n * per_tok + attn) + 2 * (n - len(n_per)) * d * v.patch_dim
        patches = n - len(n_per)
        m = d * v.spatial_merge_size**2
        merger = 2 * (patches / v.spatial_merge_size**2) * (m * m + m * v.out_hidden_size)
        return tower, merger

    def vision_attention(self, grid_thw: torch.Tensor) -> float:
        """The attention-core part of `vision_forward`'s tower FLOPs."""
        v = self.mc.vision
        n_per = (grid_thw.prod(-1) + 1).double()
        return v.num_layers * float((4 * n_per**2 * v.hidden_size).sum())

    def llm_attention(self, cu_seqlens: torch.Tensor) -> float:
        """The attention-core part of `llm_forward`'s decoder FLOPs."""
        t = self.mc.text
        lens = (cu_seqlens[1:] - cu_seqlens[:-1]).double()
        return t.num_layers * float((2 * lens**2 * t.num_heads * t.head_dim).sum())

    def llm_forward(self, cu_seqlens: torch.Tensor, tokens: int) -> tuple[float, float]:
        """(decoder forward FLOPs, LM-head forward FLOPs)."""
        t = self.mc.text
        h, q, kv = t.hidden_size, t.num_heads * t.head_dim, t.num_kv_heads * t.head_dim
        per_tok = 2 * (h * q + 2 * h * kv + q * h + 3 * h * t.intermediate_size)
        lens = (cu_seqlens[1:] - cu_seqlens[:-1]).double()
        attn = float((2 * lens**2 * q).sum())  # causal: half of 4·n²·q
        return t.num_layers * (tokens * per_tok + attn), 2.0 * tokens * h * t.vocab_size

    def batch_flops(self, batch: dict[str, torch.Tensor]) -> float:
        tokens = int(batch["input_ids"].numel())
        dec, head = self.llm_forward(batch["cu_seqlens"], tokens)
        if self.labelled_head_only and batch.get("labels") is not None:
            head *= labelled_tokens(batch["labels"], batch["cu_seqlens"]) / max(tokens, 1)
        total = 0.0
        grid = batch.get("image_grid_thw")
        vis_before = False
        if grid is not None and len(grid):
            tower, merger = self.vision_forward(grid)
            total += tower * self._factor(self.vision_trains, False)
            total += self.vision_attention(grid) * self._selective(self.vision_trains, False)
            total += merger * self._factor(self.adapter_trains, self.vision_trains)
            vis_before = self.vision_trains or self.adapter_trains
        total += dec * self._factor(self.llm_trains, vis_before)
        total += self.llm_attention(batch["cu_seqlens"]) * self._selective(self.llm_trains,
                                                                           vis_before)
        total += head * self._factor(self.llm_trains, vis_before or self.llm_trains)
        return total


def labelled_tokens(labels: torch.Tensor, cu_seqlens: torch.Tensor) -> int:
    """Tokens with a next-token target (the target is labelled and in the same sub-sample)."""
    flat = labels.reshape(-1)
    starts = cu_seqlens[1:-1].long()  # a target at a sub-sample start belongs to the next one
    starts = starts[starts < flat.numel()]
    return int((flat[1:] != -100).sum()) - int((flat[starts] != -100).sum())


def truncate_metrics(path: Path, last_step: int) -> None:
    """Keep only the records of steps <= `last_step` (the step a run resumes from): a run killed
    after logging steps it had not checkpointed replays them, and must not list them twice. A
    torn last line (kill -9 mid-write) goes too."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("step"), int) and rec["step"] <= last_step:
            keep.append(line + "\n")
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(keep))
    tmp.replace(path)


class MetricsLogger:
    """Rank-0 sink: progress bar or log lines, metrics.jsonl, TensorBoard."""

    def __init__(self, log_dir: str | None, progress: str, total_steps: int, start_step: int,
                 tensorboard: bool = True, enabled: bool = True):
        self.enabled = enabled
        self.jsonl = self.tb = self.bar = None
        if not enabled:
            return
        if log_dir:
            Path(log_dir).mkdir(parents=True, exist_ok=True)
            path = Path(log_dir) / "metrics.jsonl"
            truncate_metrics(path, start_step)
            self.jsonl = open(path, "a")  # noqa: SIM115
            if tensorboard:
                try:
                    from torch.utils.tensorboard import SummaryWriter

                    # purge_step: TensorBoard drops the events of steps being replayed
                    self.tb = SummaryWriter(str(Path(log_dir) / "tensorboard"),
                                            purge_step=start_step + 1)
                except Exception as e:  # pragma: no cover - tensorboard missing
                    print(f"[train] tensorboard disabled: {e}", file=sys.stderr)
        if progress == "auto":
            progress = "bar" if sys.stderr.isatty() else "log"
        self.mode = progress
        if progress == "bar":
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, dynamic_ncols=True,
                            desc="train")
        self.t0 = time.time()

    def log(self, rec: dict[str, Any]) -> None:
        if not self.enabled:
            return
        if self.jsonl:
            self.jsonl.write(json.dumps(rec) + "\n")
            self.jsonl.flush()
        if self.tb:
            for k, v in rec.items():
                if isinstance(v, (int, float)) and k != "step" and v is not None:
                    self.tb.add_scalar(f"train/{k}", v, rec["step"])
        mfu = f" mfu {rec['mfu'] * 100:.1f}%" if rec.get("mfu") is not None else ""
        msg = (f"loss {rec['loss']:.6f} lr {rec['lr']:.3e} gnorm {rec['grad_norm']:.3f} "
               f"tok/s {rec['tokens_per_s']:.0f}{mfu}")
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix_str(msg)
        elif self.mode == "log":
            print(f"[train] step {rec['step']} {msg}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.jsonl:
            self.jsonl.close()
        if self.tb:
            self.tb.close()
