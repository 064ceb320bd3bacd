"""for_export and its ONNX round trip on a timm classifier and an SMP Unet with trained AR
coefficients (``alpha ~ N(0, 0.5²)``): preparation time, buffer size, errors against the model.

    python scripts/bench_export.py
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import onnxruntime
import segmentation_models_pytorch as smp
import timm
import torch

from arma_plugin import AutoRegressive2d, FixedSizeAutoRegressive2d, armafy, for_export
from arma_plugin.table import format_table


def train_ar(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, AutoRegressive2d):
                module.alpha.copy_(0.5 * torch.randn(module.alpha.shape, generator=gen))
    return model.eval()


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def measure(model: torch.nn.Module, size: int, onnx_path: str) -> list:
    x = torch.randn(1, 3, size, size)
    start = time.perf_counter()
    exportable = for_export(model, x)
    prepare_s = time.perf_counter() - start
    buffers = sum(b.numel() for m in exportable.modules() if isinstance(m, FixedSizeAutoRegressive2d)
                  for b in m.buffers())
    alphas = sum(m.alpha.numel() for m in model.modules() if isinstance(m, AutoRegressive2d))
    with torch.no_grad():
        expected, prepared = model(x), exportable(x)
    torch.onnx.export(exportable, (x,), onnx_path, dynamo=False)
    session = onnxruntime.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    onnx_out = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
    return [f"{size}x{size}", prepare_s, alphas, buffers, rel_err(prepared, expected), rel_err(onnx_out, expected)]


def main() -> None:
    torch.manual_seed(0)
    models = [("timm resnet18", armafy(timm.create_model("resnet18", num_classes=10)), 224),
              ("SMP Unet resnet18, ar_kernel_size=5",
               armafy(smp.Unet("resnet18", encoder_weights=None, classes=2), ar_kernel_size=5), 256)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, model, size in models:
            rows.append([label, *measure(train_ar(model), size, str(Path(tmp) / "model.onnx"))])
    print(format_table(["model", "input", "for_export s", "alpha numbers", "A, B buffer numbers",
                        "for_export vs model (rel)", "onnxruntime vs model (rel)"], rows, float_format=".2g"))


if __name__ == "__main__":
    main()
