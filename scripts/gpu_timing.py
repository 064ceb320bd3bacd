"""Timing helpers of scripts/gpu_check.py: the run's time budget and synchronised medians."""
from __future__ import annotations

import statistics
import time
from typing import Callable

import torch


class Budget:
    """Wall-clock budget of the run; sections ask before each row, keeping a reserve for the
    sections after them (of the default 420 s: correctness cases until 90 s, compile and
    CUDA-graph checks until 120 s, variants until 170 s, the profile, layer rows until 270 s,
    model rows until 385 s, one model row taking up to ~30 s)."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds
        self.skipped: list[str] = []

    def allows(self, section: str, what: str, reserve_s: float) -> bool:
        if time.monotonic() + reserve_s <= self.end:
            return True
        note = f"{section}: budget spent, skipped {what} and the rest of this section"
        print(f"  [{note}]")
        self.skipped.append(note)
        return False



def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(step: Callable[[], object], device: torch.device, repeats: int, warmup: int) -> float:
    """Median wall time of ``step()`` in ms, synchronised (CUDA events on a GPU)."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        sync(device)
        if device.type == "cuda":
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            stop.record()
            stop.synchronize()
            times.append(start.elapsed_time(stop))
        else:
            t0 = time.perf_counter()
            step()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def fwd_bwd(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, grad: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        x.grad = None
        fn(x).backward(grad)
    return step


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().cpu().double(), b.detach().cpu().double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))
