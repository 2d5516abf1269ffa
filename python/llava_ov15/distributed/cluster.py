"""Connecting to Ray and checking that a cluster can run a job (shared output, same build).

A private local cluster (``connect("local")``) must leave the machine as found: current Ray
turns on token authentication for every new local cluster and, unless a token is given, writes
one to ``~/.ray/auth_token`` — after which every later ``ray start`` on the machine needs it.
:func:`private_ray_env` therefore hands Ray a fresh token through ``RAY_AUTH_TOKEN`` (nothing
written to disk) and a private temp dir for its sockets, logs and session files; both disappear
with the context, together with every process the cluster started.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import secrets
import shutil
import socket
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llava_ov15._native import PackError

INSTALL_HINT = "pip install 'llava-ov15[ray]'"

# Probes are tiny; a node that cannot answer this fast is not usable for a job.
PROBE_TIMEOUT_S = 120.0


class DistributedError(PackError):
    """The cluster cannot run the job (Ray missing, unreachable, not shared, mixed builds).

    A :class:`llava_ov15.pack.PackError`, so ``llava-pack`` prints it as one line.
    """


def require_ray() -> Any:
    """The ``ray`` module, or a clear error naming the extra to install."""
    try:
        import ray
    except ImportError as e:
        raise DistributedError(f"Ray is not installed ({e}); install it with: {INSTALL_HINT}") \
            from None
    return ray


@functools.lru_cache(maxsize=1)
def build_id() -> str:
    """``{llava_ov15 version}+{sha256 prefix of the native module file}``: equal on two machines
    only if they run the same Python package and the same compiled engine."""
    import llava_ov15
    from llava_ov15 import _native

    h = hashlib.sha256()
    with open(_native.__file__, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return f"{llava_ov15.__version__}+{h.hexdigest()[:16]}"


_RAY_ENV = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS",
            "RAY_USAGE_STATS_ENABLED", "RAY_TMPDIR")


def _refresh_ray_auth() -> None:
    """Make an already imported Ray re-read RAY_AUTH_* (it caches the mode and the token)."""
    import sys

    if "ray._raylet" not in sys.modules:
        return  # read fresh on first import
    raylet = sys.modules["ray._raylet"]
    with contextlib.suppress(Exception):  # private API: best effort, env vars still apply
        raylet.Config.initialize("")
    with contextlib.suppress(Exception):
        raylet.AuthenticationTokenLoader.instance().reset_cache()


@contextlib.contextmanager
def private_ray_env() -> Iterator[str]:
    """Environment for a Ray cluster private to this process; yields its temp dir.

    Sets a per-run auth token (``RAY_AUTH_TOKEN``, never written to ``~/.ray``), points Ray's
    temp root there (``RAY_TMPDIR``: nothing in ``/tmp/ray``), disables usage reporting and
    hides ``RAY_ADDRESS``; everything is restored and the temp dir removed on
    exit. Start the cluster (``ray.init(_temp_dir=…)`` or ``ray.cluster_utils.Cluster``)
    inside it and stop it before leaving.
    """
    saved = {k: os.environ.get(k) for k in _RAY_ENV}
    # Short path: Ray puts unix sockets in it (limit ~107 bytes).
    tmp = tempfile.mkdtemp(prefix="llava-ray-", dir="/tmp" if os.path.isdir("/tmp") else None)
    try:
        os.environ["RAY_AUTH_MODE"] = "token"
        os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
        os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
        # Ray's default temp root (e.g. /tmp/ray/ray_current_cluster of a test Cluster).
        os.environ["RAY_TMPDIR"] = tmp
        os.makedirs(os.path.join(tmp, "ray"), exist_ok=True)
        os.environ.pop("RAY_AUTH_TOKEN_PATH", None)
        os.environ.pop("RAY_ADDRESS", None)
        _refresh_ray_auth()
        yield tmp
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        _refresh_ray_auth()
        shutil.rmtree(tmp, ignore_errors=True)


@dataclass
class NodeInfo:
    node_id: str
    address: str
    cpus: float


@dataclass
class Cluster:
    """A connected Ray cluster (from :func:`connect`)."""

    address: str
    local: bool
    nodes: list[NodeInfo] = field(default_factory=list)
    # The private temp dir of a "local" cluster (removed when the context exits).
    temp_dir: str | None = None

    @property
    def cpus(self) -> int:
        return max(1, int(sum(n.cpus for n in self.nodes)))

    def refresh(self) -> None:
        ray = require_ray()
        self.nodes = [
            NodeInfo(n["NodeID"], n.get("NodeManagerAddress", "?"),
                     float(n.get("Resources", {}).get("CPU", 0)))
            for n in ray.nodes() if n.get("Alive")
        ]

    def check_output(self, output: str | os.PathLike[str]) -> None:
        """Every node with CPUs sees ``output`` (a marker written here is readable there) and
        runs this build of llava-ov15 (:func:`build_id`); else :class:`DistributedError`."""
        ray = require_ray()
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        out = Path(output).absolute()
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise DistributedError(f"{out}: cannot create the output directory: {e}") from None
        token = uuid.uuid4().hex
        marker = out / f".llava-ray-marker-{token}"
        try:
            marker.write_text(token)
        except OSError as e:
            raise DistributedError(f"{out}: cannot write to the output directory: {e}") from None
        try:
            self.refresh()
            probe = ray.remote(num_cpus=0, max_retries=1)(_probe)
            workers = [n for n in self.nodes if n.cpus > 0]
            refs = [probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
                n.node_id, soft=False)).remote(str(marker), token) for n in workers]
            try:
                answers = ray.get(refs, timeout=PROBE_TIMEOUT_S)
            except Exception as e:
                raise DistributedError(
                    f"cluster nodes did not answer a probe within {PROBE_TIMEOUT_S:.0f}s "
                    f"({type(e).__name__}); check `ray status`") from None
        finally:
            marker.unlink(missing_ok=True)
        blind = [f"{a['host']} ({a['address']})" for a in answers if not a["sees_marker"]]
        if blind:
            raise DistributedError(
                f"{out} is not on a filesystem every node can see: a marker written by the "
                f"driver is not visible on {', '.join(blind)}; use a shared path (NFS, Lustre, "
                "…) mounted at the same place on every node")
        mine = build_id()
        other = [f"{a['host']} ({a['address']}): {a['build']}" for a in answers
                 if a["build"] != mine]
        if other:
            raise DistributedError(
                f"nodes run a different llava-ov15 build than the driver ({mine}): "
                f"{'; '.join(other)}; install the same version on every node")


def _probe(marker: str, token: str) -> dict[str, Any]:
    """On one node: is the driver's marker visible, and which build runs here."""
    try:
        seen = Path(marker).read_text() == token
    except OSError:
        seen = False
    try:
        build = build_id()
    except Exception as e:  # a node whose package is broken: report, do not crash the probe
        build = f"unusable ({type(e).__name__}: {e})"
    ray = require_ray()
    return {"host": socket.gethostname(), "address": ray.util.get_node_ip_address(),
            "sees_marker": seen, "build": build}


