"""ISIC 2018 lesion segmentation with (non-local) ARMA U-Nets — the paper's Table 2.

Su et al., NeurIPS 2020, Sec. 5: U-Net, non-local U-Net, ARMA U-Net and NL ARMA U-Net on
ISIC 2018 Task 1, scored with ACC, SE, SP, PC, F1 and JS (mean ± std over seeds).

This example supports, through Accelerate, with the same script:
- single CPU or single GPU,
- multi-GPU DDP (``accelerate launch --multi_gpu``) and several CPU processes (gloo),
- mixed precision (``--mixed-precision fp16|bf16``) and gradient accumulation,
- experiment trackers (``--report-to tensorboard|wandb``),
- ``save_state`` every epoch and ``--resume-from-checkpoint`` (latest if no path),
- the best-val checkpoint, a final ``save_pretrained`` whose model card holds the measured
  test metrics, and ``--push-to-hub REPO``.

Models: ``--model unet | nl-unet | arma-unet | nl-arma-unet`` built with
segmentation-models-pytorch (``--arch``, ``--encoder``, ``--encoder-weights``); ARMA variants
through ``armafy``, non-local variants through ``ARMAConfig(nonlocal_after=...)``. Every
variant goes through ``armafy`` (the non-ARMA ones with all convolutions excluded), so each is
saved and reloaded the same way.

Data, all through one loader:
- ``--data-dir``: the official ISIC 2018 Task 1 layout
  (``ISIC2018_Task1-2_Training_Input/*.jpg``,
  ``ISIC2018_Task1_Training_GroundTruth/*_segmentation.png``), split 1815/259/520 by a
  fixed seeded permutation of the sorted image ids (``SPLIT_SEED``; written to ``split.json``);
- ``--hf-dataset NAME``: a Hub dataset, a directory written by ``save_to_disk`` or a
  ``.parquet`` file, with image and mask columns;
- ``--smoke``: writes a small synthetic ISIC-layout folder and trains on it through the
  folder loader (tiny encoder, 32x32, 2 epochs).

Examples::

    accelerate launch recipes/isic.py --data-dir /data/ISIC2018 --model arma-unet --preset paper --seeds 0 1 2
    accelerate launch --multi_gpu --num_processes 4 recipes/isic.py --data-dir /data/ISIC2018 --model nl-arma-unet --preset paper
    python recipes/isic.py --smoke
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import segmentation_models_pytorch as smp
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset

import common
from arma_plugin import ARMAConfig, armafy
from arma_plugin.metrics import SEGMENTATION_METRICS, confusion_counts, segmentation_scores

MODELS = ("unet", "nl-unet", "arma-unet", "nl-arma-unet")
IMAGE_DIR = "ISIC2018_Task1-2_Training_Input"
MASK_DIR = "ISIC2018_Task1_Training_GroundTruth"
MASK_SUFFIX = "_segmentation.png"
ISIC_SPLIT = {"train": 1815, "val": 259, "test": 520}  # of the 2594 training images
SPLIT_SEED = 2018
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
TABLE_COLUMNS = ("ACC", "SE", "SP", "PC", "F1", "JS", "thresholded_jaccard")

# --preset paper: an SMP U-Net of the paper's size (3,451,773 parameters vs. 3.453M in
# Table 2) — a MobileNetV2 encoder with a slimmer decoder — at 224x224 with Adam, lr 1e-3.
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {"arch": "Unet", "encoder": "mobilenet_v2", "decoder_channels": [82, 64, 32, 16, 16],
              "image_size": 224, "lr": 1e-3},
}
# --smoke: seconds on a CPU.
SMOKE: dict[str, Any] = {"arch": "Unet", "encoder": "tu-mobilenetv3_small_050",
                         "decoder_channels": [16, 16, 8, 8, 8], "image_size": 32, "epochs": 2,
                         "batch_size": 4, "smoke_images": 24}
SMOKE_SIZES = ("image_size", "epochs", "batch_size", "smoke_images")


# ----------------------------------------------------------------------------- data

def find_isic_pairs(root: Path) -> list[tuple[Path, Path]]:
    """(image, mask) paths of an ISIC 2018 Task 1 folder, sorted by image id, fully checked.

    Raises ``ValueError`` for a missing folder, no images, images without masks or masks
    without images (naming the first few) and masks whose size differs from their image's.
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
    mismatched = []
    for image_path, mask_path in pairs:
        with Image.open(image_path) as image, Image.open(mask_path) as mask:  # reads headers only
            if image.size != mask.size:
                mismatched.append(f"{image_path.name} {image.size} vs mask {mask.size}")
    if mismatched:
        raise ValueError(f"{len(mismatched)} mask(s) differ in size from their image, e.g. {mismatched[:5]}")
    return pairs


