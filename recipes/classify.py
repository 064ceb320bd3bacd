"""Image classification with any timm model, armafied or not — the paper's Fig. 5.

Su et al., NeurIPS 2020, Sec. 4 / Fig. 5: a VGG-11 whose convolutions are all ARMA layers,
trained on CIFAR-10 with and without the re-parameterisation of Thm 7 (without it "the
training never converges and gets NaN error quickly").

This example supports, through Accelerate, with the same script:
- single CPU or single GPU, multi-GPU DDP (``accelerate launch --multi_gpu``), CPU processes,
- mixed precision, gradient accumulation, trackers (``--report-to``),
- ``save_state`` every epoch, ``--resume-from-checkpoint`` (only a run with the same
  configuration, ``OUTPUT_DIR/run_config.json``), ``--overwrite-output-dir`` (a new run
  refuses a folder that holds another run without it; the default ``runs/classify`` is
  replaced, saying so), a lock on the output folder for the run, best-val weights,
- ``--seeds``: one training per seed and variant, then a mean ± std table,
- a final ``save_pretrained`` with the measured test accuracy in the card, ``--push-to-hub``.
Every image file (``--data-dir``) or row (``--hf-dataset``) is decoded once before the first
step, and a ``--batch-size`` that leaves no training batch is refused. A user mistake is one
line and exit status 2; the run ends by saying where its outputs are.

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
from torch.utils.data import DataLoader

from arma_plugin import ARMAConfig, armafy, check_positive_int
from classify_data import build_datasets, rows_in_use
from recipe_kit import (TrainerState, add_arma_args, add_training_args, claim_output_dir, hub_repo_for_seed,
                        publish, recipe_accelerator, run_script, seeds_from_args, train_and_test, user_input,
                        validate_training_args, write_seed_table)

SMOKE: dict[str, Any] = {"data": "digits", "model": "test_resnet", "image_size": 32, "epochs": 1,
                         "batch_size": 16, "limit": 120}


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
    """``timm.create_model(--model)`` (random init), armafied unless ``--no-arma``."""
    base = timm.create_model(args.model, pretrained=False, num_classes=num_classes, **args.model_kwargs)
    if args.no_arma:
        return base
    return armafy(base, ARMAConfig(ar_kernel_size=args.ar_kernel_size, boundary=args.boundary, reparam=reparam))


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


def plot_compare_reparam(curves: dict[str, list[dict[str, float]]], path: Path, title: str) -> None:
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
    fig.suptitle(title, fontsize=10)
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
    with recipe_accelerator(args, "classify") as accelerator:
        with user_input():
            datasets, num_classes = build_datasets(args)
            for rows, indices in rows_in_use(datasets):
                rows.check_decodable(indices)
        accelerator.print(f"{num_classes} classes; samples: " + ", ".join(f"{k} {len(v)}" for k, v in datasets.items()))

        def training_step(model: nn.Module, batch) -> dict[str, torch.Tensor]:
            images, labels = batch
            logits = model(images)
            return {"loss": F.cross_entropy(logits, labels),
                    "accuracy": (logits.argmax(1) == labels).float().mean()}

        def evaluate(model: nn.Module, loader: DataLoader) -> dict[str, float]:
            return evaluate_classifier(accelerator, model, loader)

        run_dir = args.output_dir / variant / f"seed_{seed}"
        run = train_and_test(accelerator, args, config, build_model=lambda: build_model(args, num_classes, reparam),
                             datasets=datasets, training_step=training_step, evaluate=evaluate, test=evaluate,
                             run_dir=run_dir, monitor="accuracy", log_prefix=f"{variant}/seed_{seed}/")
        scores, state = run.test, run.state
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
            publish(accelerator.unwrap_model(run.model), run_dir, card, repo_id)
    return {**scores, "first_nonfinite_step": state.first_nonfinite_step, "steps": state.steps}


def write_outputs(args: argparse.Namespace, results: dict[str, dict[int, dict[str, Any]]]) -> None:
    """The seed table, and with ``--compare-reparam`` the Fig. 5 plot and its summary."""
    rows = {name: {seed: {k: r[k] for k in ("accuracy", "loss")} for seed, r in per_seed.items()}
            for name, per_seed in results.items()}
    md, _ = write_seed_table(rows, ("accuracy", "loss"), args.output_dir / "results")
    print(f"{md.read_text()}\noutputs in {args.output_dir}: results.md/.json (the table above); per run "
          "<variant>/seed_<s>/test_metrics.json, <variant>/seed_<s>/final (save_pretrained checkpoint with its "
          "model card), <variant>/seed_<s>/best and <variant>/seed_<s>/checkpoints"
          + ("; compare_reparam.png and compare_reparam.json" if args.compare_reparam else ""))
    if args.compare_reparam:
        seed = seeds_from_args(args)[0]
        labels = {"reparam": "with reparam", "no_reparam": "without reparam"}
        source = args.hf_dataset or (str(args.data_dir) if args.data_dir else args.data)
        plot_compare_reparam({labels[name]: per_seed[seed]["steps"] for name, per_seed in results.items()},
                             args.output_dir / "compare_reparam.png",
                             f"{args.model} (all convolutions ARMA) on {source}, seed {seed}: training with "
                             "and without the re-parameterisation of the AR taps (paper Fig. 5)")
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
    add_arma_args(model)
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
    with user_input():
        check_args(args)
    args.model_kwargs = parse_model_kwargs(args.model_kwargs)
    return args


def check_args(args: argparse.Namespace) -> None:
    """Refuse flag values and combinations argparse cannot check, before anything runs."""
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
    parse_model_kwargs(args.model_kwargs)


def main(argv: Sequence[str] | None = None) -> dict[str, dict[int, dict[str, Any]]]:
    """Parse, claim ``--output-dir``, train every variant once per seed and write the outputs."""
    args = parse_args(argv)
    with claim_output_dir(args) as state:
        config = {"lr": args.lr, "epochs": args.epochs, "batch_size": args.batch_size}
        reparams = (True, False) if args.compare_reparam else (args.reparam,)
        results = {variant_name(reparam): {seed: training_function({**config, "seed": seed, "reparam": reparam}, args)
                                           for seed in seeds_from_args(args)}
                   for reparam in reparams}
        if state.is_main_process:
            write_outputs(args, results)
    return results


if __name__ == "__main__":
    run_script(main)
