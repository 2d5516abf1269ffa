"""One worker thread owns the model and runs concurrent requests as batches.

Batch-at-a-time: the worker takes the first waiting job, gathers more for a short window (up to
`max_batch`), and runs them through one left-padded `generate` call. Each row keeps its own
limits: the stream callback finishes a row on its end token, its `max_tokens`, a stop string or
cancellation (a client that went away), and reports it to its request at once, so a short answer
does not wait for the longest row of its batch. Per-row sampling uses a generator per request:
a seeded request draws from its own stream whatever it is batched with.

Left padding with masked pad keys makes a greedy row compute what it computes alone (see
`model/generate.py`), so a request's greedy answer does not depend on its batch.
"""

from __future__ import annotations

import logging
import queue
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..model.generate import GenerationConfig, generate, sample_next

log = logging.getLogger("llava_ov15.serve")

# Events sent to a job's sink: ("delta", text), ("done", finish_reason), ("error", message).
Event = tuple[str, Any]


@dataclass(eq=False)
class Job:
    prompt_ids: list[int]
    pixel_values: torch.Tensor | None
    image_grid_thw: torch.Tensor | None
    max_tokens: int
    sink: Callable[[Event], None]  # called from the worker thread; must not block
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int | None = None
    stops: Sequence[str] = ()
    tokens: list[int] = field(default_factory=list)
    sent: str = ""  # text already delivered
    finish_reason: str | None = None
    state: str = "new"  # new -> queued -> running -> done
    cancel_requested: bool = False
    submitted: float = 0.0


def _holdback(text: str, stops: Sequence[str]) -> int:
    """Length of the longest tail of `text` that could still grow into a stop string."""
    best = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:k]):
                best = k
                break
    return best


