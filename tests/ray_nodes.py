"""A local multi-node Ray cluster for tests, kept apart from other Ray users of the machine."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

LOCAL = {"node_ip_address": "127.0.0.1"}


@contextmanager
def local_cluster(workers: int, **worker_args) -> Iterator:
    """A head without CPUs (all work lands on workers) + ``workers`` nodes on 127.0.0.1, this
    process connected to it; -> the ``ray.cluster_utils.Cluster``.

    Ray resolves "127.0.0.1" to the machine's outward address unless it believes clusters are
    off (the flag below; it only changes that address lookup). A private RAY_TMPDIR keeps this
    cluster's address file away from other Ray users of the machine, whose ``ray.init()``
    would otherwise join it.
    """
    import ray
    from ray._private import ray_constants
    from ray.cluster_utils import Cluster

    from landslide_batch.infer.executors import shutdown_ray

    tmp = tempfile.mkdtemp(prefix="lbray", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_TMPDIR", tmp)
        mp.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # for the node processes
        mp.setattr(ray_constants, "ENABLE_RAY_CLUSTER", False)  # for this one (read at import)
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False, **LOCAL})
        try:
            for _ in range(workers):
                cluster.add_node(**LOCAL, **worker_args)
            ray.init(address=cluster.address, log_to_driver=False)
            yield cluster
        finally:
            shutdown_ray()
            cluster.shutdown()
            shutil.rmtree(tmp, ignore_errors=True)
