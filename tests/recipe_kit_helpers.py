"""Helpers of the recipe_kit tests: the shared flags as a recipe parses them, and a linear
regression trained by ``recipe_kit.fit`` as a recipe trains its model."""
import argparse
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import load_file
from torch.utils.data import DataLoader, TensorDataset

import recipe_kit

SAMPLES, BATCH = 12, 4  # 3 optimizer steps per epoch


def training_args(output_dir: Path, **flags) -> argparse.Namespace:
    """The shared recipe flags as a recipe parses them from ``--cpu --output-dir OUTPUT_DIR``,
    with ``flags`` overriding."""
    parser = argparse.ArgumentParser()
    recipe_kit.add_training_args(parser, output_dir="runs/default", epochs=3, batch_size=BATCH, lr=0.1)
    args = parser.parse_args(["--cpu", "--output-dir", str(output_dir)])
    for key, value in flags.items():
        setattr(args, key, value)
    return args


def train(run_dir: Path, epochs: int, *, resume_from: Path | None = None, limit: int = 10,
          samples: int = SAMPLES, scores: list[float] | None = None, mode: str = "max",
          run_config: dict | None = None, schedule: str = "constant",
          warmup: int = 0) -> tuple[recipe_kit.TrainerState, nn.Module]:
    """A linear regression trained by ``recipe_kit.fit`` as a recipe does: seed, model, prepare, fit.

    ``scores`` scripts the validation metric per epoch (for best-epoch tracking); without it
    the metric is the validation loss. ``schedule`` and ``warmup`` are the lr schedule flags;
    the schedule spans ``epochs``.
    """
    recipe_kit.seed_everything(0, deterministic=False)
    args = training_args(run_dir, epochs=epochs, lr_scheduler_type=schedule, num_warmup_steps=warmup)
    accelerator = recipe_kit.make_accelerator(args)
    data = torch.Generator().manual_seed(1)
    inputs, targets = torch.randn(samples, 3, generator=data), torch.randn(samples, 1, generator=data)
    model = nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = DataLoader(TensorDataset(inputs, targets), batch_size=BATCH, shuffle=True, drop_last=True)
    lr_scheduler = recipe_kit.make_lr_scheduler(args, optimizer, len(loader))
    model, optimizer, lr_scheduler, loader = accelerator.prepare(model, optimizer, lr_scheduler, loader)
    scripted = iter(scores or [])

    def training_step(model, batch):
        x, y = batch
        return {"loss": nn.functional.mse_loss(model(x), y)}

    def evaluate(model):
        with torch.no_grad():
            loss = nn.functional.mse_loss(model(inputs), targets).item()
        return {"score": next(scripted) if scores else -loss, "loss": loss}

    state = recipe_kit.fit(accelerator, model, optimizer, loader, training_step=training_step, evaluate=evaluate,
                           epochs=epochs, run_dir=run_dir, monitor="score", mode=mode, resume_from=resume_from,
                           checkpoints_total_limit=limit, run_config=run_config, lr_scheduler=lr_scheduler)
    return state, accelerator.unwrap_model(model)


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "model.safetensors"))


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def truncate(path: Path) -> None:
    """Cut ``path`` to half its length, as an interrupted copy or a full disk leaves a file."""
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
