"""Running one phase of a job as Ray tasks: retries, ordered commit, progress, accounting.

Every task is a call of a plain module-level function (pickled by reference, so it runs the
node's installed llava_ov15 — :meth:`Cluster.check_output` made sure that is the driver's).
A worker process or node dying mid-task makes Ray run the task again (``max_retries``); the
functions given here must therefore be idempotent, as the engine's write phases are (same
bytes at the same offsets, ``.partial`` → rename). An exception raised by the function itself
is not retried: it reaches the driver as the same exception class with the same message.
"""

from __future__ import annotations

import os
import pickle
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from llava_ov15.distributed.cluster import DistributedError, require_ray

# Fault injection for tests and drills: "PHASE=SECONDS" makes every task of PHASE sleep that
# long after its work and before returning, so a worker can be killed mid-task for real.
FAULT_PAUSE_ENV = "LLAVA_OV15_RAY_PAUSE"


@dataclass
class TaskTiming:
    phase: str
    index: int
    node: str
    pid: int
    seconds: float
    arg_bytes: int
    result_bytes: int


@dataclass
class Accounting:
    """Bytes passed through Ray (task arguments + results, as the driver sent/received them)
    and the timing of every finished task."""

    arg_bytes: int = 0
    result_bytes: int = 0
    timings: list[TaskTiming] = field(default_factory=list)
    phase_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def object_store_bytes(self) -> int:
        return self.arg_bytes + self.result_bytes

    def summary(self) -> dict[str, Any]:
        phases: dict[str, dict[str, Any]] = {}
        for t in self.timings:
            p = phases.setdefault(t.phase, {"tasks": 0, "task_seconds": 0.0, "nodes": set()})
            p["tasks"] += 1
            p["task_seconds"] += t.seconds
            p["nodes"].add(t.node)
        for name, p in phases.items():
            p["nodes"] = len(p["nodes"])
            p["wall_seconds"] = self.phase_seconds.get(name, 0.0)
        return {"object_store_bytes": self.object_store_bytes, "arg_bytes": self.arg_bytes,
                "result_bytes": self.result_bytes, "phases": phases,
                "tasks": [asdict(t) for t in self.timings]}

    def log_line(self) -> str:
        nodes = len({t.node for t in self.timings})
        return (f"ray: {len(self.timings)} tasks on {nodes} node(s), "
                f"{_fmt_bytes(self.object_store_bytes)} through the object store "
                f"({_fmt_bytes(self.arg_bytes)} arguments, {_fmt_bytes(self.result_bytes)} "
                "results)")


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _size(x: Any) -> int:
    if isinstance(x, (bytes, bytearray, memoryview)):
        return len(x)
    if isinstance(x, str):
        return len(x.encode())
    if isinstance(x, (tuple, list)):
        return sum(_size(v) for v in x)
    return len(pickle.dumps(x, protocol=5))


class Progress:
    """One bar on a terminal (stderr), a log line every 10 s otherwise — the engine's rule."""

    def __init__(self, mode: str, phase: str, total: int) -> None:
        if mode not in ("auto", "bar", "log", "quiet"):
            raise ValueError(f"progress must be auto, bar, log or quiet, not {mode!r}")
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "log"
        self.mode, self.phase, self.total = mode, phase, total
        self.done = 0
        self.t0 = self.last = time.monotonic()

    def _text(self) -> str:
        dt = max(time.monotonic() - self.t0, 1e-3)
        rate = self.done / dt
        eta = (self.total - self.done) / rate if rate > 0 else 0.0
        return (f"{self.phase}: {self.done}/{self.total} tasks ({rate:.1f}/s, "
                f"ETA {eta:.0f}s)")

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if self.mode == "bar" and now - self.last >= 0.25:
            width = 30
            fill = int(width * self.done / max(self.total, 1))
            sys.stderr.write(f"\r[{'#' * fill}{'.' * (width - fill)}] {self._text()}")
            sys.stderr.flush()
            self.last = now
        elif self.mode == "log" and now - self.last >= 10.0:
            print(f"llava-pack: {self._text()}", file=sys.stderr, flush=True)
            self.last = now

    def close(self, finished: bool = True) -> None:
        if self.mode == "bar":
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()
        if finished and self.mode in ("bar", "log"):
            print(f"llava-pack: {self._text()} done in {time.monotonic() - self.t0:.1f}s",
                  file=sys.stderr, flush=True)


def _pause_for(phase: str) -> float:
    spec = os.environ.get(FAULT_PAUSE_ENV, "")
    for item in spec.split(","):
        name, _, secs = item.partition("=")
        if name.strip() == phase and secs:
            return float(secs)
    return 0.0


