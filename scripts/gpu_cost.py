"""GPU cost of one AR layer's forward + backward, counted on CPU under Triton's interpreter.

Triton's interpreter runs each kernel's programs one by one in numpy: its grid executor
gives the launches and grids, its builder's masked loads and stores give every global
memory request as a numpy array of byte addresses (one per lane) and its mask. A
``TorchDispatchMode`` counts the torch ops between the kernels. From these:

- launches: Triton kernels plus torch ops that launch a kernel (views and allocations excluded);
- traffic in T: the unique bytes each launch loads plus those it stores, summed over launches,
  over ``T`` = one float32 copy of ``x`` (a torch op: its tensors' bytes);
- sector efficiency: bytes requested ÷ (32-byte sectors touched × 32), per warp of 32 lanes
  along the request's contiguous tile axis (the lane order Triton's coalescing gives), over
  every Triton load and store with at least 32 active lanes, weighted by bytes;
- load/store instructions per program: the largest count of load and store calls any one
  program makes (a tile load is one call, whatever its size).

``--kernels old`` measures the sequential-sweep kernels and the torch-op taps that preceded the
tile scans, loaded from git history (``OLD_REVISION``) into a temporary module.

    python scripts/gpu_cost.py --shape 1 2 128 128 --dtype float32 bfloat16 --layout nchw channels_last
"""
from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import os
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
    raise RuntimeError("gpu_cost needs TRITON_INTERPRET=1 set before triton is imported")
os.environ["TRITON_INTERPRET"] = "1"

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch._library.custom_ops import OPDEFS  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from triton.runtime import interpreter  # noqa: E402

from arma_plugin.layers import ar_taps, autoregressive2d  # noqa: E402
from arma_plugin.layers import ar_solve_op  # noqa: E402,F401  (registers torch.ops.arma_plugin.*)

ROOT = Path(__file__).resolve().parents[1]
OLD_REVISION = "19fba60"  # the last revision with the sequential-sweep kernels
SECTOR = 32
WARP = 32
_ALLOCATIONS = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided"}


class _Launch:
    def __init__(self, name: str) -> None:
        self.name = name
        self.loaded: list[np.ndarray] = []
        self.stored: list[np.ndarray] = []
        self.requests: dict[tuple, int] = defaultdict(int)
        self.torch_bytes = 0

    def traffic(self) -> int:
        if self.torch_bytes:
            return self.torch_bytes
        return sum(np.unique(np.concatenate(a)).size if a else 0 for a in (self.loaded, self.stored))


def _warp_order(addresses: np.ndarray) -> tuple[int, ...]:
    """Tile axes, fastest last: the axis along which neighbouring lanes are closest in memory
    goes last (Triton's coalescing puts consecutive lanes along the contiguous axis)."""
    def spacing(axis: int) -> float:
        if addresses.shape[axis] < 2:
            return float("inf")
        step = np.abs(np.diff(addresses.astype(np.int64), axis=axis))
        return float(np.median(step))
    return tuple(sorted(range(addresses.ndim), key=spacing, reverse=True))


