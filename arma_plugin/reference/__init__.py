"""Test oracles and benchmark baselines for the AR solve — not layers.

``dense``: the slow, obviously-correct float64 solve (dense per-axis matrices,
``torch.linalg.solve``) that every fast backend is compared against.
``released``: a port of the authors' released algorithm (sequential 2-D FFT divisions),
the baseline the benchmarks measure against.
"""
from .dense import ar_apply_reference, ar_solve_reference, axis_operator, factor_matrix
from .released import released_autoregressive2d

__all__ = ["ar_apply_reference", "ar_solve_reference", "axis_operator", "factor_matrix",
           "released_autoregressive2d"]
