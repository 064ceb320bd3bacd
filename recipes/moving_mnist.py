"""Moving-MNIST video prediction: ConvLSTM vs ARMA-LSTM (Su et al., NeurIPS 2020, Table 3).

The paper's claim tested here: the AR part's larger receptive field helps most when the
digits move fast. Every model is the same :class:`~arma_plugin.models.ConvLSTMNet`, the ARMA
and non-local variants with an :class:`~arma_plugin.ARMAConfig` given to
:func:`~arma_plugin.armafy`; all are saved and reloaded with ``save_pretrained``/``from_pretrained``.
Each run is scored on the same generated test sequences as three trivial predictors (all-zero
frames, the mean of the input frames, the last input frame repeated), and the ARMA-vs-baseline
comparison is a criterion declared in ``moving_mnist_verdict.py`` (:data:`CRITERION`) and printed with the table,
whatever its outcome.

This example supports, through Accelerate, with the same script:
- CPU, one or many GPUs (``accelerate launch``), mixed precision, gradient accumulation;
- several models x speeds x seeds in one invocation, run one after the other or, on CPU,
  ``--parallel-runs N`` at a time in separate processes (the quick preset's tiny ops use one
  core each far better than two threads share one run);
- a Table-3 markdown + JSON (params, PSNR/SSIM per speed, mean ± std over seeds, every
  seed's value, the trivial predictors, the criterion and its verdict);
- the picture to look at first: a prediction strip per speed (inputs, ground truth, each
  model's prediction, where the ARMA model's error is smaller or larger than its baseline's)
  and a per-frame PSNR plot per speed (± 1 standard error over seeds, and the paired
  ARMA - baseline difference per frame);
- best-val weights, ``save_state`` every epoch and ``--resume-from-checkpoint``, which
  continues only a run with the same configuration (from its newest complete checkpoint);
  the output folder is locked for the run; a new run refuses an ``--output-dir`` holding
  another run unless ``--overwrite-output-dir``, and replaces the previous run of its default
  folder (``runs/moving_mnist_<preset>``) saying so;
- a ``save_pretrained`` checkpoint per model/speed/seed with the table in its model card;
- ``--throughput-steps N``: time N training steps of each model (sequences/s side by side)
  instead of training, e.g. to size ``--preset paper`` on a GPU.

Presets: ``quick`` (the default, the README's main job: 16x16 frames, one 7-pixel digit
moving at 3x, two 16-channel cells, 4 -> 2 frames, ``convlstm3`` vs ``armalstm3``, 6 seeds,
two runs at a time: about 365 CPU-seconds of training, meant to fit 5 minutes on 2 free CPU
cores) and ``paper`` (the authors' sizes: 64x64, two MNIST digits, 12 cells of 32 channels,
10k sequences, 10 -> 10 frames, 500 epochs: for GPUs).

Examples::

    python recipes/moving_mnist.py                                   # quick preset
    python recipes/moving_mnist.py --speeds 1 3 --output-dir runs/mm_1x3x
    accelerate launch recipes/moving_mnist.py --preset paper --speeds 1 2 3 \\
        --models convlstm3 convlstm5 convlstm3-d2 armalstm3 armalstm3-d2
    python recipes/moving_mnist.py --preset paper --throughput-steps 20  # sequences/s, no training
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from arma_plugin import check_choice, check_positive_int, format_table
from arma_plugin.metrics import frame_psnr, frame_ssim, summarize_video_metrics
from moving_mnist_data import DIGIT_SOURCES, TEST_DATA_SEED, digit_size_for, make_datasets, split_video
from moving_mnist_models import MODEL_FACTORY, VARIANTS, build_model, model_kwargs
from moving_mnist_plots import seed_count, write_psnr_curves, write_strip
from moving_mnist_verdict import (COMPARE, CRITERION, environment, learned_motion, paired_criterion, score_trivial,
                                  table_columns)
from recipe_kit import (RecipeError, add_arma_args, add_training_args, claim_output_dir, count_parameters,
                        hub_repo_for_seed, load_best_weights, make_accelerator, publish, recipe_accelerator,
                        run_script, seed_everything, seeds_from_args, train_and_test, user_input,
                        validate_training_args, write_seed_table)

PRESETS: dict[str, dict[str, Any]] = {
    # Chosen on 2 CPU cores from ConvLSTM runs alone, before any ARMA-LSTM run of this setting
    # (docs/moving_mnist.md logs every configuration tried). The paper's regime: at 3x one 7-pixel
    # digit in a 16x16 frame moves 2.7 px/frame, more than the 2 px that two cells of 3x3 gate
    # convs carry per step (the head is 1x1), so the baseline cannot copy a digit pixel to where
    # it goes next; it still clears the trivial predictors by 1 dB (a blob where the digit goes).
    # Six small runs per model, not three larger ones: the paired criterion needs the seeds.
    "quick": dict(frame_size=16, digit_size=7, num_digits=1, hidden_channels=[16, 16],
                  layers_per_block=[1, 1], skip_stride=None, input_frames=4, future_frames=2,
                  train_sequences=512, val_sequences=64, test_sequences=256, epochs=6, batch_size=8, lr=1e-2,
                  lr_scheduler_type="constant", num_warmup_steps=0, ar_kernel_size=3, boundary="zeros",
                  digits="sklearn", models=["convlstm3", "armalstm3"], speeds=[3], seeds=[0, 1, 2, 3, 4, 5],
                  cpu_threads=1, parallel_runs=2),
    "paper": dict(frame_size=64, digit_size=28, num_digits=2, hidden_channels=[32, 32, 32, 32],
                  layers_per_block=[3, 3, 3, 3], skip_stride=2, input_frames=10, future_frames=10,
                  train_sequences=10000, val_sequences=3000, test_sequences=3000, epochs=500, batch_size=32,
                  lr=1e-3, lr_scheduler_type="constant", num_warmup_steps=0, ar_kernel_size=3,
                  boundary="circular", digits="mnist",
                  models=["convlstm3", "convlstm5", "convlstm3-d2", "armalstm3-d2", "armalstm3"],
                  speeds=[1, 2, 3], seeds=[0], cpu_threads=None, parallel_runs=1),
}


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
        inputs, target = split_video(video, args)
        prediction = model(inputs, args.future_frames).clamp(0, 1)
        if first is None:
            first = prediction.cpu()
        psnrs.append(accelerator.gather_for_metrics(frame_psnr(prediction, target)))
        ssims.append(accelerator.gather_for_metrics(frame_ssim(prediction, target)))
    return torch.cat(psnrs), torch.cat(ssims), first


def run_dir_of(args: argparse.Namespace, name: str, speed: int, seed: int) -> Path:
    return args.output_dir / name / f"speed{speed}" / f"seed_{seed}"


def training_function(config: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Train ``config["model"]`` at ``config["speed"]`` with ``config["seed"]`` into its run folder;
    returns its test scores, parameter count and the prediction of test sequence 0."""
    name, speed, seed = config["model"], config["speed"], config["seed"]
    all_steps = args.input_frames - 1 + args.future_frames

    def training_step(model, video):
        # every one-step prediction, those made while reading the inputs too (as the authors' code)
        prediction = model(video[:, :args.input_frames], args.future_frames, output_frames=all_steps)
        return {"loss": loss_fn(prediction, video[:, 1:all_steps + 1])}

    with recipe_accelerator(args, "moving_mnist") as accelerator:
        def evaluate(model, loader):
            scores = summarize_video_metrics(*predict_and_score(accelerator, model, loader, args)[:2])
            return {"psnr": scores["psnr"], "ssim": scores["ssim"]}

        datasets = dict(zip(("train", "val", "test"), make_datasets(args, speed, seed)))
        run = train_and_test(accelerator, args, config, build_model=lambda: build_model(args, name),
                             datasets=datasets, training_step=training_step, evaluate=evaluate,
                             test=lambda model, loader: predict_and_score(accelerator, model, loader, args),
                             run_dir=run_dir_of(args, name, speed, seed), monitor="psnr",
                             log_prefix=f"{name}/speed{speed}/seed_{seed}/")
    psnr, ssim, predictions = run.test
    return {**config, "scores": summarize_video_metrics(psnr, ssim), "example": predictions[0],
            "params": run.parameters}


