"""Forward+backward time of armafied vs original models, side by side in one run.

Supported: timm resnet18 and vgg11 (224x224, batch 8) and SMP Unet-resnet18 (256x256, batch 4),
``pretrained=False``, CPU float32, train mode, ``ARMAConfig()`` defaults (3x3 AR, circular).
Original and armafied steps alternate so both see the same machine load; the median of
``--repeats`` steps is reported (after ``--warmup`` steps each). Target: ratio <= 1.3.

    python scripts/bench_models.py                      # table
    python scripts/bench_models.py --models resnet18 --repeats 3 --json bench.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Callable

import segmentation_models_pytorch as smp
import timm
import torch
import torch.nn as nn

from arma_plugin import armafy
from arma_plugin.validation import positive_int
from arma_plugin.table import format_table

MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, int, int, int]]] = {
    "resnet18": (lambda: timm.create_model("resnet18", pretrained=False), (8, 3, 224, 224)),
    "vgg11": (lambda: timm.create_model("vgg11", pretrained=False), (8, 3, 224, 224)),
    "smp-unet-resnet18": (lambda: smp.Unet("resnet18", encoder_weights=None), (4, 3, 256, 256)),
}


def step(model: nn.Module, x: torch.Tensor) -> float:
    start = time.perf_counter()
    model(x).float().square().mean().backward()
    elapsed = time.perf_counter() - start
    model.zero_grad(set_to_none=True)
    return elapsed


def bench(name: str, warmup: int, repeats: int) -> dict:
    build, shape = MODELS[name]
    torch.manual_seed(0)
    original = build().train()
    arma = armafy(original)
    x = torch.randn(*shape)
    for _ in range(warmup):
        step(original, x)
        step(arma, x)
    times = {"original": [], "armafied": []}
    for _ in range(repeats):
        times["original"].append(step(original, x))
        times["armafied"].append(step(arma, x))
    orig, ar = statistics.median(times["original"]), statistics.median(times["armafied"])
    return {"model": name, "input": list(shape), "converted": arma.arma_report.converted,
            "original_s": round(orig, 3), "armafied_s": round(ar, 3), "ratio": round(ar / orig, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=positive_int, default=5)
    parser.add_argument("--threads", type=positive_int, default=2)
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for name in args.models:
        try:
            rows.append(bench(name, args.warmup, args.repeats))
        except RuntimeError as err:  # reported in the table, the other models still run
            rows.append({"model": name, "error": f"{type(err).__name__}: {err}".splitlines()[0][:200]})
    header = ("model", "input", "convs converted", "original fwd+bwd s", "armafied s", "ratio")
    lines = [(r["model"], "x".join(map(str, r["input"])), r["converted"], f"{r['original_s']:.3f}",
              f"{r['armafied_s']:.3f}", f"{r['ratio']:.2f}") if "error" not in r
             else (r["model"], "ERROR", r["error"][:100], "", "", "") for r in rows]
    print(f"torch {torch.__version__}, {args.threads} threads, median of {args.repeats}")
    print(format_table(header, lines, markdown=False))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