# Ray itself retries an unreachable GCS for minutes; a plain TCP connect answers at once.
REACH_TIMEOUT_S = 5.0


def _check_reachable(address: str) -> None:
    """A ``host:port`` / ``ray://host:port`` address must accept TCP connections."""
    hostport = address.removeprefix("ray://")
    if address == "auto" or ":" not in hostport:
        return  # "auto" is resolved by Ray from this machine's running cluster
    host, _, port = hostport.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=REACH_TIMEOUT_S):
            pass
    except (OSError, ValueError) as e:
        raise DistributedError(
            f"cannot reach a Ray cluster at {address!r}: {e} (start one with `ray start "
            "--head`, or use --ray local for a private one on this machine)") from None


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


@contextlib.contextmanager
def connect(address: str, *, num_cpus: int | None = None) -> Iterator[Cluster]:
    """Connect to Ray for the duration of the context.

    ``address``: ``"auto"`` (the cluster this machine belongs to, e.g. after ``ray start
    --head``), ``"ray://host:10001"`` (Ray client) or ``"host:6379"``; ``"local"`` starts a
    private local cluster (``num_cpus``: its size, default all cores) in a temp dir with its own
    auth token and stops it on exit. If this process is already connected (``ray.init`` by the
    caller) that connection is used and left open.
    """
    ray = require_ray()
    if not address:
        raise DistributedError("no Ray address given: use auto, local or ray://host:port")
    if ray.is_initialized():
        c = Cluster(address=address, local=False)
        c.refresh()
        yield c
        return
    quiet = {"logging_level": logging.WARNING, "log_to_driver": False}
    if address == "local":
        with private_ray_env() as tmp:
            try:
                ray.init(address="local", num_cpus=num_cpus, include_dashboard=False,
                         _temp_dir=tmp, **quiet)
            except Exception as e:
                raise DistributedError(f"cannot start a local Ray: {_one_line(e)}") from None
            try:
                c = Cluster(address="local", local=True, temp_dir=tmp)
                c.refresh()
                yield c
            finally:
                ray.shutdown()
        return
    _check_reachable(address)
    try:
        ray.init(address=address, **quiet)
    except Exception as e:
        raise DistributedError(
            f"cannot reach a Ray cluster at {address!r}: {_one_line(e)} (start one with "
            "`ray start --head`, or use --ray local for a private one on this machine)") \
            from None
    try:
        c = Cluster(address=address, local=False)
        c.refresh()
        yield c
    finally:
        ray.shutdown()