def run_all(configs: list[dict[str, Any]], args: argparse.Namespace) -> list[dict[str, Any]]:
    """``training_function`` of every config: in this process, or ``--parallel-runs`` processes at a time."""
    if args.parallel_runs == 1:
        return [training_function(config, args) for config in configs]
    # spawn: a fresh interpreter per worker, never a fork of a process whose thread pools already run
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(args.parallel_runs, mp_context=context, initializer=set_cpu_threads,
                             initargs=(args.cpu_threads,)) as pool:
        return list(pool.map(training_function, configs, [args] * len(configs)))


def throughput(args: argparse.Namespace) -> list[list[str]]:
    """Sequences/s of ``--throughput-steps`` training steps per model (after 2 warm-up steps)."""
    accelerator = make_accelerator(args)
    rows = []
    for name in args.models:
        seed_everything(args.seed, deterministic=args.deterministic)
        model = build_model(args, name)
        optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
        model, optimizer = accelerator.prepare(model, optimizer)
        frames = args.input_frames + args.future_frames
        video = torch.rand(args.batch_size, frames, 1, args.frame_size, args.frame_size, device=accelerator.device)

        def step():
            prediction = model(video[:, :args.input_frames], args.future_frames, output_frames=frames - 1)
            accelerator.backward(loss_fn(prediction, video[:, 1:]))
            optimizer.step()
            optimizer.zero_grad()

        for _ in range(2):
            step()
        if accelerator.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(args.throughput_steps):
            step()
        if accelerator.device.type == "cuda":
            torch.cuda.synchronize()
        per_second = args.throughput_steps * args.batch_size * accelerator.num_processes / (time.perf_counter() - start)
        hours_per_epoch = args.train_sequences / per_second / 3600
        rows.append([name, f"{count_parameters(model):,}", f"{per_second:.1f}",
                     f"{hours_per_epoch * args.epochs:.1f}"])
        accelerator.free_memory()
    return rows


