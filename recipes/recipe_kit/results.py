"""What a run leaves for people: parameter counts, the ``mean ± std`` table over seeds, and the
final ``save_pretrained`` checkpoint with its measured model card (pushed with ``--push-to-hub``)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch.nn as nn

from arma_plugin import format_table, push_to_hub, save_pretrained

from .checkpoints import FINAL_DIRNAME


def count_parameters(model: nn.Module) -> int:
    """Number of parameters, as the paper's tables count them."""
    return sum(p.numel() for p in model.parameters())


def hub_repo_for_seed(args: argparse.Namespace, seed: int, variant: str | None = None) -> str | None:
    """``--push-to-hub REPO`` for this run: ``REPO`` for one run, ``REPO-<variant>`` when one
    invocation trains several variants, ``-seed<s>`` appended under ``--seeds``."""
    if not args.push_to_hub:
        return None
    repo = args.push_to_hub if variant is None else f"{args.push_to_hub}-{variant}"
    return repo if args.seeds is None else f"{repo}-seed{seed}"


def publish(model: nn.Module, run_dir: Path, card: Mapping[str, Any], repo_id: str | None) -> Path:
    """``save_pretrained`` the final model into ``run_dir/final`` with ``card`` (measured results) in
    its model card, then ``push_to_hub`` it when a ``repo_id`` is given. Call on the main process only."""
    path = save_pretrained(model, run_dir / FINAL_DIRNAME, **card)
    if repo_id:
        push_to_hub(model, repo_id, **card)
    return path


def summarize(values: Sequence[float]) -> dict[str, float | None]:
    """Mean and sample standard deviation (ddof=1; ``None`` for a single value, which has none)."""
    array = np.asarray(values, dtype=np.float64)
    return {"mean": float(array.mean()),
            "std": float(array.std(ddof=1)) if array.size > 1 else None}


def format_mean_std(stats: Mapping[str, float | None], digits: int) -> str:
    """``mean ± std``, or the bare mean when there is no spread to report (one seed)."""
    mean = f"{stats['mean']:.{digits}f}"
    return mean if stats["std"] is None else f"{mean} ± {stats['std']:.{digits}f}"


def write_seed_table(rows: Mapping[str, Mapping[int, Mapping[str, float]]], columns: Sequence[str],
                     out_stem: Path, *, extra_columns: Mapping[str, Mapping[str, str]] | None = None,
                     digits: int = 3) -> tuple[Path, Path]:
    """Write ``out_stem.md`` (one row per model, ``mean ± std`` over seeds) and ``out_stem.json``.

    ``rows[model][seed][metric]`` holds each seed's value; ``extra_columns[model]`` adds
    text columns placed before the metrics (e.g. ``{"params": "3.45M"}``).
    The JSON keeps every seed's value next to the mean and std.
    """
    extra_columns = extra_columns or {}
    extra_names = list(dict.fromkeys(k for cells in extra_columns.values() for k in cells))
    header = ["model", *extra_names, *columns]
    table_rows = []
    payload: dict[str, Any] = {}
    for model, per_seed in rows.items():
        seeds = sorted(per_seed)
        missing = [c for c in columns for s in seeds if c not in per_seed[s]]
        if missing:
            raise ValueError(f"rows[{model!r}] lacks metrics {sorted(set(missing))}")
        stats = {c: summarize([per_seed[s][c] for s in seeds]) for c in columns}
        cells = [format_mean_std(stats[c], digits) for c in columns]
        extras = [extra_columns.get(model, {}).get(name, "") for name in extra_names]
        table_rows.append([model, *extras, *cells])
        payload[model] = {"seeds": seeds, **extra_columns.get(model, {}),
                          "metrics": {c: {**stats[c], "per_seed": [per_seed[s][c] for s in seeds]}
                                      for c in columns}}
    caption = seed_caption({len(per_seed) for per_seed in rows.values()})
    out_stem.parent.mkdir(parents=True, exist_ok=True)
    md_path, json_path = out_stem.with_suffix(".md"), out_stem.with_suffix(".json")
    md_path.write_text("\n".join([format_table(header, table_rows), "", caption, ""]))
    json_path.write_text(json.dumps(payload, indent=1))
    return md_path, json_path


def seed_caption(seed_counts: Sequence[int] | set[int]) -> str:
    """The table's footnote for rows of these numbers of seeds: what a cell holds."""
    several = sorted(count for count in set(seed_counts) if count > 1)
    if not several:
        return "one seed: each cell is that run's value (no std)"
    caption = f"mean ± std (sample std, ddof=1) over {' or '.join(map(str, several))} seeds"
    return caption + ("; a row of one seed shows its value (no std)" if 1 in seed_counts else "")
