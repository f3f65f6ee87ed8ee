"""Which device and precision a predictor runs with, and why CUDA is missing when it is.

A job that asks for CUDA must never run on the CPU instead: when torch sees no GPU (a driver
too old for torch's CUDA build, a CPU-only torch, hidden devices), the error says which.
"""

from __future__ import annotations

import os
import re
import socket
import sys
from pathlib import Path

from ..errors import DeviceError

#: Arithmetic of the predictor per device type (``infer.predictor``: bf16 autocast on CUDA).
PRECISION = {"cpu": "float32", "cuda": "bfloat16-autocast"}

_NVIDIA_PROC = Path("/proc/driver/nvidia/version")


def nvidia_driver_version(proc: Path = _NVIDIA_PROC) -> str | None:
    """The loaded NVIDIA kernel driver's version (e.g. ``550.54.15``), None without one."""
    try:
        text = proc.read_text()
    except OSError:
        return None
    found = re.search(r"Kernel Module(?: for \S+)?\s+(\d+(?:\.\d+)+)", text)
    return found.group(1) if found else None


def cuda_missing_reason(where: str) -> str:
    """Why torch sees no CUDA GPU here: torch's build, the driver, the visible devices."""
    import torch

    build = torch.version.cuda
    driver = nvidia_driver_version()
    parts = [
        f"device cuda was asked for, but torch {torch.__version__} on {where} sees no CUDA GPU:",
        f"torch is built for CUDA {build}" if build else "torch is a CPU-only build (no CUDA)",
        f"NVIDIA driver {driver}" if driver else "no NVIDIA driver is loaded (/proc/driver/nvidia/version absent)",
    ]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        parts.append(f"CUDA_VISIBLE_DEVICES={visible!r}")
    hint = (
        "install a CUDA build of torch"
        if not build
        else "the driver must support that CUDA version (CUDA 13 needs driver >= 580, CUDA 12.8 >= 570)"
    )
    return " ".join(parts[:1]) + " " + "; ".join(parts[1:]) + f". Fix: {hint}, or run with device cpu."


def require_device(device: str) -> None:
    """Raise ``DeviceError`` when ``device`` is ``cuda[:N]`` and torch sees no GPU on this host."""
    if not device.startswith("cuda"):
        return
    import torch

    if not torch.cuda.is_available():
        raise DeviceError(cuda_missing_reason(f"host {socket.gethostname()}"))


def gpu_impossible() -> bool:
    """True where torch cannot see a GPU, told without importing torch (a second, which a job
    spends beside its ingest instead): Linux with neither the NVIDIA kernel driver, nor WSL's GPU
    (``/dev/dxg``), nor ROCm's (``/dev/kfd``)."""
    return (
        sys.platform == "linux"
        and nvidia_driver_version() is None
        and not any(Path(dev).exists() for dev in ("/dev/dxg", "/dev/kfd"))
    )


def device_type(device: str) -> str:
    """``auto`` | ``cpu`` | ``cuda[:N]`` -> the type a local predictor runs on, ``cpu`` or ``cuda``."""
    if device == "auto":
        if gpu_impossible():
            return "cpu"
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return "cuda" if device.startswith("cuda") else "cpu"
