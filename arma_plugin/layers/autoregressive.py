"""Autoregressive (AR) part of an ARMA layer.

Su, Wang, Huang, "ARMA Nets: Expanding Receptive Field for Dense Prediction",
NeurIPS 2020: Def. 1 (the layer solves ``A * Y = T`` per channel), Def. 5 (separable AR
filter: a product of Q length-3 factors per axis), Thm 4 (backward), Thm 6 (stability),
Thm 7 (re-parameterisation, :func:`ar_taps`).

Semantics. ``A = (F_1⊗G_1)(F_2⊗G_2)…(F_Q⊗G_Q)``, each factor ``y[i] + right*y[i-d] +
left*y[i+d]`` along its axis (``F`` along H, ``G`` along W, ``d = dilation``).
``boundary="circular"``: periodic factors (circulant, they commute; identical to dividing
by the filter's 2-D FFT as the authors' code does, also for maps smaller than the
filter, where taps wrap onto the same pixel). ``boundary="zeros"``: every factor is a
zero-padded convolution (``y = 0`` outside the image), i.e. a tridiagonal Toeplitz
matrix per axis; strict diagonal dominance (Thm 6) makes each factor invertible at every
size, which is why ``zeros`` is the product of zero-padded factors and not one
zero-padded ``(2Q+1)²`` filter. ``Y = A^{-1} X`` is exact in both cases.
"""
from __future__ import annotations

import contextlib

import torch
import torch.fx
import torch.nn as nn
from torch._subclasses.fake_tensor import is_fake

from ..validation import check_bool, check_choice, check_odd_kernel_size, check_positive_int
from .ar_solve_op import numba_available, resolve_backend, triton_available
from .ar_taps import BOUNDARIES, ar_taps, taps_are_stable

__all__ = ["AutoRegressive2d", "autoregressive2d", "ar_taps", "BOUNDARIES"]


FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _check_args(boundary: str, dilation: int) -> None:
    check_choice("boundary", boundary, BOUNDARIES)
    check_positive_int("dilation", dilation)


def _check_tensors(x: torch.Tensor, alpha: torch.Tensor) -> None:
    if x.dim() != 4:
        raise ValueError(f"x must be 4-D [batch, channels, height, width], got shape {tuple(x.shape)}")
    if alpha.dim() != 3 or alpha.shape[-1] != 4 or alpha.shape[1] < 1:
        raise ValueError(f"alpha must have shape [channels, Q >= 1, 4], got {tuple(alpha.shape)}")
    if x.shape[1] != alpha.shape[0]:
        raise ValueError(f"x has {x.shape[1]} channels but alpha is for {alpha.shape[0]} channels")
    for name, t in (("x", x), ("alpha", alpha)):
        if t.dtype not in FLOAT_DTYPES:
            raise ValueError(f"{name} must be a real floating-point tensor {FLOAT_DTYPES}, got {t.dtype}")
    if alpha.device != x.device:
        raise ValueError(f"alpha is on device {alpha.device} but x is on {x.device}; they must be on the same device")


def autoregressive2d(x: torch.Tensor, alpha: torch.Tensor, boundary: str = "circular",
                     reparam: bool = True, dilation: int = 1, backend: str | None = None) -> torch.Tensor:
    """Solve ``A * Y = X`` per channel for ``x`` ``[B, C, H, W]``; ``alpha`` is ``[C, Q, 4]``.

    float16/bfloat16 input (e.g. from autocast) is solved in float32 and returned in
    the input dtype; float32 and float64 are solved in their own precision. The output
    keeps a channels_last layout. An empty batch or map gives an empty output. ``backend``:
    ``"numba"``/``"torch"``/``"triton"``/``None`` (automatic, or ``$ARMA_PLUGIN_BACKEND``). Complex or
    integer tensors, and ``alpha`` on another device than ``x``, raise ``ValueError``.

    With ``reparam=False`` the raw taps may leave the stable region (paper Fig. 5); nothing
    is clamped: a singular system gives inf/nan, and a nearly singular one gives huge
    finite values, which are not detected. With ``reparam=True``, ``|tanh(alpha)|`` is
    capped (:data:`~arma_plugin.layers.ar_taps.TANH_LIMIT`), so entries of ``alpha`` beyond
    the cap (``|alpha| > 5.9``) get zero gradient. Differentiable once: double backward
    raises.
    """
    _check_args(boundary, dilation)
    _check_tensors(x, alpha)
    with _autocast_disabled(x.device.type):
        if not reparam and backend is None and _is_traced(x, alpha):
            backend = "torch"  # raw taps' stability is data: a traced graph must solve any taps
        return _solve(x, alpha, boundary, reparam, dilation, resolve_backend(x, alpha, backend, known_stable=reparam))


