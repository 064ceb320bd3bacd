"""Image classification with any timm model, armafied or not — the paper's Fig. 5.

Su et al., NeurIPS 2020, Sec. 4 / Fig. 5: a VGG-11 whose convolutions are all ARMA layers,
trained on CIFAR-10 with and without the re-parameterisation of Thm 7 (without it "the
training never converges and gets NaN error quickly").

This example supports, through Accelerate, with the same script:
- single CPU or single GPU, multi-GPU DDP (``accelerate launch --multi_gpu``), CPU processes,
- mixed precision, gradient accumulation, trackers (``--report-to``),
- ``save_state`` every epoch, ``--resume-from-checkpoint`` (only a run with the same
  configuration, ``OUTPUT_DIR/run_config.json``), ``--overwrite-output-dir`` (a new run
  refuses a folder that holds another run without it), best-val weights,
- ``--seeds``: one training per seed and variant, then a mean ± std table,
- a final ``save_pretrained`` with the measured test accuracy in the card, ``--push-to-hub``.
Every image file (``--data-dir``) or row (``--hf-dataset``) is decoded once before the first
step, and a ``--batch-size`` that leaves no training batch is refused.

Models: ``--model`` is any timm name (``--model-kwargs key=value`` passes constructor
arguments, e.g. ``mlp_ratio=0.0625`` for a slimmer VGG head); ``--no-arma`` trains it as is,
``--no-reparam`` learns the raw AR taps, ``--compare-reparam`` trains both ways from the same
seed and plots loss and training accuracy per iteration to ``compare_reparam.png`` (Fig. 5),
with the first non-finite iteration of each in ``compare_reparam.json``.

Data (no augmentation: Fig. 5 is about stability): ``--hf-dataset uoft-cs/cifar10`` (its
``train`` split is cut 9:1 into train/val, its ``test`` split is the test set), ``--data-dir``
(one sub-folder per class; cut 7:1:2), or ``--data digits`` (scikit-learn's 8x8 handwritten
digits, offline; cut 7:1:2). ``--smoke`` is a tiny timm model on 120 digits for one epoch.

Examples::

    accelerate launch recipes/classify.py --hf-dataset uoft-cs/cifar10 --model vgg11 --compare-reparam
    python recipes/classify.py --data digits --model vgg11 --model-kwargs mlp_ratio=0.0625 --compare-reparam
    python recipes/classify.py --smoke
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from accelerate import PartialState
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from arma_plugin import ARMAConfig, armafy
from arma_plugin.validation import check_positive_int
from common import (TrainerState, add_training_args, check_decodable, fit, fit_options, hub_repo_for_seed,
                    load_best_weights, load_hf_dataset, make_accelerator, make_lr_scheduler, open_image,
                    prepare_output_dir, publish, seed_everything, seeded_split, seeds_from_args, tracker_config,
                    validate_training_args, write_seed_table)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
HOLDOUT = {"train": 7, "val": 1, "test": 2}  # for data without its own splits
TRAIN_VAL = {"train": 9, "val": 1}  # for data with a test split only
DATA_SEED = 2020  # the fixed split seed, independent of the training --seed
SMOKE: dict[str, Any] = {"data": "digits", "model": "test_resnet", "image_size": 32, "epochs": 1,
                         "batch_size": 16, "limit": 120}


# ----------------------------------------------------------------------------- data

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


# ----------------------------------------------------------------------------- model

def parse_model_kwargs(pairs: Sequence[str]) -> dict[str, Any]:
    """``["mlp_ratio=0.0625", "drop_rate=0.1"]`` -> dict; values are JSON if they parse, else strings."""
    kwargs = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--model-kwargs entries must be key=value, got {pair!r}")
        try:
            kwargs[key] = json.loads(value)
        except json.JSONDecodeError:
            kwargs[key] = value
    return kwargs


def build_model(args: argparse.Namespace, num_classes: int, reparam: bool) -> nn.Module:
    """``timm.create_model(--model)`` (random init), armafied unless ``--no-arma``.

    A plain model still goes through ``armafy`` with every convolution excluded, so every
    variant is saved and reloaded with the same ``save_pretrained``/``from_pretrained``.
    """
    base = timm.create_model(args.model, pretrained=False, num_classes=num_classes, **args.model_kwargs)
    config = ARMAConfig(ar_kernel_size=args.ar_kernel_size, boundary=args.boundary, reparam=reparam,
                        exclude_modules=".*" if args.no_arma else None)
    return armafy(base, config)


# ----------------------------------------------------------------------------- training

def evaluate_classifier(accelerator, model: nn.Module, loader: DataLoader) -> dict[str, float]:
    """Accuracy and mean cross-entropy, every sample counted once across processes."""
    model.eval()
    losses, correct = [], []
    with torch.no_grad():
        for images, labels in loader:
            logits = model(images).float()
            loss = F.cross_entropy(logits, labels, reduction="none")
            loss, hit = accelerator.gather_for_metrics((loss, logits.argmax(1) == labels))
            losses.append(loss)
            correct.append(hit)
    model.train()
    return {"accuracy": torch.cat(correct).float().mean().item(), "loss": torch.cat(losses).mean().item(),
            "n_samples": sum(len(c) for c in correct)}


def metrics_markdown(args: argparse.Namespace, scores: dict[str, float], state: TrainerState,
                     reparam: bool) -> str:
    source = args.hf_dataset or (str(args.data_dir) if args.data_dir else f"scikit-learn {args.data}")
    nonfinite = ("none" if state.first_nonfinite_step is None
                 else f"first at iteration {state.first_nonfinite_step}")
    best = (f"best-val epoch {state.best_epoch}" if state.best_epoch is not None
            else "validation never finite: last epoch's weights")
    return (f"Measured on {source} (test split, {scores['n_samples']} images at {args.image_size}x{args.image_size}), "
            f"{best} of {args.epochs}, re-parameterisation {'on' if reparam else 'off'}.\n\n"
            f"| metric | value |\n|---|---|\n| accuracy | {scores['accuracy']:.4f} |\n"
            f"| cross-entropy | {scores['loss']:.4f} |\n| non-finite training loss | {nonfinite} |\n")


def plot_compare_reparam(curves: dict[str, list[dict[str, float]]], path: Path) -> None:
    """Fig. 5: training loss and accuracy per iteration, with and without re-parameterisation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 3.8))
    for label, steps in curves.items():
        x = [s["step"] for s in steps]
        loss_ax.plot(x, [s["loss"] for s in steps], label=label)
        acc_ax.plot(x, [100 * s["accuracy"] for s in steps], label=label)
        bad = next((s["step"] for s in steps if not np.isfinite(s["loss"])), None)
        if bad is not None:
            loss_ax.axvline(bad, ls=":", color="k")
            loss_ax.annotate(f"{label}: NaN/inf at {bad}", (bad, 0.95), xycoords=("data", "axes fraction"),
                             ha="right", fontsize=8)
    loss_ax.set(xlabel="iterations", ylabel="training loss", yscale="log")
    acc_ax.set(xlabel="iterations", ylabel="training accuracy (%)")
    acc_ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def variant_name(reparam: bool) -> str:
    """The sub-folder (and table row) of a variant: ``reparam`` or ``no_reparam``."""
    return "reparam" if reparam else "no_reparam"


