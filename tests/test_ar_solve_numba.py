"""The numba CPU kernels of the AR solve: against the portable torch path and the dense float64
reference, in groups of planes, and in one-thread processes."""
from __future__ import annotations

import os

import pytest
import torch

from arma_plugin.layers import ar_taps, autoregressive2d
from arma_plugin.reference import ar_solve_reference
from solve_checks import EPS64, condition, rel_err, run_in_fresh_process

numba_kernels = pytest.importorskip("arma_plugin.layers.ar_solve_numba")

BOUNDARIES = ["circular", "zeros"]


@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_numba_and_portable_paths_agree(boundary):
    gen = torch.Generator().manual_seed(5)
    alpha = torch.randn(4, 2, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    x = torch.randn(3, 4, 20, 24, generator=gen, dtype=torch.float64, requires_grad=True)
    grad_out = torch.randn(3, 4, 20, 24, generator=gen, dtype=torch.float64)
    results = []
    for backend in ("numba", "torch"):
        y = autoregressive2d(x, alpha, boundary, dilation=2, backend=backend)
        results.append((y, *torch.autograd.grad(y, (x, alpha), grad_out)))
    for ours, theirs in zip(*results):
        # float64 on a well-conditioned system: both exact up to ~1e-15 relative.
        assert rel_err(ours, theirs) < 1e-12


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("size", [(5, 6), (1, 4), (9, 1)], ids=str)
@pytest.mark.parametrize("group", [1, 2, 3, 7])
@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_numba_groups_of_planes(boundary, group, size, threads):
    """The numba kernels solve G planes of one channel side by side in one buffer. With B = 7,
    G = 2 and 3 leave a short last group. Values and gradients match the dense float64
    reference, and float32 runs equal one plane per task (G = 1) bit for bit: each column's
    arithmetic does not depend on G; only the tap gradients are summed in another order."""
    h, w = size
    knobs = dict(group_elements=group * h * w, tasks_per_thread=1)
    kept_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        assert numba_kernels._group_size(7, 3, h, w, **knobs) == group
        gen = torch.Generator().manual_seed(group)
        taps = ar_taps(torch.randn(3, 2, 4, generator=gen, dtype=torch.float64)).requires_grad_()
        x = torch.randn(7, 3, h, w, generator=gen, dtype=torch.float64, requires_grad=True)
        grad_out = torch.randn(7, 3, h, w, generator=gen, dtype=torch.float64)
        y = numba_kernels.numba_ar_solve(x, taps, boundary, 2, **knobs)
        gx, gt = numba_kernels.numba_ar_solve_backward(grad_out, x, taps, boundary, 2, **knobs)
        y_ref = ar_solve_reference(x, taps, boundary, 2)
        gx_ref, gt_ref = torch.autograd.grad(y_ref, (x, taps), grad_out, allow_unused=True)
        if gt_ref is None:  # 1×1-like zeros maps where every tap falls outside: A = I
            gt_ref = torch.zeros_like(taps)
        # backward-stable solves, as in test_values_and_grads_match_dense_reference
        tol = 1e3 * EPS64 * condition(taps, h, w, boundary, 2)
        assert rel_err(y, y_ref) <= tol
        assert rel_err(gx, gx_ref) <= tol
        assert (gt - gt_ref).abs().max() <= tol * max(gt_ref.abs().max().item(), 1.0)

        runs = []
        for elements in (group * h * w, 1):  # G = group, then G = 1
            x32, taps32 = x.detach().float(), taps.detach().float()
            knobs32 = dict(group_elements=elements, tasks_per_thread=1)
            runs.append((numba_kernels.numba_ar_solve(x32, taps32, boundary, 2, **knobs32),
                         *numba_kernels.numba_ar_solve_backward(grad_out.float(), x32, taps32, boundary, 2,
                                                                **knobs32)))
        (y_g, gx_g, gt_g), (y_1, gx_1, gt_1) = runs
        assert torch.equal(y_g, y_1) and torch.equal(gx_g, gx_1)
        # The tap sums are float64 in another order (~1e-15 apart), rounded to float32: at
        # most an ulp (6e-8 relative) apart.
        assert rel_err(gt_g, gt_1) <= 1e-6
    finally:
        torch.set_num_threads(kept_threads)


def test_portable_zeros_path_on_maps_of_160_and_more():
    """The torch zeros path inverts ``[C, n, n]`` factors; torch 2.14's CPU wheels hang in a
    batched LU of two or more n >= 160 matrices with 2 threads. Run in a subprocess with 2
    threads and a deadline, so that a hang fails here instead of stalling the suite."""
    script = (
        "import torch\n"
        "from arma_plugin.layers.autoregressive import autoregressive2d\n"
        "torch.set_num_threads(2)\n"
        "gen = torch.Generator().manual_seed(0)\n"
        "x = torch.randn(1, 3, 192, 8, generator=gen, requires_grad=True)\n"
        "alpha = torch.randn(3, 1, 4, generator=gen, requires_grad=True)\n"
        "ys = [autoregressive2d(x, alpha, 'zeros', backend=b) for b in ('torch', 'numba')]\n"
        "grads = [torch.autograd.grad(y.square().sum(), (x, alpha)) for y in ys]\n"
        "errors = [float((a - b).abs().max() / b.abs().max()) for a, b in zip((ys[0], *grads[0]), (ys[1], *grads[1]))]\n"
        "print(max(errors))\n")
    # float32, two exact solvers of a well-conditioned system: agree to float32 rounding
    assert float(run_in_fresh_process(script, timeout=120)) < 1e-4


def test_numba_one_thread_process_runs_serially_and_keeps_torch_thread_count(tmp_path):
    """The threaded and serial kernels come from one loop; numba's on-disk cache keys a
    function by name and line, not by ``parallel``. A one-thread process that finds the kernels
    a two-thread process cached must still run the serial one: numba's thread pool never
    starts there, and the pool's OpenMP start-up, which resets the process's OpenMP thread count
    (torch's intra-op count), cannot turn a one-thread process into a two-thread one.
    Fresh processes sharing a fresh cache directory, the two-thread one first."""
    script = (
        "import sys, torch\n"
        "from numba.np.ufunc import parallel\n"
        "from arma_plugin.layers.autoregressive import autoregressive2d\n"
        "torch.set_num_threads(int(sys.argv[1]))\n"
        "x = torch.randn(2, 3, 8, 8, requires_grad=True)\n"
        "alpha = torch.randn(3, 1, 4, requires_grad=True)\n"
        "autoregressive2d(x, alpha, 'zeros', backend='numba').sum().backward()\n"
        "print(parallel._is_initialized, torch.get_num_threads())\n")  # numba's flag: its pool was launched
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}
    for threads, pool_started in ((2, "True"), (1, "False")):
        assert run_in_fresh_process(script, str(threads), env=env).split() == [pool_started, str(threads)]
