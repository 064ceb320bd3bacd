"""One-shot GPU check of the AR layer, within a time budget (default 420 s: one call < 8 min).

Prints, in this order (``--json PATH`` also writes every number, rewritten after each section
so that a killed run keeps what it measured):

1. device name, torch / triton / CUDA versions;
2. correctness on the device of every backend that runs there (``torch``, ``triton``) against
   the dense float64 reference on CPU: values, dX, dalpha; Q = 1, 2, 3, dilation 1, 2, maps
   from 1×1 to 130×67 (the two-pass plan), 3×2048 and 2×4100 (lines in chunks), the two
   boundaries interleaved case by case; float64, float32 and bfloat16; then channels_last +
   bf16 autocast,
   ``torch.compile(fullgraph=True)`` and CUDA graphs (each behind the budget guard);
3. the triton plan variants (fused-tile limit × walked-plane limit × elements per pass × line
   length before chunks × warps), the most promising first, at 8×64×128², fwd+bwd, each
   checked against the default's numbers;
4. a per-kernel profile (``torch.profiler``) of one triton layer fwd+bwd at 8×64×128²;
5. the layer table: fwd+bwd median, conv3x3 vs AR per backend vs the released algorithm vs
   ``x.clone()``, B×C×H×W = 8×64×128² (NCHW and channels_last), 8×64×256², 32×128×64²,
   16×256×32², Q = 1, 2, fp32 and
   bf16 (input from autocast), both boundaries, memory saved for backward;
6. the model table: train step (fwd+bwd+SGD) median, original vs armafied circular vs zeros,
   timm resnet18 64×3×224², vgg11 32×3×224², convnext_tiny 32×3×224², SMP Unet-resnet34
   16×3×256², fp32 and bf16 autocast, ``pretrained=False``, ``cudnn.benchmark`` on.

Rows that would pass the budget are skipped with a printed note. Run from the repository root::

    PYTHONPATH=. python scripts/gpu_check.py --json gpu_check.json     # on a GPU
    PYTHONPATH=. python scripts/gpu_check.py --smoke                   # CPU, tiny shapes

``--smoke`` runs every section on CPU with tiny shapes and Triton's interpreter, so a typo
cannot waste the GPU run; its triton timings would time the interpreter, so triton is checked
for correctness there but not timed. Without timm/SMP/Hub packages on the GPU host, the layer
sections still run (the model table says why it is skipped).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import traceback
import types
from pathlib import Path

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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_check_models import model_table  # noqa: E402
from gpu_timing import Budget, fwd_bwd, median_ms, rel_err, sync  # noqa: E402

BOUNDARIES = ("circular", "zeros")


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
        self.check_sizes = ((3, 5),) if smoke else ((1, 1), (2, 7), (5, 3), (33, 64), (130, 67), (3, 2048),
                                                    (2, 4100))
        self.check_batch, self.check_channels = (1, 2) if smoke else (2, 3)
        self.layout_shape = (1, 2, 4, 5) if smoke else (2, 8, 12, 10)
        # (largest tile solved by one program, largest plane walked by one program, elements
        # per program of a pass, longest line (positions) held whole, warps; None: default)
        # the default (a walk at 128²) first, then two passes (no walk), then the one-program
        # plane that spills (16 384 elements)
        self.variants = [(4096, 16384, 4096, 1024, None), (8, 0, 4, 2, None), (8, 1 << 20, 4, 1024, None)] if smoke \
            else [(4096, 16384, 4096, 1024, None), (4096, 0, 4096, 1024, None), (16384, 16384, 4096, 1024, None),
                  (16384, 16384, 4096, 1024, 32), (4096, 0, 2048, 1024, None), (4096, 0, 8192, 1024, 16),
                  (4096, 0, 4096, 64, None)]
        self.variant_shape = (1, 1, 3, 4) if smoke else (8, 64, 128, 128)
        # (B, C, H, W, memory format)
        self.layer_shapes = ((2, 16, 32, 32, "channels_last"),) if smoke else (
            (8, 64, 128, 128, "nchw"), (8, 64, 128, 128, "channels_last"), (8, 64, 256, 256, "nchw"),
            (32, 128, 64, 64, "nchw"), (16, 256, 32, 32, "nchw"))
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


# Relative error bounds: c·eps·cond with alpha ~ N(0, 1) (cond ≲ 1e3 at these sizes); bf16
# is one rounding of input and output (2^-8) times the same growth.
TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-3, torch.bfloat16: 5e-2}


def _correctness_cases(setup: Setup):
    """The two boundaries alternate, so that a budget cut leaves both checked alike."""
    for q in setup.check_qs:
        for dilation in setup.check_dilations:
            for size in setup.check_sizes:
                for boundary in BOUNDARIES:
                    yield boundary, q, dilation, size


def check_correctness(setup: Setup, budget: Budget, results: dict) -> bool:
    print("\n## Correctness on", setup.device, "vs the dense float64 reference (max relative error)")
    ok = True
    rows = []
    for boundary, q, dilation, (h, w) in _correctness_cases(setup):
        if not budget.allows("correctness", f"{boundary} Q={q} d={dilation} {h}x{w}", 330):
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
                errs = (rel_err(y, yr), rel_err(gx, gxr),
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
            y.dtype == torch.bfloat16 and y.is_contiguous(memory_format=torch.channels_last) and rel_err(y, y32) < 2e-2)
    if "triton" in setup.backends and budget.allows("checks", "torch.compile and CUDA graphs", 300):
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
            if dev.type == "cuda" and budget.allows("checks", "CUDA graphs", 290):
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
    """Time the triton plan variants (fwd+bwd through the backend's functions); each must give
    the default's numbers (equal up to the order of the tap-gradient sums), else it is excluded.
    The layer table below uses the defaults: a faster variant is a change to make by hand."""
    if "triton" not in setup.backends:
        print("\n## Triton variants: skipped, the triton backend does not run here")
        return True
    from arma_plugin.layers.ar_solve_triton import Tiling, triton_ar_solve, triton_ar_solve_backward

    print("\n## Triton variants, fwd+bwd ms at B×C×H×W =", "×".join(map(str, setup.variant_shape)),
          "Q=1 fp32 circular" + (" (smoke: interpreter times, meaningless)" if setup.smoke else ""))
    x = torch.randn(*setup.variant_shape, device=setup.device)
    grad = torch.randn_like(x)
    alpha = 0.5 * torch.randn(setup.variant_shape[1], 1, 4, device=setup.device)

    def run(fused: int, walk: int, per_pass: int, line: int, warps: int | None) -> list[torch.Tensor]:
        tiling = Tiling(fused_elements=fused, walk_elements=walk, pass_elements=per_pass, line_positions=line,
                        chunk_elements=min(line, Tiling().chunk_elements), num_warps=warps)
        y, state = triton_ar_solve(x, alpha, "circular", True, 1, tiling)
        return [y, *triton_ar_solve_backward(grad, x if state is None else None, alpha, "circular", True, 1, state,
                                             tiling)]

    default = run(*setup.variants[0])
    rows = []
    for variant in setup.variants:
        if not budget.allows("variants", f"variant {variant}", 250):
            break
        same = max(rel_err(a, b) for a, b in zip(run(*variant), default)) < 1e-6
        ms = median_ms(lambda: run(*variant), setup.device, setup.repeats, setup.warmup)
        rows.append([*variant, ms, "ok" if same else "MISMATCH (excluded)"])
    print(format_table(["fused elements", "walk elements", "pass elements", "line positions", "warps", "ms",
                        "vs default"], rows, float_format=".3f"))
    header = ["fused_elements", "walk_elements", "pass_elements", "line_positions", "num_warps", "ms", "status"]
    results["variants"] = [dict(zip(header, r)) for r in rows]
    return all(r[-1] == "ok" for r in rows)


def kernel_profile(setup: Setup, budget: Budget, results: dict) -> None:
    """Per-kernel time of one layer fwd+bwd (the default backend for the device)."""
    if not budget.allows("profile", "the per-kernel profile", 240):
        return
    from torch.profiler import ProfilerActivity, profile

    shape = setup.variant_shape
    x = torch.randn(*shape, device=setup.device, requires_grad=True)
    grad = torch.randn_like(x)
    alpha = (0.5 * torch.randn(shape[1], 1, 4, device=setup.device)).requires_grad_()
    step = fwd_bwd(lambda t: autoregressive2d(t, alpha, "circular"), x, grad)
    step()
    sync(setup.device)
    cuda = setup.device.type == "cuda"
    with profile(activities=[ProfilerActivity.CUDA] if cuda else [ProfilerActivity.CPU]) as prof:
        step()
        sync(setup.device)
    events = [e for e in prof.key_averages() if (e.device_time_total if cuda else e.self_cpu_time_total) > 0]
    rows = sorted(([e.key[:70], e.count, (e.device_time_total if cuda else e.self_cpu_time_total) / 1e3]
                   for e in events), key=lambda r: -r[2])[:15]
    print(f"\n## Kernels of one AR layer fwd+bwd at {'×'.join(map(str, shape))}, Q=1 circular "
          f"({'device' if cuda else 'CPU self'} time, ms)")
    print(format_table(["kernel", "calls", "ms"], rows, float_format=".4f"))
    results["profile"] = [dict(zip(["kernel", "calls", "ms"], r)) for r in rows]


def layer_table(setup: Setup, budget: Budget, results: dict) -> None:
    print(f"\n## Layer, fwd+bwd median of {setup.repeats}, ms (bf16: input in bf16 as from autocast)")
    dev = setup.device
    rows = []
    for *shape, layout in setup.layer_shapes:
        b, c, h, w = shape
        memory_format = torch.channels_last if layout == "channels_last" else torch.contiguous_format
        conv = nn.Conv2d(c, c, 3, padding=1, device=dev).to(memory_format=memory_format)
        for dtype in setup.dtypes:
            x = torch.randn(*shape, device=dev, dtype=torch.bfloat16 if dtype == "bf16" else torch.float32)
            x = x.contiguous(memory_format=memory_format).requires_grad_()
            grad = torch.randn_like(x)
            with setup.autocast(dtype):
                conv_ms = median_ms(fwd_bwd(conv, x, grad), dev, setup.repeats, setup.warmup)
            clone_ms = median_ms(fwd_bwd(torch.clone, x, grad), dev, setup.repeats, setup.warmup)
            for q in setup.layer_qs:
                alpha = (0.5 * torch.randn(c, q, 4, device=dev)).requires_grad_()
                for boundary in BOUNDARIES:
                    if not budget.allows("layer table", f"{shape} {dtype} Q={q} {boundary}", 150):
                        _print_layer_rows(setup, rows, results)
                        return
                    row = {"shape": "×".join(map(str, shape)), "layout": layout, "dtype": dtype, "Q": q, "boundary": boundary,
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
    header = (["B×C×H×W", "layout", "dtype", "Q", "boundary", "conv", "clone"] + [f"AR[{b}]" for b in backends]
              + ["released", f"AR[{lead}]/conv", f"released/AR[{lead}]", f"saved AR[{lead}] (×x)"])
    table = [[r["shape"], r["layout"], r["dtype"], r["Q"], r["boundary"], r["conv_ms"], r["clone_ms"]]
             + [r[f"{b}_ms"] for b in backends]
             + [r.get("released_ms"), r[f"{lead}_ms"] / r["conv_ms"],
                r["released_ms"] / r[f"{lead}_ms"] if "released_ms" in r else None, r[f"{lead}_saved_x"]]
             for r in rows]
    print(format_table(header, table, float_format=".3g"))
    results["layer"] = rows


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="CPU, tiny shapes, Triton interpreter (a dry run)")
    p.add_argument("--budget-s", type=float, default=420.0,
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
    for section in (check_correctness, check_layout_compile_graphs, pick_variant, kernel_profile, layer_table,
                    model_table):
        try:
            ok &= section(setup, budget, results) is not False  # the tables return None
        except Exception:  # one broken section must not cost the rest of a one-shot GPU run
            traceback.print_exc()
            results["errors"].append(f"{section.__name__}: {traceback.format_exc(limit=-1).strip()}")
            ok = False
        results["skipped"] = budget.skipped
        results["all_checks_ok"] = ok
        if args.json:  # after every section: a killed run keeps what it measured
            args.json.write_text(json.dumps(results, indent=2, default=str))
    print("\nALL CHECKS OK" if ok else "\nSOME CHECKS FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
