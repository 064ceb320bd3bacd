"""One-shot GPU check of the AR layer, within a time budget (default 300 s: one call < 6 min).

Prints, in this order (``--json PATH`` also writes every number):

1. device name, torch / triton / CUDA versions;
2. correctness on the device of every backend that runs there (``torch``, ``triton``) against
   the dense float64 reference on CPU: values, dX, dalpha; both boundaries, Q = 1, 2, 3,
   dilation 1, 2, maps from 1×1 to larger than a Triton block; float64, float32 and bfloat16;
   then channels_last + bf16 autocast, ``torch.compile(fullgraph=True)`` and CUDA graphs;
3. the triton kernel variants (lines per program × warps × software-pipeline stages) at
   8×64×128², fwd+bwd, each checked against the default's numbers: the fastest is used for
   the rest of the run;
4. the layer table: fwd+bwd median, conv3x3 vs AR per backend vs the released algorithm vs
   ``x.clone()``, B×C×H×W = 8×64×128², 8×64×256², 32×128×64², 16×256×32², Q = 1, 2, fp32 and
   bf16 (input from autocast), both boundaries, memory saved for backward;
5. the model table: train step (fwd+bwd+SGD) median, original vs armafied circular vs zeros,
   timm resnet18 64×3×224², vgg11 32×3×224², convnext_tiny 32×3×224², SMP Unet-resnet34
   16×3×256², fp32 and bf16 autocast, ``pretrained=False``, ``cudnn.benchmark`` on.

Rows that would pass the budget are skipped with a printed note. Run from the repository root::

    PYTHONPATH=. python scripts/gpu_check.py --json gpu_check.json     # on a GPU
    PYTHONPATH=. python scripts/gpu_check.py --smoke                   # CPU, tiny shapes, seconds

``--smoke`` runs every section on CPU with tiny shapes and Triton's interpreter, so a typo
cannot waste the GPU run (tests/test_ar_solve_triton.py runs it); its triton timings would
time the interpreter, so triton is checked for correctness there but not timed. Its layer
row (2×16×32², median of 3) is a CPU ratio check of the other backends against the conv. Without
timm/SMP/Hub packages on the GPU host, the layer sections still run (the model table says
why it is skipped).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
import traceback
import types
from pathlib import Path
from typing import Callable

if __name__ == "__main__" and "--smoke" in sys.argv:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # read when triton decorates kernels, i.e. at import

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

try:
    import arma_plugin  # noqa: F401,E402
except ImportError:  # no timm/SMP/Hub packages here: load the layers without the package's __init__
    _pkg = types.ModuleType("arma_plugin")
    _pkg.__path__ = [str(Path(__file__).resolve().parents[1] / "arma_plugin")]
    sys.modules["arma_plugin"] = _pkg

from arma_plugin.benchmark import saved_bytes  # noqa: E402
from arma_plugin.layers.ar_solve_op import numba_available, triton_runs_on  # noqa: E402
from arma_plugin.layers.ar_taps import ar_taps  # noqa: E402
from arma_plugin.layers.autoregressive import autoregressive2d  # noqa: E402
from arma_plugin.reference import ar_solve_reference, released_autoregressive2d  # noqa: E402
from arma_plugin.table import format_table  # noqa: E402

BOUNDARIES = ("circular", "zeros")


class Budget:
    """Wall-clock budget of the run; sections ask before each row, keeping a reserve for the
    sections after them (of the default 300 s: correctness cases until 60 s, then the compile
    and CUDA-graph checks; variants until 120 s; layer rows until 210 s; model rows until 265 s,
    one model row taking up to ~30 s)."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds
        self.skipped: list[str] = []

    def allows(self, section: str, what: str, reserve_s: float) -> bool:
        if time.monotonic() + reserve_s <= self.end:
            return True
        note = f"{section}: budget spent, skipped {what} and the rest of this section"
        print(f"  [{note}]")
        self.skipped.append(note)
        return False