class Scheduler:
    def __init__(self, pipe, max_batch: int = 8, gather_s: float = 0.01, max_queue: int = 256):
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.pipe, self.max_batch, self.gather_s, self.max_queue = (pipe, max_batch, gather_s,
                                                                    max_queue)
        self._q: queue.Queue[Job | None] = queue.Queue()
        self._lock = threading.Lock()
        self._active = 0
        self._thread: threading.Thread | None = None
        self.stats = {"batches": 0, "rows": 0, "tokens": 0, "largest_batch": 0}

    # ---- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="llava-serve-worker",
                                            daemon=True)
            self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._q.put(None)
            self._thread.join()
            self._thread = None

    @property
    def active(self) -> int:
        """Requests accepted and not finished (waiting or generating)."""
        with self._lock:
            return self._active

    # ---- called from request handlers ----------------------------------------------------
    def submit(self, job: Job) -> bool:
        """Queue a job; False when the queue is full (the caller answers 503)."""
        with self._lock:
            if self._active >= self.max_queue:
                return False
            self._active += 1
            job.state, job.submitted = "queued", time.monotonic()
        self._q.put(job)
        return True

    def cancel(self, job: Job) -> None:
        """The client is gone: a waiting job is dropped now, a running row at its next step."""
        with self._lock:
            job.cancel_requested = True
            if job.state == "queued":
                self._finish_locked(job, "cancelled")

    # ---- worker --------------------------------------------------------------------------
    def _finish_locked(self, job: Job, reason: str) -> None:
        job.state, job.finish_reason = "done", reason
        self._active -= 1

    def _finish(self, job: Job, reason: str, event: Event | None = None) -> None:
        with self._lock:
            if job.state == "done":
                return
            self._finish_locked(job, reason)
        self._send(job, event or ("done", reason))

    @staticmethod
    def _send(job: Job, event: Event) -> None:
        try:
            job.sink(event)
        except Exception:  # a closed event loop must not take the worker down
            log.debug("event for a finished request dropped", exc_info=True)

    def _take(self, block: bool, timeout: float | None = None) -> Job | None | bool:
        """Next job still wanted; None = shut down; False = nothing arrived."""
        while True:
            try:
                job = self._q.get(block=block, timeout=timeout)
            except queue.Empty:
                return False
            if job is None:
                return None
            with self._lock:
                if job.state != "queued":  # cancelled while waiting
                    continue
                job.state = "running"
            return job

    def _loop(self) -> None:
        while True:
            first = self._take(block=True)
            if first is None:
                return
            batch = [first]
            deadline = time.monotonic() + self.gather_s
            stopping = False
            while len(batch) < self.max_batch:
                left = deadline - time.monotonic()
                nxt = self._take(block=left > 0, timeout=max(left, 0) or None)
                if nxt is None:
                    stopping = True
                    break
                if nxt is False:
                    break
                batch.append(nxt)
            self._run(batch)
            if stopping:
                return

    def _run(self, batch: list[Job]) -> None:
        pipe = self.pipe
        dev = pipe.device
        eos = set(pipe.eos_token_ids)
        decode = pipe.processor.decode
        gens = []
        for job in batch:
            seed = job.seed if job.seed is not None else secrets.randbits(63)
            gens.append(torch.Generator(device=dev).manual_seed(seed)
                        if job.temperature > 0 else None)

        def sampler(logits: torch.Tensor) -> torch.Tensor:
            nxt = logits.argmax(-1)
            for i, job in enumerate(batch):
                if gens[i] is not None and job.state == "running":
                    cfg = GenerationConfig(do_sample=True, temperature=job.temperature,
                                           top_p=job.top_p)
                    nxt[i] = sample_next(logits[i:i + 1], cfg, gens[i])[0]
            return nxt

        def stream(row: int, token: int) -> str | None:
            job = batch[row]
            if job.state == "done":
                return "done"
            if job.cancel_requested:
                self._finish(job, "cancelled")
                return "cancelled"
            if token in eos:
                return self._complete(job, "stop", decode(job.tokens))
            job.tokens.append(token)
            self.stats["tokens"] += 1
            text = decode(job.tokens)
            cut = min((text.index(s) for s in job.stops if s in text), default=-1)
            if cut >= 0:
                return self._complete(job, "stop", text[:cut])
            if len(job.tokens) >= job.max_tokens:
                return self._complete(job, "length", text)
            if not text.endswith("\ufffd"):  # hold back a split multi-byte character
                self._deliver(job, text[:len(text) - _holdback(text, job.stops)])
            return None

        prompts = [job.prompt_ids for job in batch]
        pvs = [job.pixel_values for job in batch if job.pixel_values is not None]
        grids = [job.image_grid_thw for job in batch if job.image_grid_thw is not None]
        cfg = GenerationConfig(max_new_tokens=max(job.max_tokens for job in batch),
                               eos_token_ids=[])  # end tokens are handled per row in `stream`
        self.stats["batches"] += 1
        self.stats["rows"] += len(batch)
        self.stats["largest_batch"] = max(self.stats["largest_batch"], len(batch))
        try:
            generate(pipe.model, prompts, torch.cat(pvs) if pvs else None,
                     torch.cat(grids) if grids else None, cfg, stream=stream, sampler=sampler)
        except Exception as e:  # one bad batch answers 500 to its requests; the server lives on
            log.exception("generation failed")
            for job in batch:
                self._finish(job, "error", ("error", f"generation failed: {e}"))
            return
        for job in batch:  # every row ends in `stream`; this is a safety net
            if job.state != "done":
                self._complete(job, "length", decode(job.tokens))

    def _deliver(self, job: Job, text: str) -> None:
        if len(text) > len(job.sent):
            delta, job.sent = text[len(job.sent):], text
            self._send(job, ("delta", delta))

    def _complete(self, job: Job, reason: str, text: str) -> str:
        """Deliver the rest of the answer (held-back characters included), then finish."""
        self._deliver(job, text)
        self._finish(job, reason)
        return reason
