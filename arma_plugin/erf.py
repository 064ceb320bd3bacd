"""Effective receptive field (ERF) of a network and its radius.

Su et al., NeurIPS 2020, §3.2:

- Def. 2: the ERF is the empirical distribution of the gradient amplitudes
  ``g(i, p) = |∂Y_{i,t} / ∂X_{i-p,s}|`` over the offsets ``p``, averaged over
  input channels ``s``, output channels ``t`` (and inputs).
- Eq. 3: its radius is the standard deviation of that distribution,
  ``r² = Σ_p |p|² ERF(p) − (Σ_p |p| ERF(p))²`` with ``|p| = sqrt(p1² + p2²)``.
- Thm 3: an L-layer linear network whose layer l computes
  ``y_i − a·y_{i−1} = Σ_{k<K} (1−a)/K · x_{i−d·k}`` has
  ``r² = Σ_l [ d²(K²−1)/12 + a/(1−a)² ]``.

Def. 2 as printed divides ``g(i, p)`` by a sum over output positions at fixed
``p``; that is not a distribution over ``p``. This module normalises each
gradient map over the offsets (so every map, and the ERF, sums to one), which
is what "empirical distribution" and eq. 3 require.
"""
from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from .layers import ARMAConv2d, AutoRegressive2d, ar_taps
from .validation import check_choice, check_positive_int

RADIUS_ABOUT = ("origin", "mean")


