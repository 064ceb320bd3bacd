"""Data plumbing every recipe needs: a seeded split, a Hub/disk/parquet dataset, image files
decoded (JPEGs at reduced size), and one decode pass over all files before the first step."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from accelerate import PartialState
from accelerate.utils import gather_object
from PIL import Image
from tqdm.auto import tqdm

from .errors import RecipeError

IMAGE_DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)
"""What PIL raises for an unreadable, truncated or corrupt image file."""


def seeded_split(n: int, proportions: Mapping[str, float], seed: int) -> dict[str, list[int]]:
    """Cut a seeded permutation of ``range(n)`` into consecutive parts in ``proportions``
    (``round`` for every part but the last, which takes the rest); every part must be non-empty."""
    total = sum(proportions.values())
    names = list(proportions)
    sizes = [round(n * proportions[name] / total) for name in names[:-1]]
    sizes.append(n - sum(sizes))
    if min(sizes) < 1:
        raise ValueError(f"{n} samples are too few for a {'/'.join(names)} split in the proportions "
                         f"{tuple(proportions.values())}: parts would have {sizes} samples")
    order = np.random.default_rng(seed).permutation(n).tolist()
    bounds = np.cumsum([0, *sizes]).tolist()
    return {name: order[bounds[i]:bounds[i + 1]] for i, name in enumerate(names)}


def load_hf_dataset(name: str) -> dict[str, Any]:
    """``{split: datasets.Dataset}`` from a Hub name, a ``save_to_disk`` folder or a ``.parquet`` file."""
    import datasets

    path = Path(name)
    if path.is_dir() and any((path / f).exists() for f in ("dataset_dict.json", "dataset_info.json")):
        loaded = datasets.load_from_disk(str(path))
    elif path.suffix == ".parquet":
        if not path.is_file():
            raise ValueError(f"--hf-dataset {name!r}: no such parquet file")
        loaded = datasets.load_dataset("parquet", data_files=str(path))
    else:
        try:
            loaded = datasets.load_dataset(name)
        except (FileNotFoundError, ConnectionError) as error:  # no such dataset or folder; Hub unreachable
            raise RecipeError(f"--hf-dataset {name!r}: {error}") from error
    return dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {"train": loaded}


def open_image(path: str | Path, *, draft_size: int | None = None) -> Image.Image:
    """Open and decode an image file; a JPEG is decoded at the smallest scale >= ``draft_size``
    when one is given (``Image.draft``: cheap for images much larger than the training size)."""
    image = Image.open(path)
    if draft_size is not None:
        image.draft("RGB", (draft_size, draft_size))
    image.load()
    return image


def check_decodable(names: Sequence[str], decode: Callable[[int], Any], *, what: str) -> None:
    """Decode every item once before the first step, so that a truncated or corrupt file
    fails now, named, rather than mid-training or at test time (and again on resume).

    ``decode(i)`` decodes item ``i``, named ``names[i]`` in the error. Each process decodes
    its share (``PartialState.split_between_processes``); the failures of all processes are
    gathered, so that every process raises the same error (:func:`undecodable`).
    """
    state = PartialState()
    failures = []
    with state.split_between_processes(list(range(len(names)))) as mine:
        for index in tqdm(mine, desc=f"checking {what}", disable=not state.is_local_main_process, leave=False):
            try:
                decode(index)
            except IMAGE_DECODE_ERRORS as error:
                failures.append(f"{names[index]} ({type(error).__name__}: {error})")
    failures = sorted(gather_object(failures))
    if failures:
        raise undecodable(failures, len(names), what)


def undecodable(failures: Sequence[str], total: int, what: str) -> RecipeError:
    """The error naming the files (``"name (error)"``) of ``total`` ``what`` that cannot be decoded."""
    return RecipeError(f"{len(failures)} of {total} {what} cannot be decoded: " + "; ".join(failures[:5]) +
                       ("; ..." if len(failures) > 5 else ""))
