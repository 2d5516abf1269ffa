"""Shard datasets over `llava-pack` output (plain or packed), backed by the Rust mmap reader.

- `ShardDataset`: map-style, `ds[i]` is sample `i` (a pack, for a packed directory).
- `ShardIterable`: a `torch.utils.data.IterableDataset` for training. Every sample is read
  exactly once per epoch across all data-parallel ranks × DataLoader workers ("consumers").

Epoch order, deterministic from `(seed, epoch)`:
1. the shard order is shuffled (same permutation on every consumer);
2. the concatenated sample stream is cut into `C = world_size × num_workers` contiguous,
   near-equal chunks (sizes differ by at most one) — consumer `rank × num_workers + worker`
   takes chunk `c`, so sharding works with uneven shards and with fewer shards than workers,
   while each consumer still reads mostly sequentially inside few shards;
3. each consumer shuffles its chunk through a bounded buffer (`buffer_size` sample indices).
The shuffle runs over sample *indices*, so skipping ahead on resume reads no data.

Resume: `ShardLoader` (a `DataLoader`) counts the batches it handed out; its `state_dict()`
records that count, and `load_state_dict()` derives how many items each worker had produced
(PyTorch's in-order loader takes batches from workers round-robin, skipping exhausted ones),
and which worker was next (the restored loader's workers are rotated to start there), so the
resumed stream is exactly the rest of the uninterrupted one. Restoring requires the
same `world_size`, `num_workers`, `batch_size`, `seed` and data; a mismatch is a `ValueError`.
Iterating a `ShardIterable` directly (no workers) is resumable through its own `state_dict()`.
Exact resume assumes no sample was skipped (`skip_errors`) before the saved position, and
non-persistent workers (the dataset is re-pickled to the workers at every `iter()`).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from llava_ov15 import _native

log = logging.getLogger(__name__)

ShardError = _native.ShardError


def _dist_rank_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    if rank is not None and world_size is not None:
        return rank, world_size
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return (torch.distributed.get_rank() if rank is None else rank,
                torch.distributed.get_world_size() if world_size is None else world_size)
    return rank or 0, world_size or 1


class _Base:
    """Shared reading and error policy."""

    def __init__(self, path: str | Path, *, transform: Callable[[dict], Any] | None = None,
                 skip_errors: bool = False) -> None:
        self.path = str(path)
        self.transform = transform
        self.skip_errors = skip_errors
        self.skipped = 0
        self._reader: _native.ShardReader | None = None
        for name, why in self.reader.skipped:
            self.skipped += 1
            log.warning("skipping shard %s: %s", name, why)

    @property
    def reader(self) -> _native.ShardReader:
        # Opened lazily so that pickling to DataLoader workers never ships a mapping.
        if self._reader is None:
            self._reader = _native.ShardReader(self.path, skip_bad_shards=self.skip_errors)
        return self._reader

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_reader"] = None
        return state

    def __len__(self) -> int:
        return len(self.reader)

    def _load(self, index: int) -> Any:
        """Sample `index` (transformed); errors name shard and offset. `None` = skipped."""
        sample = None
        try:
            sample = self.reader.sample(index)
            return self.transform(sample) if self.transform is not None else sample
        except (ShardError, ValueError) as e:
            where = (f"{sample['shard']} @ offset {sample['offset']} (sample {sample['key']!r})"
                     if sample is not None else f"sample {index}")
            msg = str(e) if isinstance(e, ShardError) else f"{where}: {e}"
            if not self.skip_errors:
                raise ShardError(msg) from e
            self.skipped += 1
            log.warning("skipping %s", msg)
            return None


class ShardDataset(_Base, torch.utils.data.Dataset):
    """Map-style access: `ds[i]` → sample dict (`key, shard, offset, json, images, members`),
    or `transform(sample)`. With `skip_errors=True` a bad sample gives `None`."""

    def __getitem__(self, index: int) -> Any:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"sample index {index} out of range ({n} samples)")
        return self._load(index % n)


def epoch_stream(shard_lengths: list[int], seed: int, epoch: int) -> list[tuple[int, int]]:
    """The epoch's shard order as `(first global index, length)` runs."""
    starts = _starts(shard_lengths)
    order = list(range(len(shard_lengths)))
    random.Random(f"llava-ov15 shards {seed} {epoch}").shuffle(order)
    return [(starts[i], shard_lengths[i]) for i in order if shard_lengths[i]]


