"""Moving-MNIST-2 video prediction: ConvLSTM vs ARMA-LSTM (Su et al., NeurIPS 2020, Table 3).

Every model is the same :class:`~arma_plugin.models.ConvLSTMNet` plus an
:class:`~arma_plugin.ARMAConfig` given to :func:`~arma_plugin.armafy` (the plain
ConvLSTMs use a config that excludes every conv, so all variants share one code path
and one checkpoint format).

Supported (Accelerate, the same training features as ``isic.py`` through ``common.py``):
- CPU, one or many GPUs (``accelerate launch``), mixed precision, gradient accumulation;
- several models x speeds x seeds in one invocation, Table-3 markdown + JSON
  (params, PSNR/SSIM per speed, mean ± std over seeds) and per-frame curves;
- an image strip per speed (inputs, ground truth, each model's predictions);
- best-val weights, ``save_state`` every epoch and ``--resume-from-checkpoint``;
- a ``save_pretrained`` checkpoint per model/speed/seed with the table in its model card;
- ``--preset quick`` (default: small frames and models, sklearn digits, convlstm3 vs
  armalstm3 at 1x and 3x, a few minutes on 2 CPU cores) and ``--preset paper``
  (64x64, 12 cells of 32 channels, 10k sequences, 500 epochs: for GPUs).

    python recipes/moving_mnist.py                               # quick preset
    python recipes/moving_mnist.py --seeds 0 1 2                 # mean ± std over seeds
    accelerate launch recipes/moving_mnist.py --preset paper --speeds 1 2 3 \\
        --models convlstm3 convlstm5 convlstm3-d2 armalstm3 armalstm3-d2
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from arma_plugin import ARMAConfig, armafy
from arma_plugin.metrics import frame_psnr, frame_ssim, summarize_video_metrics
from arma_plugin.models import ConvLSTMNet

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (add_training_args, count_parameters, fit, load_best_weights, make_accelerator, publish,  # noqa: E402
                    resolve_resume, seed_everything, seeds_from_args, tracker_config,
                    validate_training_args, write_seed_table)
from moving_mnist_data import (DIGIT_SOURCES, FixedSequences, MovingMNIST, digit_size_for,  # noqa: E402
                               load_digits)

MODEL_FACTORY = "arma_plugin.models.convlstm:ConvLSTMNet"
NO_AR = {"exclude_modules": ".*"}
"""ARMAConfig fields of a plain ConvLSTM: no conv is converted."""


@dataclass(frozen=True)
class Variant:
    """A Table-3/Table-4 row: gate-conv kernel and dilation, AR or not, non-local blocks or not."""

    kernel_size: int
    dilation: int
    arma: bool
    nonlocal_blocks: bool = False


BASE_VARIANTS = {
    "convlstm3": Variant(3, 1, False),
    "convlstm5": Variant(5, 1, False),
    "convlstm3-d2": Variant(3, 2, False),
    "armalstm3": Variant(3, 1, True),
    "armalstm3-d2": Variant(3, 2, True),
}
VARIANTS = {**BASE_VARIANTS,
            **{f"nl-{name}": Variant(v.kernel_size, v.dilation, v.arma, True) for name, v in BASE_VARIANTS.items()}}

PRESETS: dict[str, dict[str, Any]] = {
    # Tuned on 2 CPU cores (README "Moving-MNIST"): 10->10 frames in this budget left ARMA behind at 1x.
    "quick": dict(frame_size=16, hidden_channels=[8, 8], layers_per_block=[1, 1], skip_stride=None,
                  input_frames=5, future_frames=5, train_sequences=256, val_sequences=64,
                  test_sequences=64, epochs=8, batch_size=16, lr=5e-3, ar_kernel_size=3,
                  boundary="circular", digits="sklearn", models=["convlstm3", "armalstm3"], speeds=[1, 3],
                  cpu_threads=1),
    "paper": dict(frame_size=64, hidden_channels=[32, 32, 32, 32], layers_per_block=[3, 3, 3, 3],
                  skip_stride=2, input_frames=10, future_frames=10, train_sequences=10000,
                  val_sequences=3000, test_sequences=3000, epochs=500, batch_size=32, lr=1e-3,
                  ar_kernel_size=3, boundary="circular", digits="mnist",
                  models=["convlstm3", "convlstm5", "convlstm3-d2", "armalstm3-d2", "armalstm3"],
                  speeds=[1, 2, 3], cpu_threads=None),
}
TEST_DATA_SEED = 0
"""Every model and training seed is scored on the same generated test sequences."""


# --------------------------------------------------------------------------- models

def model_kwargs(args: argparse.Namespace, variant: Variant) -> dict[str, Any]:
    """JSON-able ``ConvLSTMNet`` arguments of one variant (also stored in its checkpoint)."""
    return dict(in_channels=1, hidden_channels=list(args.hidden_channels),
                layers_per_block=list(args.layers_per_block), skip_stride=args.skip_stride,
                kernel_size=variant.kernel_size, dilation=variant.dilation)


def arma_config(args: argparse.Namespace, net: ConvLSTMNet, variant: Variant) -> ARMAConfig:
    """The variant's ARMAConfig; non-local blocks follow the first gate conv of blocks 1 and 2
    (where the authors' network puts its blocks, at block inputs, Table 4)."""
    nonlocal_after = [f"blocks.{b}.0.gates" for b in (1, 2) if b < len(net.blocks)] \
        if variant.nonlocal_blocks else []
    fields = dict(ar_kernel_size=args.ar_kernel_size, boundary=args.boundary) if variant.arma else NO_AR
    return ARMAConfig(nonlocal_after=nonlocal_after, **fields)


def build_model(args: argparse.Namespace, name: str) -> ConvLSTMNet:
    """ConvLSTM of variant ``name``, armafied with its config (identity to the plain net at init)."""
    variant = VARIANTS[name]
    net = ConvLSTMNet(**model_kwargs(args, variant))
    example = torch.zeros(1, 2, 1, args.frame_size, args.frame_size)
    return armafy(net, arma_config(args, net, variant), example_inputs=example)


# --------------------------------------------------------------------------- data

def make_datasets(args: argparse.Namespace, speed: int, seed: int) -> tuple[MovingMNIST, Any, Any]:
    digit_size = digit_size_for(args.frame_size)
    common = dict(frames=args.input_frames + args.future_frames, frame_size=args.frame_size, speed=speed)

    def split(name: str, count: int, data_seed: int) -> MovingMNIST:
        digits = load_digits(args.digits, split=name, digit_size=digit_size, path=args.digits_path)
        return MovingMNIST(digits, num_sequences=count, seed=data_seed, split=name, **common)

    if args.test_file:
        test = FixedSequences(args.test_file, args.frame_size)
        if test.frames < common["frames"]:
            raise ValueError(f"--test-file has {test.frames} frames per sequence, fewer than "
                             f"--input-frames + --future-frames = {common['frames']}")
    else:
        test = split("test", args.test_sequences, TEST_DATA_SEED)
    return split("train", args.train_sequences, seed), split("val", args.val_sequences, seed), test


# --------------------------------------------------------------------------- training

def loss_fn(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L1 + L2, the authors' training loss."""
    return F.l1_loss(prediction, target) + F.mse_loss(prediction, target)


@torch.no_grad()
def predict_and_score(accelerator, model, loader, args) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sequence, per-frame PSNR and SSIM ``[N, T_out]`` (gathered), and the first batch's predictions."""
    model.eval()
    psnrs, ssims, first = [], [], None
    for video in loader:
        inputs = video[:, :args.input_frames]
        target = video[:, args.input_frames:args.input_frames + args.future_frames]
        prediction = model(inputs, args.future_frames).clamp(0, 1)
        if first is None:
            first = prediction.cpu()
        psnr, ssim = frame_psnr(prediction, target), frame_ssim(prediction, target)
        psnrs.append(accelerator.gather_for_metrics(psnr))
        ssims.append(accelerator.gather_for_metrics(ssim))
    return torch.cat(psnrs), torch.cat(ssims), first


def training_function(config: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Train ``config["model"]`` at ``config["speed"]`` with ``config["seed"]``; returns its test scores.

    ``config["accelerator"]`` is shared by all runs of one invocation (one process group, one
    set of trackers); each run releases what it prepared, so a checkpoint holds only its own model.
    """
    name, speed, seed, run_dir = config["model"], config["speed"], config["seed"], config["run_dir"]
    accelerator = config["accelerator"]
    seed_everything(seed, deterministic=args.deterministic)
    model = build_model(args, name)
    train, val, test = make_datasets(args, speed, seed)
    loaders = [DataLoader(ds, batch_size=args.batch_size, shuffle=shuffle, num_workers=args.num_workers)
               for ds, shuffle in ((train, True), (val, False), (test, False))]
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    model, optimizer, train_loader, val_loader, test_loader = accelerator.prepare(model, optimizer, *loaders)
    all_steps = args.input_frames - 1 + args.future_frames

    def training_step(model, video):
        prediction = model(video[:, :args.input_frames], args.future_frames, output_frames=all_steps)
        return {"loss": loss_fn(prediction, video[:, 1:])}

    def evaluate(model):
        psnr, ssim = predict_and_score(accelerator, model, val_loader, args)[:2]
        scores = summarize_video_metrics(psnr, ssim)
        return {"psnr": scores["psnr"], "ssim": scores["ssim"]}

    prefix = f"{name}/speed{speed}/seed_{seed}/"
    fit(accelerator, model, optimizer, train_loader, training_step=training_step, evaluate=evaluate,
        epochs=args.epochs, run_dir=run_dir, monitor="psnr", mode="max",
        resume_from=resolve_resume(args.resume_from_checkpoint, run_dir),
        checkpoints_total_limit=args.checkpoints_total_limit, log_prefix=prefix)
    load_best_weights(accelerator, model, run_dir)
    psnr, ssim, predictions = predict_and_score(accelerator, model, test_loader, args)
    params = count_parameters(accelerator.unwrap_model(model))
    accelerator.free_memory()
    return {"scores": summarize_video_metrics(psnr, ssim), "example": predictions[0], "params": params}


# --------------------------------------------------------------------------- outputs

def write_strip(path: Path, video: torch.Tensor, predictions: dict[str, torch.Tensor], input_frames: int,
                title: str) -> None:
    """One row per sequence part: inputs, ground truth, then each model's predictions."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [("input", video[:input_frames]), ("ground truth", video[input_frames:]), *predictions.items()]
    columns = max(len(frames) for _, frames in rows)
    fig, axes = plt.subplots(len(rows), columns, figsize=(columns * 0.9, len(rows) * 1.0), squeeze=False)
    for r, (label, frames) in enumerate(rows):
        for c in range(columns):
            ax = axes[r][c]
            ax.set_xticks([]), ax.set_yticks([])
            if c < len(frames):
                ax.imshow(frames[c, 0].numpy(), cmap="gray", vmin=0, vmax=1)
            else:
                ax.axis("off")
        axes[r][0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def table_columns(speeds: Sequence[int]) -> list[str]:
    return [f"{metric}@{s}x" for s in speeds for metric in ("psnr", "ssim")]


def training_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse ``argv``; ``--preset`` supplies the defaults of every flag it names."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--preset", choices=sorted(PRESETS), default="quick")
    preset_name = pre.parse_known_args(argv)[0].preset
    preset = PRESETS[preset_name]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], parents=[pre],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    group = parser.add_argument_group("Moving-MNIST")
    group.add_argument("--models", nargs="+", default=preset["models"], help=f"any of {list(VARIANTS)}")
    group.add_argument("--speeds", nargs="+", type=int, default=preset["speeds"], help="1, 2, 3 for 1x, 2x, 3x")
    group.add_argument("--speed", type=int, dest="speeds", action="store", nargs=1,
                       help="a single speed (same as --speeds S)")
    group.add_argument("--digits", default=preset["digits"], help=f"one of {DIGIT_SOURCES}")
    group.add_argument("--digits-path", default=None, help="local MNIST copy (.npz / .npy / idx3-ubyte)")
    group.add_argument("--test-file", default=None, help="the fixed test file mnist_test_seq.npy")
    for key in ("frame_size", "input_frames", "future_frames", "train_sequences", "val_sequences",
                "test_sequences", "ar_kernel_size"):
        group.add_argument(f"--{key.replace('_', '-')}", type=int, default=preset[key])
    group.add_argument("--hidden-channels", nargs="+", type=int, default=preset["hidden_channels"])
    group.add_argument("--layers-per-block", nargs="+", type=int, default=preset["layers_per_block"])
    group.add_argument("--skip-stride", type=int, default=preset["skip_stride"])
    group.add_argument("--boundary", default=preset["boundary"], help="AR boundary: circular or zeros")
    group.add_argument("--cpu-threads", type=int, default=preset["cpu_threads"],
                       help="torch and numba threads per process (quick: 1, since its tiny ops run "
                            "several times faster single-threaded on a busy CPU); default: the libraries' own")
    add_training_args(parser, output_dir=f"runs/moving_mnist_{preset_name}", epochs=preset["epochs"],
                      batch_size=preset["batch_size"], lr=preset["lr"])
    args = parser.parse_args(argv)
    validate_args(args)
    return args


def validate_args(args: argparse.Namespace) -> None:
    validate_training_args(args)
    unknown = [m for m in args.models if m not in VARIANTS]
    if unknown:
        raise ValueError(f"--models: unknown {unknown}; choose from {list(VARIANTS)}")
    bad = [s for s in args.speeds if s < 1]
    if bad:
        raise ValueError(f"--speed/--speeds must be integers >= 1 (1, 2, 3 = Table 3's 1x, 2x, 3x), got {bad}")
    if args.digits not in DIGIT_SOURCES:
        raise ValueError(f"--digits must be one of {DIGIT_SOURCES}, got {args.digits!r}")
    if args.test_file is not None and not Path(args.test_file).is_file():
        raise FileNotFoundError(f"--test-file {args.test_file!r} does not exist (expected the standard "
                                f"mnist_test_seq.npy, [20, N, 64, 64] uint8)")
    if args.frame_size < 8:
        raise ValueError(f"--frame-size must be >= 8 (SSIM uses a 7x7 window), got {args.frame_size}")
    for key in ("input_frames", "future_frames", "train_sequences", "val_sequences", "test_sequences"):
        if getattr(args, key) < 1:
            raise ValueError(f"--{key.replace('_', '-')} must be >= 1, got {getattr(args, key)}")
    ARMAConfig(ar_kernel_size=args.ar_kernel_size, boundary=args.boundary)  # validates both
    if args.cpu_threads is not None and args.cpu_threads < 1:
        raise ValueError(f"--cpu-threads must be >= 1, got {args.cpu_threads}")


def set_cpu_threads(threads: int | None) -> None:
    """Intra-op threads of torch and of the numba AR kernels (``None``: leave the defaults)."""
    if threads is None:
        return
    torch.set_num_threads(threads)
    try:
        import numba
    except ImportError:  # the AR layer then uses its torch backend, covered by torch's setting
        return
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = training_args(argv)
    set_cpu_threads(args.cpu_threads)
    seeds = seeds_from_args(args)
    runs = [(m, s, seed) for s in args.speeds for m in args.models for seed in seeds]
    print(f"Moving-MNIST-2 {args.preset}: {args.frame_size}x{args.frame_size} frames, "
          f"{args.input_frames}->{args.future_frames}, digits={args.digits}, models={args.models}, "
          f"speeds={args.speeds}, seeds={seeds}, {len(runs)} trainings")
    print("parameters: " + ", ".join(f"{m} {count_parameters(build_model(args, m)):,}" for m in args.models))
    rows: dict[str, dict[int, dict[str, float]]] = {m: {} for m in args.models}
    curves: dict[str, dict[str, dict[str, list]]] = {m: {} for m in args.models}
    params: dict[str, int] = {}
    examples: dict[int, dict[str, torch.Tensor]] = {}
    accelerator = make_accelerator(args)
    if args.report_to != "none":
        accelerator.init_trackers("moving_mnist", config=tracker_config(args))
    start = time.perf_counter()
    bar = tqdm(runs, desc="trainings", unit="run", disable=not accelerator.is_main_process)
    for name, speed, seed in bar:
        bar.set_postfix(model=name, speed=f"{speed}x", seed=seed)
        run_dir = args.output_dir / name / f"speed{speed}" / f"seed_{seed}"
        out = training_function({"model": name, "speed": speed, "seed": seed, "run_dir": run_dir,
                                 "accelerator": accelerator}, args)
        params[name] = out["params"]
        rows[name].setdefault(seed, {}).update({f"psnr@{speed}x": out["scores"]["psnr"],
                                                f"ssim@{speed}x": out["scores"]["ssim"]})
        for metric in ("psnr", "ssim"):
            curves[name].setdefault(f"{metric}@{speed}x", []).append(out["scores"][f"{metric}_per_frame"])
        if seed == seeds[0]:
            examples.setdefault(speed, {})[name] = out["example"]
    elapsed = time.perf_counter() - start
    accelerator.end_training()
    if not accelerator.is_main_process:  # one process writes the table, strips and checkpoints
        return {}

    extra = {m: {"params": f"{params[m] / 1e6:.3f}M"} for m in args.models}
    md_path, json_path = write_seed_table(rows, table_columns(args.speeds), args.output_dir / "results",
                                          extra_columns=extra)
    table = md_path.read_text()
    curve_means = {m: {k: torch.tensor(v).mean(0).tolist() for k, v in per.items()} for m, per in curves.items()}
    (args.output_dir / "per_frame.json").write_text(json.dumps(curve_means, indent=1))
    strips = write_strips(args, examples)
    checkpoints = save_checkpoints(args, runs, table)
    print(f"\n{table}\nwall time {elapsed:.0f}s; table {md_path}, {json_path}; per-frame curves "
          f"{args.output_dir / 'per_frame.json'}; strips {[str(p) for p in strips]}; "
          f"checkpoints under {args.output_dir}/<model>/speed<s>/seed_<seed>/final")
    return {"table": table, "results": json.loads(json_path.read_text()), "per_frame": curve_means,
            "strips": strips, "checkpoints": checkpoints, "seconds": elapsed,
            "config": tracker_config(args)}


def write_strips(args: argparse.Namespace, examples: dict[int, dict[str, torch.Tensor]]) -> list[Path]:
    paths = []
    for speed, predictions in examples.items():
        _, _, test = make_datasets(args, speed, seeds_from_args(args)[0])
        path = args.output_dir / f"strip_speed{speed}.png"
        write_strip(path, test[0], predictions, args.input_frames,
                    f"Moving-MNIST-2 {speed}x, test sequence 0 (rows: input, ground truth, predictions)")
        paths.append(path)
    return paths


def save_checkpoints(args: argparse.Namespace, runs: Sequence[tuple[str, int, int]], table: str) -> list[Path]:
    """The best-val weights of every run as a ``save_pretrained`` checkpoint with the table in its card."""
    paths = []
    for name, speed, seed in runs:
        run_dir = args.output_dir / name / f"speed{speed}" / f"seed_{seed}"
        model = build_model(args, name)
        model.load_state_dict(load_file(str(run_dir / "best" / "model.safetensors")))
        description = (f"`{name}` trained on Moving-MNIST-2 at {speed}x speed (seed {seed}) with "
                       f"`recipes/moving_mnist.py --preset {args.preset}`.")
        save_kwargs = dict(model_factory=MODEL_FACTORY, model_kwargs=model_kwargs(args, VARIANTS[name]),
                           metrics=table, description=description, tags=["video-prediction"])
        repo_id = f"{args.push_to_hub}-{name}-speed{speed}-seed{seed}" if args.push_to_hub else None
        paths.append(publish(model, run_dir / "final", save_kwargs, repo_id))
    return paths


if __name__ == "__main__":
    main()