def training_function(config: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Train ``--model`` with ``config`` (lr, epochs, batch_size, seed, reparam) into
    ``OUTPUT_DIR/<reparam|no_reparam>/seed_<seed>``; returns the test scores, the first
    non-finite training step and every step's logged values."""
    seed, reparam = config["seed"], config["reparam"]
    variant = variant_name(reparam)
    accelerator = make_accelerator(args)
    accelerator.init_trackers("classify", config=tracker_config(args))
    datasets, num_classes = build_datasets(args)
    for rows, indices in rows_in_use(datasets):
        rows.check_decodable(indices)
    accelerator.print(f"{num_classes} classes; samples: " + ", ".join(f"{k} {len(v)}" for k, v in datasets.items()))

    seed_everything(seed, deterministic=args.deterministic)
    model = build_model(args, num_classes, reparam)
    optimizer = torch.optim.Adam(model.parameters(), lr=config["lr"])
    loaders = [DataLoader(datasets[key], batch_size=config["batch_size"], shuffle=key == "train",
                          num_workers=args.num_workers, drop_last=key == "train")
               for key in ("train", "val", "test")]
    lr_scheduler = make_lr_scheduler(args, optimizer, len(loaders[0]))
    model, optimizer, lr_scheduler, train_loader, val_loader, test_loader = accelerator.prepare(
        model, optimizer, lr_scheduler, *loaders)

    def training_step(model: nn.Module, batch) -> dict[str, torch.Tensor]:
        images, labels = batch
        logits = model(images)
        return {"loss": F.cross_entropy(logits, labels),
                "accuracy": (logits.argmax(1) == labels).float().mean()}

    run_dir = args.output_dir / variant / f"seed_{seed}"
    state = fit(accelerator, model, optimizer, train_loader, training_step=training_step,
                evaluate=lambda m: evaluate_classifier(accelerator, m, val_loader),
                epochs=config["epochs"], run_dir=run_dir, monitor="accuracy", mode="max",
                log_prefix=f"{variant}/seed_{seed}/", lr_scheduler=lr_scheduler, **fit_options(args, run_dir))
    if state.best_epoch is not None:
        load_best_weights(accelerator, model, run_dir)
    scores = evaluate_classifier(accelerator, model, test_loader)
    accelerator.print(f"{variant} seed {seed}: test accuracy {scores['accuracy']:.4f}, "
                      f"first non-finite loss at step {state.first_nonfinite_step}")
    if accelerator.is_main_process:
        record = {"seed": seed, "model": args.model, "reparam": reparam, "arma": not args.no_arma,
                  "best_epoch": state.best_epoch, "first_nonfinite_step": state.first_nonfinite_step,
                  "num_processes": accelerator.num_processes, "test_size": len(datasets["test"]), **scores}
        (run_dir / "test_metrics.json").write_text(json.dumps(record, indent=1))
        card = {"metrics": metrics_markdown(args, scores, state, reparam),
                "description": f"`{args.model}` trained with `recipes/classify.py` (seed {seed})."}
        repo_id = hub_repo_for_seed(args, seed, variant if args.compare_reparam else None)
        publish(accelerator.unwrap_model(model), run_dir / "final", card, repo_id)
    accelerator.wait_for_everyone()
    for tracker in accelerator.trackers:  # not end_training(): later runs still need the process group
        tracker.finish()
    accelerator.free_memory()
    return {**scores, "first_nonfinite_step": state.first_nonfinite_step, "steps": state.steps}


def write_outputs(args: argparse.Namespace, results: dict[str, dict[int, dict[str, Any]]]) -> None:
    """The seed table, and with ``--compare-reparam`` the Fig. 5 plot and its summary."""
    rows = {name: {seed: {k: r[k] for k in ("accuracy", "loss")} for seed, r in per_seed.items()}
            for name, per_seed in results.items()}
    md, _ = write_seed_table(rows, ("accuracy", "loss"), args.output_dir / "results")
    print(md.read_text())
    if args.compare_reparam:
        seed = seeds_from_args(args)[0]
        labels = {"reparam": "with reparam", "no_reparam": "without reparam"}
        plot_compare_reparam({labels[name]: per_seed[seed]["steps"] for name, per_seed in results.items()},
                             args.output_dir / "compare_reparam.png")
        summary = {name: {s: {k: r[k] for k in ("first_nonfinite_step", "accuracy", "loss")}
                          for s, r in per_seed.items()} for name, per_seed in results.items()}
        (args.output_dir / "compare_reparam.json").write_text(json.dumps(summary, indent=1))


# ----------------------------------------------------------------------------- CLI

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    model = parser.add_argument_group("model")
    model.add_argument("--model", default="vgg11", help="any timm model name")
    model.add_argument("--model-kwargs", nargs="*", default=[], metavar="KEY=VALUE",
                       help="timm.create_model arguments, values parsed as JSON when possible")
    model.add_argument("--no-arma", action="store_true", help="train the timm model without ARMA layers")
    model.add_argument("--no-reparam", dest="reparam", action="store_false",
                       help="learn the raw AR taps instead of the stable re-parameterisation (Thm 7)")
    model.add_argument("--compare-reparam", action="store_true",
                       help="train with and without re-parameterisation and plot both (Fig. 5)")
    model.add_argument("--ar-kernel-size", type=int, default=3)
    model.add_argument("--boundary", default="circular", help="AR boundary: circular or zeros")
    data = parser.add_argument_group("data")
    source = data.add_mutually_exclusive_group()
    source.add_argument("--data", choices=("digits",), help="a built-in offline dataset")
    source.add_argument("--hf-dataset", help="Hub dataset (e.g. uoft-cs/cifar10), save_to_disk folder or .parquet")
    source.add_argument("--data-dir", type=Path, help="image folder with one sub-folder per class")
    source.add_argument("--smoke", action="store_true", help="tiny model, 120 digits, one epoch")
    data.add_argument("--image-column", default=None, help="default: img or image")
    data.add_argument("--label-column", default="label")
    data.add_argument("--image-size", type=int, default=32)
    data.add_argument("--limit", type=int, default=None, help="use only this many samples (seeded choice)")
    add_training_args(parser, output_dir="runs/classify", epochs=10, batch_size=64, lr=1e-3)
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse, apply ``--smoke`` defaults (explicit flags still win) and check before training."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.smoke:
        parser.set_defaults(**SMOKE)
        args = parser.parse_args(argv)
    if args.data is None and args.hf_dataset is None and args.data_dir is None:
        parser.error("give one of --data digits, --hf-dataset, --data-dir or --smoke")
    validate_training_args(args)
    if not timm.is_model(args.model):
        close = timm.list_models(f"*{args.model.split('.')[0][:5]}*")[:8]
        raise ValueError(f"--model {args.model!r} is not a timm model; similar names: {close}")
    if args.no_arma and (args.compare_reparam or not args.reparam):
        raise ValueError("--no-reparam/--compare-reparam are about ARMA layers; drop --no-arma")
    if args.limit is not None:
        check_positive_int("--limit", args.limit, minimum=6)  # a train/val/test split
    if args.limit is not None and args.hf_dataset is not None:
        raise ValueError("--limit applies to --data/--data-dir; for --hf-dataset pick a split slice instead")
    check_positive_int("--image-size", args.image_size, minimum=8)
    args.model_kwargs = parse_model_kwargs(args.model_kwargs)
    ARMAConfig(ar_kernel_size=args.ar_kernel_size, boundary=args.boundary)  # validates both
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, dict[int, dict[str, Any]]]:
    """Parse, claim ``--output-dir``, train every variant once per seed and write the outputs."""
    args = parse_args(argv)
    prepare_output_dir(args)
    config = {"lr": args.lr, "epochs": args.epochs, "batch_size": args.batch_size}
    reparams = (True, False) if args.compare_reparam else (args.reparam,)
    results = {variant_name(reparam): {seed: training_function({**config, "seed": seed, "reparam": reparam}, args)
                                       for seed in seeds_from_args(args)}
               for reparam in reparams}
    state = PartialState()
    if state.is_main_process:
        write_outputs(args, results)
    state.destroy_process_group()
    return results


if __name__ == "__main__":
    main()