def _call(fn: Callable[..., Any], common: tuple, args: tuple, pause: float) -> tuple:
    """Runs on a worker: the task body, timed; exceptions travel as (module, class, message)
    because native exception classes do not pickle across processes."""
    t0 = time.perf_counter()
    try:
        result = fn(*common, *args)
    except Exception as e:
        return ("error", type(e).__module__, type(e).__name__, str(e))
    seconds = time.perf_counter() - t0
    if pause:
        time.sleep(pause)
    import ray

    node = ray.get_runtime_context().get_node_id()
    return ("ok", result, node, os.getpid(), seconds)


def _reraise(module: str, name: str, message: str) -> None:
    import builtins

    from llava_ov15 import _native

    cls = getattr(_native, name, None) if module in ("_native", "llava_ov15._native") else None
    if cls is None and module == "builtins":
        cls = getattr(builtins, name, None)
    if isinstance(cls, type) and issubclass(cls, Exception):
        raise cls(message)
    raise DistributedError(f"{name}: {message}")


def run_tasks(
    fn: Callable[..., Any],
    args: Sequence[tuple],
    *,
    phase: str,
    common: tuple = (),
    on_result: Callable[[int, Any], None] | None = None,
    ordered: bool = True,
    progress: str = "auto",
    accounting: Accounting | None = None,
    max_retries: int = 3,
    num_cpus: float = 1,
    max_in_flight: int | None = None,
) -> list[Any] | None:
    """Run ``fn(*common, *args[i])`` for every i as Ray tasks (inside :func:`connect`).

    ``common`` is put into the object store once and shared by all tasks. Results are handed
    to ``on_result(i, result)`` on the driver — in index order if ``ordered`` (a result that
    finishes early waits for its predecessors), else as they finish — and then dropped, so the
    driver holds only what it keeps; without ``on_result`` the list of results is returned.
    At most ``max_in_flight`` tasks (default: 2 × the cluster's CPUs) are submitted at a time.
    Ctrl-C cancels the outstanding tasks and re-raises.
    """
    ray = require_ray()
    acc = accounting if accounting is not None else Accounting()
    n = len(args)
    results: list[Any] | None = [None] * n if on_result is None else None
    if max_in_flight is None:
        max_in_flight = max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))
    remote = ray.remote(_call).options(name=f"llava-{phase}", num_cpus=num_cpus,
                                       max_retries=max_retries, retry_exceptions=False)
    common_ref = ray.put(common) if common else None
    if common:
        acc.arg_bytes += _size(common)
    pause = _pause_for(phase)
    bar = Progress(progress, phase, n)
    started = time.monotonic()
    pending: dict[Any, int] = {}
    arg_size: dict[int, int] = {}  # of tasks in flight: args may be made on demand
    ready: dict[int, Any] = {}
    next_submit = next_commit = 0

    def commit(i: int, value: Any) -> None:
        if on_result is not None:
            on_result(i, value)
        else:
            results[i] = value

    try:
        while next_commit < n:
            while next_submit < n and len(pending) + len(ready) < max_in_flight:
                a = tuple(args[next_submit])
                arg_size[next_submit] = _size(a)
                acc.arg_bytes += arg_size[next_submit]
                ref = remote.remote(fn, common_ref if common_ref is not None else (), a, pause)
                pending[ref] = next_submit
                next_submit += 1
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                i = pending.pop(ref)
                try:
                    out = ray.get(ref)
                except ray.exceptions.RayError as e:
                    # The last line names the cause (worker died, import error on the node, …).
                    lines = [x for x in str(e).strip().splitlines() if x.strip()]
                    why = lines[-1].strip() if lines else type(e).__name__
                    raise DistributedError(f"{phase} task {i} failed (retried up to "
                                           f"{max_retries} times): {why}") from None
                if out[0] == "error":
                    _reraise(*out[1:])
                _, value, node, pid, seconds = out
                size = _size(value)
                acc.result_bytes += size
                acc.timings.append(TaskTiming(phase, i, node, pid, seconds, arg_size.pop(i),
                                              size))
                bar.update()
                if ordered:
                    ready[i] = value
                    while next_commit in ready:
                        commit(next_commit, ready.pop(next_commit))
                        next_commit += 1
                else:
                    commit(i, value)
                    next_commit += 1
    except BaseException:
        for ref in pending:
            try:
                ray.cancel(ref, force=True)
            except Exception:  # already finished or its worker is gone: nothing to stop
                pass
        raise
    finally:
        bar.close(finished=next_commit == n)
        acc.phase_seconds[phase] = acc.phase_seconds.get(phase, 0.0) + time.monotonic() - started
    return results
