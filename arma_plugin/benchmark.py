"""Layer benchmark: fwd+bwd time and memory saved for backward of the AR layer.

Compares, at ``B × C × H × W`` (C → C channels): a 3×3 ``Conv2d`` (the MA part), our AR
layer (each available backend), and the port of the authors' released algorithm
(``Q`` sequential 2-D FFT divisions with autograd through ``torch.fft``; circular only).
Prints a table (or ``--json``). Times are medians over ``--repeats`` after one warm-up;
only ratios within one run are meaningful on a shared machine.

    python scripts/bench_layer.py --sizes 32 64 128 256 --repeats 5
    arma-plugin bench --json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from typing import Callable

import torch
import torch.nn as nn

from .reference import released_autoregressive2d
from .table import format_table
from .usage import OneLineErrorParser
from .validation import positive_int
from .layers.ar_solve_op import numba_available
from .layers.autoregressive import autoregressive2d

SUPPORTED_DEVICES = ("cpu", "cuda")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_fwd_bwd(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, grad: torch.Tensor,
                  repeats: int) -> float:
    """Median milliseconds of ``fn(x).backward(grad)`` (one untimed warm-up)."""
    times = []
    for i in range(repeats + 1):
        x.grad = None
        _sync(x.device)
        start = time.perf_counter()
        fn(x).backward(grad)
        _sync(x.device)
        if i:
            times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def saved_bytes(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> int:
    """Bytes of distinct tensors autograd saves for backward during ``fn(x)``."""
    seen: dict[tuple[int, int], int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        seen[(t.untyped_storage().data_ptr(), t.storage_offset())] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(x)
    return sum(seen.values())


def run(sizes: list[int], qs: list[int], boundaries: list[str], batch: int, channels: int, repeats: int,
        device: torch.device, backends: list[str]) -> list[dict]:
    """One row per (size, Q, boundary): times in ms, ratios, saved bytes in output sizes."""
    rows = []
    conv = nn.Conv2d(channels, channels, 3, padding=1, device=device)
    for size in sizes:
        x = torch.randn(batch, channels, size, size, device=device, requires_grad=True)
        grad = torch.randn_like(x)
        out_bytes = x.numel() * x.element_size()
        conv_ms = _time_fwd_bwd(conv, x, grad, repeats)
        for q in qs:
            alpha = (0.5 * torch.randn(channels, q, 4, device=device)).requires_grad_()
            for boundary in boundaries:
                row = {"size": size, "Q": q, "boundary": boundary, "batch": batch, "channels": channels,
                       "device": str(device), "conv_ms": conv_ms}
                for backend in backends:
                    def layer(t: torch.Tensor, backend: str = backend) -> torch.Tensor:
                        return autoregressive2d(t, alpha, boundary, backend=backend)
                    row[f"ar_{backend}_ms"] = _time_fwd_bwd(layer, x, grad, repeats)
                    row[f"ar_{backend}_saved_outputs"] = saved_bytes(layer, x) / out_bytes
                if boundary == "circular":
                    def released(t: torch.Tensor) -> torch.Tensor:
                        return released_autoregressive2d(t, alpha)
                    row["released_ms"] = _time_fwd_bwd(released, x, grad, repeats)
                    row["released_saved_outputs"] = saved_bytes(released, x) / out_bytes
                rows.append(row)
    return rows


def results_table(rows: list[dict], backends: list[str]) -> str:
    """The rows as a markdown table; ratios against the first (fastest available) backend."""
    best = backends[0]
    header = ["H=W", "Q", "boundary", "conv ms"] + [f"AR[{b}] ms" for b in backends] + \
        ["released ms", f"AR[{best}]/conv", f"released/AR[{best}]", "saved AR (×out)", "saved released (×out)"]
    lines = []
    for r in rows:
        fast, released = r[f"ar_{best}_ms"], r.get("released_ms")
        lines.append([r["size"], r["Q"], r["boundary"], f"{r['conv_ms']:.1f}"]
                     + [f"{r[f'ar_{b}_ms']:.1f}" for b in backends]
                     + [None if released is None else f"{released:.1f}", f"{fast / r['conv_ms']:.2f}",
                        None if released is None else f"{released / fast:.1f}",
                        f"{r[f'ar_{best}_saved_outputs']:.2f}",
                        None if released is None else f"{r['released_saved_outputs']:.2f}"])
    return format_table(header, lines)


def build_parser() -> argparse.ArgumentParser:
    p = OneLineErrorParser(prog="arma-plugin bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=positive_int, nargs="+", default=[32, 64, 128], help="H = W values")
    p.add_argument("--q", type=positive_int, nargs="+", default=[1, 2],
                   help="factors per axis (ar_kernel_size = 2Q+1)")
    p.add_argument("--boundaries", nargs="+", default=["circular", "zeros"], choices=["circular", "zeros"])
    p.add_argument("--batch", type=positive_int, default=8)
    p.add_argument("--channels", type=positive_int, default=64)
    p.add_argument("--repeats", type=positive_int, default=3, help="timed runs per entry (median reported)")
    p.add_argument("--threads", type=positive_int, default=2, help="torch.set_num_threads (CPU)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=SUPPORTED_DEVICES)
    p.add_argument("--json", action="store_true", help="print JSON rows instead of the table")
    return p


# fp32 maps alive at once while one entry is timed: input, its grad, output, output grad, saved tensors
MAPS_ALIVE = 6


def _check_memory(parser: argparse.ArgumentParser, args: argparse.Namespace, device: torch.device) -> None:
    """Refuse sizes whose maps cannot fit in the device's memory, before anything is allocated."""
    if device.type == "cuda":
        available = torch.cuda.mem_get_info(device)[0]
    else:
        available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    needed = MAPS_ALIVE * args.batch * args.channels * max(args.sizes) ** 2 * 4
    memory = "free GPU memory" if device.type == "cuda" else "memory of this machine"
    if needed > available:
        parser.error(f"--batch {args.batch} --channels {args.channels} --sizes {max(args.sizes)}: about "
                     f"{needed / 2**30:.1f} GiB of fp32 maps, more than the {available / 2**30:.1f} GiB {memory}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available here (torch.cuda.is_available() is False)")
    device = torch.device(args.device)
    _check_memory(parser, args, device)
    torch.set_num_threads(args.threads)
    backends = (["numba"] if device.type == "cpu" and numba_available() else []) + ["torch"]
    rows = run(args.sizes, args.q, args.boundaries, args.batch, args.channels, args.repeats, device, backends)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(f"device={device} threads={torch.get_num_threads()} B={args.batch} C={args.channels} "
              f"fwd+bwd median of {args.repeats} ms")
        print(results_table(rows, backends))
    return 0
