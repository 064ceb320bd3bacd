"""Moving-MNIST-2, generated on the fly (Srivastava et al. 2015; Su et al. 2020, Table 3).

Two digits bounce inside a square frame. A sequence is a function of
``(seed, split, index)`` only, so every run and every process sees the same data.
The speed factor scales the base velocity: at speed ``s`` a digit is where it would be
at speed 1 after ``s`` times as many frames (positions move exactly ``s`` x the base
velocity per frame and reflect off the frame's edges).

Digits come from scikit-learn's handwritten digits (8x8, upscaled; offline), from
MNIST through ``datasets``, or from a local MNIST copy (``.npz`` with ``x_train``/``x_test``,
``.npy`` ``[N, 28, 28]``, or an IDX ``*-idx3-ubyte[.gz]`` file). The standard fixed test
file ``mnist_test_seq.npy`` (``[20, N, 64, 64]`` uint8) is read by :class:`FixedSequences`.
"""
from __future__ import annotations

import argparse
import functools
import gzip
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from arma_plugin import check_choice, check_positive_int

DIGIT_SOURCES = ("sklearn", "mnist")
SPLITS = ("train", "val", "test")
HELD_OUT_FRACTION = 0.2
"""Share of a single digit array kept for val/test, so test sequences use unseen digits."""
BASE_STEP = 0.1
"""Base speed: fraction of the free range (frame size - digit size) moved per frame, as in
the original Moving-MNIST generator (3.6 px/frame for 28 px digits in 64 px frames)."""
MNIST_DIGIT_SIZE, STANDARD_FRAME_SIZE = 28, 64


def digit_size_for(frame_size: int) -> int:
    """Digit side that keeps MNIST's 28/64 digit-to-frame ratio."""
    return max(4, round(MNIST_DIGIT_SIZE * frame_size / STANDARD_FRAME_SIZE))


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 16 or int.from_bytes(data[:4], "big") != 0x00000803:
        raise ValueError(f"--digits-path {str(path)!r} is not an IDX image file (magic 0x00000803)")
    n, rows, cols = (int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(3))
    return np.frombuffer(data, np.uint8, offset=16, count=n * rows * cols).reshape(n, rows, cols)


def _local_digits(path: Path, split: str) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(f"--digits-path {str(path)!r} does not exist")
    name = path.name
    if name.endswith(".npz"):
        with np.load(path) as archive:
            key = "x_train" if split == "train" else "x_test"
            if key not in archive:
                raise ValueError(f"--digits-path {str(path)!r} must hold arrays 'x_train' and 'x_test' "
                                 f"(the mnist.npz layout), has {sorted(archive.files)}")
            return archive[key]
    if name.endswith(".npy"):
        images = np.load(path)
    elif name.endswith(("idx3-ubyte", "idx3-ubyte.gz")):
        images = _read_idx(path)
    else:
        raise ValueError(f"--digits-path must be a .npz (x_train/x_test), .npy [N, H, W] or "
                         f"*-idx3-ubyte[.gz] file, got {str(path)!r}")
    return _split_array(images, split)


@functools.lru_cache(maxsize=1)
def _sklearn_digits() -> np.ndarray:
    """scikit-learn's 1797 8x8 digits in [0, 1] (parsed once per process: every run reads them 3 times)."""
    from sklearn.datasets import load_digits as sklearn_digits

    return sklearn_digits().images / 16.0


def _split_array(images: np.ndarray, split: str) -> np.ndarray:
    cut = int(round(len(images) * (1 - HELD_OUT_FRACTION)))
    return images[:cut] if split == "train" else images[cut:]


def load_digits(source: str = "sklearn", *, split: str = "train", digit_size: int = MNIST_DIGIT_SIZE,
                path: str | Path | None = None) -> torch.Tensor:
    """Digit images ``[N, digit_size, digit_size]`` in ``[0, 1]`` for one split.

    ``split="train"`` and the held-out splits (``"val"``, ``"test"``) use disjoint digits.
    ``path`` (``--digits-path``) is a local MNIST copy and only valid with ``source="mnist"``.
    """
    check_choice("--digits", source, DIGIT_SOURCES)
    check_choice("split", split, SPLITS)
    if path is not None and source != "mnist":
        raise ValueError("--digits-path is a local MNIST copy: use it with --digits mnist")
    if source == "sklearn":
        images = _split_array(_sklearn_digits(), split)
    elif path is not None:
        images = _local_digits(Path(path), split)
    else:
        import datasets

        try:
            table = datasets.load_dataset("mnist", split="train" if split == "train" else "test")
        except Exception as err:  # offline, no cache: say what to do instead
            raise RuntimeError(f"could not load MNIST through `datasets` ({err}); use --digits-path "
                               f"with a local copy, or --digits sklearn (offline)") from err
        images = np.stack([np.asarray(image) for image in table["image"]])
    images = torch.tensor(np.asarray(images), dtype=torch.float32)
    if images.dim() != 3 or len(images) == 0:
        raise ValueError(f"digit images must be a non-empty [N, H, W] array, got shape {tuple(images.shape)}")
    if images.max() > 1.0:
        images = images / 255.0
    if images.shape[-1] != digit_size or images.shape[-2] != digit_size:
        images = F.interpolate(images[:, None], size=(digit_size, digit_size), mode="bilinear",
                               align_corners=False, antialias=True)[:, 0]
    return images.clamp_(0.0, 1.0)


def bounce(position: np.ndarray, limit: float) -> np.ndarray:
    """Fold unbounded positions into ``[0, limit]`` by reflecting off both ends."""
    folded = np.mod(position, 2 * limit)
    return limit - np.abs(folded - limit)


