"""Moving-MNIST-2 generator, digit loading and the Table-3 recipe end to end (tiny)."""
import gzip
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import moving_mnist
from arma_plugin import from_pretrained
from moving_mnist_data import FixedSequences, MovingMNIST, bounce, digit_size_for, load_digits

DIGITS = torch.rand(10, 5, 5)


@pytest.fixture(autouse=True)
def keep_thread_count():
    """The quick preset sets torch's thread count (--cpu-threads); give other tests theirs back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def make(speed=1, frames=12, seed=0, split="train", num_sequences=4):
    return MovingMNIST(DIGITS, num_sequences=num_sequences, frames=frames, frame_size=16, speed=speed,
                       seed=seed, split=split)


def test_generator_is_deterministic_per_seed_and_split():
    assert torch.equal(make()[2], make()[2])
    assert not torch.equal(make()[2], make(seed=1)[2])
    assert not torch.equal(make()[2], make(split="test")[2])
    assert not torch.equal(make()[2], make()[3])


@pytest.mark.parametrize("speed", [2, 3])
def test_speed_scales_the_base_velocity_exactly(speed):
    # At speed s, frame t is where speed 1 puts the digit at frame s*t (same starts and velocities).
    fast, slow = make(speed=speed, frames=6), make(speed=1, frames=6 * speed)
    for index in range(4):
        np.testing.assert_allclose(fast.trajectories(index), slow.trajectories(index)[:, ::speed],
                                   rtol=0, atol=1e-9)  # float64 fold of the same sums


def reference_bounce(start, velocity, steps, limit):
    """Step-by-step simulation: move, reflect off an edge and reverse."""
    p, v, out = np.array(start, float), np.array(velocity, float), []
    for _ in range(steps):
        out.append(p.copy())
        p = p + v
        for k in range(2):
            if p[k] < 0:
                p[k], v[k] = -p[k], -v[k]
            elif p[k] > limit:
                p[k], v[k] = 2 * limit - p[k], -v[k]
    return np.stack(out)


@pytest.mark.parametrize("speed", [1, 2, 3])
def test_digits_bounce_and_stay_in_frame(speed):
    data = make(speed=speed, frames=40)
    for index in range(4):
        _, starts, velocities = data._draw(index)
        paths = data.trajectories(index)
        assert paths.min() >= 0 and paths.max() <= data.limit
        for d in range(data.num_digits):
            expected = reference_bounce(starts[d], speed * velocities[d], 40, data.limit)
            np.testing.assert_allclose(paths[d], expected, rtol=0, atol=1e-9)  # float64 rounding only


def test_bounce_folds_into_range():
    limit = 5.0
    np.testing.assert_allclose(bounce(np.array([-1.0, 0.0, 3.0, 6.0, 10.0, 12.0]), limit),
                               [1.0, 0.0, 3.0, 4.0, 0.0, 2.0])


def test_frames_hold_both_digits():
    video = make()[0]
    assert video.shape == (12, 1, 16, 16) and video.dtype == torch.float32
    assert 0 <= video.min() and video.max() <= 1
    assert video.sum() > 0


def test_sklearn_digits_have_disjoint_splits_and_requested_size():
    train, test = load_digits("sklearn", split="train", digit_size=7), load_digits("sklearn", split="test", digit_size=7)
    assert train.shape[1:] == test.shape[1:] == (7, 7)
    assert len(train) + len(test) == 1797  # sklearn's digits, split once
    assert digit_size_for(64) == 28 and digit_size_for(16) == 7


def write_idx(path, images):
    header = (0x00000803).to_bytes(4, "big") + b"".join(n.to_bytes(4, "big") for n in images.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + images.tobytes())


def test_local_mnist_copies(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(10, 28, 28), dtype=np.uint8)
    np.savez(tmp_path / "mnist.npz", x_train=images[:6], x_test=images[6:])
    np.save(tmp_path / "digits.npy", images)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images)
    npz = load_digits("mnist", split="test", path=tmp_path / "mnist.npz")
    torch.testing.assert_close(npz, torch.from_numpy(images[6:]).float() / 255)
    idx = load_digits("mnist", split="train", path=tmp_path / "t10k-images-idx3-ubyte.gz")
    npy = load_digits("mnist", split="train", path=tmp_path / "digits.npy")
    torch.testing.assert_close(idx, npy, rtol=0, atol=0)
    assert len(idx) == 8  # 80 % kept for training


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(source="emnist"), ValueError, "--digits"),
    (dict(source="sklearn", path="x.npy"), ValueError, "--digits-path"),
    (dict(source="mnist", path="missing.npy"), FileNotFoundError, "does not exist"),
])
def test_bad_digit_sources(kwargs, error, match):
    source = kwargs.pop("source")
    with pytest.raises(error, match=match):
        load_digits(source, **kwargs)


def test_fixed_test_file(tmp_path):
    data = np.random.default_rng(0).integers(0, 256, size=(20, 3, 64, 64), dtype=np.uint8)
    np.save(tmp_path / "mnist_test_seq.npy", data)
    full, small = FixedSequences(tmp_path / "mnist_test_seq.npy"), FixedSequences(tmp_path / "mnist_test_seq.npy", 16)
    assert len(full) == 3
    torch.testing.assert_close(full[1], torch.from_numpy(data[:, 1, None]).float() / 255)
    # area resize: each 4x4 block's mean
    torch.testing.assert_close(small[1], torch.nn.functional.avg_pool2d(full[1], 4), rtol=0, atol=1e-6)
    np.save(tmp_path / "bad.npy", data[0])
    with pytest.raises(ValueError, match="--test-file"):
        FixedSequences(tmp_path / "bad.npy")


TINY = ["--frame-size", "12", "--hidden-channels", "4", "--layers-per-block", "1", "--train-sequences", "8",
        "--val-sequences", "4", "--test-sequences", "4", "--epochs", "1", "--batch-size", "4",
        "--input-frames", "3", "--future-frames", "3"]


@pytest.mark.parametrize("argv, error, match", [
    (["--speed", "0"], ValueError, "--speed"),
    (["--speeds", "1", "-2"], ValueError, "--speed"),
    (["--models", "convlstm7"], ValueError, "--models"),
    (["--test-file", "nowhere/mnist_test_seq.npy"], FileNotFoundError, "--test-file"),
    (["--boundary", "reflect"], ValueError, "boundary"),
    (["--digits", "emnist"], ValueError, "--digits"),
    (["--cpu-threads", "0"], ValueError, "--cpu-threads"),
])
def test_bad_command_lines(argv, error, match, tmp_path):
    with pytest.raises(error, match=match):
        moving_mnist.main(TINY + ["--output-dir", str(tmp_path)] + argv)


def test_tiny_end_to_end(tmp_path):
    # scored on a fixed test file (mnist_test_seq.npy layout, 20 frames, resized to 12x12)
    test_file = tmp_path / "mnist_test_seq.npy"
    np.save(test_file, np.random.default_rng(0).integers(0, 256, size=(20, 3, 64, 64), dtype=np.uint8))
    out = moving_mnist.main(TINY + ["--output-dir", str(tmp_path), "--models", "convlstm3", "armalstm3",
                                    "--speeds", "1", "3", "--test-file", str(test_file)])
    assert set(out["results"]) == {"convlstm3", "armalstm3"}
    for model in out["results"].values():
        assert set(model["metrics"]) == {"psnr@1x", "ssim@1x", "psnr@3x", "ssim@3x"}
    assert "| armalstm3 |" in (tmp_path / "results.md").read_text()
    curves = json.loads((tmp_path / "per_frame.json").read_text())
    assert len(curves["armalstm3"]["psnr@3x"]) == 3  # one value per predicted frame
    assert [p.name for p in out["strips"]] == ["strip_speed1.png", "strip_speed3.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in out["strips"])
    assert len(out["checkpoints"]) == 4
    final = tmp_path / "armalstm3" / "speed3" / "seed_0" / "final"
    assert "| armalstm3 |" in (final / "README.md").read_text()  # the table is in the card
    loaded = from_pretrained(final)
    best = load_file(str(final.parent / "best" / "model.safetensors"))
    for key, value in loaded.state_dict().items():
        torch.testing.assert_close(value, best[key], rtol=0, atol=0)
    assert any(key.endswith("gates.ar.alpha") for key in best)


def test_every_variant_builds(tmp_path):
    args = moving_mnist.training_args(TINY + ["--hidden-channels", "4", "4", "4",
                                              "--layers-per-block", "1", "1", "1"])
    for name, variant in moving_mnist.VARIANTS.items():
        model = moving_mnist.build_model(args, name)
        gates = [m for n, m in model.named_modules() if n.endswith(".gates")]
        assert all(hasattr(g, "ar") == variant.arma for g in gates), name
        assert len(model.arma_report.nonlocal_inserted) == (2 if variant.nonlocal_blocks else 0), name
        assert model(torch.rand(1, 3, 1, 12, 12), 2).shape == (1, 2, 1, 12, 12)
