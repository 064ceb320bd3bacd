"""Video-prediction metrics of Su et al., NeurIPS 2020, Table 3 (Moving-MNIST-2).

PSNR and SSIM are computed per predicted frame of every sequence, then averaged over
sequences (one curve over the predicted frames) and over frames (the table's number),
as the paper's evaluation does. The per-image values come from torchmetrics, which the
``recipes`` extra installs; it is imported only when :func:`frame_psnr` or :func:`frame_ssim`
runs, so ``arma_plugin.metrics`` imports on a core install.

SSIM (Wang et al. 2004, eq. 13) uses a uniform 7x7 window, the default window of the
scikit-image function the paper used, with ``C1 = (0.01 L)^2``, ``C2 = (0.03 L)^2`` and
the population (not sample) covariance, averaged over the windows that fit in the frame.
"""
from __future__ import annotations

import math
from types import ModuleType

import torch

SSIM_WINDOW = 7
DEFAULT_MAX_PSNR = 100.0
"""PSNR (dB) a perfectly predicted frame counts as in averages: finite, far above any real score."""


def _torchmetrics_image() -> ModuleType:
    try:
        from torchmetrics.functional import image
    except ImportError as err:
        raise ImportError("frame_psnr and frame_ssim need torchmetrics, which the 'recipes' extra installs: "
                          "pip install 'arma-plugin[recipes]'") from err
    return image


def _check_pair(pred: torch.Tensor, target: torch.Tensor) -> None:
    if pred.shape != target.shape or pred.dim() != 5:
        raise ValueError(f"pred and target must both be [B, T, C, H, W], got {tuple(pred.shape)} "
                         f"and {tuple(target.shape)}")
    if min(pred.shape[-2:]) < SSIM_WINDOW:
        raise ValueError(f"frames must be at least {SSIM_WINDOW}x{SSIM_WINDOW} for SSIM, got {tuple(pred.shape[-2:])}")


def frame_psnr(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """PSNR ``10 log10(L^2 / MSE)`` of every frame: ``[B, T, C, H, W]`` → ``[B, T]``; ``inf`` where equal."""
    _check_pair(pred, target)
    flat = (pred.flatten(0, 1).double(), target.flatten(0, 1).double())
    return _torchmetrics_image().peak_signal_noise_ratio(*flat, data_range=data_range, reduction="none",
                                                         dim=(1, 2, 3)).view(pred.shape[:2])


def frame_ssim(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Mean SSIM of every frame (uniform 7x7 window): ``[B, T, C, H, W]`` → ``[B, T]``; 1 where equal."""
    _check_pair(pred, target)
    flat = (pred.flatten(0, 1).double(), target.flatten(0, 1).double())
    _, ssim_map = _torchmetrics_image().structural_similarity_index_measure(
        *flat, gaussian_kernel=False, kernel_size=SSIM_WINDOW, data_range=data_range, return_full_image=True)
    # torchmetrics averages over reflect-padded border windows too; keep only the windows that fit
    # in the frame, as scikit-image (the paper's implementation) does.
    pad = SSIM_WINDOW // 2
    return ssim_map[..., pad:-pad, pad:-pad].mean(dim=(1, 2, 3)).view(pred.shape[:2])


def summarize_video_metrics(psnr: torch.Tensor, ssim: torch.Tensor,
                            max_psnr: float = DEFAULT_MAX_PSNR) -> dict[str, float | list[float]]:
    """Table-3 numbers from per-frame values ``[N, T]`` of N sequences.

    Returns ``psnr`` and ``ssim`` (mean over sequences and frames) and ``psnr_per_frame``,
    ``ssim_per_frame`` (mean over sequences, one value per predicted frame). A perfect frame
    (PSNR ``inf``) counts as ``max_psnr`` so that one exact frame does not make the mean infinite.
    """
    if psnr.shape != ssim.shape or psnr.dim() != 2 or psnr.numel() == 0:
        raise ValueError(f"psnr and ssim must both be non-empty [N, T], got {tuple(psnr.shape)} and {tuple(ssim.shape)}")
    if not max_psnr > 0 or math.isinf(max_psnr):
        raise ValueError(f"max_psnr must be a finite positive number of dB, got {max_psnr}")
    psnr = psnr.double().clamp(max=max_psnr)
    psnr_curve, ssim_curve = psnr.mean(0), ssim.double().mean(0)
    return {"psnr": psnr_curve.mean().item(), "ssim": ssim_curve.mean().item(),
            "psnr_per_frame": psnr_curve.tolist(), "ssim_per_frame": ssim_curve.tolist()}


def video_prediction_metrics(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0,
                             max_psnr: float = DEFAULT_MAX_PSNR) -> dict[str, float | list[float]]:
    """:func:`summarize_video_metrics` of :func:`frame_psnr` and :func:`frame_ssim` for one batch."""
    return summarize_video_metrics(frame_psnr(pred, target, data_range), frame_ssim(pred, target, data_range),
                                   max_psnr)
