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

Equal ranks (`even=`): by default ranks differ by at most one sample (e.g. 133/133/134), which
leaves a plain DDP loop with one rank waiting in a collective for the others. `even="drop"`
gives every rank `total // world_size` samples: the stream's last `total % world_size`
samples are not read that epoch (a different shard's tail each epoch, as the shard order is
reshuffled). `even="pad"` gives every rank `ceil(total / world_size)`: the stream wraps
around, so the last rank(s) repeat up to `world_size - 1` samples from its start (what
`DistributedSampler` does). In both modes rank `r` takes stream positions `[r·N, (r+1)·N)`
and splits them among its workers the same way on every rank, so every rank also yields
the same number of batches. `len()` of a `ShardIterable` is this rank's sample count; of a
`ShardLoader`, this rank's batch count.

Resume: `ShardLoader` (a `DataLoader`) counts the batches it handed out; its `state_dict()`
records that count, and `load_state_dict()` derives how many items each worker had produced
(PyTorch's in-order loader takes batches from workers round-robin, skipping exhausted ones),
and which worker was next (the restored loader's workers are rotated to start there), so the
resumed stream is exactly the rest of the uninterrupted one. Restoring requires the
same `world_size`, `num_workers`, `batch_size`, `seed` and data; a mismatch is a `ValueError`.
Iterating a `ShardIterable` directly (no workers) is resumable through its own `state_dict()`.
Exact resume assumes no sample was skipped (`skip_errors`) before the saved position. A state
saved after `set_epoch(e)` and before that epoch's first batch resumes at the start of epoch
`e`. Workers must be non-persistent (the dataset, with its epoch and resume position, is
re-pickled to them at every `iter()`): `ShardLoader(persistent_workers=True)` is refused, and
a persistent worker of a plain `DataLoader` stops with an error on its second epoch instead of
silently repeating the first epoch's order.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
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
                 skip_errors: bool = False, exclude: str | Path | None = None) -> None:
        self.path = str(path)
        self.transform = transform
        self.skip_errors = skip_errors
        self.skipped = 0
        self._reader: _native.ShardReader | None = None
        for name, why in self.reader.skipped:
            self.skipped += 1
            log.warning("skipping shard %s: %s", name, why)
        # With `exclude` (a `llava-pack dedup` drop.txt), indices are positions among the kept
        # samples: `_kept[i]` is the reader's index of kept sample i (reading every key once).
        self._kept = None
        self.excluded = 0
        if exclude is not None:
            from llava_ov15.dedup import read_exclude

            drop = read_exclude(exclude)
            keys = (self.reader.sample(i, images=False)["key"] for i in range(len(self.reader)))
            self._kept = np.fromiter((i for i, k in enumerate(keys) if k not in drop), np.int64)
            self.excluded = len(self.reader) - len(self._kept)

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
        return len(self.reader) if self._kept is None else len(self._kept)

    def _kept_lengths(self) -> list[int]:
        """Samples per shard after `exclude`."""
        lengths = list(self.reader.shard_lengths)
        if self._kept is None:
            return lengths
        ends = np.cumsum(lengths)
        return np.diff(np.searchsorted(self._kept, ends), prepend=0).tolist()

    def _load(self, index: int) -> Any:
        """Sample `index` (transformed); errors name shard and offset. `None` = skipped."""
        sample = None
        if self._kept is not None:
            index = int(self._kept[index])
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
    or `transform(sample)`. With `skip_errors=True` a bad sample gives `None`. With
    `exclude=drop.txt` (`llava-pack dedup`) the listed samples are left out: `len()` and
    indices count the kept samples only (ShardIterable takes `exclude=` the same way)."""

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


EVEN_MODES = (None, "drop", "pad")


def consumer_span(total: int, consumer: int, consumers: int, *, num_workers: int = 1,
                  even: str | None = None) -> tuple[int, int]:
    """`[lo, hi)` stream positions of `consumer` (= rank × num_workers + worker); with `even`,
    positions past `total` wrap around to the stream's start ("pad")."""
    if even is None:
        return consumer * total // consumers, (consumer + 1) * total // consumers
    if even not in EVEN_MODES:
        raise ValueError(f"even must be None, 'drop' or 'pad', not {even!r}")
    rank, worker = divmod(consumer, num_workers)
    world = consumers // num_workers
    per_rank = total // world if even == "drop" else -(-total // world)
    base = rank * per_rank
    return (base + worker * per_rank // num_workers,
            base + (worker + 1) * per_rank // num_workers)


def consumer_chunk(runs: list[tuple[int, int]], consumer: int, consumers: int, *,
                   num_workers: int = 1, even: str | None = None) -> Iterator[int]:
    """Global sample indices of `consumer`'s contiguous chunk of the concatenated runs."""
    total = sum(n for _, n in runs)
    lo, hi = consumer_span(total, consumer, consumers, num_workers=num_workers, even=even)
    while lo < hi and total:  # "pad": a span past the end continues from the start
        end = min(hi, total)
        pos = 0
        for start, n in runs:
            a, b = max(lo, pos), min(end, pos + n)
            if a < b:
                yield from range(start + a - pos, start + b - pos)
            pos += n
            if pos >= end:
                break
        lo, hi = max(lo, end) - total, hi - total


def chunk_length(total: int, consumer: int, consumers: int, *, num_workers: int = 1,
                 even: str | None = None) -> int:
    lo, hi = consumer_span(total, consumer, consumers, num_workers=num_workers, even=even)
    return hi - lo if total else 0


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
                   epoch: int = 0, shuffle: bool = True, buffer_size: int = 1000,
                   num_workers: int = 1, even: str | None = None) -> Iterator[int]:
    """Global sample indices consumer `consumer` of `consumers` yields in epoch `epoch`
    (`num_workers` per rank matters only with `even`)."""
    if shuffle:
        runs = epoch_stream(lengths, seed, epoch)
    else:
        runs = [(s, n) for s, n in zip(_starts(lengths), lengths, strict=True) if n]
    chunk = consumer_chunk(runs, consumer, consumers, num_workers=num_workers, even=even)
    if not shuffle:
        return chunk
    rng = random.Random(f"llava-ov15 buffer {seed} {epoch} {consumer} {consumers}")
    return buffer_shuffle(chunk, buffer_size, rng)


class ShardIterable(_Base, IterableDataset):
    """Training stream; see the module docstring for order, sharding, `even` and resume.
    `len()` is this rank's number of samples per epoch."""

    def __init__(self, path: str | Path, *, rank: int | None = None,
                 world_size: int | None = None, seed: int = 0, shuffle: bool = True,
                 buffer_size: int = 1000, epoch: int = 0,
                 transform: Callable[[dict], Any] | None = None,
                 skip_errors: bool = False, even: str | None = None,
                 exclude: str | Path | None = None) -> None:
        if even not in EVEN_MODES:
            raise ValueError(f"even must be None, 'drop' or 'pad', not {even!r}")
        super().__init__(path, transform=transform, skip_errors=skip_errors, exclude=exclude)
        self.rank, self.world_size = _dist_rank_world(rank, world_size)
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} not in [0, {self.world_size})")
        self.seed, self.shuffle, self.buffer_size, self.epoch = seed, shuffle, buffer_size, epoch
        self.even = even
        self.lengths = self._kept_lengths()
        self._skip: dict[int, int] = {}  # worker id -> items to skip (set by a restore)
        self._consumed = 0  # items yielded by in-process (no-worker) iteration this epoch
        self._rotation = 0  # worker w serves stream (w + rotation) % num_workers (restores)
        self._iterated = False  # this copy has been iterated in a DataLoader worker

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self._skip, self._consumed, self._rotation = epoch, {}, 0, 0

    def __len__(self) -> int:
        return self.worker_length(0, 1)  # this rank's share (one "worker" = the whole rank)

    def indices(self, worker: int = 0, num_workers: int = 1) -> Iterator[int]:
        """This rank's `worker`'s sample indices for the current epoch, in yield order."""
        return stream_indices(self.lengths, self.rank * num_workers + worker,
                              self.world_size * num_workers, seed=self.seed, epoch=self.epoch,
                              shuffle=self.shuffle, buffer_size=self.buffer_size,
                              num_workers=num_workers, even=self.even)

    def worker_length(self, worker: int, num_workers: int) -> int:
        consumers = self.world_size * num_workers
        return chunk_length(sum(self.lengths), self.rank * num_workers + worker, consumers,
                            num_workers=num_workers, even=self.even)

    def __iter__(self) -> Iterator[Any]:
        info = get_worker_info()
        if info is not None:
            # A non-persistent worker gets a fresh copy every epoch; a second iteration of the
            # same copy means persistent workers, which never see set_epoch or a restore.
            if self._iterated:
                raise RuntimeError(
                    "ShardIterable does not support persistent_workers=True: the workers keep "
                    "the first epoch's dataset copy, so set_epoch (reshuffling) and resume "
                    "would be ignored; use persistent_workers=False")
            self._iterated = True
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
                "world_size": self.world_size, "num_workers": 0, "even": self.even,
                "consumed": self._consumed + self._skip.get(0, 0)}

    def load_state_dict(self, state: dict) -> None:
        self._check(state, num_workers=0)
        self.set_epoch(state["epoch"])
        self._skip = {0: state["consumed"]}

    def _check(self, state: dict, **expect: Any) -> None:
        # States saved before `even` existed have no key: None, the default.
        mine = {"seed": self.seed, "rank": self.rank, "world_size": self.world_size,
                "even": self.even, **expect}
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
    `len()` is the number of batches this rank's workers yield per epoch.
    `persistent_workers=True` is refused (see the module docstring).
    """

    def __init__(self, dataset: ShardIterable, **kwargs: Any) -> None:
        if kwargs.get("persistent_workers") and kwargs.get("num_workers", 0) > 0:
            raise ValueError(
                "ShardLoader does not support persistent_workers=True: persistent workers keep "
                "the first epoch's dataset copy, so set_epoch (reshuffling) and a restored "
                "position would be ignored; leave persistent_workers=False")
        super().__init__(dataset, **kwargs)
        self._batches = 0
        self._count_epoch = dataset.epoch  # the epoch `_batches` counts batches of
        self._restored = (dataset.epoch, 0)  # (epoch, batches) set by load_state_dict

    def __len__(self) -> int:
        ds: ShardIterable = self.dataset
        workers = max(1, self.num_workers)
        items = [ds.worker_length(w, workers) for w in range(workers)]
        if self.batch_size is None:
            return sum(items)
        # Each worker's last batch is partial (or dropped), so count batches per worker.
        if self.drop_last:
            return sum(n // self.batch_size for n in items)
        return sum(-(-n // self.batch_size) for n in items)

    def __iter__(self) -> Iterator[Any]:
        ds: ShardIterable = self.dataset
        epoch, restored = self._restored
        # A restore applies to the epoch it was saved in; `set_epoch` since then cleared it.
        self._batches = restored if ds._skip and epoch == ds.epoch else 0
        self._count_epoch = ds.epoch
        for batch in super().__iter__():
            self._batches += 1
            yield batch
        ds._skip, ds._rotation, self._restored = {}, 0, (ds.epoch, 0)

    def state_dict(self) -> dict:
        ds: ShardIterable = self.dataset
        # After `set_epoch(e + 1)` and before its first batch, the count still belongs to
        # epoch e: the position in the new epoch is 0, not e's total (which would skip it all).
        batches = self._batches if self._count_epoch == ds.epoch else 0
        return {"epoch": ds.epoch, "seed": ds.seed, "rank": ds.rank,
                "world_size": ds.world_size, "num_workers": self.num_workers,
                "batch_size": self.batch_size, "even": ds.even, "batches": batches}

    def load_state_dict(self, state: dict) -> None:
        ds: ShardIterable = self.dataset
        ds._check(state, num_workers=self.num_workers, batch_size=self.batch_size)
        ds.set_epoch(state["epoch"])
        workers = max(1, self.num_workers)
        lengths = [ds.worker_length(w, workers) for w in range(workers)]
        done, nxt = items_per_worker(lengths, self.batch_size or 1, state["batches"])
        # The loader restarts its round-robin at worker 0: rotate the streams so that
        # worker 0 serves the stream the next batch would have come from.
        ds._skip, ds._rotation = dict(enumerate(done)), nxt
        self._restored = (ds.epoch, state["batches"])
        self._batches, self._count_epoch = state["batches"], ds.epoch
