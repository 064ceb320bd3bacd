"""The AR solve as a PyTorch custom op with a Thm 4 backward.

``torch.ops.arma_plugin.ar_solve(x, alpha, boundary, reparam, dilation, backend)`` returns
``(Y, state)``: ``Y = A^{-1} X`` with the taps of ``alpha`` (Thm 7 re-parameterisation if
``reparam``, else the raw taps), and ``state``, empty unless the backend solves the map in two
passes (triton, maps too large for one program): then it is the first pass's output, in float32
(float64), which the backward needs and would otherwise recompute from ``X``. The registered
autograd saves ``alpha`` and ``state``, or ``X`` when ``state`` is empty (both when ``X`` is
narrower than the state: bfloat16/float16, whose backward reads ``X`` where it can, at half the
bytes), and the backward kernels re-solve for ``Y`` themselves. Saving an input-side tensor
rather than ``Y`` lets the caller overwrite ``Y`` in place: timm and SMP put
``ReLU(inplace=True)`` right after convolutions, and inside ``ARMAConv2d`` nothing else holds
``X``. Being a ``torch.library.custom_op`` it is opaque to ``torch.compile`` (no graph break),
``torch.jit.trace`` and ``torch.fx``.

The rules every backend shares live here: the output and ``dX`` have ``x``'s dtype and
layout (``torch.empty_like``), ``d alpha`` has ``alpha``'s dtype; the solve accumulates in
float64 for float64 input and in float32 otherwise; an empty batch or map solves nothing.
Backends: ``"numba"`` (fast CPU kernels, stable taps only), ``"torch"`` (portable, any
device, any non-singular taps), both fed contiguous tensors in the compute dtype and taps
from :func:`ar_taps`; ``"triton"`` (GPU kernels, stable taps only) loads and stores every
float dtype and layout itself and computes the taps and their gradient on chip (on CPU
tensors only under Triton's interpreter, ``TRITON_INTERPRET=1``, for tests).
"""
from __future__ import annotations

import importlib.util
import os

import torch

from .ar_solve_torch import torch_ar_solve, torch_ar_solve_backward
from .ar_taps import ar_taps, ar_taps_backward, taps_are_stable

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


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The solve's accumulation dtype: float64 for float64 input, float32 otherwise."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _require_stable(backend: str, taps: torch.Tensor, known_stable: bool) -> None:
    """A forced fast backend solves only inside the stable region; say so instead of diverging."""
    if not known_stable and not taps_are_stable(taps):
        raise ValueError(f"backend={backend!r} needs taps with |left|+|right| < 1 (Thm 6); "
                         "use backend='torch' for raw taps outside the stable region")


def resolve_backend(x: torch.Tensor, taps: torch.Tensor, backend: str | None = None,
                    known_stable: bool = False) -> str:
    """Pick the solver for ``x``: argument, else ``$ARMA_PLUGIN_BACKEND``, else automatic.

    Automatic: ``triton`` for CUDA tensors when Triton is installed, ``numba`` for CPU
    tensors when numba is installed, if the taps are inside the stable region; else
    ``torch``. ``known_stable`` (true for re-parameterised taps, Thm 7) skips the
    data-dependent check, so ``torch.compile`` sees no graph break; raw taps are ``alpha``
    itself. A forced ``numba`` or ``triton`` that cannot run raises instead of falling back.
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


def _in_layout_of(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``t`` with ``like``'s dtype and strides (no copy when it has them already)."""
    if t.dtype == like.dtype and t.stride() == like.stride():
        return t
    return torch.empty_like(like).copy_(t)


def _keeps_state(x: torch.Tensor, alpha: torch.Tensor, boundary: str, dilation: int, backend: str) -> bool:
    if backend != "triton" or x.numel() == 0:
        return False
    from .ar_solve_triton import keeps_state
    return keeps_state(x, boundary, dilation, alpha.shape[1])


def _no_state(x: torch.Tensor) -> torch.Tensor:
    return torch.empty(0, dtype=compute_dtype(x), device=x.device)