def _sectors_per_warp(addresses: np.ndarray, active: np.ndarray) -> int:
    order = _warp_order(addresses)
    lanes = np.transpose(addresses, order).reshape(-1)
    on = np.transpose(active, order).reshape(-1)
    pad = (-lanes.size) % WARP
    sectors = np.where(on, lanes // SECTOR, -1).astype(np.int64)
    sectors = np.sort(np.pad(sectors, (0, pad), constant_values=-1).reshape(-1, WARP), axis=1)
    new = np.diff(sectors, axis=1, prepend=-1) != 0
    return int((new & (sectors >= 0)).sum())


class CostCounter(TorchDispatchMode):
    """Counts launches, traffic, sector use and per-program loads/stores while active."""

    def __init__(self) -> None:
        super().__init__()
        self.launches: list[_Launch] = []
        self.requested = 0
        self.sector_bytes = 0
        self._kernel: _Launch | None = None
        self._depth = 0  # the mode is re-entered around custom ops; Triton is patched once

    # torch ops
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self._kernel is not None:  # the interpreter's own host copies around a launch
            return func(*args, **kwargs)
        if func.namespace == "arma_plugin":  # a custom op: count what its implementation runs
            with self:
                return OPDEFS[func._schema.name]._init_fn(*args, **kwargs)
        out = func(*args, **kwargs)
        if func.is_view or func._schema.name.split("::")[-1] in _ALLOCATIONS:
            return out
        tensors = {id(t.untyped_storage()): t for t in _tensors((args, kwargs, out))}
        launch = _Launch(f"torch:{func._schema.name.split('::')[-1]}")
        launch.torch_bytes = sum(t.numel() * t.element_size() for t in tensors.values())
        self.launches.append(launch)
        return out

    # Triton's interpreter
    def __enter__(self):
        self._depth += 1
        if self._depth == 1:
            self._patch_interpreter()
        return super().__enter__()

    def __exit__(self, *exc):
        self._depth -= 1
        if self._depth == 0:
            (interpreter.GridExecutor.__call__, interpreter.InterpreterBuilder.create_masked_load,
             interpreter.InterpreterBuilder.create_masked_store) = self._restore
        return super().__exit__(*exc)

    def _patch_interpreter(self) -> None:
        counter = self
        executor_call = interpreter.GridExecutor.__call__
        masked_load = interpreter.InterpreterBuilder.create_masked_load
        masked_store = interpreter.InterpreterBuilder.create_masked_store

        def run(executor, *args, **kwargs):
            counter._kernel = _Launch(executor.fn.__name__)
            try:
                return executor_call(executor, *args, **kwargs)
            finally:
                counter.launches.append(counter._kernel)
                counter._kernel = None

        def load(builder, ptrs, mask, *rest):
            counter._request(builder, ptrs, mask, store=False)
            return masked_load(builder, ptrs, mask, *rest)

        def store(builder, ptrs, value, mask, *rest):
            counter._request(builder, ptrs, mask, store=True)
            return masked_store(builder, ptrs, value, mask, *rest)

        self._restore = (executor_call, masked_load, masked_store)
        interpreter.GridExecutor.__call__ = run
        interpreter.InterpreterBuilder.create_masked_load = load
        interpreter.InterpreterBuilder.create_masked_store = store

    def _request(self, builder, ptrs, mask, store: bool) -> None:
        launch = self._kernel
        launch.requests[builder.grid_idx] += 1
        size = ptrs.get_element_ty().primitive_bitwidth // 8
        addresses = np.broadcast_to(ptrs.data, np.broadcast_shapes(ptrs.data.shape, mask.data.shape))
        active = np.broadcast_to(mask.data.astype(bool), addresses.shape)
        touched = addresses[active]
        bytes_touched = (touched[:, None] + np.arange(size, dtype=np.uint64)[None, :]).reshape(-1)
        (launch.stored if store else launch.loaded).append(bytes_touched)
        if active.sum() >= WARP:
            self.requested += int(active.sum()) * size
            self.sector_bytes += _sectors_per_warp(addresses, active) * SECTOR

    def summary(self, reference_bytes: int) -> dict:
        triton_launches = [l for l in self.launches if not l.name.startswith("torch:")]
        return {
            "launches": len(self.launches),
            "triton_launches": len(triton_launches),
            "torch_ops": [l.name[6:] for l in self.launches if l.name.startswith("torch:")],
            "traffic_T": sum(l.traffic() for l in self.launches) / reference_bytes,
            "sector_efficiency": self.requested / self.sector_bytes if self.sector_bytes else float("nan"),
            "ldst_per_program": max((max(l.requests.values()) for l in triton_launches if l.requests), default=0),
        }


def _tensors(tree):
    if isinstance(tree, torch.Tensor):
        yield tree
    elif isinstance(tree, (list, tuple)):
        for item in tree:
            yield from _tensors(item)
    elif isinstance(tree, dict):
        for item in tree.values():
            yield from _tensors(item)


def load_old_kernels():
    """The sequential-sweep Triton module of ``OLD_REVISION``, imported from a temporary file."""
    source = subprocess.run(["git", "show", f"{OLD_REVISION}:arma_plugin/layers/ar_solve_triton.py"], cwd=ROOT,
                            check=True, capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "ar_solve_triton_sweeps.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("ar_solve_triton_sweeps", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _OldSolve(torch.autograd.Function):
    """The old data flow: taps from torch ops (outside), kernels on ``x`` and the taps."""

    @staticmethod
    def forward(ctx, x, taps, boundary, dilation, module):
        ctx.save_for_backward(x, taps)
        ctx.args = (boundary, dilation, module)
        return module.triton_ar_solve(x, taps, boundary, dilation)

    @staticmethod
    def backward(ctx, grad_y):
        x, taps = ctx.saved_tensors
        boundary, dilation, module = ctx.args
        grad_x, grad_taps = module.triton_ar_solve_backward(grad_y, x, taps, boundary, dilation)
        return grad_x, grad_taps, None, None, None


def layer_cost(kernels: str, shape, dtype: torch.dtype, layout: str, boundary: str, q: int, dilation: int,
               old_module=None) -> dict:
    """The cost table's row for one AR layer, forward + backward, taps from ``alpha`` included."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=gen).to(dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    grad_y = torch.randn(*shape, generator=gen).to(dtype)
    alpha = torch.randn(shape[1], q, 4, generator=gen).requires_grad_()
    x.requires_grad_()
    with CostCounter() as counter:
        if kernels == "new":
            y = autoregressive2d(x, alpha, boundary, dilation=dilation, backend="triton")
        else:
            y = _OldSolve.apply(x, ar_taps(alpha.float()), boundary, dilation, old_module)
        torch.autograd.grad(y, (x, alpha), grad_y)
    return {"kernels": kernels, "shape": "x".join(map(str, shape)), "dtype": str(dtype).split(".")[-1],
            "layout": layout, "boundary": boundary, "Q": q, "dilation": dilation,
            **counter.summary(x.numel() * 4)}


def format_rows(rows: list[dict]) -> str:
    head = ["kernels", "shape", "dtype", "layout", "boundary", "Q", "d", "launches", "traffic T", "sector eff",
            "ld/st per program"]
    lines = [head] + [[r["kernels"], r["shape"], r["dtype"], r["layout"], r["boundary"], str(r["Q"]),
                       str(r["dilation"]), f"{r['launches']} ({r['triton_launches']} Triton)",
                       f"{r['traffic_T']:.2f}", f"{r['sector_efficiency']:.2f}", str(r["ldst_per_program"])]
                      for r in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    fmt = lambda line: "| " + " | ".join(c.ljust(w) for c, w in zip(line, widths)) + " |"  # noqa: E731
    return "\n".join([fmt(lines[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [fmt(l) for l in lines[1:]])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", type=int, nargs=4, default=[1, 2, 128, 128], metavar=("B", "C", "H", "W"))
    parser.add_argument("--dtype", nargs="+", default=["float32", "bfloat16"],
                        choices=["float32", "bfloat16", "float16", "float64"])
    parser.add_argument("--layout", nargs="+", default=["nchw", "channels_last"], choices=["nchw", "channels_last"])
    parser.add_argument("--boundary", nargs="+", default=["circular", "zeros"], choices=["circular", "zeros"])
    parser.add_argument("--q", type=int, nargs="+", default=[1])
    parser.add_argument("--dilation", type=int, nargs="+", default=[1])
    parser.add_argument("--kernels", nargs="+", default=["new"], choices=["old", "new"])
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    old_module = load_old_kernels() if "old" in args.kernels else None
    rows = []
    for kernels, dtype, layout, boundary, q, dilation in itertools.product(
            args.kernels, args.dtype, args.layout, args.boundary, args.q, args.dilation):
        rows.append(layer_cost(kernels, args.shape, getattr(torch, dtype), layout, boundary, q, dilation, old_module))
        print(format_rows(rows[-1:]).splitlines()[-1], flush=True)
    print()
    print(format_rows(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