# --------------------------------------------------------------------------- outputs

def report(args: argparse.Namespace, records: list[dict[str, Any]], seeds: list[int]) -> dict[str, Any]:
    """Write the table, the criterion, per-frame curves, strips and checkpoints; returns what was written."""
    rows: dict[str, dict[int, dict[str, float]]] = {m: {} for m in args.models}
    curves: dict[int, dict[str, list[list[float]]]] = {s: {m: [] for m in args.models} for s in args.speeds}
    examples: dict[int, dict[str, torch.Tensor]] = {s: {} for s in args.speeds}
    params = {}
    for record in sorted(records, key=lambda r: (r["speed"], args.models.index(r["model"]), r["seed"])):
        name, speed, seed, scores = record["model"], record["speed"], record["seed"], record["scores"]
        params[name] = record["params"]
        rows[name].setdefault(seed, {}).update({f"psnr@{speed}x": scores["psnr"], f"ssim@{speed}x": scores["ssim"]})
        curves[speed][name].append(scores["psnr_per_frame"])
        if seed == seeds[0]:
            examples[speed][name] = record["example"]
    for speed in args.speeds:
        for name, scores in score_trivial(args, speed).items():
            rows.setdefault(name, {0: {}})[0].update({f"psnr@{speed}x": scores["psnr"], f"ssim@{speed}x": scores["ssim"]})
            curves[speed][name] = [scores["psnr_per_frame"]]
    extra = {m: {"params": f"{params[m] / 1e6:.3f}M"} for m in args.models}
    md_path, json_path = write_seed_table(rows, table_columns(args.speeds), args.output_dir / "results",
                                          extra_columns=extra)
    results = json.loads(json_path.read_text())
    lines = learned_motion(rows, args.models, args.speeds)
    arma, baseline = COMPARE
    if arma in args.models and baseline in args.models:
        column = f"psnr@{max(args.speeds)}x"
        criterion = paired_criterion([rows[arma][s][column] for s in seeds], [rows[baseline][s][column] for s in seeds])
        results["criterion"] = {"speed": max(args.speeds), **criterion}
        lines += [f"criterion (declared before running): {CRITERION}", f"-> {criterion['verdict']}",
                  "   per-seed differences (dB): " + ", ".join(f"{d:+.3f}" for d in criterion["differences"])]
    results["learned_motion"] = lines[:len(args.models) * len(args.speeds)]
    results["environment"] = environment(args)
    json_path.write_text(json.dumps(results, indent=1))
    table = md_path.read_text() + "\n" + "\n".join(lines) + "\n"
    md_path.write_text(table)
    (args.output_dir / "per_frame.json").write_text(json.dumps(curves, indent=1))
    pictures = []
    for speed in args.speeds:
        _, _, test = make_datasets(args, speed, TEST_DATA_SEED)
        strip = args.output_dir / f"strip_speed{speed}.png"
        write_strip(strip, test[0], examples[speed], args.input_frames,
                    f"Moving-MNIST {speed}x, test sequence 0, the models of seed {seeds[0]} (one square per pixel)",
                    COMPARE)
        plot = args.output_dir / f"psnr_per_frame_speed{speed}.png"
        write_psnr_curves(plot, curves[speed], f"Moving-MNIST {speed}x: PSNR per predicted frame "
                                               f"({seed_count(len(seeds))}, {len(test)} test sequences)", COMPARE)
        pictures += [strip, plot]
    checkpoints = save_checkpoints(args, [(r["model"], r["speed"], r["seed"]) for r in records], table)
    return {"table": table, "results": results, "per_frame": curves, "pictures": pictures,
            "checkpoints": checkpoints}


