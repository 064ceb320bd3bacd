"""ISIC 2018 Task 1 data for ``isic.py``: the folder layout, the fixed split, image/mask
sources, the training dataset and a synthetic generator for smoke runs.

The official layout is ``ISIC2018_Task1-2_Training_Input/<id>.jpg`` with
``ISIC2018_Task1_Training_GroundTruth/<id>_segmentation.png``; a Hub/``datasets`` source
holds an image and a mask column. Every source can decode all its samples once
(``check_decodable``) so that a corrupt file fails before the first training step.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch.utils.data import Dataset

from recipe_kit import (IMAGE_DECODE_ERRORS, check_decodable, load_hf_dataset, open_image, seeded_split,
                        undecodable)

IMAGE_DIR = "ISIC2018_Task1-2_Training_Input"
MASK_DIR = "ISIC2018_Task1_Training_GroundTruth"
MASK_SUFFIX = "_segmentation.png"
ISIC_SPLIT = {"train": 1815, "val": 259, "test": 520}  # of the 2594 training images
SPLIT_SEED = 2018


def find_isic_pairs(root: Path) -> list[tuple[Path, Path]]:
    """(image, mask) paths of an ISIC 2018 Task 1 folder, sorted by image id, fully checked.

    Raises ``ValueError`` for a missing folder, no images, images without masks or masks
    without images (naming the first few), files whose header cannot be read (listing them,
    as :func:`~recipe_kit.data.check_decodable` does) and masks whose size differs from their image's.
    """
    layout = f"{IMAGE_DIR}/*.jpg and {MASK_DIR}/*{MASK_SUFFIX}"
    if not root.is_dir():
        raise ValueError(f"--data-dir {str(root)!r} does not exist (expected {layout} inside)")
    for sub in (IMAGE_DIR, MASK_DIR):
        if not (root / sub).is_dir():
            raise ValueError(f"--data-dir {str(root)!r} has no {sub}/ folder (expected {layout})")
    images = sorted((root / IMAGE_DIR).glob("*.jpg"))
    if not images:
        raise ValueError(f"{root / IMAGE_DIR} contains no .jpg images")
    masks = {p.name[:-len(MASK_SUFFIX)]: p for p in (root / MASK_DIR).glob("*" + MASK_SUFFIX)}
    no_mask = [p.name for p in images if p.stem not in masks]
    if no_mask:
        raise ValueError(f"{len(no_mask)} image(s) in {root / IMAGE_DIR} have no <id>{MASK_SUFFIX} "
                         f"in {root / MASK_DIR}, e.g. {no_mask[:5]}")
    no_image = sorted(set(masks) - {p.stem for p in images})
    if no_image:
        raise ValueError(f"{len(no_image)} mask(s) in {root / MASK_DIR} have no image, e.g. "
                         f"{[i + MASK_SUFFIX for i in no_image[:5]]}")
    pairs = [(p, masks[p.stem]) for p in images]
    unreadable, mismatched = [], []
    for image_path, mask_path in pairs:
        sizes = []
        for path in (image_path, mask_path):
            try:
                with Image.open(path) as opened:  # reads the header only
                    sizes.append(opened.size)
            except IMAGE_DECODE_ERRORS as error:
                unreadable.append(f"{path} ({type(error).__name__}: {error})")
        if len(sizes) == 2 and sizes[0] != sizes[1]:
            mismatched.append(f"{image_path.name} {sizes[0]} vs mask {sizes[1]}")
    if unreadable:
        raise undecodable(unreadable, 2 * len(pairs), "image and mask files")
    if mismatched:
        raise ValueError(f"{len(mismatched)} mask(s) differ in size from their image, e.g. {mismatched[:5]}")
    return pairs


def split_indices(n: int, seed: int = SPLIT_SEED) -> dict[str, list[int]]:
    """The fixed train/val/test split: a seeded permutation of ``range(n)`` cut in the ISIC
    proportions 1815:259:520 (exactly those counts for the 2594 ISIC 2018 training images)."""
    return seeded_split(n, ISIC_SPLIT, seed)


class FolderSource:
    """Image/mask pairs from :func:`find_isic_pairs`; ``source[i] -> (RGB image, mask)``."""

    def __init__(self, pairs: Sequence[tuple[Path, Path]], image_size: int) -> None:
        self.pairs, self.image_size = list(pairs), image_size

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[Image.Image, Image.Image]:
        image_path, mask_path = self.pairs[index]
        image = open_image(image_path, draft_size=self.image_size)  # JPEG: decoded at reduced size
        return image.convert("RGB"), open_image(mask_path)

    def check_decodable(self) -> None:
        """Decode every image and mask file once, as training does; name any that fails."""
        files = [path for pair in self.pairs for path in pair]
        check_decodable([str(path) for path in files],
                        lambda i: open_image(files[i], draft_size=self.image_size), what="image and mask files")


class HFSource:
    """Rows of a ``datasets.Dataset`` with an image and a mask column; ``description`` names
    the dataset and split in errors."""

    def __init__(self, dataset, image_column: str, mask_column: str, description: str) -> None:
        self.dataset, self.image_column, self.mask_column = dataset, image_column, mask_column
        self.description = description

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[Image.Image, Image.Image]:
        row = self.dataset[index]
        image, mask = (value if isinstance(value, Image.Image) else Image.fromarray(np.asarray(value))
                       for value in (row[self.image_column], row[self.mask_column]))
        if image.size != mask.size:
            raise ValueError(f"{self.mask_column!r} of row {index}: mask size {mask.size} differs "
                             f"from image size {image.size}")
        return image.convert("RGB"), mask

    def check_decodable(self) -> None:
        """Decode every row's image and mask once; name any row that fails."""
        def decode(index: int) -> None:
            self[index][1].load()  # the image is decoded by ``convert``, the mask here

        check_decodable([f"{self.description} row {i}" for i in range(len(self))], decode, what="rows")