class Setup:
    """Sizes per mode: the real run on a GPU, or tiny shapes on CPU (``--smoke``)."""

    def __init__(self, smoke: bool) -> None:
        self.smoke = smoke
        self.device = torch.device("cpu" if smoke else "cuda")
        runs_here = {"triton": triton_runs_on(self.device), "numba": smoke and numba_available(), "torch": True}
        self.backends = [b for b in ("triton", "numba", "torch") if runs_here[b]]  # the fastest first
        self.timed_backends = [b for b in self.backends if not (smoke and b == "triton")]
        self.check_qs = (1, 2) if smoke else (1, 2, 3)
        self.check_dilations = (2,) if smoke else (1, 2)
        self.check_sizes = ((3, 5),) if smoke else ((1, 1), (2, 7), (5, 3), (33, 64), (130, 67))
        self.check_batch, self.check_channels = (1, 2) if smoke else (2, 3)
        self.layout_shape = (1, 2, 4, 5) if smoke else (2, 8, 12, 10)
        # (lines per program, warps, pipeline stages)
        self.variants = [(4, 1, 1), (8, 1, 2)] if smoke else [(16, 1, 1), (32, 1, 1), (64, 1, 1), (64, 2, 1),
                                                             (128, 4, 1), (32, 1, 3), (64, 2, 3), (128, 4, 3)]
        self.variant_shape = (1, 1, 3, 4) if smoke else (8, 64, 128, 128)
        self.layer_shapes = ((2, 16, 32, 32),) if smoke else ((8, 64, 128, 128), (8, 64, 256, 256),
                                                          (32, 128, 64, 64), (16, 256, 32, 32))
        self.layer_qs = (1,) if smoke else (1, 2)
        self.repeats = 3 if smoke else 20
        self.warmup = 1 if smoke else 2
        self.models = (("resnet18", (2, 3, 16, 16)),) if smoke else (
            ("resnet18", (64, 3, 224, 224)), ("vgg11", (32, 3, 224, 224)),
            ("convnext_tiny", (32, 3, 224, 224)), ("smp-unet-resnet34", (16, 3, 256, 256)))
        self.model_repeats = 1 if smoke else 10
        self.dtypes = ("fp32",) if smoke else ("fp32", "bf16")

    @staticmethod
    def check_dtypes(backend: str, q: int) -> list[torch.dtype]:
        """float32 everywhere; float64 (exactness) at Q = 2 and bfloat16 (triton only) at Q = 1:
        each triton dtype × Q × boundary is a compilation of its own (about a second each)."""
        return ([torch.float32] + ([torch.float64] if q == 2 else [])
                + ([torch.bfloat16] if q == 1 and backend == "triton" else []))

    def autocast(self, dtype: str):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=dtype == "bf16")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(step: Callable[[], object], device: torch.device, repeats: int, warmup: int) -> float:
    """Median wall time of ``step()`` in ms, synchronised (CUDA events on a GPU)."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        _sync(device)
        if device.type == "cuda":
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            stop.record()
            stop.synchronize()
            times.append(start.elapsed_time(stop))
        else:
            t0 = time.perf_counter()
            step()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def fwd_bwd(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, grad: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        x.grad = None
        fn(x).backward(grad)
    return step


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().cpu().double(), b.detach().cpu().double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


# Relative error bounds: c·eps·cond with alpha ~ N(0, 1) (cond ≲ 1e3 at these sizes); bf16
# is one rounding of input and output (2^-8) times the same growth.
TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-3, torch.bfloat16: 5e-2}


def _correctness_cases(setup: Setup):
    for boundary in BOUNDARIES:
        for q in setup.check_qs:
            for dilation in setup.check_dilations:
                for size in setup.check_sizes:
                    yield boundary, q, dilation, size


def check_correctness(setup: Setup, budget: Budget, results: dict) -> bool:
    print("\n## Correctness on", setup.device, "vs the dense float64 reference (max relative error)")
    ok = True
    rows = []
    for boundary, q, dilation, (h, w) in _correctness_cases(setup):
        if not budget.allows("correctness", f"{boundary} Q={q} d={dilation} {h}x{w}", 240):
            break
        gen = torch.Generator().manual_seed(100 * q + 10 * dilation + h)
        b, c = setup.check_batch, setup.check_channels
        alpha = torch.randn(c, q, 4, generator=gen, dtype=torch.float64)
        x = torch.randn(b, c, h, w, generator=gen, dtype=torch.float64)
        g = torch.randn(b, c, h, w, generator=gen, dtype=torch.float64)
        xr, ar = x.clone().requires_grad_(), alpha.clone().requires_grad_()
        yr = ar_solve_reference(xr, ar_taps(ar), boundary, dilation)
        gxr, gar = torch.autograd.grad(yr, (xr, ar), g, allow_unused=True)
        gar = torch.zeros_like(alpha) if gar is None else gar
        for backend in setup.backends:
            for dtype in setup.check_dtypes(backend, q):
                xd = x.to(setup.device, dtype).requires_grad_()
                ad = alpha.to(setup.device).requires_grad_()
                y = autoregressive2d(xd, ad, boundary, dilation=dilation, backend=backend)
                gx, ga = torch.autograd.grad(y, (xd, ad), g.to(setup.device, dtype))
                errs = (_rel(y, yr), _rel(gx, gxr),
                        float((ga.cpu().double() - gar).abs().max() / gar.abs().max().clamp_min(1.0)))
                good = max(errs) < TOLERANCE[dtype]
                ok &= good
                rows.append([backend, boundary, q, dilation, f"{h}x{w}", str(dtype).replace("torch.", ""),
                             *errs, "ok" if good else "FAIL"])
    header = ["backend", "boundary", "Q", "d", "HxW", "dtype", "y", "dx", "dalpha", ""]
    worst = {}
    for row in rows:  # one line per (backend, dtype): the worst case; every failing case in full
        key = (row[0], row[5])
        if key not in worst or max(row[6:9]) > max(worst[key][6:9]):
            worst[key] = row
    print(format_table(header, list(worst.values()), float_format=".1e"))
    failing = [r for r in rows if r[-1] == "FAIL"]
    if failing:
        print("failing cases:\n" + format_table(header, failing, float_format=".1e"))
    results["correctness"] = [dict(zip(header[:-1] + ["status"], r)) for r in rows]
    return ok


def check_layout_compile_graphs(setup: Setup, budget: Budget, results: dict) -> bool:
    """channels_last + bf16 autocast keeps layout and dtype; compiled and graphed layers agree."""
    from arma_plugin.layers.autoregressive import AutoRegressive2d

    checks = {}
    dev = setup.device
    channels = setup.layout_shape[1]
    for backend in setup.backends:
        layer = AutoRegressive2d(channels, ar_kernel_size=5, boundary="zeros").to(dev)
        with torch.no_grad():
            layer.alpha.normal_()
        conv = nn.Conv2d(channels, channels, 3, padding=1).to(dev)
        x = torch.randn(*setup.layout_shape, device=dev).to(memory_format=torch.channels_last)
        with setup.autocast("bf16"):
            t = conv(x)
            y = autoregressive2d(t, layer.alpha, "zeros", backend=backend)
        y32 = autoregressive2d(t.float(), layer.alpha, "zeros", backend=backend)
        checks[f"{backend} channels_last bf16 autocast"] = bool(
            y.dtype == torch.bfloat16 and y.is_contiguous(memory_format=torch.channels_last) and _rel(y, y32) < 2e-2)
    if "triton" in setup.backends:
        previous = os.environ.get("ARMA_PLUGIN_BACKEND")
        os.environ["ARMA_PLUGIN_BACKEND"] = "triton"  # torch.compile and CUDA graphs see the layer's own call
        try:
            layer = AutoRegressive2d(channels, ar_kernel_size=5, boundary="circular").to(dev)
            with torch.no_grad():
                layer.alpha.normal_()
            x = torch.randn(*setup.layout_shape, device=dev, requires_grad=True)
            compiled = torch.compile(layer, backend="aot_eager" if setup.smoke else "inductor", fullgraph=True)
            y = compiled(x)
            y.sum().backward()
            checks["triton torch.compile(fullgraph)"] = bool(torch.allclose(y, layer(x), rtol=1e-5, atol=1e-6))
            if dev.type == "cuda":
                graphed = torch.cuda.make_graphed_callables(copy.deepcopy(layer), (x,))
                x.grad = None
                y_graph = graphed(x)
                y_graph.square().sum().backward()
                grad_graph, x.grad = x.grad, None
                y_eager = layer(x)
                y_eager.square().sum().backward()
                checks["triton CUDA graph fwd+bwd"] = bool(torch.allclose(y_graph, y_eager, rtol=1e-5, atol=1e-6)
                                                          and torch.allclose(grad_graph, x.grad, rtol=1e-4, atol=1e-5))
        finally:
            if previous is None:
                del os.environ["ARMA_PLUGIN_BACKEND"]
            else:
                os.environ["ARMA_PLUGIN_BACKEND"] = previous
    for name, good in checks.items():
        print(f"{name}: {'ok' if good else 'FAIL'}")
    results["checks"] = checks
    return all(checks.values())


def pick_variant(setup: Setup, budget: Budget, results: dict) -> bool:
    """Time the triton variants; each must give the default variant's numbers (same arithmetic
    per line: equal up to the order of the tap-gradient sums), else it is excluded."""
    if "triton" not in setup.backends:
        print("\n## Triton variants: skipped, the triton backend does not run here")
        return True
    from arma_plugin.layers import ar_solve_triton

    knobs = ("BLOCK_LINES", "NUM_WARPS", "PIPELINE_STAGES")
    print("\n## Triton variants, fwd+bwd ms at B×C×H×W =", "×".join(map(str, setup.variant_shape)),
          "Q=1 fp32 circular" + (" (smoke: interpreter times, meaningless)" if setup.smoke else ""))
    x = torch.randn(*setup.variant_shape, device=setup.device, requires_grad=True)
    grad = torch.randn_like(x)
    alpha = (0.5 * torch.randn(setup.variant_shape[1], 1, 4, device=setup.device)).requires_grad_()

    def layer(t: torch.Tensor) -> torch.Tensor:
        return autoregressive2d(t, alpha, "circular", backend="triton")

    def outputs() -> list[torch.Tensor]:
        x.grad = alpha.grad = None
        y = layer(x)
        y.backward(grad)
        return [y.detach().clone(), x.grad.clone(), alpha.grad.clone()]

    default = outputs()
    rows = []
    for variant in setup.variants:
        if not budget.allows("variants", f"variant {variant}", 180):
            break
        for knob, value in zip(knobs, variant):
            setattr(ar_solve_triton, knob, value)
        same = max(_rel(a, b) for a, b in zip(outputs(), default)) < 1e-6
        rows.append([*variant, median_ms(fwd_bwd(layer, x, grad), setup.device, setup.repeats, setup.warmup),
                     "ok" if same else "MISMATCH (excluded)"])
    good = [r for r in rows if r[-1] == "ok"]
    best = min(good, key=lambda r: r[3]) if good else [64, 2, 1]
    for knob, value in zip(knobs, best):
        setattr(ar_solve_triton, knob, value)
    # circular only: zeros runs the same sweeps (a compilation per variant and boundary costs ~1 s)
    print(format_table(["lines/program", "warps", "pipeline stages", "ms", "vs default"], rows, float_format=".3f"))
    print(f"fastest: BLOCK_LINES={best[0]} NUM_WARPS={best[1]} PIPELINE_STAGES={best[2]} (used below)")
    results["variants"] = [dict(zip(["block_lines", "num_warps", "pipeline_stages", "ms", "status"], r)) for r in rows]
    results["variant_used"] = dict(zip(knobs, best[:3]))
    return len(good) == len(rows)


def layer_table(setup: Setup, budget: Budget, results: dict) -> None:
    print(f"\n## Layer, fwd+bwd median of {setup.repeats}, ms (bf16: input in bf16 as from autocast)")
    dev = setup.device
    rows = []
    for shape in setup.layer_shapes:
        b, c, h, w = shape
        conv = nn.Conv2d(c, c, 3, padding=1, device=dev)
        for dtype in setup.dtypes:
            x = torch.randn(*shape, device=dev, dtype=torch.bfloat16 if dtype == "bf16" else torch.float32,
                            requires_grad=True)
            grad = torch.randn_like(x)
            with setup.autocast(dtype):
                conv_ms = median_ms(fwd_bwd(conv, x, grad), dev, setup.repeats, setup.warmup)
            clone_ms = median_ms(fwd_bwd(torch.clone, x, grad), dev, setup.repeats, setup.warmup)
            for q in setup.layer_qs:
                alpha = (0.5 * torch.randn(c, q, 4, device=dev)).requires_grad_()
                for boundary in BOUNDARIES:
                    if not budget.allows("layer table", f"{shape} {dtype} Q={q} {boundary}", 90):
                        _print_layer_rows(setup, rows, results)
                        return
                    row = {"shape": "×".join(map(str, shape)), "dtype": dtype, "Q": q, "boundary": boundary,
                           "conv_ms": conv_ms, "clone_ms": clone_ms}
                    for backend in setup.timed_backends:
                        def layer(t: torch.Tensor, backend: str = backend) -> torch.Tensor:
                            return autoregressive2d(t, alpha, boundary, backend=backend)
                        row[f"{backend}_ms"] = median_ms(fwd_bwd(layer, x, grad), dev, setup.repeats, setup.warmup)
                        row[f"{backend}_saved_x"] = saved_bytes(layer, x) / (x.numel() * x.element_size())
                    if boundary == "circular" and dtype == "fp32":  # the released FFT code has no bf16 path
                        row["released_ms"] = median_ms(fwd_bwd(lambda t: released_autoregressive2d(t, alpha), x, grad),
                                                       dev, setup.repeats, setup.warmup)
                    rows.append(row)
    _print_layer_rows(setup, rows, results)


def _print_layer_rows(setup: Setup, rows: list[dict], results: dict) -> None:
    backends = setup.timed_backends
    lead = backends[0]
    header = (["B×C×H×W", "dtype", "Q", "boundary", "conv", "clone"] + [f"AR[{b}]" for b in backends]
              + ["released", f"AR[{lead}]/conv", f"released/AR[{lead}]", f"saved AR[{lead}] (×x)"])
    table = [[r["shape"], r["dtype"], r["Q"], r["boundary"], r["conv_ms"], r["clone_ms"]]
             + [r[f"{b}_ms"] for b in backends]
             + [r.get("released_ms"), r[f"{lead}_ms"] / r["conv_ms"],
                r["released_ms"] / r[f"{lead}_ms"] if "released_ms" in r else None, r[f"{lead}_saved_x"]]
             for r in rows]
    print(format_table(header, table, float_format=".3g"))
    results["layer"] = rows


def _model_factories() -> dict[str, Callable[[], nn.Module]]:
    import segmentation_models_pytorch as smp
    import timm

    return {"resnet18": lambda: timm.create_model("resnet18", pretrained=False),
            "vgg11": lambda: timm.create_model("vgg11", pretrained=False),
            "convnext_tiny": lambda: timm.create_model("convnext_tiny", pretrained=False),
            "smp-unet-resnet34": lambda: smp.Unet("resnet34", encoder_weights=None)}


def model_table(setup: Setup, budget: Budget, results: dict) -> None:
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


def _model_row(setup: Setup, factory: Callable[[], nn.Module], armafy: Callable, name: str,
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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="CPU, tiny shapes, Triton interpreter (a dry run)")
    p.add_argument("--budget-s", type=float, default=300.0,
                   help="wall-clock budget after the imports, seconds (a started row may overrun it by ~30 s)")
    p.add_argument("--json", type=Path, help="also write every number to this JSON file")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.smoke and not torch.cuda.is_available():
        print("no CUDA device (use --smoke for a CPU dry run)")
        return 1
    budget = Budget(args.budget_s)
    setup = Setup(args.smoke)
    import triton

    device_name = torch.cuda.get_device_name(setup.device) if setup.device.type == "cuda" else "CPU (smoke)"
    versions = {"device": device_name, "torch": torch.__version__, "triton": triton.__version__,
                "cuda": torch.version.cuda, "backends": setup.backends}
    print(" ".join(f"{k}={v}" for k, v in versions.items()))
    results: dict = {"versions": versions, "errors": []}
    ok = True
    for section in (check_correctness, check_layout_compile_graphs, pick_variant, layer_table, model_table):
        try:
            ok &= section(setup, budget, results) is not False  # the tables return None
        except Exception:  # one broken section must not cost the rest of a one-shot GPU run
            traceback.print_exc()
            results["errors"].append(f"{section.__name__}: {traceback.format_exc(limit=-1).strip()}")
            ok = False
    results["skipped"] = budget.skipped
    results["all_checks_ok"] = ok
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    print("\nALL CHECKS OK" if ok else "\nSOME CHECKS FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
