"""Shared measures for the AR-solve tests: how far apart two results are, and how much a
backward-stable solve of a given system may lose (the tolerances are scaled by it)."""
from __future__ import annotations

import subprocess
import sys

import torch

from arma_plugin.reference import axis_operator

EPS64 = torch.finfo(torch.float64).eps
EPS32 = torch.finfo(torch.float32).eps


def condition(taps: torch.Tensor, h: int, w: int, boundary: str, dilation: int) -> float:
    """Condition of ``A = A_H ⊗ A_W`` w.r.t. rounding of its taps: ``‖A^{-1}‖·‖|A|‖`` per axis.

    ``|A|`` (built from the absolute taps) rather than ``A`` so that cancellation in
    ``1 + left + right`` (e.g. the 1×1 circular case) counts, worst channel.
    """
    def axis(left: torch.Tensor, right: torch.Tensor, n: int) -> torch.Tensor:
        inv_norm = torch.linalg.matrix_norm(torch.linalg.inv(axis_operator(left, right, n, boundary, dilation)), 2)
        return inv_norm * torch.linalg.matrix_norm(axis_operator(left.abs(), right.abs(), n, boundary, dilation), 2)
    taps = taps.detach().double()
    return float((axis(taps[..., 0], taps[..., 1], h) * axis(taps[..., 2], taps[..., 3], w)).max())


@torch.no_grad()
def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest absolute difference relative to the largest entry of ``b``, in float64."""
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-300))


def run_in_fresh_process(script: str, *argv: str, env: dict | None = None, timeout: float = 300) -> str:
    """Run ``script`` in a new interpreter; its standard output (it must exit 0 in time)."""
    done = subprocess.run([sys.executable, "-c", script, *argv], capture_output=True, text=True,
                          timeout=timeout, env=env)
    assert done.returncode == 0, done.stderr
    return done.stdout
