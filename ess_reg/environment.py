"""The machine a measurement or a run happened on: what a figure or a training curve needs beside it.

A run's seed and config fix its numbers only together with the machine and library stack it ran
on (one study's seeds took off hundreds of steps away from where an earlier run of the same seeds
did, on a machine that was not recorded), so the harness tags every run with this and the
benchmarks print it above their tables.
"""

from __future__ import annotations

import os
import platform

import torch

__all__ = ["cpu_name", "machine"]


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def machine(device: "torch.device | str | None" = None) -> dict[str, object]:
    """The CPU, core count, operating system, Python, torch (and its CUDA build), the torch
    threads now, and the GPU: the name of ``device`` where it is a CUDA device (``"none"`` for a
    CPU one, without touching CUDA: a CPU run on a GPU machine should not start a CUDA context),
    or of the first CUDA device there is when ``device`` is None."""
    if device is None:
        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    else:
        device = torch.device(device)
        gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "none"
    return {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "system": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda or "none",
        "gpu": gpu,
        "threads": torch.get_num_threads(),
    }