def split_indices(n: int, seed: int = SPLIT_SEED) -> dict[str, list[int]]:
    """The fixed train/val/test split: a seeded permutation of ``range(n)`` cut in the ISIC
    proportions 1815:259:520 (exactly those counts for the 2594 ISIC 2018 training images)."""
    return common.seeded_split(n, ISIC_SPLIT, seed)


class FolderSource:
    """Image/mask pairs from :func:`find_isic_pairs`; ``source[i] -> (RGB image, mask)``."""

    def __init__(self, pairs: Sequence[tuple[Path, Path]], image_size: int) -> None:
        self.pairs, self.image_size = list(pairs), image_size

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[Image.Image, Image.Image]:
        image_path, mask_path = self.pairs[index]
        image = Image.open(image_path)
        image.draft("RGB", (self.image_size, self.image_size))  # JPEG: decode at reduced size
        return image.convert("RGB"), Image.open(mask_path)


class HFSource:
    """Rows of a ``datasets.Dataset`` with an image and a mask column."""

    def __init__(self, dataset, image_column: str, mask_column: str) -> None:
        self.dataset, self.image_column, self.mask_column = dataset, image_column, mask_column

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
        self.mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD).view(3, 1, 1)

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
    splits = common.load_hf_dataset(name)
    for split_name, split in splits.items():
        missing = [c for c in (image_column, mask_column) if c not in split.column_names]
        if missing:
            raise ValueError(f"--hf-dataset {name!r} split {split_name!r} has no column(s) {missing}; "
                             f"columns are {split.column_names} (set --image-column/--mask-column)")
    named = {"train": splits.get("train"), "val": splits.get("validation", splits.get("val")),
             "test": splits.get("test")}
    if all(split is not None for split in named.values()):
        return {key: HFSource(split, image_column, mask_column) for key, split in named.items()}
    if len(splits) != 1:
        raise ValueError(f"--hf-dataset {name!r} has splits {sorted(splits)}: give one split (it is "
                         "cut 1815:259:520) or all of train, validation and test")
    (only,) = splits.values()
    return {key: HFSource(only.select(indices), image_column, mask_column)
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


def build_datasets(args: argparse.Namespace) -> dict[str, LesionDataset]:
    """Train/val/test datasets from ``--data-dir``, ``--smoke`` or ``--hf-dataset`` (checked here)."""
    if args.hf_dataset is not None:
        sources = load_hf_splits(args.hf_dataset, args.image_column, args.mask_column)
        splits = {key: (source, range(len(source))) for key, source in sources.items()}
    else:
        source = FolderSource(find_isic_pairs(args.data_dir), args.image_size)
        split = split_indices(len(source))
        splits = {key: (source, indices) for key, indices in split.items()}
    for key, (source, indices) in splits.items():
        if len(indices) == 0:
            raise ValueError(f"the {key} split is empty")
    return {key: LesionDataset(source, indices, args.image_size, augment=key == "train")
            for key, (source, indices) in splits.items()}


# ----------------------------------------------------------------------------- model

def check_model_args(args: argparse.Namespace) -> None:
    """Unknown model/arch/encoder: a clear error before anything is built or trained."""
    if args.arch.lower() not in smp.MODEL_ARCHITECTURES_MAPPING:
        raise ValueError(f"--arch {args.arch!r} is not an SMP architecture; choose from "
                         f"{sorted(smp.MODEL_ARCHITECTURES_MAPPING)}")
    encoder = args.encoder
    known = encoder in smp.encoders.get_encoder_names() or (
        encoder.startswith("tu-") and timm.is_model(encoder[3:]))
    if not known:
        raise ValueError(f"--encoder {encoder!r} is neither an SMP encoder ({len(smp.encoders.get_encoder_names())} "
                         "known, e.g. resnet34, mobilenet_v2, efficientnet-b0) nor 'tu-<timm model>'")


def build_model(args: argparse.Namespace) -> nn.Module:
    """The SMP model of ``--arch``/``--encoder``, armafied as ``--model`` says."""
    kwargs: dict[str, Any] = {"encoder_name": args.encoder, "encoder_weights": args.encoder_weights,
                              "in_channels": 3, "classes": 1}
    if args.decoder_channels is not None:
        kwargs["decoder_channels"] = list(args.decoder_channels)
    base = smp.create_model(args.arch, **kwargs)
    nonlocal_after = tuple(args.nonlocal_after) if args.model.startswith("nl-") else ()
    module_names = dict(base.named_modules())
    unknown = [name for name in nonlocal_after if name not in module_names]
    if unknown:
        raise ValueError(f"--nonlocal-after {unknown} are not modules of this {args.arch}; "
                         f"e.g. {[n for n in module_names if n.startswith('decoder.')][:8]}")
    config = ARMAConfig(ar_kernel_size=args.ar_kernel_size, boundary=args.boundary,
                        nonlocal_after=nonlocal_after,
                        exclude_modules=None if "arma" in args.model else ".*")
    return armafy(base, config)


# ----------------------------------------------------------------------------- training

def evaluate_segmentation(accelerator, model: nn.Module, loader: DataLoader) -> dict[str, float]:
    """Table-2 metrics over ``loader``; per-image counts are gathered so every image counts once."""
    model.eval()
    counts = []
    with torch.no_grad():
        for images, masks in loader:
            probs = torch.sigmoid(model(images).float())
            counts.append(accelerator.gather_for_metrics(confusion_counts(probs, masks.long())))
    model.train()
    return segmentation_scores(torch.cat(counts).cpu())


def ranks_agree(accelerator, scores: dict[str, float]) -> bool:
    """Whether every process computed the same scores (they must, after gathering)."""
    mine = torch.tensor([scores[k] for k in sorted(scores)], dtype=torch.float64, device=accelerator.device)
    return bool((accelerator.gather(mine[None]) == mine).all())


def training_function(config: dict[str, Any], args: argparse.Namespace) -> dict[int, dict[str, float]]:
    """Train one model per seed; returns ``{seed: test scores}`` and writes the seed table."""
    accelerator = common.make_accelerator(args)
    accelerator.init_trackers("isic", config=common.tracker_config(args))
    if args.smoke:
        with accelerator.main_process_first():
            if not (args.data_dir / IMAGE_DIR).is_dir():
                write_synthetic_isic(args.data_dir, args.smoke_images)
    datasets = build_datasets(args)
    if accelerator.is_main_process and args.hf_dataset is None:
        split = {key: [ds.source.pairs[i][0].name for i in ds.indices] for key, ds in datasets.items()}
        args.output_dir.mkdir(parents=True, exist_ok=True)
        (args.output_dir / "split.json").write_text(json.dumps({"split_seed": SPLIT_SEED, **split}, indent=1))
    accelerator.print("samples: " + ", ".join(f"{k} {len(v)}" for k, v in datasets.items()))

    results: dict[int, dict[str, float]] = {}
    n_params = 0
    for seed in common.seeds_from_args(args):
        common.seed_everything(seed, deterministic=args.deterministic)
        model = build_model(args)
        n_params = common.count_parameters(model)
        accelerator.print(f"{args.model} ({args.arch}/{args.encoder}): {n_params:,} parameters")
        optimizer = torch.optim.Adam(model.parameters(), lr=config["lr"])
        loaders = {key: DataLoader(ds, batch_size=config["batch_size"], shuffle=key == "train",
                                   num_workers=args.num_workers, drop_last=key == "train")
                   for key, ds in datasets.items()}
        model, optimizer, train_loader, val_loader, test_loader = accelerator.prepare(
            model, optimizer, loaders["train"], loaders["val"], loaders["test"])

        def training_step(model: nn.Module, batch) -> dict[str, torch.Tensor]:
            images, masks = batch
            return {"loss": F.binary_cross_entropy_with_logits(model(images), masks)}

        run_dir = args.output_dir / f"seed_{seed}"
        state = common.fit(accelerator, model, optimizer, train_loader, training_step=training_step,
                           evaluate=lambda m: evaluate_segmentation(accelerator, m, val_loader),
                           epochs=config["epochs"], run_dir=run_dir, monitor="JS", mode="max",
                           resume_from=common.resolve_resume(args.resume_from_checkpoint, run_dir),
                           checkpoints_total_limit=args.checkpoints_total_limit, log_prefix=f"seed_{seed}/")
        common.load_best_weights(accelerator, model, run_dir)
        scores = evaluate_segmentation(accelerator, model, test_loader)
        agree = ranks_agree(accelerator, scores)
        if not agree:
            raise RuntimeError("processes computed different test scores after gather_for_metrics")
        accelerator.log({f"seed_{seed}/test_{k}": v for k, v in scores.items()}, step=state.step)
        accelerator.print(f"seed {seed} test (best val epoch {state.best_epoch}): " +
                          ", ".join(f"{k}={scores[k]:.4f}" for k in TABLE_COLUMNS))
        results[seed] = scores
        if accelerator.is_main_process:
            record = {"seed": seed, "model": args.model, "parameters": n_params, "best_epoch": state.best_epoch,
                      "num_processes": accelerator.num_processes, "ranks_agree": agree,
                      "test_size": len(datasets["test"]), **scores}
            (run_dir / "test_metrics.json").write_text(json.dumps(record, indent=1))
            card = {"metrics": metrics_markdown(args, scores, state.best_epoch), "tags": ["isic-2018"],
                    "description": f"`{args.model}` trained with `recipes/isic.py` (seed {seed})."}
            common.publish(accelerator.unwrap_model(model), run_dir / "final", card,
                           common.hub_repo_for_seed(args, seed))
        accelerator.wait_for_everyone()
        accelerator.free_memory()

    if accelerator.is_main_process:
        md, _ = common.write_seed_table({args.model: results}, TABLE_COLUMNS, args.output_dir / "results",
                                        extra_columns={args.model: {"params": f"{n_params / 1e6:.3f}M"}})
        accelerator.print(md.read_text())
    accelerator.end_training()
    return results


def metrics_markdown(args: argparse.Namespace, scores: dict[str, float], best_epoch: int | None) -> str:
    """The model card's results: measured test metrics of this run."""
    source = "synthetic smoke data (not ISIC)" if args.smoke else (args.hf_dataset or "ISIC 2018 Task 1, test split")
    rows = "\n".join(f"| {name} | {scores[name]:.4f} | {scores[name + '_per_image']:.4f} |"
                     for name in SEGMENTATION_METRICS)
    return (f"Measured on {source}: {scores['n_images']} images at {args.image_size}x{args.image_size}, "
            f"threshold 0.5, best-val epoch {best_epoch} of {args.epochs}.\n\n"
            f"| metric | all pixels | per image |\n|---|---|---|\n{rows}\n\n"
            f"ISIC 2018 thresholded Jaccard: {scores['thresholded_jaccard']:.4f}\n")


# ----------------------------------------------------------------------------- CLI

def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    model = parser.add_argument_group("model")
    model.add_argument("--model", choices=MODELS, default="arma-unet")
    model.add_argument("--arch", default="Unet", help=f"SMP architecture: {sorted(smp.MODEL_ARCHITECTURES_MAPPING)}")
    model.add_argument("--encoder", default="resnet34", help="SMP encoder name or tu-<timm model>")
    model.add_argument("--encoder-weights", default=None, help="e.g. imagenet (downloads); default: random init")
    model.add_argument("--decoder-channels", type=int, nargs="+", default=None)
    model.add_argument("--preset", choices=sorted(PRESETS), default=None,
                       help="paper: the Table-2 U-Net size (~3.45M parameters), 224x224, Adam lr 1e-3")
    model.add_argument("--ar-kernel-size", type=int, default=3)
    model.add_argument("--boundary", default="circular", help="AR boundary: circular or zeros")
    model.add_argument("--nonlocal-after", nargs="+", default=["decoder.blocks.0"],
                       help="modules followed by a non-local block in the nl-* models (Unet default: "
                            "the deepest decoder block)")
    data = parser.add_argument_group("data")
    source = data.add_mutually_exclusive_group()
    source.add_argument("--data-dir", type=Path, help="folder in the ISIC 2018 Task 1 layout")
    source.add_argument("--hf-dataset", help="Hub dataset name, save_to_disk folder or .parquet file")
    source.add_argument("--smoke", action="store_true", help="synthetic ISIC-layout data, tiny model, seconds")
    data.add_argument("--image-column", default="image")
    data.add_argument("--mask-column", default="mask")
    data.add_argument("--image-size", type=int, default=224)
    data.add_argument("--smoke-images", type=int, default=SMOKE["smoke_images"])
    common.add_training_args(parser, output_dir="runs/isic", epochs=100, batch_size=16, lr=1e-3)
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse, apply ``--preset``/``--smoke`` defaults (explicit flags still win) and check it all."""
    parser = make_parser()
    args = parser.parse_args(argv)
    defaults = dict(PRESETS[args.preset]) if args.preset else {}
    if args.smoke:  # smoke sizes always; the smoke model only when no preset names one
        defaults.update({k: v for k, v in SMOKE.items() if k not in defaults or k in SMOKE_SIZES})
    if defaults:
        parser.set_defaults(**defaults)
        args = parser.parse_args(argv)
    if args.data_dir is None and args.hf_dataset is None and not args.smoke:
        parser.error("give one of --data-dir, --hf-dataset or --smoke")
    common.validate_training_args(args)
    if args.image_size < 32 or args.image_size % 32:
        raise ValueError(f"--image-size must be a multiple of 32 (U-Net downsamples 5 times), got {args.image_size}")
    check_model_args(args)
    ARMAConfig(ar_kernel_size=args.ar_kernel_size, boundary=args.boundary)  # validates both
    if args.smoke:
        args.data_dir = args.output_dir / "smoke_data"
    return args


def main(argv: Sequence[str] | None = None) -> dict[int, dict[str, float]]:
    args = parse_args(argv)
    config = {"lr": args.lr, "epochs": args.epochs, "batch_size": args.batch_size}
    return training_function(config, args)


if __name__ == "__main__":
    main()