def _autocast_disabled(device_type: str):
    """Autocast off where it is on. No context otherwise: ``meta`` has no autocast, and
    ``torch.export`` would wrap even a no-op autocast region in a higher-order op."""
    if torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


def _is_traced(x: torch.Tensor, taps: torch.Tensor) -> bool:
    """Whether the solve's inputs have no values to look at (``torch.compile``/``torch.export``
    tracing, fake tensors)."""
    return torch.compiler.is_compiling() or is_fake(x) or is_fake(taps)


def _solve(x: torch.Tensor, alpha: torch.Tensor, boundary: str, reparam: bool, dilation: int,
           solver: str) -> torch.Tensor:
    """The custom op, which keeps ``x``'s dtype and memory layout (TorchScript compiles this and
    :meth:`AutoRegressive2d.forward`'s scripted branch)."""
    return torch.ops.arma_plugin.ar_solve(x, alpha, boundary, reparam, dilation, solver)[0]


def _scripted_backend(x: torch.Tensor, taps: torch.Tensor, known_stable: bool, numba_installed: bool,
                      triton_installed: bool) -> str:
    """:func:`resolve_backend`'s automatic choice in TorchScript (no ``$ARMA_PLUGIN_BACKEND``)."""
    if known_stable or taps_are_stable(taps):
        if x.device.type == "cpu" and numba_installed:
            return "numba"
        if x.device.type == "cuda" and triton_installed:
            return "triton"
    return "torch"


torch.fx.wrap("autoregressive2d")


@torch.compiler.assume_constant_result  # so strict (dynamo) tracing runs the check too
def _refuse_onnx_export() -> bool:
    """ONNX has no AR solve: refuse with the way out instead of an unknown-operator error."""
    if torch.onnx.is_in_onnx_export():
        raise RuntimeError("AutoRegressive2d cannot be exported to ONNX as is (its solve is the custom op "
                           "arma_plugin::ar_solve); export arma_plugin.for_export(model, example_input) "
                           "instead, which turns each AR solve into two matmuls at the example's size")
    return False


class AutoRegressive2d(nn.Module):
    """Per-channel separable AR solve, the AR half of an ARMA layer (Def. 1, Def. 5).

    Parameter ``alpha`` ``[channels, Q, 4]`` with ``Q = ar_kernel_size // 2``, zero at
    init (``A = I``: the layer is the identity). ``device``/``dtype`` place ``alpha`` like
    any ``nn`` module's factory arguments; after ``device="meta"`` construction and
    ``to_empty()``, :meth:`reset_parameters` restores the identity. See :func:`autoregressive2d`.
    """

    # TorchScript can neither import nor read globals: the installed fast backends, as constants
    __constants__ = ["numba_installed", "triton_installed"]
    numba_installed = numba_available()
    triton_installed = triton_available()

    def __init__(self, channels: int, ar_kernel_size: int = 3, boundary: str = "circular",
                 reparam: bool = True, dilation: int = 1, device=None, dtype=None) -> None:
        super().__init__()
        check_positive_int("channels", channels)
        check_odd_kernel_size("ar_kernel_size", ar_kernel_size)
        check_bool("reparam", reparam)
        _check_args(boundary, dilation)
        self.channels = channels
        self.ar_kernel_size = ar_kernel_size
        self.boundary = boundary
        self.reparam = reparam
        self.dilation = dilation
        self.alpha = nn.Parameter(torch.empty(channels, ar_kernel_size // 2, 4, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """``alpha = 0``: ``A = I``, the layer is the identity (also ``reparam=False``: zero taps)."""
        nn.init.zeros_(self.alpha)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():  # TorchScript compiles only this branch; argument checks are eager
            solver = _scripted_backend(x, self.alpha, self.reparam, self.numba_installed, self.triton_installed)
            return _solve(x, self.alpha, self.boundary, self.reparam, self.dilation, solver)
        _refuse_onnx_export()
        return autoregressive2d(x, self.alpha, self.boundary, self.reparam, self.dilation)

    def extra_repr(self) -> str:
        return (f"{self.channels}, ar_kernel_size={self.ar_kernel_size}, boundary={self.boundary!r}, "
                f"reparam={self.reparam}, dilation={self.dilation}")
