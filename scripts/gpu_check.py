"""CUDA checks of the AR layer's portable path + the layer benchmark on GPU.

Run from the repository root: ``PYTHONPATH=. python3 scripts/gpu_check.py``.
Loads ``arma_plugin.layers`` and ``arma_plugin.benchmark`` without executing
``arma_plugin/__init__.py`` (so no timm/SMP/Hub imports are needed on the GPU host).
"""
from __future__ import annotations

import sys
import types
from pathlib import Path

import torch

_pkg = types.ModuleType("arma_plugin")
_pkg.__path__ = [str(Path(__file__).resolve().parents[1] / "arma_plugin")]
sys.modules["arma_plugin"] = _pkg

from arma_plugin.benchmark import results_table, run  # noqa: E402
from arma_plugin.reference import ar_solve_reference  # noqa: E402
from arma_plugin.layers.ar_taps import ar_taps  # noqa: E402
from arma_plugin.layers.autoregressive import autoregressive2d  # noqa: E402


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().cpu().double() - b.detach().cpu().double()).abs().max() / b.abs().max())


def check_against_reference(dev: torch.device) -> bool:
    ok = True
    print("portable path on CUDA vs dense float64 reference (CPU): max relative error")
    for boundary in ("circular", "zeros"):
        for q in (1, 2):
            for dilation in (1, 2):
                for h, w in ((1, 1), (5, 3), (33, 64)):
                    gen = torch.Generator().manual_seed(q * 100 + h)
                    alpha = torch.randn(3, q, 4, generator=gen, dtype=torch.float64)
                    x = torch.randn(2, 3, h, w, generator=gen, dtype=torch.float64)
                    g = torch.randn(2, 3, h, w, generator=gen, dtype=torch.float64)
                    xr, ar = x.clone().requires_grad_(), alpha.clone().requires_grad_()
                    yr = ar_solve_reference(xr, ar_taps(ar), boundary, dilation)
                    gxr, gar = torch.autograd.grad(yr, (xr, ar), g, allow_unused=True)
                    gar = torch.zeros_like(alpha) if gar is None else gar
                    for dtype, tol in ((torch.float64, 1e-9), (torch.float32, 1e-3)):
                        xd = x.to(dev, dtype).requires_grad_()
                        ad = alpha.to(dev, dtype).requires_grad_()
                        y = autoregressive2d(xd, ad, boundary, dilation=dilation, backend="torch")
                        gx, ga = torch.autograd.grad(y, (xd, ad), g.to(dev, dtype))
                        errs = (rel(y, yr), rel(gx, gxr), float((ga.cpu().double() - gar).abs().max()
                                                                 / gar.abs().max().clamp_min(1.0)))
                        good = max(errs) < tol
                        ok &= good
                        print(f"  {boundary:8s} Q={q} d={dilation} {h}x{w} {str(dtype):13s} "
                              f"y {errs[0]:.1e} dx {errs[1]:.1e} dalpha {errs[2]:.1e} {'ok' if good else 'FAIL'}")
    return ok


def check_dtypes_and_layout(dev: torch.device) -> bool:
    ok = True
    alpha = torch.randn(8, 2, 4, device=dev)
    x = torch.randn(2, 8, 24, 20, device=dev)
    y32 = autoregressive2d(x, alpha, "circular")
    for dtype in (torch.float16, torch.bfloat16):
        y = autoregressive2d(x.to(dtype), alpha, "circular")
        with torch.autocast("cuda", dtype=dtype):
            conv = torch.nn.Conv2d(8, 8, 3, padding=1, device=dev)
            t = conv(x)
            ya = autoregressive2d(t, alpha, "zeros")
        good = y.dtype == dtype and ya.dtype == t.dtype == dtype and rel(y, y32) < 2e-2 and torch.isfinite(ya).all()
        ok &= bool(good)
        print(f"{dtype}: input dtype kept, rel err vs float32 {rel(y, y32):.1e}; autocast out {ya.dtype} "
              f"{'ok' if good else 'FAIL'}")
    xc = x.to(memory_format=torch.channels_last)
    for boundary in ("circular", "zeros"):
        yc = autoregressive2d(xc, alpha, boundary)
        good = yc.is_contiguous(memory_format=torch.channels_last) and \
            rel(yc, autoregressive2d(x, alpha, boundary)) < 1e-6
        ok &= bool(good)
        print(f"channels_last {boundary}: layout kept, same values {'ok' if good else 'FAIL'}")
    return ok


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA device")
        return 1
    dev = torch.device("cuda")
    print(torch.__version__, torch.cuda.get_device_name(dev))
    ok = check_against_reference(dev) & check_dtypes_and_layout(dev)
    rows = run([32, 64, 128, 256], [1, 2], ["circular", "zeros"], 8, 64, 20, dev, ["torch"])
    print("GPU layer benchmark, B=8 C=64, fwd+bwd median of 20, ms")
    print(results_table(rows, ["torch"]))
    print("ALL CHECKS OK" if ok else "SOME CHECKS FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