def consumer_chunk(runs: list[tuple[int, int]], consumer: int, consumers: int) -> Iterator[int]:
    """Global sample indices of `consumer`'s contiguous chunk of the concatenated runs."""
    total = sum(n for _, n in runs)
    lo, hi = consumer * total // consumers, (consumer + 1) * total // consumers
    pos = 0
    for start, n in runs:
        a, b = max(lo, pos), min(hi, pos + n)
        if a < b:
            yield from range(start + a - pos, start + b - pos)
        pos += n
        if pos >= hi:
            return


def chunk_length(total: int, consumer: int, consumers: int) -> int:
    return (consumer + 1) * total // consumers - consumer * total // consumers


def buffer_shuffle(items: Iterator[int], size: int, rng: random.Random) -> Iterator[int]:
    """Bounded-memory shuffle: keep `size` items, emit a random one per new item."""
    if size <= 1:
        yield from items
        return
    buf: list[int] = []
    for x in items:
        if len(buf) < size:
            buf.append(x)
            continue
        j = rng.randrange(size)
        yield buf[j]
        buf[j] = x
    rng.shuffle(buf)
    yield from buf


def stream_indices(lengths: list[int], consumer: int, consumers: int, *, seed: int = 0,
                   epoch: int = 0, shuffle: bool = True, buffer_size: int = 1000) -> Iterator[int]:
    """Global sample indices consumer `consumer` of `consumers` yields in epoch `epoch`."""
    if shuffle:
        runs = epoch_stream(lengths, seed, epoch)
    else:
        runs = [(s, n) for s, n in zip(_starts(lengths), lengths, strict=True) if n]
    chunk = consumer_chunk(runs, consumer, consumers)
    if not shuffle:
        return chunk
    rng = random.Random(f"llava-ov15 buffer {seed} {epoch} {consumer} {consumers}")
    return buffer_shuffle(chunk, buffer_size, rng)


class ShardIterable(_Base, IterableDataset):
    """Training stream; see the module docstring for order, sharding and resume."""

    def __init__(self, path: str | Path, *, rank: int | None = None,
                 world_size: int | None = None, seed: int = 0, shuffle: bool = True,
                 buffer_size: int = 1000, epoch: int = 0,
                 transform: Callable[[dict], Any] | None = None,
                 skip_errors: bool = False) -> None:
        super().__init__(path, transform=transform, skip_errors=skip_errors)
        self.rank, self.world_size = _dist_rank_world(rank, world_size)
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} not in [0, {self.world_size})")
        self.seed, self.shuffle, self.buffer_size, self.epoch = seed, shuffle, buffer_size, epoch
        self.lengths = list(self.reader.shard_lengths)
        self._skip: dict[int, int] = {}  # worker id -> items to skip (set by a restore)
        self._consumed = 0  # items yielded by in-process (no-worker) iteration this epoch
        self._rotation = 0  # worker w serves stream (w + rotation) % num_workers (restores)

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self._skip, self._consumed, self._rotation = epoch, {}, 0, 0

    def indices(self, worker: int = 0, num_workers: int = 1) -> Iterator[int]:
        """This rank's `worker`'s sample indices for the current epoch, in yield order."""
        return stream_indices(self.lengths, self.rank * num_workers + worker,
                              self.world_size * num_workers, seed=self.seed, epoch=self.epoch,
                              shuffle=self.shuffle, buffer_size=self.buffer_size)

    def worker_length(self, worker: int, num_workers: int) -> int:
        consumers = self.world_size * num_workers
        return chunk_length(sum(self.lengths), self.rank * num_workers + worker, consumers)

    def __iter__(self) -> Iterator[Any]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        worker = (worker + self._rotation) % num_workers
        skip = self._skip.get(worker, 0)
        it = self.indices(worker, num_workers)
        for _ in range(skip):
            next(it, None)
        in_process = info is None
        if in_process:
            self._consumed = 0
        for index in it:
            item = self._load(index)
            if in_process:
                self._consumed += 1
            if item is not None:
                yield item
        if in_process:
            self._consumed += self._skip.pop(0, 0)

    # In-process (no DataLoader workers) resume.
    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "seed": self.seed, "rank": self.rank,
                "world_size": self.world_size, "num_workers": 0,
                "consumed": self._consumed + self._skip.get(0, 0)}

    def load_state_dict(self, state: dict) -> None:
        self._check(state, num_workers=0)
        self.epoch = state["epoch"]
        self._skip, self._consumed = {0: state["consumed"]}, 0

    def _check(self, state: dict, **expect: Any) -> None:
        mine = {"seed": self.seed, "rank": self.rank, "world_size": self.world_size, **expect}
        bad = {k: (state.get(k), v) for k, v in mine.items() if state.get(k) != v}
        if bad:
            raise ValueError(f"cannot restore: saved vs current differ in {bad}")


