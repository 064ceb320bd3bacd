"""ISIC 2018 lesion segmentation with (non-local) ARMA U-Nets — the paper's Table 2.

Su et al., NeurIPS 2020, Sec. 5: U-Net, non-local U-Net, ARMA U-Net and NL ARMA U-Net on
ISIC 2018 Task 1, scored with ACC, SE, SP, PC, F1 and JS (mean ± std over seeds).

This example supports, through Accelerate, with the same script:
- single CPU or single GPU,
- multi-GPU DDP (``accelerate launch --multi_gpu``) and several CPU processes (gloo),
- mixed precision (``--mixed-precision fp16|bf16``) and gradient accumulation,
- experiment trackers (``--report-to tensorboard|wandb``),
- ``save_state`` every epoch and ``--resume-from-checkpoint`` (the latest complete checkpoint
  if no path), which continues only a run with the same configuration (``OUTPUT_DIR/run_config.json``);
  the output folder is locked for the run; a new run refuses an ``--output-dir`` that holds
  another run unless ``--overwrite-output-dir`` (the default ``runs/isic`` is replaced, saying so),
- ``--seeds``: one training per seed, then a mean ± std table (``OUTPUT_DIR/results.{md,json}``),
- the best-val checkpoint, a final ``save_pretrained`` whose model card holds the measured
  test metrics, and ``--push-to-hub REPO``.
Every image and mask is decoded once before the first step (a corrupt file fails, named,
before any training), and a ``--batch-size`` that leaves no training batch is refused. A user
mistake is one line and exit status 2; the run ends by saying where its outputs are.

Models: ``--model unet | nl-unet | arma-unet | nl-arma-unet`` built with
segmentation-models-pytorch (``--arch``, ``--encoder``, ``--encoder-weights``); ARMA variants
through ``armafy``, non-local variants through ``ARMAConfig(nonlocal_after=...)``; ``unet`` is
the plain SMP model. Every variant is saved and reloaded with ``save_pretrained``/``from_pretrained``.

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

import segmentation_models_pytorch as smp
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader

from arma_plugin import ARMAConfig, armafy
from arma_plugin.metrics import SEGMENTATION_METRICS, confusion_counts, segmentation_scores
from isic_data import (IMAGE_DIR, SPLIT_SEED, FolderSource, LesionDataset, find_isic_pairs, load_hf_splits,
                       split_indices, write_synthetic_isic)
from recipe_kit import (add_arma_args, add_training_args, claim_output_dir, hub_repo_for_seed, publish,
                        recipe_accelerator, run_script, seeds_from_args, train_and_test, user_input,
                        validate_training_args, write_seed_table)

MODELS = ("unet", "nl-unet", "arma-unet", "nl-arma-unet")
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
    if args.model == "unet":
        return base
    config = ARMAConfig(ar_kernel_size=args.ar_kernel_size, boundary=args.boundary,
                        nonlocal_after=nonlocal_after,
                        exclude_modules=None if "arma" in args.model else ".*")  # nl-unet: no AR convs
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


def training_function(config: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Train ``args.model`` with ``config`` (lr, epochs, batch_size, seed) into
    ``OUTPUT_DIR/seed_<seed>``; returns the run's record (test scores, parameters, best epoch)."""
    seed = config["seed"]
    with recipe_accelerator(args, "isic") as accelerator:
        datasets = load_datasets(accelerator, args)

        def training_step(model: nn.Module, batch) -> dict[str, torch.Tensor]:
            images, masks = batch
            return {"loss": F.binary_cross_entropy_with_logits(model(images), masks)}

        def evaluate(model: nn.Module, loader: DataLoader) -> dict[str, float]:
            return evaluate_segmentation(accelerator, model, loader)

        run_dir = args.output_dir / f"seed_{seed}"
        run = train_and_test(accelerator, args, config, build_model=lambda: build_model(args), datasets=datasets,
                             training_step=training_step, evaluate=evaluate, test=evaluate, run_dir=run_dir,
                             monitor="JS", log_prefix=f"seed_{seed}/")
        scores, state = run.test, run.state
        agree = ranks_agree(accelerator, scores)
        if not agree:
            raise RuntimeError("processes computed different test scores after gather_for_metrics")
        accelerator.log({f"seed_{seed}/test_{k}": v for k, v in scores.items()}, step=state.step)
        accelerator.print(f"seed {seed} test (best val epoch {state.best_epoch}): " +
                          ", ".join(f"{k}={scores[k]:.4f}" for k in TABLE_COLUMNS))
        record = {"seed": seed, "model": args.model, "parameters": run.parameters, "best_epoch": state.best_epoch,
                  "num_processes": accelerator.num_processes, "ranks_agree": agree,
                  "test_size": len(datasets["test"]), **scores}
        if accelerator.is_main_process:
            (run_dir / "test_metrics.json").write_text(json.dumps(record, indent=1))
            card = {"metrics": metrics_markdown(args, scores, state.best_epoch), "tags": ["isic-2018"],
                    "description": f"`{args.model}` trained with `recipes/isic.py` (seed {seed})."}
            publish(accelerator.unwrap_model(run.model), run_dir, card, hub_repo_for_seed(args, seed))
    return record