def erf_map(model: nn.Module, input_shape: Sequence[int], *, output_index: Sequence[int] | None = None,
            n_samples: int = 16, batch_size: int = 8, seed: int = 0) -> torch.Tensor:
    """ERF (Def. 2) of one output location of ``model``, as a ``[H, W]`` float64 map summing to 1.

    Args:
        model: any module mapping ``[B, S, H, W]`` to a feature map ``[B, T, H', W']``
            (a timm backbone with ``num_classes=0, global_pool=''``, an SMP model, an
            armafied model). It runs in eval mode (batch norm uses its running
            statistics); its training flag is restored afterwards.
        input_shape: ``(S, H, W)`` of one input.
        output_index: ``(i1, i2)`` in the output map; the centre ``(H'//2, W'//2)`` if None.
        n_samples: random inputs ``X ~ N(0, 1)``. Sample ``b`` back-propagates from
            output channel ``b mod T``, so ``n_samples >= T`` covers every output
            channel of Def. 2's average. A linear network needs one per channel.
        batch_size: samples per forward pass (memory knob; the result does not depend on it).
        seed: seed of the random inputs.

    Entry ``[j1, j2]`` is the weight of input pixel ``(j1, j2)``; the offset of Def. 2 is
    ``p = output location − j`` (in input pixels when the model keeps the resolution).
    Def. 2 also averages over output locations; like Luo et al. this measures one, which is
    the same thing for a shift-invariant network away from the borders.
    """
    if len(input_shape) != 3:
        raise ValueError(f"input_shape must be (channels, height, width), got {tuple(input_shape)!r}")
    for axis, size in zip(("channels", "height", "width"), input_shape):
        check_positive_int(f"input_shape {axis}", size)
    check_positive_int("n_samples", n_samples)
    check_positive_int("batch_size", batch_size)
    param = next(model.parameters(), None)
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    device = param.device if param is not None else torch.device("cpu")
    generator = torch.Generator().manual_seed(seed)
    was_training = model.training
    model.eval()
    total = torch.zeros(tuple(input_shape)[1:], dtype=torch.float64, device=device)
    n_maps = 0
    try:
        for start in range(0, n_samples, batch_size):
            count = min(batch_size, n_samples - start)
            x = torch.randn((count, *input_shape), generator=generator, dtype=torch.float64)
            x = x.to(device=device, dtype=dtype).requires_grad_(True)
            y = model(x)
            if not isinstance(y, torch.Tensor) or y.dim() != 4:
                shape = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
                raise ValueError(f"erf_map needs a model whose output is a [B, T, H, W] feature map, got {shape}; "
                                 "for a classifier pass its feature extractor (timm: num_classes=0, global_pool='')")
            out_h, out_w = y.shape[-2:]
            i1, i2 = (out_h // 2, out_w // 2) if output_index is None else (int(i) for i in output_index)
            if not (0 <= i1 < out_h and 0 <= i2 < out_w):
                raise ValueError(f"output_index must lie in the output map of size {(out_h, out_w)}, got {(i1, i2)}")
            channels = torch.arange(start, start + count, device=y.device) % y.shape[1]
            picked = y[torch.arange(count, device=y.device), channels, i1, i2]
            (grad,) = torch.autograd.grad(picked.sum(), x)
            amplitude = grad.detach().abs().to(torch.float64).flatten(0, 1)  # one map per (sample, input channel)
            mass = amplitude.sum(dim=(-2, -1))
            nonzero = mass > 0  # an input channel the output does not see has no distribution (0/0)
            total += (amplitude[nonzero] / mass[nonzero, None, None]).sum(dim=0)
            n_maps += int(nonzero.sum())
    finally:
        model.train(was_training)
    if n_maps == 0:
        raise ValueError(f"all gradients are zero: the output at {output_index or 'the centre'} does not depend on "
                         f"the input for any of the {n_samples} sampled output channels (dead ReLUs?); "
                         "try more samples or another output_index")
    return total / n_maps


def erf_radius(erf: torch.Tensor | np.ndarray, *, origin: Sequence[float] | None = None,
               about: str = "origin") -> float:
    """Radius of a 1-D or 2-D ERF map (eq. 3); the map is normalised to sum to 1 first.

    Args:
        erf: non-negative weights, ``[N]`` or ``[H, W]``.
        origin: index of the output location (offset ``p = 0``); the map's centre
            ``n // 2`` per axis if None (the default output of :func:`erf_map` for a model
            that keeps the resolution).
        about: ``"origin"`` is eq. 3 as printed, the standard deviation of the distance
            ``|p|`` to the output location; ``"mean"`` is the standard deviation about the
            ERF's centre of mass, ``sqrt(Σ_axes Var(p_axis))``. The two agree for a 1-D
            map that lies on one side of the origin, as in Thm 3's causal network;
            ``"mean"`` is the one that does not depend on where the output sits.
    """
    weights = torch.as_tensor(erf, dtype=torch.float64).cpu()
    if weights.dim() not in (1, 2):
        raise ValueError(f"erf must be a 1-D or 2-D map, got shape {tuple(weights.shape)}")
    check_choice("about", about, RADIUS_ABOUT)
    if bool((weights < 0).any()) or not bool(torch.isfinite(weights).all()) or float(weights.sum()) <= 0:
        raise ValueError("erf must be finite, non-negative and have a positive sum")
    weights = weights / weights.sum()
    centre = [n // 2 for n in weights.shape] if origin is None else [float(o) for o in origin]
    if len(centre) != weights.dim():
        raise ValueError(f"origin must have one entry per axis of erf ({weights.dim()}), got {tuple(origin)!r}")
    offsets = torch.meshgrid(*(torch.arange(n, dtype=torch.float64) - c for n, c in zip(weights.shape, centre)),
                             indexing="ij")
    if about == "mean":
        variance = sum(float((weights * p**2).sum() - (weights * p).sum() ** 2) for p in offsets)
    else:
        distance = torch.sqrt(sum(p**2 for p in offsets))
        variance = float((weights * distance**2).sum() - (weights * distance).sum() ** 2)
    return math.sqrt(max(variance, 0.0))  # rounding can leave a tiny negative variance for a point mass


def _per_layer(value: float | Sequence[float], num_layers: int, name: str) -> list[float]:
    values = list(value) if isinstance(value, Sequence) else [value] * num_layers
    if len(values) != num_layers:
        raise ValueError(f"{name} must be a number or a list of num_layers={num_layers} numbers, got {len(values)}")
    return values


def _check_theorem3_args(num_layers: int, kernel_size, dilation, ar_coeff) -> list[tuple[int, int, float]]:
    check_positive_int("num_layers", num_layers)
    layers = list(zip(_per_layer(kernel_size, num_layers, "kernel_size"), _per_layer(dilation, num_layers, "dilation"),
                      _per_layer(ar_coeff, num_layers, "ar_coeff")))
    for k, d, a in layers:
        check_positive_int("kernel_size", k)
        check_positive_int("dilation", d)
        if not 0.0 <= a < 1.0:
            raise ValueError(f"ar_coeff must lie in [0, 1) (Thm 3), got {a!r}")
    return [(k, d, float(a)) for k, d, a in layers]


def theoretical_radius(num_layers: int, kernel_size: int | Sequence[int] = 3, dilation: int | Sequence[int] = 1,
                       ar_coeff: float | Sequence[float] = 0.0) -> float:
    """Thm 3: ``r = sqrt(Σ_l [d_l²(K_l²−1)/12 + a_l/(1−a_l)²])``; each argument a number or a per-layer list."""
    layers = _check_theorem3_args(num_layers, kernel_size, dilation, ar_coeff)
    return math.sqrt(sum(d**2 * (k**2 - 1) / 12 + a / (1 - a) ** 2 for k, d, a in layers))


def linear_arma_network(num_layers: int, kernel_size: int | Sequence[int] = 3, dilation: int | Sequence[int] = 1,
                        ar_coeff: float | Sequence[float] = 0.0, *, ndim: int = 1,
                        dtype: torch.dtype = torch.float64) -> nn.Sequential:
    """Thm 3's linear ARMA network, built from :class:`ARMAConv2d` (one input and output channel).

    Layer l: a causal zero padding, a uniform MA kernel ``(1−a)/K`` of length K and dilation d,
    then the AR solve ``y_i − a·y_{i−1} = t_i`` with a zero boundary (raw taps:
    ``f_right = −a``, ``f_left = 0`` in the layer's ``y[i] + right·y[i−d] + left·y[i+d]``).
    ``ndim=1`` acts along H of an ``[H, 1]`` map; ``ndim=2`` applies the same layer along
    both axes (``g`` taps equal to ``f``), so its ERF is the outer product of the 1-D one.
    The ERF lies above/left of the output: measure it at the last row/column.
    """
    if ndim not in (1, 2):
        raise ValueError(f"ndim must be 1 or 2, got {ndim!r}")
    modules: list[nn.Module] = []
    for k, d, a in _check_theorem3_args(num_layers, kernel_size, dilation, ar_coeff):
        pad = d * (k - 1)
        modules.append(nn.ZeroPad2d((pad, 0, pad, 0) if ndim == 2 else (0, 0, pad, 0)))
        kernel = (k, k) if ndim == 2 else (k, 1)
        layer = ARMAConv2d(1, 1, kernel, dilation=(d, d) if ndim == 2 else (d, 1), bias=False,
                           boundary="zeros", reparam=False, dtype=dtype)
        with torch.no_grad():
            layer.weight.fill_(((1 - a) / k) ** ndim)
            layer.ar.alpha.copy_(torch.tensor([[[0.0, -a, 0.0, -a if ndim == 2 else 0.0]]], dtype=dtype))
        modules.append(layer)
    return nn.Sequential(*modules)


def support_length(num_layers: int, kernel_size: int | Sequence[int] = 3, dilation: int | Sequence[int] = 1,
                   ar_coeff: float | Sequence[float] = 0.0, *, tail: float = 1e-10) -> int:
    """Length that holds all but ``num_layers · tail`` of the mass of Thm 3's 1-D ERF.

    The AR response of layer l is geometric, ``P(n > m) = a^(m+1)``; if the sum of the layers'
    offsets exceeds ``Σ_l m_l`` one of them exceeds its ``m_l``, so a union bound gives the tail.
    """
    length = 1
    for k, d, a in _check_theorem3_args(num_layers, kernel_size, dilation, ar_coeff):
        length += d * (k - 1) + (math.ceil(math.log(tail) / math.log(a)) if a > 0 else 0)
    return length


def linear_arma_erf(num_layers: int, kernel_size: int | Sequence[int] = 3, dilation: int | Sequence[int] = 1,
                    ar_coeff: float | Sequence[float] = 0.0, *, ndim: int = 1, tail: float = 1e-10,
                    ) -> tuple[torch.Tensor, tuple[int, int]]:
    """ERF map of :func:`linear_arma_network` at its last row (and column), and that output's index."""
    n = support_length(num_layers, kernel_size, dilation, ar_coeff, tail=tail)
    net = linear_arma_network(num_layers, kernel_size, dilation, ar_coeff, ndim=ndim)
    width = n if ndim == 2 else 1
    origin = (n - 1, width - 1)
    return erf_map(net, (1, n, width), output_index=origin, n_samples=1), origin


def radius_table(layers: Sequence[int], coeffs: Sequence[float], kernel_size: int = 3,
                 dilations: Sequence[int] = (1,)) -> list[dict[str, float]]:
    """Measured (eq. 3 on :func:`linear_arma_erf`) vs Thm 3 radius for every (d, L, a)."""
    rows = []
    for d in dilations:
        for num_layers in layers:
            for a in coeffs:
                erf, origin = linear_arma_erf(num_layers, kernel_size, d, a)
                measured = erf_radius(erf, origin=origin)
                theory = theoretical_radius(num_layers, kernel_size, d, a)
                rows.append({"dilation": d, "layers": num_layers, "ar_coeff": a, "measured": measured,
                             "theoretical": theory, "rel_error": abs(measured - theory) / theory})
    return rows


def ar_layer_radius(left: Sequence[float] | np.ndarray, right: Sequence[float] | np.ndarray, *,
                    kernel_size: int = 1, dilation: int = 1, ar_dilation: int = 1, tail: float = 1e-12,
                    max_length: int = 1 << 22) -> float | np.ndarray:
    """Implied 1-D ERF radius of one ARMA layer along one axis, Thm 3 generalised to any taps.

    ``r² = d²(K²−1)/12 + d_ar² · Var(|h|)``: the uniform-MA term of Thm 3 plus the variance
    (about its mean) of the normalised amplitude of the AR impulse response ``h``, the inverse
    of ``Π_q (1 + right_q z + left_q z⁻¹)`` on an infinite line (layer convention
    ``y[i] + right·y[i−1] + left·y[i+1]``). For ``left = 0, right = −a`` this is Thm 3's layer.

    ``left``/``right`` are ``[Q]`` (one channel: returns a float) or ``[C, Q]`` (returns ``[C]``).
    A channel whose taps are so near the stability boundary that its response does not fit in
    ``max_length`` samples gets ``inf``.
    """
    for name, value in (("kernel_size", kernel_size), ("dilation", dilation), ("ar_dilation", ar_dilation),
                        ("max_length", max_length)):
        check_positive_int(name, value)
    left_t, right_t = np.asarray(left, dtype=np.float64), np.asarray(right, dtype=np.float64)
    if left_t.shape != right_t.shape or left_t.ndim not in (1, 2) or left_t.size == 0:
        raise ValueError(f"left and right must both be [Q] or [C, Q] taps, got shapes {left_t.shape} and {right_t.shape}")
    rho = np.max(np.abs(np.atleast_2d(left_t)) + np.abs(np.atleast_2d(right_t)), axis=1)
    if (rho >= 1.0).any():
        raise ValueError("left, right taps outside the stability region |left| + |right| < 1 (Thm 6): "
                         f"{float(rho.max()):.6g}")
    factors = left_t.shape[-1]
    # |h|'s mass beyond m steps of one factor is at most rho^(m+1)/(1-rho) (Neumann series of 1/A)
    with np.errstate(divide="ignore"):
        steps = np.where(rho > 0, np.ceil((math.log(tail) + np.log1p(-rho)) / np.log(rho)), 0.0)
    lengths = 2 ** np.maximum(6, np.ceil(np.log2(2 * factors * steps + 1))).astype(np.int64)
    variance = np.full(rho.shape, math.inf)
    for length in np.unique(lengths[lengths <= max_length]):
        rows = lengths == length
        variance[rows] = _response_variance(np.atleast_2d(left_t)[rows], np.atleast_2d(right_t)[rows], int(length))
    radius = np.sqrt(dilation**2 * (kernel_size**2 - 1) / 12 + ar_dilation**2 * variance)
    return float(radius[0]) if left_t.ndim == 1 else radius


def _response_variance(left: np.ndarray, right: np.ndarray, length: int, chunk: int = 256) -> np.ndarray:
    """Variance of the normalised ``|h|`` of each row's AR filter, on a line of ``length`` samples."""
    omega = 2 * np.pi * np.fft.fftfreq(length)
    offsets = np.fft.fftfreq(length, d=1.0 / length)  # sample index of each FFT bin: 0, 1, ..., -1
    out = np.empty(left.shape[0])
    for start in range(0, left.shape[0], chunk):
        lc, rc = left[start:start + chunk], right[start:start + chunk]
        factor = 1 + rc[..., None] * np.exp(-1j * omega) + lc[..., None] * np.exp(1j * omega)
        amplitude = np.abs(np.fft.ifft(1.0 / factor.prod(axis=1), axis=-1).real)
        # the FFT's rounding floor (~1e-16 everywhere) would otherwise dominate the second moment of a long line
        amplitude[amplitude < 1e-14 * amplitude.max(axis=-1, keepdims=True)] = 0.0
        weights = amplitude / amplitude.sum(axis=-1, keepdims=True)
        mean = (weights * offsets).sum(axis=-1)
        out[start:start + chunk] = (weights * (offsets - mean[:, None]) ** 2).sum(axis=-1)
    return out


@dataclass
class ARLayerSummary:
    """Tap statistics of one AR layer and the 1-D ERF radius its taps imply (mean over channels)."""

    name: str
    channels: int
    factors: int
    mean_abs_tap: float
    max_abs_tap: float
    radius_h: float
    radius_w: float


def ar_coefficients(model: nn.Module) -> dict[str, torch.Tensor]:
    """Taps ``[C, Q, 4]`` = ``(f_left, f_right, g_left, g_right)`` of every :class:`AutoRegressive2d`, by module name."""
    return {name: ar_taps(module.alpha.detach(), module.reparam).cpu().double()
            for name, module in model.named_modules() if isinstance(module, AutoRegressive2d)}


def _ma_conv(model: nn.Module, ar_name: str) -> nn.Module | None:
    """The conv an AR layer follows: its parent (``<conv>.ar``) or, in a graph, ``<conv>_ar[_N]``."""
    match = re.fullmatch(r"(.+)\.ar|(.+)_ar(?:_\d+)?", ar_name)
    if match is None:
        return None
    try:
        conv = model.get_submodule(match.group(1) or match.group(2).replace("_", "."))
    except AttributeError:
        return None
    return conv if hasattr(conv, "kernel_size") and hasattr(conv, "dilation") else None


def ar_layer_summaries(model: nn.Module) -> list[ARLayerSummary]:
    """Per AR layer: mean and max ``|tap|`` and :func:`ar_layer_radius` along H and W, averaged
    over channels. The MA term uses the kernel and dilation of the conv the layer follows (as if
    its weights were uniform, as in Thm 3); for an AR layer with no known conv it is left out."""
    summaries = []
    for name, taps in ar_coefficients(model).items():
        module = model.get_submodule(name)
        conv = _ma_conv(model, name)
        kernel, dilation = (conv.kernel_size, conv.dilation) if conv is not None else ((1, 1), (1, 1))
        radii = [float(np.mean(ar_layer_radius(taps[:, :, left].numpy(), taps[:, :, right].numpy(),
                                                kernel_size=kernel[axis], dilation=dilation[axis],
                                                ar_dilation=module.dilation)))
                 for axis, (left, right) in enumerate(((0, 1), (2, 3)))]
        summaries.append(ARLayerSummary(name, taps.shape[0], taps.shape[1], float(taps.abs().mean()),
                                        float(taps.abs().max()), radii[0], radii[1]))
    return summaries
