"""armafy every segmentation-models-pytorch architecture with several encoders.

Supported: the 12 SMP architectures (``smp.MODEL_ARCHITECTURES_MAPPING``) x encoders
(default: resnet18, mobilenet_v2, efficientnet-b0, the timm encoder tu-regnetx_002, mit_b0;
DPT needs a ViT encoder and gets tu-vit_tiny_patch16_224 with ``dynamic_img_size``);
``encoder_weights=None``; CPU, float32, eval mode, input ``[1, 3, size, size]``.
A combination SMP itself cannot build is listed as ``n/a`` with SMP's error.

    python scripts/sweep_smp.py                          # table on stdout
    python scripts/sweep_smp.py --encoders resnet18 --json smp.json

Columns as in ``sweep_timm.py``: traced or fallback, convs seen / converted / skipped by reason,
identity error ``max|armafied - original| / max|original|`` (target <= 1e-5), seconds.
"""
from __future__ import annotations

import argparse
import json
import time
from typing import Any

import segmentation_models_pytorch as smp
import torch

from arma_plugin.validation import positive_int
from sweep_timm import armafy_row, sweep_table

DEFAULT_ENCODERS = ("resnet18", "mobilenet_v2", "efficientnet-b0", "tu-regnetx_002", "mit_b0")
VIT_ENCODER = ("tu-vit_tiny_patch16_224", {"dynamic_img_size": True})


def combinations(encoders: list[str]) -> list[tuple[str, str, dict[str, Any]]]:
    out = []
    for arch in smp.MODEL_ARCHITECTURES_MAPPING:
        if arch == "dpt":  # SMP's DPT takes only ViT-style encoders
            out.append((arch, *VIT_ENCODER))
        else:
            out += [(arch, enc, {}) for enc in encoders]
    return out


MIN_SIZE = {"pan": 128}  # PAN's pyramid pooling needs a 4x4 map at stride 32


def sweep_one(arch: str, encoder: str, kwargs: dict[str, Any], size: int) -> dict[str, Any]:
    start = time.perf_counter()
    row: dict[str, Any] = {"arch": arch, "encoder": encoder}
    try:
        model = smp.create_model(arch, encoder_name=encoder, encoder_weights=None, **kwargs).eval()
        size = max(size, MIN_SIZE.get(arch, size))
        x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            ref = model(x)
    except Exception as err:
        row.update(status="n/a", error=f"{type(err).__name__}: {err}".splitlines()[0][:200])
        row["seconds"] = round(time.perf_counter() - start, 1)
        return row
    try:
        row.update(armafy_row(model, x, ref))
    except Exception as err:
        row.update(status="error", error=f"{type(err).__name__}: {err}".splitlines()[0][:300])
    row["seconds"] = round(time.perf_counter() - start, 1)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoders", nargs="*", default=list(DEFAULT_ENCODERS))
    parser.add_argument("--size", type=positive_int, default=64, help="input side (a multiple of 32)")
    parser.add_argument("--threads", type=positive_int, default=1)
    parser.add_argument("--tol", type=float, default=1e-5, help="identity-error target")
    parser.add_argument("--json", help="write all rows here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = [sweep_one(arch, enc, kw, args.size) for arch, enc, kw in combinations(args.encoders)]
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    print(sweep_table(rows, ("arch", "encoder")))
    ok = [r for r in rows if r["status"] == "ok"]
    archs_ok = {r["arch"] for r in ok if r["identity_error"] <= args.tol}
    print(f"{len(rows)} combinations: {len(ok)} converted, {sum(r['status'] == 'error' for r in rows)} armafy errors, "
          f"{sum(r['status'] == 'n/a' for r in rows)} not buildable by SMP; "
          f"identity error <= {args.tol:g}: {sum(r['identity_error'] <= args.tol for r in ok)}/{len(ok)}; "
          f"architectures converted exactly: {len(archs_ok)}/{len(smp.MODEL_ARCHITECTURES_MAPPING)}")


if __name__ == "__main__":
    main()