def load_datasets(accelerator, args: argparse.Namespace) -> dict[str, LesionDataset]:
    """:func:`build_datasets`, every file decoded once (``--smoke``: its synthetic data written
    first); the split is written to ``OUTPUT_DIR/split.json``."""
    if args.smoke:
        with accelerator.main_process_first():
            if not (args.data_dir / IMAGE_DIR).is_dir():
                write_synthetic_isic(args.data_dir, args.smoke_images)
    with user_input():
        datasets = build_datasets(args)
        for source in {id(ds.source): ds.source for ds in datasets.values()}.values():
            source.check_decodable()
    if accelerator.is_main_process and args.hf_dataset is None:
        split = {key: [ds.source.pairs[i][0].name for i in ds.indices] for key, ds in datasets.items()}
        (args.output_dir / "split.json").write_text(json.dumps({"split_seed": SPLIT_SEED, **split}, indent=1))
    source = f"synthetic lesions written to {args.data_dir} (not ISIC data)" if args.smoke else "samples"
    accelerator.print(f"{source}: " + ", ".join(f"{k} {len(v)}" for k, v in datasets.items()))
    return datasets


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

def build_parser() -> argparse.ArgumentParser:
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
    add_arma_args(model)
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
    add_training_args(parser, output_dir="runs/isic", epochs=100, batch_size=16, lr=1e-3)
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse, apply ``--preset``/``--smoke`` defaults (explicit flags still win) and check it all."""
    parser = build_parser()
    args = parser.parse_args(argv)
    defaults = dict(PRESETS[args.preset]) if args.preset else {}
    if args.smoke:  # smoke sizes always; the smoke model only when no preset names one
        defaults.update({k: v for k, v in SMOKE.items() if k not in defaults or k in SMOKE_SIZES})
    if defaults:
        parser.set_defaults(**defaults)
        args = parser.parse_args(argv)
    if args.data_dir is None and args.hf_dataset is None and not args.smoke:
        parser.error("give one of --data-dir, --hf-dataset or --smoke")
    with user_input():
        validate_training_args(args)
        if args.image_size < 32 or args.image_size % 32:
            raise ValueError(f"--image-size must be a multiple of 32 (U-Net downsamples 5 times), "
                             f"got {args.image_size}")
        check_model_args(args)
    if args.smoke:
        args.data_dir = args.output_dir / "smoke_data"
    return args


def main(argv: Sequence[str] | None = None) -> dict[int, dict[str, Any]]:
    """Parse, claim ``--output-dir``, train once per seed and write the seed table."""
    args = parse_args(argv)
    with claim_output_dir(args) as state:
        config = {"lr": args.lr, "epochs": args.epochs, "batch_size": args.batch_size}
        results = {seed: training_function({**config, "seed": seed}, args) for seed in seeds_from_args(args)}
        if state.is_main_process:
            n_params = next(iter(results.values()))["parameters"]
            md, _ = write_seed_table({args.model: results}, TABLE_COLUMNS, args.output_dir / "results",
                                     extra_columns={args.model: {"params": f"{n_params / 1e6:.3f}M"}})
            data = "synthetic smoke data (not ISIC)" if args.smoke else "the test split"
            print(f"{md.read_text()}\noutputs in {args.output_dir}: results.md/.json (the table above, on {data}); "
                  "per seed seed_<s>/test_metrics.json, seed_<s>/final (save_pretrained checkpoint with "
                  "its model card), seed_<s>/best and seed_<s>/checkpoints")
    return results


if __name__ == "__main__":
    run_script(main)