class MovingMNIST(Dataset):
    """Sequences ``[frames, 1, frame_size, frame_size]`` of ``num_digits`` bouncing digits.

    Args:
        digits: ``[N, s, s]`` digit images in ``[0, 1]`` (see :func:`load_digits`).
        num_sequences: dataset length.
        frames: frames per sequence (10 inputs + 10 targets in the paper).
        frame_size: frame side in pixels (64 in the paper).
        speed: integer speed factor (1, 2, 3 for Table 3's 1x, 2x, 3x).
        seed, split: together with the index they fix a sequence.
    """

    def __init__(self, digits: torch.Tensor, *, num_sequences: int, frames: int = 20, frame_size: int = 64,
                 num_digits: int = 2, speed: int = 1, seed: int = 0, split: str = "train") -> None:
        check_positive_int("--speed (1, 2, 3 = Table 3's 1x, 2x, 3x)", speed)
        check_choice("split", split, SPLITS)
        if digits.dim() != 3 or digits.shape[-1] >= frame_size:
            raise ValueError(f"digits must be [N, s, s] with s < frame_size={frame_size}, "
                             f"got shape {tuple(digits.shape)}")
        for name, value in (("num_sequences", num_sequences), ("frames", frames), ("num_digits", num_digits)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        self.digits, self.num_sequences, self.frames = digits, num_sequences, frames
        self.frame_size, self.num_digits, self.speed = frame_size, num_digits, speed
        self.seed, self.split = seed, split
        self.limit = float(frame_size - digits.shape[-1])

    def __len__(self) -> int:
        return self.num_sequences

    def _draw(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Digit ids, start positions ``[D, 2]`` and base velocities ``[D, 2]`` (px/frame); speed-free."""
        rng = np.random.default_rng((self.seed, SPLITS.index(self.split), index))
        ids = rng.integers(0, len(self.digits), size=self.num_digits)
        starts = rng.uniform(0.0, self.limit, size=(self.num_digits, 2))
        angles = rng.uniform(0.0, 2 * np.pi, size=self.num_digits)
        velocities = BASE_STEP * self.limit * np.stack((np.sin(angles), np.cos(angles)), axis=-1)
        return ids, starts, velocities

    def trajectories(self, index: int) -> np.ndarray:
        """Top-left positions ``[num_digits, frames, 2]`` (row, col) in ``[0, frame_size - s]``."""
        _, starts, velocities = self._draw(index)
        t = np.arange(self.frames)[None, :, None]
        return bounce(starts[:, None] + self.speed * t * velocities[:, None], self.limit)

    def __getitem__(self, index: int) -> torch.Tensor:
        if not 0 <= index < self.num_sequences:
            raise IndexError(f"index {index} out of range for {self.num_sequences} sequences")
        ids, _, _ = self._draw(index)
        size = self.digits.shape[-1]
        video = torch.zeros(self.frames, 1, self.frame_size, self.frame_size)
        corners = np.rint(self.trajectories(index)).astype(int)
        for digit, path in zip(ids, corners):
            for t, (row, col) in enumerate(path):
                patch = video[t, 0, row:row + size, col:col + size]
                torch.maximum(patch, self.digits[digit], out=patch)
        return video


class FixedSequences(Dataset):
    """The standard fixed test file (``mnist_test_seq.npy``: ``[20, N, 64, 64]`` uint8).

    Frames are resized (area average) when ``frame_size`` differs from the file's.
    """

    def __init__(self, path: str | Path, frame_size: int = STANDARD_FRAME_SIZE) -> None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"--test-file {str(path)!r} does not exist (expected the standard "
                                    f"mnist_test_seq.npy, [20, N, 64, 64] uint8)")
        data = np.load(path, mmap_mode="r")
        if data.ndim != 4 or data.shape[2] != data.shape[3] or data.dtype != np.uint8:
            raise ValueError(f"--test-file must hold a [T, N, H, H] uint8 array (mnist_test_seq.npy layout), "
                             f"got {data.dtype} {tuple(data.shape)}")
        self.data, self.frame_size = data, frame_size
        self.frames = data.shape[0]

    def __len__(self) -> int:
        return self.data.shape[1]

    def __getitem__(self, index: int) -> torch.Tensor:
        video = torch.from_numpy(np.array(self.data[:, index], dtype=np.float32) / 255.0)[:, None]
        if video.shape[-1] != self.frame_size:
            video = F.interpolate(video, size=(self.frame_size, self.frame_size), mode="area")
        return video


TEST_DATA_SEED = 0
"""Every model and training seed is scored on the same generated test sequences."""


def make_datasets(args: argparse.Namespace, speed: int, seed: int) -> tuple[MovingMNIST, MovingMNIST, Any]:
    """Train and val sequences of training ``seed``; test sequences shared by every run."""
    common = dict(frames=args.input_frames + args.future_frames, frame_size=args.frame_size, speed=speed,
                  num_digits=args.num_digits)

    def split(name: str, count: int, data_seed: int) -> MovingMNIST:
        digits = load_digits(args.digits, split=name, digit_size=args.digit_size, path=args.digits_path)
        return MovingMNIST(digits, num_sequences=count, seed=data_seed, split=name, **common)

    if args.test_file:
        test = FixedSequences(args.test_file, args.frame_size)
        if test.frames < common["frames"]:
            raise ValueError(f"--test-file has {test.frames} frames per sequence, fewer than "
                             f"--input-frames + --future-frames = {common['frames']}")
    else:
        test = split("test", args.test_sequences, TEST_DATA_SEED)
    return split("train", args.train_sequences, seed), split("val", args.val_sequences, seed), test


def split_video(video: torch.Tensor, args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor]:
    """``[B, T, ...]`` → (the input frames, the frames to predict)."""
    return video[:, :args.input_frames], video[:, args.input_frames:args.input_frames + args.future_frames]
