"""Running the data engine's jobs on a Ray cluster (`--ray auto|local|ray://…`).

Python only orchestrates: tasks call the same Rust functions as the single-machine run, the
driver decides everything global and commits results in a fixed order, so the output bytes do
not depend on where (or how often) a task ran. Ray is imported lazily; without it every entry
point raises :class:`DistributedError` naming the extra to install.

- :func:`connect` — a context manager: an existing cluster (``"auto"``, ``"ray://host:port"``,
  ``"host:port"``) or a private local one (``"local"``) that leaves the machine as found.
- :meth:`Cluster.check_output` — every node sees the output directory and runs the same
  ``llava_ov15`` + native build as the driver.
- :func:`run_tasks` — remote calls with retries on worker death, one progress bar / log line,
  results handed to the driver in task order, object-store bytes and per-task timings counted.
"""

from llava_ov15.distributed.cluster import (
    Cluster,
    DistributedError,
    build_id,
    connect,
    private_ray_env,
    require_ray,
)
from llava_ov15.distributed.tasks import Accounting, TaskTiming, run_tasks

__all__ = ["Accounting", "Cluster", "DistributedError", "TaskTiming", "build_id", "connect",
           "private_ray_env", "require_ray", "run_tasks"]
