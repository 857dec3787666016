"""What the benchmark sections measure with: a unit's seconds, a process's resident and peak memory, and the ratio
of two sides that took turns (lockstep.py)."""

import re
import resource
import statistics
import time
from pathlib import Path

import torch


def timed(function, device: str) -> float:
    """Seconds `function()` takes, waiting for the GPU's queued work on CUDA."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    function()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def resident_mib() -> float:
    """Resident memory of this process now (Linux), MiB."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize() / 2**20


def peak_resident_mib() -> float:
    """The highest resident memory of this process since it started or since `reset_peak` (Linux), MiB. Read from
    VmHWM: getrusage's ru_maxrss would also count the peak of the process that started this one."""
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE).group(1)) / 1024


def reset_peak(device: str) -> None:
    """Start counting the peak memory from now: VmHWM on CPU (Linux), the allocator's peak on CUDA."""
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    else:
        Path("/proc/self/clear_refs").write_text("5")


def peak_memory_mib(device: str, resident_before: float) -> float:
    """Peak memory since the start or `reset_peak`: on CUDA the allocator's, on CPU the resident memory above
    `resident_before` (the process's after its imports)."""
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return peak_resident_mib() - resident_before


def paired_ratio(ours: list[float], theirs: list[float]) -> tuple[float, str]:
    """The median of ours / theirs over the units the two sides ran one after the other, and its note."""
    ratios = [a / b for a, b in zip(ours, theirs, strict=True)]
    note = f"ratio: median over {len(ratios)} adjacent pairs ({min(ratios):.2f}-{max(ratios):.2f})"
    return statistics.median(ratios), note
