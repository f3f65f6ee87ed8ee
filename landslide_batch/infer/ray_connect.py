"""Reaching a Ray head before ``ray.init``: a dead or wrong address fails in seconds, in one line.

``ray.init(address=...)`` of a head that is down retries for minutes, printing its warnings, and
never gives up on its own (measured: 10+ minutes). So the head is asked first, within
``ray.connect_timeout_s``, for its cluster id (one gRPC call to the GCS at ``HOST:PORT``, or to
the Ray Client server at ``ray://HOST:PORT``). Any gRPC answer, even a refusal (a cluster with
token authentication, the client server that does not serve the call), shows a Ray server is
there; a refused or unreachable port, silence, or an HTTP/2 server that is not gRPC (a proxy,
another service) fails here. ``auto`` and ``local`` name no host: Ray resolves them itself.
"""

from __future__ import annotations

import re

from ..errors import ConfigError

_HOST_PORT = re.compile(r"^(?:ray://)?(\[[^\]]+\]|[^:/\[\]]+):(\d+)/?$")
_CLUSTER_ID = "/ray.rpc.NodeInfoGcsService/GetClusterId"  # its request message has no required field: b""


def head_endpoint(address: str) -> str | None:
    """``HOST:PORT`` of a Ray address naming one, else None (``auto``, ``local``)."""
    m = _HOST_PORT.match(address.strip())
    return f"{m.group(1)}:{m.group(2)}" if m else None


def require_reachable(address: str, timeout_s: float) -> None:
    """ConfigError unless a Ray server answers at ``address`` within ``timeout_s``."""
    import grpc  # Ray's own dependency: present wherever a Ray job runs

    endpoint = head_endpoint(address)
    if endpoint is None:
        return
    with grpc.insecure_channel(endpoint) as channel:
        try:
            channel.unary_unary(_CLUSTER_ID)(b"", timeout=timeout_s)
            return
        except grpc.RpcError as exc:
            code, details = exc.code(), str(exc.details() or "")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        why = "no answer"
    elif code == grpc.StatusCode.UNAVAILABLE:
        why = details.rstrip("]").rsplit(": ", 1)[-1] or "unavailable"  # gRPC's last cause: refused, not found
    elif details.startswith("Received http2 header with status"):
        why = f"not a Ray head: an HTTP server answered ({details})"
    else:
        return  # a gRPC server: Ray's, whatever it thinks of this call
    raise ConfigError(
        f"cannot reach the Ray head at {address} ({why}; waited up to {timeout_s:g} s): is the cluster up and "
        "the address right (--ray-address, ray.address or RAY_ADDRESS; ray.connect_timeout_s to wait longer)?"
    )