class LesionDataset(Dataset):
    """Resized, normalised images and binary masks (any nonzero mask pixel is lesion).

    Images are resized bilinearly and masks with nearest neighbour to ``image_size`` squared.
    ``augment`` applies random horizontal/vertical flips and 90-degree rotations to both,
    which keeps masks exactly binary.
    """

    def __init__(self, source: FolderSource | HFSource, indices: Sequence[int], image_size: int,
                 augment: bool) -> None:
        self.source, self.indices = source, list(indices)
        self.image_size, self.augment = image_size, augment
        self.mean = torch.tensor(IMAGENET_DEFAULT_MEAN).view(3, 1, 1)
        self.std = torch.tensor(IMAGENET_DEFAULT_STD).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.source[self.indices[item]]
        if mask.mode != "L":
            mask = mask.convert("L")
        size = (self.image_size, self.image_size)
        image_t = torch.from_numpy(np.asarray(image.resize(size, Image.BILINEAR), dtype=np.float32) / 255)
        image_t = (image_t.permute(2, 0, 1) - self.mean) / self.std
        mask_t = torch.from_numpy(np.asarray(mask.resize(size, Image.NEAREST)) > 0).float()[None]
        if self.augment:
            flips = [dim for dim, flip in zip((-1, -2), torch.rand(2) < 0.5) if flip]
            if flips:
                image_t, mask_t = image_t.flip(flips), mask_t.flip(flips)
            turns = int(torch.randint(4, ()))
            image_t, mask_t = image_t.rot90(turns, (-2, -1)), mask_t.rot90(turns, (-2, -1))
        return image_t.contiguous(), mask_t.contiguous()


def load_hf_splits(name: str, image_column: str, mask_column: str) -> dict[str, HFSource]:
    """Train/val/test sources from ``--hf-dataset``: its own ``train``/``validation``/``test``
    splits when it has all three, else one split cut by :func:`split_indices`."""
    splits = load_hf_dataset(name)
    for split_name, split in splits.items():
        missing = [c for c in (image_column, mask_column) if c not in split.column_names]
        if missing:
            raise ValueError(f"--hf-dataset {name!r} split {split_name!r} has no column(s) {missing}; "
                             f"columns are {split.column_names} (set --image-column/--mask-column)")
    named = {"train": splits.get("train"), "val": splits.get("validation", splits.get("val")),
             "test": splits.get("test")}
    if all(split is not None for split in named.values()):
        return {key: HFSource(split, image_column, mask_column, f"--hf-dataset {name!r} {key} split")
                for key, split in named.items()}
    if len(splits) != 1:
        raise ValueError(f"--hf-dataset {name!r} has splits {sorted(splits)}: give one split (it is "
                         "cut 1815:259:520) or all of train, validation and test")
    (only,) = splits.values()
    return {key: HFSource(only.select(indices), image_column, mask_column, f"--hf-dataset {name!r} {key} split")
            for key, indices in split_indices(len(only)).items()}


def write_synthetic_isic(root: Path, n_images: int, seed: int = 0,
                         size: tuple[int, int] = (48, 40)) -> Path:
    """Write ``n_images`` lesion-like blobs on textured skin in the ISIC 2018 Task 1 layout.

    Each lesion is a dark ellipse-like blob whose radius wobbles with a few random harmonics
    of the angle; the skin is a smooth random colour field with pixel noise. Images are JPEG
    (as ISIC's), masks 0/255 PNG, non-square (``size`` is width, height) like the real data.
    """
    rng = np.random.default_rng(seed)
    (root / IMAGE_DIR).mkdir(parents=True, exist_ok=True)
    (root / MASK_DIR).mkdir(parents=True, exist_ok=True)
    width, height = size
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    for i in range(n_images):
        skin = np.array([225.0, 175.0, 145.0]) + rng.normal(0, 12, 3)
        shading = sum(rng.normal(0, 8) * np.sin(rng.uniform(0.05, 0.3) * (xx * np.cos(a) + yy * np.sin(a)))
                      for a in rng.uniform(0, np.pi, 3))
        image = skin + shading[..., None] + rng.normal(0, 6, (height, width, 3))
        cy, cx = rng.uniform(0.35, 0.65) * height, rng.uniform(0.35, 0.65) * width
        radius = rng.uniform(0.15, 0.32) * min(height, width)
        angle = np.arctan2(yy - cy, xx - cx)
        wobble = 1 + sum(rng.uniform(0, 0.15) * np.cos(k * angle + rng.uniform(0, 2 * np.pi)) for k in (2, 3, 5))
        mask = np.hypot((yy - cy) / rng.uniform(0.8, 1.2), xx - cx) < radius * wobble
        lesion = np.array([115.0, 70.0, 50.0]) + rng.normal(0, 10, 3)
        image[mask] = 0.25 * image[mask] + 0.75 * (lesion + rng.normal(0, 10, (int(mask.sum()), 3)))
        stem = f"ISIC_{i:07d}"
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(root / IMAGE_DIR / f"{stem}.jpg", quality=95)
        Image.fromarray(mask.astype(np.uint8) * 255).save(root / MASK_DIR / f"{stem}{MASK_SUFFIX}")
    return root
