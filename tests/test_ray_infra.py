"""The Ray layer: a private local cluster leaves the machine as found, clear one-line errors
(no Ray, unreachable address, output not shared, mixed builds), tasks spread over the nodes of
a multi-node test cluster."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from conftest import run_cli

ray = pytest.importorskip("ray")

from llava_ov15.distributed import (  # noqa: E402
    Accounting,
    DistributedError,
    connect,
    private_ray_env,
    run_tasks,
)
from llava_ov15.distributed.tasks import FAULT_PAUSE_ENV  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _pids_mentioning(text: str) -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and int(d.name) != os.getpid():
            try:
                if text.encode() in (d / "cmdline").read_bytes():
                    pids.append(int(d.name))
            except OSError:
                continue
    return pids


def test_local_cluster_leaves_no_token_process_or_temp_dir(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    had_tmp_ray = Path("/tmp/ray").exists()
    with connect("local", num_cpus=1) as c:
        assert ray.is_initialized() and c.local and len(c.nodes) == 1
        assert os.environ["RAY_AUTH_MODE"] == "token"  # Ray's default, with our own token
        started = _pids_mentioning(c.temp_dir)
        assert started, "the cluster's processes run from its private temp dir"
        tmp = c.temp_dir
    assert not ray.is_initialized()
    assert "RAY_AUTH_MODE" not in os.environ and "RAY_AUTH_TOKEN" not in os.environ
    assert not Path(tmp).exists()
    assert not (home / ".ray").exists()
    assert Path("/tmp/ray").exists() == had_tmp_ray
    deadline = time.monotonic() + 20
    while _pids_mentioning(tmp) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _pids_mentioning(tmp)


def test_missing_ray_names_the_extra_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` sees without the package
    with pytest.raises(DistributedError, match=r"pip install 'llava-ov15\[ray\]'"), \
            connect("local"):
        pass


def test_unreachable_address_is_a_one_line_cli_error(tmp_path):
    p = run_cli("pack", "--input", str(tmp_path), "--output", str(tmp_path / "out"),
                "--ray", "127.0.0.1:1", check=False, timeout=60)
    assert p.returncode == 1
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot reach a Ray cluster at '127.0.0.1:1'" in lines[0]


@pytest.fixture(scope="module")
def three_nodes():
    """ray.cluster_utils.Cluster: a head and two worker nodes (1 CPU each) as processes here;
    the third node runs a llava_ov15 that reports another version."""
    from ray.cluster_utils import Cluster

    with private_ray_env() as tmp:
        cluster = Cluster(initialize_head=True,
                          head_node_args={"num_cpus": 1, "temp_dir": tmp,
                                          "include_dashboard": False})
        try:
            cluster.add_node(num_cpus=1)
            yield cluster, tmp
        finally:
            ray.shutdown()
            cluster.shutdown()


def test_tasks_spread_over_the_nodes_of_a_test_cluster(three_nodes, tmp_path, monkeypatch):
    cluster, _ = three_nodes
    cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address)
    try:
        monkeypatch.setenv(FAULT_PAUSE_ENV, "spread=0.5")  # tasks overlap: all nodes get some
        with connect(cluster.address) as c:
            assert len(c.nodes) == 3
            c.check_output(tmp_path / "out")  # shared, same build: passes
            acc = Accounting()
            # A function the workers can import (this test module is not on their path).
            pids = run_tasks(os.getpid, [()] * 6, phase="spread", accounting=acc,
                             progress="quiet")
        assert len({t.node for t in acc.timings}) >= 2
        assert sorted(pids) == sorted(t.pid for t in acc.timings)
        assert acc.object_store_bytes > 0
    finally:
        ray.shutdown()


def test_output_visible_only_to_the_driver_is_named(three_nodes, tmp_path):
    cluster, _ = three_nodes
    ray.init(address=cluster.address)
    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        # A directory only this process can reach (its own fd): what a node-local path is to
        # the other nodes of a real cluster.
        private = f"/proc/self/fd/{fd}"
        with connect(cluster.address) as c, \
                pytest.raises(DistributedError, match="not on a filesystem every node can see"):
            c.check_output(private)
        assert not list(tmp_path.glob(".llava-ray-marker-*"))
    finally:
        os.close(fd)
        ray.shutdown()


def test_nodes_with_another_version_are_named(three_nodes, tmp_path):
    cluster, _ = three_nodes
    # A node whose llava_ov15 says 0.0.0-other: the package linked file by file, but __init__.
    pkg = tmp_path / "other" / "llava_ov15"
    pkg.mkdir(parents=True)
    src = ROOT / "python" / "llava_ov15"
    for entry in src.iterdir():
        if entry.name not in ("__init__.py", "__pycache__"):
            (pkg / entry.name).symlink_to(entry)
    init = (src / "__init__.py").read_text()
    (pkg / "__init__.py").write_text(init.replace('__version__ = "', '__version__ = "0.0.0-other'))
    node = cluster.add_node(num_cpus=1, env_vars={"PYTHONPATH": str(pkg.parent)})
    ray.init(address=cluster.address)
    try:
        with connect(cluster.address) as c, \
                pytest.raises(DistributedError, match=r"different llava-ov15 build.*0\.0\.0-other"):
            c.check_output(tmp_path / "out")
    finally:
        ray.shutdown()
        cluster.remove_node(node)
