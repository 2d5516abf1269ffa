"""Stage 2 hard-sample mining (`train.hard_mining: {fraction, boost, warmup_steps, ema}`).

`HardMiningSource` wraps a row stream (`data.BatchSource`). The trainer reports every row's loss
after its step (`record`: token-mean CE of the row, by the row's sample key — one sample per row
in stage 2's unpacked rows, the pack otherwise); the source keeps the recent loss per key (EMA,
`ema`=0 keeps the last). From the second epoch on, once `warmup_steps` optimizer steps are done,
a row whose recent loss is among the hardest `fraction` of all recorded losses (threshold fixed
per epoch, when its first row is drawn) is drawn `boost` times: it is repeated right after itself
floor(boost) - 1 times, plus once more with probability frac(boost), drawn from a generator
seeded by (seed, epoch, key) — deterministic for a seed, with no RNG state to carry.

State (saved per data-parallel rank in the checkpoint): the recorded losses, the epoch's
threshold, the wrapped source's state and, while a row is being repeated, the source's state from
before that row plus the repeats left (the row is read again on resume), so a resumed run draws
exactly the rows an uninterrupted run would.
"""

from __future__ import annotations

import math
import zlib
from typing import Any

import numpy as np


class HardMiningSource:
    def __init__(self, source, fraction: float, boost: float, warmup_steps: int = 0,
                 ema: float = 0.0, seed: int = 0):
        self.source, self.mbs = source, source.mbs
        self.fraction, self.boost, self.warmup, self.ema = fraction, boost, warmup_steps, ema
        self.seed = seed
        self.losses: dict[str, float] = {}
        self.step = 0  # optimizer steps recorded
        self.threshold: tuple[int, float] | None = None  # (epoch, loss threshold)
        self._row: dict | None = None  # the row being repeated
        self._before: dict | None = None  # the source's state before that row
        self._left = 0
        self.boosted = 0  # extra rows drawn (this run)

    def __iter__(self):
        return self

    def __next__(self):
        from .data import collate_rows

        return collate_rows([self.next_row() for _ in range(self.mbs)])

    # ---- drawing ----------------------------------------------------------------------------
    def _threshold(self, epoch: int) -> float | None:
        if self.threshold is None or self.threshold[0] != epoch:
            if not self.losses:
                return None
            v = np.sort(np.fromiter(self.losses.values(), np.float64))
            k = max(1, int(math.ceil(self.fraction * len(v))))
            self.threshold = (epoch, float(v[len(v) - k]))
        return self.threshold[1]

    def copies(self, key: str, epoch: int) -> int:
        """How many times this row is drawn (1 = not boosted)."""
        if epoch < 1 or self.step < self.warmup or key not in self.losses:
            return 1
        t = self._threshold(epoch)
        if t is None or self.losses[key] < t:
            return 1
        n = int(math.floor(self.boost))
        frac = self.boost - n
        if frac > 0:
            rng = np.random.default_rng([self.seed, epoch, zlib.crc32(key.encode())])
            n += int(rng.random() < frac)
        return n

    def next_row(self) -> dict[str, Any]:
        if self._left > 0:
            self._left -= 1
            self.boosted += 1
            return dict(self._row)
        before = self.source.state_dict()
        row = self.source.next_row()
        extra = self.copies(row["key"], row["epoch"]) - 1
        if extra > 0:
            self._row, self._before, self._left = row, before, extra
        else:
            self._row = self._before = None
        return row

    # ---- losses -----------------------------------------------------------------------------
    def record(self, step: int, keys: list, losses: list[float]) -> None:
        """Row losses of optimizer step `step` (NaN / missing keys = rows without targets)."""
        self.step = step
        for k, v in zip(keys, losses, strict=True):
            if k is None or not math.isfinite(v):
                continue
            old = self.losses.get(k)
            self.losses[k] = v if old is None or self.ema == 0 else \
                self.ema * old + (1 - self.ema) * v

    # ---- state ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        repeating = self._left > 0
        return {"kind": "hard_mining", "losses": dict(self.losses), "step": self.step,
                "threshold": self.threshold,
                "source": self._before if repeating else self.source.state_dict(),
                "repeat_left": self._left if repeating else 0}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("kind") != "hard_mining":  # a checkpoint from before mining was on
            self.source.load_state_dict(state)
            return
        self.losses, self.step = dict(state["losses"]), int(state["step"])
        self.threshold = tuple(state["threshold"]) if state["threshold"] is not None else None
        self.source.load_state_dict(state["source"])
        self._left = int(state["repeat_left"])
        if self._left > 0:  # the row being repeated: read it again
            self._before = state["source"]
            self._row = self.source.next_row()
        else:
            self._row = self._before = None
