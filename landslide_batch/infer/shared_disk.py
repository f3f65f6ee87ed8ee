"""Shared-nothing detection: do all Ray nodes see the driver's working folder?

A job with a local ``out`` keeps its working store (``OUT/.work``) on a POSIX path. On a
cluster without a shared disk (VMs from ``ray up``, KubeRay without a read-write-many volume)
a worker node does not see that path, and the job would fail at its first block there. Before
any compute, the driver writes a token file into the folder and runs one tiny task pinned to
each alive node that reads it back; nodes that cannot fail the job with a message naming them.
"""

from __future__ import annotations

import secrets
from pathlib import Path

from ..errors import ConfigError

TIMEOUT_S = 120.0  # a node must answer (start a worker, read a small file) within this


def _reads(path: str, expected: str) -> bool:
    try:
        return Path(path).read_text() == expected
    except OSError:
        return False


def require_shared_folder(folder: Path, timeout_s: float = TIMEOUT_S) -> None:
    """Raise ``ConfigError`` naming every alive Ray node that cannot read ``folder``."""
    import ray
    from ray.exceptions import GetTimeoutError
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n for n in ray.nodes() if n["Alive"]]  # type: ignore[no-untyped-call]  # ray.nodes is unannotated
    token, secret = folder / f".node-check-{secrets.token_hex(8)}", secrets.token_hex(16)
    token.write_text(secret)
    try:
        check = ray.remote(num_cpus=0, max_retries=0)(_reads)
        refs = [
            check.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(
                str(token), secret
            )
            for n in nodes
        ]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
        blind = []
        for node, ref in zip(nodes, refs):
            try:
                sees = ref in ready and ray.get(ref, timeout=0)
            except GetTimeoutError:
                sees = False
            if not sees:
                blind.append(f"{node['NodeManagerAddress']} (node {node['NodeID'][:12]})")
    finally:
        token.unlink()
    if blind:
        raise ConfigError(
            f"the job's working folder {folder} is on the driver's local disk, and {len(blind)} Ray node(s) "
            f"cannot read it: {', '.join(blind)}. This cluster has no shared disk: put 'out' on object storage "
            "(e.g. --out s3://bucket/prefix, credentials from AWS_* variables), or mount one volume at the same "
            "path on every node"
        )
