"""float32 tap gradients of the AR solve against float64, per backend, boundary and ar_kernel_size.

Error of one layer = max |dL/dalpha (float32) - dL/dalpha (float64)| / max |dL/dalpha (float64)|
over its ``alpha``; the table shows the worst over ``--seeds`` draws of ``alpha`` uniform in
``[-max_alpha, max_alpha]`` (near the stable boundary at 3: taps up to 0.995 of it).

    python scripts/ar_grad_precision.py [--seeds 8] [--size 16 20] [--backends torch numba]
"""
from __future__ import annotations

import argparse

import torch

from arma_plugin.layers import autoregressive2d
from arma_plugin.table import format_table


def worst_error(backend: str, boundary: str, ar_kernel_size: int, seeds: int, size: tuple[int, int],
                max_alpha: float, channels: int = 4, batch: int = 2) -> float:
    worst = 0.0
    for seed in range(seeds):
        gen = torch.Generator().manual_seed(seed)
        alpha = torch.empty(channels, ar_kernel_size // 2, 4, dtype=torch.float64)
        alpha.uniform_(-max_alpha, max_alpha, generator=gen)
        x = torch.randn(batch, channels, *size, generator=gen, dtype=torch.float64)
        grad_out = torch.randn(batch, channels, *size, generator=gen, dtype=torch.float64)
        grads = []
        for dtype in (torch.float64, torch.float32):
            a = alpha.to(dtype).requires_grad_()
            y = autoregressive2d(x.to(dtype), a, boundary, backend=backend)
            grads.append(torch.autograd.grad(y, a, grad_out.to(dtype))[0].double())
        worst = max(worst, float((grads[1] - grads[0]).abs().max() / grads[0].abs().max()))
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--size", type=int, nargs=2, default=(16, 20), metavar=("H", "W"))
    parser.add_argument("--max-alpha", type=float, default=3.0)
    parser.add_argument("--backends", nargs="+", default=["torch", "numba"])
    args = parser.parse_args()
    kernel_sizes = (3, 5, 7)
    rows = [[f"{backend}, {boundary}",
             *(worst_error(backend, boundary, k, args.seeds, tuple(args.size), args.max_alpha) for k in kernel_sizes)]
            for backend in args.backends for boundary in ("circular", "zeros")]
    print(format_table(["backend, boundary", *(f"ar_kernel_size {k}" for k in kernel_sizes)], rows,
                       float_format=".1e"))


if __name__ == "__main__":
    main()
