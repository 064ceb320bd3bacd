"""The AR solve as a PyTorch custom op with a Thm 4 backward.

``torch.ops.arma_plugin.ar_solve(x, taps, boundary, dilation, backend)`` computes
``Y = A^{-1} X``; its registered autograd saves only ``X`` and the taps, and the
backward kernels re-solve for ``Y`` themselves (numba: per plane while it is in cache;
torch/circular: ``Ŷ = X̂ / D`` in the spectrum it computes anyway). Saving ``X`` rather
than ``Y`` lets the caller overwrite ``Y`` in place: timm and SMP put
``ReLU(inplace=True)`` right after convolutions, and inside ``ARMAConv2d`` nothing else
holds ``X``. Being a
``torch.library.custom_op`` it is opaque to ``torch.compile`` (no graph break),
``torch.jit.trace`` and ``torch.fx``. Backends: ``"numba"`` (fast CPU kernels, stable
taps only), ``"torch"`` (portable, any device, any non-singular taps) and ``"triton"``
(GPU kernels, stable taps only, any float dtype and layout in and out; on CPU tensors only
under Triton's interpreter, ``TRITON_INTERPRET=1``, for tests).
"""
from __future__ import annotations

import importlib.util
import os

import torch

from .ar_solve_torch import torch_ar_solve, torch_ar_solve_backward
from .ar_taps import taps_are_stable

BACKENDS = ("numba", "torch", "triton")
BACKEND_ENV = "ARMA_PLUGIN_BACKEND"


def numba_available() -> bool:
    return importlib.util.find_spec("numba") is not None


def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def triton_runs_on(device: torch.device) -> bool:
    """CUDA devices with compiled kernels; CPU only when they run in Triton's interpreter."""
    if device.type not in ("cuda", "cpu") or not triton_available():
        return False
    from .ar_solve_triton import INTERPRETED
    return INTERPRETED == (device.type == "cpu")


def _require_stable(backend: str, taps: torch.Tensor, known_stable: bool) -> None:
    """A forced fast backend solves only inside the stable region; say so instead of diverging."""
    if not known_stable and not taps_are_stable(taps):
        raise ValueError(f"backend={backend!r} needs taps with |left|+|right| < 1 (Thm 6); "
                         "use backend='torch' for raw taps outside the stable region")


def resolve_backend(x: torch.Tensor, taps: torch.Tensor, backend: str | None = None,
                    known_stable: bool = False) -> str:
    """Pick the solver for ``x`` as the caller has it (before any float32 cast):
    argument, else ``$ARMA_PLUGIN_BACKEND``, else automatic.

    Automatic: ``triton`` for CUDA tensors when Triton is installed, ``numba`` for CPU
    tensors when numba is installed, if the taps are inside the stable region; else
    ``torch``. ``known_stable`` (true for re-parameterised taps, Thm 7) skips the
    data-dependent check, so ``torch.compile`` sees no graph break. A forced ``numba`` or
    ``triton`` that cannot run raises instead of falling back.
    """
    requested = backend or os.environ.get(BACKEND_ENV) or None
    if requested is not None and requested not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS} (or unset), got {requested!r}")
    numba_ok = x.device.type == "cpu"
    if requested == "torch":
        return "torch"
    if requested == "triton":
        if not triton_runs_on(x.device):
            raise ValueError(f"backend='triton' cannot run on device={x.device.type}: it needs Triton installed "
                             "and a CUDA tensor, or a CPU tensor with TRITON_INTERPRET=1 set before "
                             f"arma_plugin's Triton kernels are imported; choose one of {BACKENDS}")
        _require_stable("triton", taps, known_stable)
        return "triton"
    if requested == "numba":
        if not numba_ok or not numba_available():
            raise ValueError("backend='numba' needs numba installed and a CPU input, "
                             f"got device={x.device.type}, dtype={x.dtype}")
        _require_stable("numba", taps, known_stable)
        return "numba"
    if numba_ok and numba_available() and (known_stable or taps_are_stable(taps)):
        return "numba"
    if x.device.type == "cuda" and triton_runs_on(x.device) and (known_stable or taps_are_stable(taps)):
        return "triton"
    return "torch"


@torch.library.custom_op("arma_plugin::ar_solve", mutates_args=())
def ar_solve(x: torch.Tensor, taps: torch.Tensor, boundary: str, dilation: int, backend: str) -> torch.Tensor:
    if backend == "triton":  # keeps x's dtype and layout, empty inputs included (see the fake)
        from .ar_solve_triton import triton_ar_solve
        return triton_ar_solve(x, taps, boundary, dilation)
    if x.numel() == 0:  # an empty batch or map: nothing to solve (MKL's FFT refuses empty transforms)
        return torch.empty_like(x, memory_format=torch.contiguous_format)
    if backend == "numba":
        from .ar_solve_numba import numba_ar_solve
        return numba_ar_solve(x, taps, boundary, dilation)
    return torch_ar_solve(x.contiguous(), taps, boundary, dilation)


@ar_solve.register_fake
def _(x, taps, boundary, dilation, backend):
    if backend == "triton":
        return torch.empty_like(x)
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


@torch.library.custom_op("arma_plugin::ar_solve_backward", mutates_args=())
def ar_solve_backward(grad_y: torch.Tensor, x: torch.Tensor, taps: torch.Tensor, boundary: str,
                      dilation: int, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    if backend == "triton":
        from .ar_solve_triton import triton_ar_solve_backward
        return triton_ar_solve_backward(grad_y, x, taps, boundary, dilation)
    if x.numel() == 0:
        return torch.empty_like(x, memory_format=torch.contiguous_format), torch.zeros_like(taps)
    grad_y = grad_y.contiguous()
    if backend == "numba":
        from .ar_solve_numba import numba_ar_solve_backward
        return numba_ar_solve_backward(grad_y, x, taps, boundary, dilation)
    return torch_ar_solve_backward(grad_y, x, taps, boundary, dilation)


@ar_solve_backward.register_fake
def _(grad_y, x, taps, boundary, dilation, backend):
    if backend == "triton":
        return torch.empty_like(x), torch.empty_like(taps)
    return torch.empty(x.shape, dtype=x.dtype, device=x.device), torch.empty_like(taps)


def _setup_context(ctx, inputs, output):
    x, taps, boundary, dilation, backend = inputs
    ctx.save_for_backward(x, taps)
    ctx.solve_args = (boundary, dilation, backend)


def _backward(ctx, grad_y):
    x, taps = ctx.saved_tensors
    grad_x, grad_taps = ar_solve_backward(grad_y, x, taps, *ctx.solve_args)
    return grad_x, grad_taps, None, None, None


ar_solve.register_autograd(_backward, setup_context=_setup_context)


def _no_double_backward(ctx, grad_grad_x, grad_grad_taps):
    raise RuntimeError("double backward through the AR solve (arma_plugin::ar_solve) is not supported: "
                       "its backward is a custom kernel without a derivative of its own")


ar_solve_backward.register_autograd(_no_double_backward, setup_context=lambda ctx, inputs, output: None)
