"""Segmentation metrics (paper Table 2) against hand-computed confusion counts."""
from fractions import Fraction

import pytest
import torch
from torchmetrics.functional.classification import (binary_accuracy, binary_jaccard_index,
                                                    binary_precision, binary_recall,
                                                    binary_specificity, binary_stat_scores)

from arma_plugin.metrics import SEGMENTATION_METRICS, confusion_counts, segmentation_scores

# Two 2x3 images worked out by hand (prediction = probs > 0.5):
# image 0: target 110/000, prediction 101/001 -> TP 1, FP 2, TN 2, FN 1
# image 1: target 111/100, prediction 111/001 -> TP 3, FP 1, TN 1, FN 1
PROBS = torch.tensor([[[0.9, 0.2, 0.7], [0.1, 0.4, 0.6]],
                      [[0.8, 0.8, 0.8], [0.3, 0.5, 0.9]]])  # 0.5 is not > 0.5: background
TARGET = torch.tensor([[[1, 1, 0], [0, 0, 0]],
                       [[1, 1, 1], [1, 0, 0]]])
HAND_COUNTS = [(1, 2, 2, 1), (3, 1, 1, 1)]  # (TP, FP, TN, FN)

# Both levels are compared exactly up to float64 rounding of these small fractions.
EXACT = 1e-12


def _hand_scores(tp, fp, tn, fn):
    se, pc = Fraction(tp, tp + fn), Fraction(tp, tp + fp)
    return {"ACC": Fraction(tp + tn, tp + fp + tn + fn), "SE": se, "SP": Fraction(tn, tn + fp),
            "PC": pc, "JS": Fraction(tp, tp + fp + fn), "Dice": Fraction(2 * tp, 2 * tp + fp + fn)}


def test_confusion_counts_match_hand_counts():
    assert confusion_counts(PROBS, TARGET).tolist() == [list(c) for c in HAND_COUNTS]


@pytest.mark.parametrize("shape", ["NHW", "N1HW"])
def test_confusion_counts_accepts_channel_dim(shape):
    probs, target = (PROBS, TARGET) if shape == "NHW" else (PROBS[:, None], TARGET[:, None])
    assert confusion_counts(probs, target.bool()).tolist() == [list(c) for c in HAND_COUNTS]


def test_aggregate_scores_are_ratios_of_summed_counts():
    scores = segmentation_scores(torch.tensor(HAND_COUNTS))
    summed = [sum(c[i] for c in HAND_COUNTS) for i in range(4)]
    expected = _hand_scores(*summed)
    for name, value in expected.items():
        assert scores[name] == pytest.approx(float(value), abs=EXACT), name
    assert scores["F1"] == pytest.approx(2 * expected["SE"] * expected["PC"] / (expected["SE"] + expected["PC"]), abs=EXACT)
    assert scores["F1"] == pytest.approx(scores["Dice"], abs=EXACT)  # identical on the aggregate level


def test_per_image_scores_are_means_of_image_ratios():
    scores = segmentation_scores(torch.tensor(HAND_COUNTS))
    images = [_hand_scores(*c) for c in HAND_COUNTS]
    for name in images[0]:
        mean = sum(image[name] for image in images) / len(images)
        assert scores[f"{name}_per_image"] == pytest.approx(float(mean), abs=EXACT), name
    se = sum(i["SE"] for i in images) / 2
    pc = sum(i["PC"] for i in images) / 2
    assert scores["F1_per_image"] == pytest.approx(float(2 * se * pc / (se + pc)), abs=EXACT)
    # per image, F1 (harmonic mean of mean SE and mean PC) and mean Dice are different numbers
    assert abs(scores["F1_per_image"] - scores["Dice_per_image"]) > 1e-3


def test_thresholded_jaccard_zeroes_images_below_065():
    # image JS: 7/10 = 0.70 (kept), 6/10 = 0.60 (-> 0), 13/20 = 0.65 (kept, threshold inclusive)
    counts = torch.tensor([[7, 2, 90, 1], [6, 3, 90, 1], [13, 4, 80, 3]])
    scores = segmentation_scores(counts)
    assert scores["thresholded_jaccard"] == pytest.approx((0.7 + 0 + 0.65) / 3, abs=EXACT)
    assert scores["JS_per_image"] == pytest.approx((0.7 + 0.6 + 0.65) / 3, abs=EXACT)


