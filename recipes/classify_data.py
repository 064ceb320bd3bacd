"""Data for ``classify.py``: images with labels from a class-per-folder tree, a Hub/``datasets``
source or scikit-learn's digits, split by a fixed seed; every image file or row the splits use
can be decoded once before training (``ImageRows.check_decodable``)."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch.utils.data import Dataset, Subset, TensorDataset

from recipe_kit import check_decodable, load_hf_dataset, open_image, seeded_split

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
HOLDOUT = {"train": 7, "val": 1, "test": 2}  # for data without its own splits
TRAIN_VAL = {"train": 9, "val": 1}  # for data with a test split only
DATA_SEED = 2020  # the fixed split seed, independent of the training --seed

class ImageRows(Dataset):
    """``(image, label)`` rows (image file paths, PIL images or arrays) resized and normalised
    to ``[3, S, S]``; ``description`` names the rows' origin in errors."""

    def __init__(self, images: Sequence[Any], labels: Sequence[int], image_size: int, description: str) -> None:
        self.images, self.labels, self.image_size, self.description = images, labels, image_size, description
        self.mean = torch.tensor(IMAGENET_DEFAULT_MEAN).view(3, 1, 1)
        self.std = torch.tensor(IMAGENET_DEFAULT_STD).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def load(self, index: int) -> Image.Image:
        """The decoded image of row ``index``."""
        image = self.images[index]
        if isinstance(image, (str, Path)):
            return open_image(image)
        if isinstance(image, Image.Image):
            image.load()
            return image
        return Image.fromarray(np.asarray(image))

    def name(self, index: int) -> str:
        image = self.images[index]
        return str(image) if isinstance(image, (str, Path)) else f"{self.description} row {index}"

    def check_decodable(self, indices: Sequence[int]) -> None:
        """Decode the image of each row in ``indices`` once; name any that fails."""
        check_decodable([self.name(i) for i in indices], lambda position: self.load(indices[position]), what="images")

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.load(index).convert("RGB").resize((self.image_size, self.image_size), Image.BILINEAR)
        tensor = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)
        return (tensor - self.mean) / self.std, int(self.labels[index])


def digits_dataset(image_size: int) -> tuple[Dataset, int]:
    """scikit-learn's 1797 handwritten digits (8x8, 0..16), bilinearly upsampled, 3 channels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16
    images = F.interpolate(images, size=(image_size, image_size), mode="bilinear", align_corners=False)
    images = ((images - 0.5) / 0.5).expand(-1, 3, -1, -1).contiguous()
    return TensorDataset(images, torch.tensor(digits.target)), 10


def folder_dataset(root: Path, image_size: int) -> tuple[Dataset, int]:
    """One sub-folder per class (the ImageFolder layout), checked before training."""
    if not root.is_dir():
        raise ValueError(f"--data-dir {str(root)!r} does not exist (expected one sub-folder per class)")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if len(classes) < 2:
        raise ValueError(f"--data-dir {str(root)!r} has {len(classes)} class sub-folder(s); need at least 2")
    paths, labels = [], []
    for label, name in enumerate(classes):
        files = sorted(p for p in (root / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ValueError(f"class folder {str(root / name)!r} has no images ({', '.join(IMAGE_SUFFIXES)})")
        paths += files
        labels += [label] * len(files)
    return ImageRows(paths, labels, image_size, f"--data-dir {str(root)!r}"), len(classes)


def hf_splits(name: str, image_column: str | None, label_column: str, image_size: int) -> tuple[dict[str, Dataset], int]:
    """train/val/test from ``--hf-dataset`` (e.g. ``uoft-cs/cifar10``)."""
    splits = load_hf_dataset(name)
    first = next(iter(splits.values()))
    image_column = image_column or next((c for c in ("img", "image") if c in first.column_names), None)
    for column in (image_column, label_column):
        if column is None or column not in first.column_names:
            raise ValueError(f"--hf-dataset {name!r} has no image/label column {column!r}; columns are "
                             f"{first.column_names} (set --image-column/--label-column)")
    num_classes = len(set(splits["train"][label_column])) if "train" in splits else 0
    feature = first.features[label_column]
    num_classes = getattr(feature, "num_classes", None) or num_classes

    def rows(split_name: str) -> Dataset:
        split = splits[split_name]
        return ImageRows(split[image_column], split[label_column], image_size, f"--hf-dataset {name!r} {split_name}")

    if "test" in splits and "train" in splits:
        train = rows("train")
        if "validation" in splits:
            return {"train": train, "val": rows("validation"), "test": rows("test")}, num_classes
        cut = seeded_split(len(train), TRAIN_VAL, DATA_SEED)
        return {"train": Subset(train, cut["train"]), "val": Subset(train, cut["val"]),
                "test": rows("test")}, num_classes
    if len(splits) != 1:
        raise ValueError(f"--hf-dataset {name!r} has splits {sorted(splits)}; need train+test or a single split")
    whole = rows(next(iter(splits)))
    return {k: Subset(whole, v) for k, v in seeded_split(len(whole), HOLDOUT, DATA_SEED).items()}, num_classes


def rows_in_use(datasets: dict[str, Dataset]) -> list[tuple["ImageRows", list[int]]]:
    """Each :class:`ImageRows` behind the splits, with the rows the splits use (``--limit``
    uses a subset: only those are decoded before training)."""
    used: dict[int, tuple[ImageRows, set[int]]] = {}
    for dataset in datasets.values():
        rows, indices = (dataset.dataset, dataset.indices) if isinstance(dataset, Subset) else (dataset, range(len(dataset)))
        if isinstance(rows, ImageRows):
            used.setdefault(id(rows), (rows, set()))[1].update(indices)
    return [(rows, sorted(indices)) for rows, indices in used.values()]


def build_datasets(args: argparse.Namespace) -> tuple[dict[str, Dataset], int]:
    """train/val/test datasets and the number of classes, from the chosen source."""
    if args.hf_dataset is not None:
        splits, num_classes = hf_splits(args.hf_dataset, args.image_column, args.label_column, args.image_size)
    else:
        whole, num_classes = (digits_dataset(args.image_size) if args.data == "digits"
                              else folder_dataset(args.data_dir, args.image_size))
        order = list(range(len(whole)))
        if args.limit is not None:
            order = np.random.default_rng(DATA_SEED).permutation(len(whole))[:args.limit].tolist()
        cut = seeded_split(len(order), HOLDOUT, DATA_SEED)
        splits = {k: Subset(whole, [order[i] for i in v]) for k, v in cut.items()}
    return splits, num_classes
