"""The model table of scripts/gpu_check.py: train-step time of timm and SMP models, original
vs armafied (circular, zeros), fp32 and bf16 autocast."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

from arma_plugin.table import format_table
from gpu_timing import Budget, median_ms

BOUNDARIES = ("circular", "zeros")


def _model_factories() -> dict[str, Callable[[], nn.Module]]:
    import segmentation_models_pytorch as smp
    import timm

    return {"resnet18": lambda: timm.create_model("resnet18", pretrained=False),
            "vgg11": lambda: timm.create_model("vgg11", pretrained=False),
            "convnext_tiny": lambda: timm.create_model("convnext_tiny", pretrained=False),
            "smp-unet-resnet34": lambda: smp.Unet("resnet34", encoder_weights=None)}


def model_table(setup, budget: Budget, results: dict) -> None:
    print(f"\n## Models, train step (fwd+bwd+SGD) median of {setup.model_repeats}, ms")
    try:
        factories = _model_factories()
        from arma_plugin.convert import armafy
    except ImportError as err:
        note = f"model table skipped: {err}"
        print(note)
        budget.skipped.append(note)
        return
    torch.backends.cudnn.benchmark = True
    rows = []
    for name, shape in setup.models:
        for dtype in setup.dtypes:
            if not budget.allows("model table", f"{name} {dtype}", 35):
                _print_model_rows(rows, results)
                return
            rows.append(_model_row(setup, factories[name], armafy, name, shape, dtype))
            if setup.device.type == "cuda":
                torch.cuda.empty_cache()
    _print_model_rows(rows, results)


def _model_row(setup, factory: Callable[[], nn.Module], armafy: Callable, name: str,
               shape: tuple[int, ...], dtype: str) -> dict:
    x = torch.randn(*shape, device=setup.device)
    original = factory().to(setup.device).train()
    variants = {"original": original}
    for boundary in BOUNDARIES:
        variants[boundary] = armafy(original, boundary=boundary).to(setup.device)  # a converted copy
    row = {"model": name, "input": "×".join(map(str, shape)), "dtype": dtype}
    for variant, model in variants.items():
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-4)

        def step(model: nn.Module = model, optimizer: torch.optim.Optimizer = optimizer) -> None:
            with setup.autocast(dtype):
                loss = model(x).float().square().mean()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        row[f"{variant}_ms"] = median_ms(step, setup.device, setup.model_repeats, setup.warmup)
    return row


def _print_model_rows(rows: list[dict], results: dict) -> None:
    header = ["model", "input", "dtype", "original ms", "circular ms", "zeros ms", "circular/orig", "zeros/orig"]
    print(format_table(header, [[r["model"], r["input"], r["dtype"], r["original_ms"], r["circular_ms"],
                                 r["zeros_ms"], r["circular_ms"] / r["original_ms"], r["zeros_ms"] / r["original_ms"]]
                                for r in rows], float_format=".3g"))
    results["models"] = rows