def _starts(lengths: list[int]) -> list[int]:
    out, s = [], 0
    for n in lengths:
        out.append(s)
        s += n
    return out


def items_per_worker(lengths: list[int], batch_size: int, batches: int) -> tuple[list[int], int]:
    """Items each worker had produced after the in-order loader yielded `batches` batches
    (batches come round-robin from workers, skipping workers that have run out), and the
    worker the next batch would have come from."""
    per = [-(-n // batch_size) for n in lengths]  # batches each worker produces
    taken = [0] * len(lengths)
    left, last = batches, -1
    while left > 0:
        active = [w for w, p in enumerate(per) if taken[w] < p]
        if not active:
            break
        rounds = min(min(per[w] - taken[w] for w in active), left // len(active))
        if rounds:
            for w in active:
                taken[w] += rounds
            left -= rounds * len(active)
            last = active[-1]
            continue
        for w in active[:left]:
            taken[w] += 1
        last, left = active[left - 1], 0
    n = len(lengths)
    nxt = next((w % n for w in range(last + 1, last + 1 + n) if taken[w % n] < per[w % n]), 0)
    return [min(n, t * batch_size) for n, t in zip(lengths, taken, strict=True)], nxt


class ShardLoader(DataLoader):
    """A `DataLoader` over a `ShardIterable` that can save and restore its position.

    Use the default in-order loading (`in_order=True`); `batch_size=None` yields items.
    """

    def __init__(self, dataset: ShardIterable, **kwargs: Any) -> None:
        super().__init__(dataset, **kwargs)
        self._batches = 0

    def __iter__(self) -> Iterator[Any]:
        self._batches = self._resumed_batches()
        for batch in super().__iter__():
            self._batches += 1
            yield batch
        self.dataset._skip, self.dataset._rotation, self._restored = {}, 0, 0

    def _resumed_batches(self) -> int:
        return getattr(self, "_restored", 0)

    def state_dict(self) -> dict:
        ds: ShardIterable = self.dataset
        return {"epoch": ds.epoch, "seed": ds.seed, "rank": ds.rank,
                "world_size": ds.world_size, "num_workers": self.num_workers,
                "batch_size": self.batch_size, "batches": self._batches}

    def load_state_dict(self, state: dict) -> None:
        ds: ShardIterable = self.dataset
        ds._check(state, num_workers=self.num_workers, batch_size=self.batch_size)
        ds.epoch = state["epoch"]
        workers = max(1, self.num_workers)
        lengths = [ds.worker_length(w, workers) for w in range(workers)]
        done, nxt = items_per_worker(lengths, self.batch_size or 1, state["batches"])
        # The loader restarts its round-robin at worker 0: rotate the streams so that
        # worker 0 serves the stream the next batch would have come from.
        ds._skip, ds._rotation = dict(enumerate(done)), nxt
        self._restored = self._batches = state["batches"]