@torch.library.custom_op("arma_plugin::ar_solve", mutates_args=())
def ar_solve(x: torch.Tensor, alpha: torch.Tensor, boundary: str, reparam: bool, dilation: int,
             backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    if x.numel() == 0:  # an empty batch or map: nothing to solve (MKL's FFT refuses empty transforms)
        return torch.empty_like(x), _no_state(x)
    if backend == "triton":
        from .ar_solve_triton import triton_ar_solve
        y, state = triton_ar_solve(x, alpha, boundary, reparam, dilation)
        return y, _no_state(x) if state is None else state
    dtype = compute_dtype(x)
    taps = ar_taps(alpha.to(dtype), reparam)
    xc = x.to(dtype).contiguous()
    if backend == "numba":
        from .ar_solve_numba import numba_ar_solve
        return _in_layout_of(numba_ar_solve(xc, taps, boundary, dilation), x), _no_state(x)
    return _in_layout_of(torch_ar_solve(xc, taps, boundary, dilation), x), _no_state(x)


@ar_solve.register_fake
def _(x, alpha, boundary, reparam, dilation, backend):
    if _keeps_state(x, alpha, boundary, dilation, backend):
        return torch.empty_like(x), torch.empty_like(x, dtype=compute_dtype(x))
    return torch.empty_like(x), _no_state(x)


@torch.library.custom_op("arma_plugin::ar_solve_backward", mutates_args=())
def ar_solve_backward(grad_y: torch.Tensor, x: torch.Tensor | None, alpha: torch.Tensor, boundary: str,
                      reparam: bool, dilation: int, backend: str,
                      state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(dX, d alpha)`` from ``dY`` and the solve's input ``x``, the non-empty ``state`` that
    the forward returned (triton), or both; ``dX`` has ``dY``'s dtype and ``x``'s layout."""
    if state is not None and backend != "triton":
        raise ValueError(f"state needs backend='triton' (the only backend with a state), got {backend!r}")
    if x is None and state is None:
        raise ValueError("ar_solve_backward needs x (the solve's input), state, or both; got neither")
    like = state if x is None else x
    if like.numel() == 0:
        return torch.empty_like(like, dtype=grad_y.dtype), torch.zeros_like(alpha)
    if backend == "triton":
        from .ar_solve_triton import triton_ar_solve_backward
        return triton_ar_solve_backward(grad_y, x, alpha, boundary, reparam, dilation, state)
    dtype = compute_dtype(x)
    alpha_c = alpha.to(dtype)
    taps = ar_taps(alpha_c, reparam)
    args = (grad_y.to(dtype).contiguous(), x.to(dtype).contiguous(), taps, boundary, dilation)
    if backend == "numba":
        from .ar_solve_numba import numba_ar_solve_backward
        grad_x, grad_taps = numba_ar_solve_backward(*args)
    else:
        grad_x, grad_taps = torch_ar_solve_backward(*args)
    return _in_layout_of(grad_x, x), ar_taps_backward(alpha_c, grad_taps, reparam).to(alpha.dtype)


@ar_solve_backward.register_fake
def _(grad_y, x, alpha, boundary, reparam, dilation, backend, state=None):
    return torch.empty_like(state if x is None else x, dtype=grad_y.dtype), torch.empty_like(alpha)


def _setup_context(ctx, inputs, output):
    x, alpha, boundary, reparam, dilation, backend = inputs
    state = output[1]
    ctx.mark_non_differentiable(state)
    ctx.set_materialize_grads(False)  # no zero-filled gradient for the state
    if state.numel() == 0:
        state = None
    elif x.element_size() >= state.element_size():
        x = None  # the backward starts from the state alone; a narrower X is kept for its cheaper loads
    ctx.save_for_backward(x, state, alpha)
    ctx.solve_args = (boundary, reparam, dilation, backend)


def _backward(ctx, grad_y, grad_state):
    if grad_y is None:  # Y took no part in the loss
        return None, None, None, None, None, None
    x, state, alpha = ctx.saved_tensors
    grad_x, grad_alpha = ar_solve_backward(grad_y, x, alpha, *ctx.solve_args, state)
    return grad_x, grad_alpha, None, None, None, None


ar_solve.register_autograd(_backward, setup_context=_setup_context)
def _no_double_backward(ctx, grad_grad_x, grad_grad_taps):
    raise RuntimeError("double backward through the AR solve (arma_plugin::ar_solve) is not supported: "
                       "its backward is a custom kernel without a derivative of its own")


ar_solve_backward.register_autograd(_no_double_backward, setup_context=lambda ctx, inputs, output: None)