@pytest.mark.parametrize("case, target_on, pred_on, expected", [
    # 0/0 := 1: nothing of that kind to get wrong
    ("both empty", False, False, {"SE": 1, "SP": 1, "PC": 1, "F1": 1, "JS": 1, "Dice": 1, "ACC": 1}),
    ("false alarm", False, True, {"SE": 1, "PC": 0, "JS": 0, "Dice": 0}),
    ("missed lesion", True, False, {"SE": 0, "PC": 1, "JS": 0, "Dice": 0, "F1": 0, "SP": 1}),
])
def test_empty_masks(case, target_on, pred_on, expected):
    target = torch.zeros(1, 4, 4, dtype=torch.long)
    probs = torch.zeros(1, 4, 4)
    target[0, 1:3, 1:3] = int(target_on)
    probs[0, 0, 0] = float(pred_on)
    scores = segmentation_scores(confusion_counts(probs, target))
    for name, value in expected.items():
        assert scores[name] == value, (case, name)
        assert scores[f"{name}_per_image"] == value, (case, name)


def test_counts_of_split_batches_concatenate_to_the_whole():
    """What gather_for_metrics does: per-image counts of shards, concatenated, score the set."""
    generator = torch.Generator().manual_seed(0)
    probs = torch.rand(6, 1, 8, 8, generator=generator)
    target = (torch.rand(6, 1, 8, 8, generator=generator) > 0.5).long()
    whole = segmentation_scores(confusion_counts(probs, target))
    sharded = torch.cat([confusion_counts(probs[i::2], target[i::2]) for i in range(2)])
    assert segmentation_scores(sharded) == pytest.approx(whole, abs=EXACT)


def test_confusion_counts_match_torchmetrics_samplewise():
    generator = torch.Generator().manual_seed(2)
    probs = torch.rand(4, 1, 8, 8, generator=generator)
    target = (torch.rand(4, 1, 8, 8, generator=generator) > 0.5).long()
    reference = binary_stat_scores(probs.flatten(1), target.flatten(1), multidim_average="samplewise")
    assert torch.equal(confusion_counts(probs, target), reference[:, :4])


@pytest.mark.parametrize("name, reference", [
    ("ACC", binary_accuracy), ("SE", binary_recall), ("SP", binary_specificity),
    ("PC", binary_precision), ("JS", binary_jaccard_index),
])
def test_aggregate_matches_torchmetrics_on_nonempty_masks(name, reference):
    generator = torch.Generator().manual_seed(1)
    probs = torch.rand(5, 16, 16, generator=generator)
    target = (torch.rand(5, 16, 16, generator=generator) > 0.6).long()
    scores = segmentation_scores(confusion_counts(probs, target))
    # torchmetrics divides in float32: agreement to float32 rounding
    assert scores[name] == pytest.approx(reference(probs, target).item(), abs=1e-6)


def test_scores_report_every_metric_at_both_levels():
    scores = segmentation_scores(torch.tensor(HAND_COUNTS))
    for name in SEGMENTATION_METRICS:
        assert name in scores and f"{name}_per_image" in scores
    assert scores["n_images"] == 2


@pytest.mark.parametrize("probs, target, match", [
    (torch.rand(2, 4, 4), torch.zeros(2, 4, 5), "same shape"),
    (torch.rand(2, 3, 4, 4), torch.zeros(2, 3, 4, 4), r"\[N, 1, H, W\]"),
    (torch.randn(2, 4, 4) * 5, torch.zeros(2, 4, 4), "probabilities in"),
    (torch.rand(2, 4, 4), torch.full((2, 4, 4), 255), "binary"),
])
def test_confusion_counts_rejects_bad_input(probs, target, match):
    with pytest.raises(ValueError, match=match):
        confusion_counts(probs, target)


@pytest.mark.parametrize("counts", [torch.zeros(0, 4), torch.zeros(3, 3), torch.tensor([[1, -1, 0, 0]])])
def test_segmentation_scores_rejects_bad_counts(counts):
    with pytest.raises(ValueError, match="counts"):
        segmentation_scores(counts)
