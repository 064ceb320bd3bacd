"""Binary segmentation metrics of the paper's Table 2 (ISIC 2018 lesion segmentation).

ACC, SE (sensitivity/recall), SP (specificity), PC (precision), F1, JS (Jaccard) and Dice
at a pixel threshold of 0.5, computed from per-image confusion counts in two ways:

- ``aggregate``: counts summed over every pixel of every image, then the ratios;
- ``per_image``: the ratios for each image, then the mean over images.

``F1`` is the harmonic mean of the reported SE and PC (the convention of the ISIC U-Net
code the paper's baselines come from); ``Dice`` is ``2TP / (2TP + FP + FN)`` averaged at the
same level. On the aggregate level the two are the same number; per image they differ.

``thresholded_jaccard`` is the ISIC 2018 Task 1 challenge score: per-image Jaccard, set to 0
for images below 0.65, then averaged.

Empty masks: a ratio whose denominator is zero counts as 1.0 — there was nothing of that
kind to get wrong. So for an image with no lesion pixels SE is 1, and if the prediction is
also empty PC, F1, JS and Dice are 1; a non-empty prediction there gives PC = JS = Dice = 0.
(torchmetrics' ``zero_division=0`` would instead score a correctly empty prediction as 0.)

Counts are kept per image so that multi-process evaluation can ``gather_for_metrics`` them and
count every image exactly once. They are four boolean sums; torchmetrics'
``binary_stat_scores(multidim_average="samplewise")`` computes the same but fails for a batch of
one image, so the tests use torchmetrics as the independent reference instead.
"""
from __future__ import annotations

import torch

SEGMENTATION_METRICS = ("ACC", "SE", "SP", "PC", "F1", "JS", "Dice")
ISIC_JACCARD_THRESHOLD = 0.65


def confusion_counts(probs: torch.Tensor, target: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Per-image ``(TP, FP, TN, FN)`` pixel counts, shape ``[N, 4]``, dtype int64.

    ``probs``: lesion probabilities in [0, 1], shape ``[N, H, W]`` or ``[N, 1, H, W]``;
    a pixel is predicted lesion when ``probs > threshold`` (torchmetrics' rule).
    ``target``: binary masks (0/1 or bool) of the same shape.
    """
    if probs.shape != target.shape:
        raise ValueError(f"probs and target must have the same shape, got {tuple(probs.shape)} "
                         f"and {tuple(target.shape)}")
    if probs.dim() not in (3, 4) or (probs.dim() == 4 and probs.shape[1] != 1):
        raise ValueError(f"probs must be [N, H, W] or [N, 1, H, W], got {tuple(probs.shape)}")
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    if not probs.is_floating_point() or probs.numel() and (probs.min() < 0 or probs.max() > 1):
        raise ValueError("probs must be floating point probabilities in [0, 1] "
                         "(apply sigmoid to logits first)")
    target = target.long()
    values = target.unique()
    if not ((values == 0) | (values == 1)).all():
        raise ValueError(f"target must be binary (0/1), got values {values[:5].tolist()}")
    predicted, actual = probs.flatten(1) > threshold, target.flatten(1).bool()
    return torch.stack([(predicted & actual).sum(1), (predicted & ~actual).sum(1),
                        (~predicted & ~actual).sum(1), (~predicted & actual).sum(1)], dim=1)


def _ratio(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """``numerator / denominator`` with ``0 / 0 := 1`` (see the module docstring)."""
    numerator, denominator = numerator.double(), denominator.double()
    return torch.where(denominator > 0, numerator / denominator.clamp_min(1), torch.ones_like(numerator))


def _scores(tp: torch.Tensor, fp: torch.Tensor, tn: torch.Tensor, fn: torch.Tensor) -> dict[str, torch.Tensor]:
    return {
        "ACC": _ratio(tp + tn, tp + fp + tn + fn),
        "SE": _ratio(tp, tp + fn),
        "SP": _ratio(tn, tn + fp),
        "PC": _ratio(tp, tp + fp),
        "JS": _ratio(tp, tp + fp + fn),
        "Dice": _ratio(2 * tp, 2 * tp + fp + fn),
    }


def _harmonic_mean(se: float, pc: float) -> float:
    return 2 * se * pc / (se + pc) if se + pc > 0 else 0.0


def segmentation_scores(counts: torch.Tensor) -> dict[str, float]:
    """All Table-2 metrics from per-image counts ``[N, 4]`` (``TP, FP, TN, FN``).

    Returns ``<metric>`` (aggregate over all pixels), ``<metric>_per_image`` (mean over
    images) for each of :data:`SEGMENTATION_METRICS`, ``thresholded_jaccard`` (ISIC 2018)
    and ``n_images``.
    """
    if counts.dim() != 2 or counts.shape[1] != 4 or counts.shape[0] == 0:
        raise ValueError(f"counts must have shape [N >= 1, 4] (TP, FP, TN, FN), got {tuple(counts.shape)}")
    if (counts < 0).any():
        raise ValueError("counts must be non-negative")
    tp, fp, tn, fn = counts.long().unbind(1)
    aggregate = {k: v.item() for k, v in _scores(tp.sum(), fp.sum(), tn.sum(), fn.sum()).items()}
    per_image_tensors = _scores(tp, fp, tn, fn)
    per_image = {k: v.mean().item() for k, v in per_image_tensors.items()}
    aggregate["F1"] = _harmonic_mean(aggregate["SE"], aggregate["PC"])
    per_image["F1"] = _harmonic_mean(per_image["SE"], per_image["PC"])
    jaccard = per_image_tensors["JS"]
    thresholded = torch.where(jaccard >= ISIC_JACCARD_THRESHOLD, jaccard, torch.zeros_like(jaccard))
    return {
        **{name: aggregate[name] for name in SEGMENTATION_METRICS},
        **{f"{name}_per_image": per_image[name] for name in SEGMENTATION_METRICS},
        "thresholded_jaccard": thresholded.mean().item(),
        "n_images": int(counts.shape[0]),
    }
