"""Video-prediction metrics (paper Table 3) against direct formulas on known inputs."""
import importlib
import math
import sys

import pytest
import torch

from arma_plugin.metrics import frame_psnr, frame_ssim, summarize_video_metrics, video_prediction_metrics


def reference_psnr(pred: torch.Tensor, target: torch.Tensor, data_range: float) -> float:
    mse = ((pred.double() - target.double()) ** 2).mean().item()
    return math.inf if mse == 0 else 10 * math.log10(data_range ** 2 / mse)


def reference_ssim(x: torch.Tensor, y: torch.Tensor, data_range: float, window: int = 7) -> float:
    """Wang et al. 2004 eq. 13, one uniform window at a time, averaged over all windows that fit."""
    x, y = x.double()[0], y.double()[0]
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    scores = []
    for i in range(x.shape[0] - window + 1):
        for j in range(x.shape[1] - window + 1):
            a, b = x[i:i + window, j:j + window], y[i:i + window, j:j + window]
            mu_a, mu_b = a.mean(), b.mean()
            var_a, var_b = ((a - mu_a) ** 2).mean(), ((b - mu_b) ** 2).mean()
            cov = ((a - mu_a) * (b - mu_b)).mean()
            scores.append(((2 * mu_a * mu_b + c1) * (2 * cov + c2))
                          / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2)))
    return torch.stack(scores).mean().item()


def noisy_pair(seed: int, noise: float, size: int = 12):
    g = torch.Generator().manual_seed(seed)
    target = torch.rand(2, 3, 1, size, size, generator=g)
    pred = (target + noise * torch.randn(target.shape, generator=g)).clamp(0, 1)
    return pred, target


@pytest.mark.parametrize("noise", [0.02, 0.2, 0.6])
@pytest.mark.parametrize("data_range", [1.0, 2.0])
def test_per_frame_values_match_direct_formulas(noise, data_range):
    pred, target = noisy_pair(0, noise)
    psnr, ssim = frame_psnr(pred, target, data_range), frame_ssim(pred, target, data_range)
    assert psnr.shape == ssim.shape == (2, 3)
    for b in range(2):
        for t in range(3):
            # torchmetrics keeps data_range as a float32 tensor: relative error ~1e-7 of ~10-40 dB.
            assert psnr[b, t].item() == pytest.approx(reference_psnr(pred[b, t], target[b, t], data_range), abs=1e-5)
            # float32 constants (C1, C2) in torchmetrics: a few 1e-8 on a value in [-1, 1].
            assert ssim[b, t].item() == pytest.approx(reference_ssim(pred[b, t], target[b, t], data_range), abs=1e-6)


def test_identical_frames_give_ssim_one_and_capped_psnr():
    frames = torch.rand(2, 4, 1, 10, 10)
    assert torch.isinf(frame_psnr(frames, frames.clone())).all()
    out = video_prediction_metrics(frames, frames.clone(), max_psnr=80.0)
    assert out["psnr"] == 80.0 and out["psnr_per_frame"] == [80.0] * 4
    assert out["ssim"] == pytest.approx(1.0, abs=1e-12)  # exact up to float64 rounding


def test_summary_averages_sequences_then_frames():
    psnr = torch.tensor([[10.0, 20.0], [30.0, math.inf]])
    ssim = torch.tensor([[0.5, 0.7], [0.9, 1.0]], dtype=torch.float64)
    out = summarize_video_metrics(psnr, ssim, max_psnr=50.0)
    assert out["psnr_per_frame"] == [20.0, 35.0]
    assert out["psnr"] == 27.5
    assert out["ssim_per_frame"] == pytest.approx([0.7, 0.85], abs=1e-12)  # float rounding of 0.7/0.85 only


def test_worse_prediction_scores_lower():
    good, target = noisy_pair(1, 0.05)
    bad, _ = noisy_pair(1, 0.3)
    assert video_prediction_metrics(good, target)["psnr"] > video_prediction_metrics(bad, target)["psnr"]
    assert video_prediction_metrics(good, target)["ssim"] > video_prediction_metrics(bad, target)["ssim"]


@pytest.mark.parametrize("pred_shape, target_shape", [((2, 3, 1, 8, 8), (2, 3, 1, 8, 9)),
                                                      ((3, 1, 8, 8), (3, 1, 8, 8)),
                                                      ((1, 1, 1, 5, 5), (1, 1, 1, 5, 5))])
def test_bad_shapes_are_rejected(pred_shape, target_shape):
    with pytest.raises(ValueError, match="must"):
        video_prediction_metrics(torch.rand(pred_shape), torch.rand(target_shape))


def test_bad_max_psnr_is_rejected():
    with pytest.raises(ValueError, match="max_psnr"):
        summarize_video_metrics(torch.ones(1, 1), torch.ones(1, 1), max_psnr=math.inf)


def test_metrics_import_without_torchmetrics(monkeypatch):
    """A core install has no torchmetrics (the 'recipes' extra brings it): the package imports, the
    metrics that do not need it run, and PSNR/SSIM say which extra to install."""
    import arma_plugin

    imported_before = sys.modules["arma_plugin.metrics"]
    for name in [m for m in sys.modules if m == "torchmetrics" or m.startswith("torchmetrics.")]:
        monkeypatch.setitem(sys.modules, name, None)  # None in sys.modules: "import torchmetrics" fails
    monkeypatch.setitem(sys.modules, "torchmetrics", None)
    for name in [m for m in sys.modules if m.startswith("arma_plugin.metrics")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(arma_plugin, "metrics", arma_plugin.metrics)  # restored after the fresh import

    metrics = importlib.import_module("arma_plugin.metrics")
    assert metrics is not imported_before  # imported just now, with torchmetrics hidden
    counts = metrics.confusion_counts(torch.tensor([[[0.9, 0.1]]]), torch.tensor([[[1, 0]]]))
    assert metrics.segmentation_scores(counts)["JS"] == 1.0
    frames = torch.rand(1, 2, 1, 8, 8)
    for metric in (metrics.frame_psnr, metrics.frame_ssim, metrics.video_prediction_metrics):
        with pytest.raises(ImportError, match=r"arma-plugin\[recipes\]"):
            metric(frames, frames)