def save_checkpoints(args: argparse.Namespace, runs: Sequence[tuple[str, int, int]], table: str) -> list[Path]:
    """The best-val weights of every run as a ``save_pretrained`` checkpoint with the table in its card."""
    paths = []
    for name, speed, seed in runs:
        run_dir = run_dir_of(args, name, speed, seed)
        model = build_model(args, name)
        load_best_weights(model, run_dir)
        description = (f"`{name}` trained on Moving-MNIST at {speed}x speed (seed {seed}) with "
                       f"`recipes/moving_mnist.py --preset {args.preset}`.")
        card = dict(model_factory=MODEL_FACTORY, model_kwargs=model_kwargs(args, VARIANTS[name]),
                    metrics=table, description=description, tags=["video-prediction"])
        paths.append(publish(model, run_dir, card, hub_repo_for_seed(args, seed, f"{name}-speed{speed}")))
    return paths


# --------------------------------------------------------------------------- CLI

def build_parser(preset: str = "quick") -> argparse.ArgumentParser:
    """The recipe's flags, with ``preset``'s values as defaults."""
    values = PRESETS[preset]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default=preset,
                        help="the defaults of every flag below (quick: the 2-CPU main job; paper: the authors' sizes)")
    group = parser.add_argument_group("Moving-MNIST")
    group.add_argument("--models", nargs="+", default=values["models"], help=f"any of {list(VARIANTS)}")
    group.add_argument("--speeds", nargs="+", type=int, default=values["speeds"],
                       help="speed factors (1, 2, 3 for Table 3's 1x, 2x, 3x); the criterion uses the fastest")
    group.add_argument("--digits", default=values["digits"], help=f"one of {DIGIT_SOURCES}")
    group.add_argument("--digits-path", default=None, help="local MNIST copy (.npz / .npy / idx3-ubyte)")
    group.add_argument("--test-file", default=None, help="the fixed test file mnist_test_seq.npy")
    for key in ("frame_size", "digit_size", "num_digits", "input_frames", "future_frames", "train_sequences",
                "val_sequences", "test_sequences"):
        group.add_argument(f"--{key.replace('_', '-')}", type=int, default=values[key])
    group.add_argument("--hidden-channels", nargs="+", type=int, default=values["hidden_channels"])
    group.add_argument("--layers-per-block", nargs="+", type=int, default=values["layers_per_block"])
    group.add_argument("--skip-stride", type=int, default=values["skip_stride"])
    add_arma_args(group, ar_kernel_size=values["ar_kernel_size"], boundary=values["boundary"])
    group.add_argument("--cpu-threads", type=int, default=values["cpu_threads"],
                       help="torch and numba threads per process (quick: 1); default: the libraries' own")
    group.add_argument("--parallel-runs", type=int, default=values["parallel_runs"],
                       help="trainings run at a time, each in its own process (CPU, single-process launch)")
    group.add_argument("--throughput-steps", type=int, default=None,
                       help="time this many training steps per model (sequences/s) instead of training")
    add_training_args(parser, output_dir=f"runs/moving_mnist_{preset}", epochs=values["epochs"],
                      batch_size=values["batch_size"], lr=values["lr"],
                      lr_scheduler_type=values["lr_scheduler_type"], num_warmup_steps=values["num_warmup_steps"])
    parser.set_defaults(seeds=values["seeds"] if len(values["seeds"]) > 1 else None, seed=values["seeds"][0])
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse ``argv`` with the defaults of its ``--preset``, then check every value."""
    preset = argparse.ArgumentParser(add_help=False)
    preset.add_argument("--preset", choices=sorted(PRESETS), default="quick")
    args = build_parser(preset.parse_known_args(argv)[0].preset).parse_args(argv)
    if "--seed" in (sys.argv[1:] if argv is None else argv):  # one explicit seed replaces the preset's list
        args.seeds = None
    with user_input():
        validate_args(args)
    return args


def validate_args(args: argparse.Namespace) -> None:
    validate_training_args(args)
    unknown = [m for m in args.models if m not in VARIANTS]
    if unknown:
        raise ValueError(f"--models: unknown {unknown}; choose from {list(VARIANTS)}")
    for flag, values in (("--models", args.models), ("--speeds", args.speeds)):
        if len(set(values)) != len(values):  # each run has one folder
            raise ValueError(f"{flag} must be distinct, got {values}")
    for speed in args.speeds:
        check_positive_int("--speeds (1, 2, 3 = Table 3's 1x, 2x, 3x)", speed)
    check_choice("--digits", args.digits, DIGIT_SOURCES)
    if args.digits_path is not None and not Path(args.digits_path).exists():
        raise ValueError(f"--digits-path {args.digits_path!r} does not exist")
    if args.test_file is not None and not Path(args.test_file).is_file():
        raise RecipeError(f"--test-file {args.test_file!r} does not exist (expected the standard "
                                f"mnist_test_seq.npy, [20, N, 64, 64] uint8)")
    check_positive_int("--frame-size (SSIM uses a 7x7 window)", args.frame_size, minimum=8)
    if not 1 <= args.digit_size < args.frame_size:
        raise ValueError(f"--digit-size must be an integer in [1, --frame-size), got {args.digit_size} "
                         f"(the paper's ratio at this frame size: {digit_size_for(args.frame_size)})")
    for key in ("num_digits", "input_frames", "future_frames", "train_sequences", "val_sequences", "test_sequences",
                "parallel_runs"):
        check_positive_int(f"--{key.replace('_', '-')}", getattr(args, key))
    if args.cpu_threads is not None:
        check_positive_int("--cpu-threads", args.cpu_threads)
    if args.throughput_steps is not None:
        check_positive_int("--throughput-steps", args.throughput_steps)
    if args.parallel_runs > 1 and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError("--parallel-runs runs trainings side by side in one launch; under `accelerate launch` "
                         "with several processes use --parallel-runs 1")


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (the --parallel-runs workers): a cost
    that, unlike wall time, does not grow when other jobs share the CPU."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


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
    """Parse, claim ``--output-dir``, train every model x speed x seed, then report."""
    args = parse_args(argv)
    set_cpu_threads(args.cpu_threads)
    if args.throughput_steps is not None:
        rows = throughput(args)
        table = format_table(["model", "params", "sequences/s", f"hours for {args.epochs} epochs of "
                                                                f"{args.train_sequences} sequences"], rows)
        print(f"{args.preset} preset, batch {args.batch_size} per process, {args.throughput_steps} timed steps:\n{table}")
        return {"throughput": rows}
    with claim_output_dir(args) as state:
        seeds = seeds_from_args(args)
        # ARMA runs first: with --parallel-runs, the longest jobs start first and the shorter ones fill in.
        order = sorted(args.models, key=lambda m: not VARIANTS[m].arma)
        configs = [{"model": m, "speed": s, "seed": seed, "lr": args.lr, "epochs": args.epochs,
                    "batch_size": args.batch_size} for s in args.speeds for m in order for seed in seeds]
        state.print(f"Moving-MNIST {args.preset}: {args.frame_size}x{args.frame_size} frames, {args.num_digits} "
                    f"digit(s) of {args.digit_size} px, {args.input_frames}->{args.future_frames} frames, "
                    f"models={args.models}, speeds={args.speeds}, seeds={seeds}: {len(configs)} trainings, "
                    f"{args.parallel_runs} at a time")
        start, cpu_start = time.perf_counter(), cpu_seconds()
        records = run_all(configs, args)
        elapsed, cpu = time.perf_counter() - start, cpu_seconds() - cpu_start
        out: dict[str, Any] = {}
        if state.is_main_process:  # one process writes the table, pictures and checkpoints
            out = report(args, records, seeds)
            print(f"\n{out['table']}\ntrainings took {elapsed:.0f} s ({cpu:.0f} CPU-seconds).\nLook first at: "
                  + ", ".join(str(p) for p in out["pictures"])
                  + f"\ntable {args.output_dir / 'results.md'} (every seed's value in results.json), per-frame "
                  f"curves {args.output_dir / 'per_frame.json'}, checkpoints under "
                  f"{args.output_dir}/<model>/speed<s>/seed_<seed>/final")
            out.update(seconds=elapsed, cpu_seconds=cpu)
    return out


if __name__ == "__main__":
    run_script(main)
