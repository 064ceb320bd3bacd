"""Moving-MNIST-2 generator, digit loading and the Table-3 recipe end to end (tiny)."""
import gzip
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import moving_mnist
import moving_mnist_plots
import moving_mnist_verdict
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


TINY = ["--frame-size", "12", "--digit-size", "5", "--hidden-channels", "4", "--layers-per-block", "1",
        "--train-sequences", "8", "--val-sequences", "4", "--test-sequences", "4", "--epochs", "1",
        "--batch-size", "4", "--input-frames", "3", "--future-frames", "3", "--parallel-runs", "1"]


@pytest.mark.parametrize("argv, error, match", [
    (["--speeds", "0"], ValueError, "--speeds"),
    (["--speeds", "1", "-2"], ValueError, "--speeds"),
    (["--models", "convlstm7"], ValueError, "--models"),
    (["--test-file", "nowhere/mnist_test_seq.npy"], ValueError, "--test-file"),
    (["--digits", "mnist", "--digits-path", "nowhere/mnist.npz"], ValueError, "--digits-path"),
    (["--boundary", "reflect"], ValueError, "boundary"),
    (["--digits", "emnist"], ValueError, "--digits"),
    (["--cpu-threads", "0"], ValueError, "--cpu-threads"),
    (["--parallel-runs", "0"], ValueError, "--parallel-runs"),
    (["--digit-size", "12"], ValueError, "--digit-size"),
    (["--num-digits", "0"], ValueError, "--num-digits"),
    (["--throughput-steps", "0"], ValueError, "--throughput-steps"),
    (["--num-warmup-steps", "-1"], ValueError, "--num-warmup-steps"),
    (["--lr-scheduler-type", "cosine", "--num-warmup-steps", "2"], ValueError, "--num-warmup-steps must be less"),
    (["--models", "convlstm3", "convlstm3"], ValueError, "--models must be distinct"),
    (["--speeds", "2", "2"], ValueError, "--speeds must be distinct"),
])
def test_bad_command_lines(argv, error, match, tmp_path):
    with pytest.raises(error, match=match):
        moving_mnist.main(TINY + ["--output-dir", str(tmp_path)] + argv)


def test_presets_set_the_defaults_and_flags_win():
    quick = moving_mnist.parse_args([])
    assert quick.seeds == [0, 1, 2, 3, 4, 5] and quick.speeds == [3] and quick.parallel_runs == 2
    assert moving_mnist.parse_args(["--seed", "4"]).seeds is None  # one explicit seed replaces the list
    paper = moving_mnist.parse_args(["--preset", "paper", "--epochs", "3"])
    assert (paper.frame_size, paper.hidden_channels, paper.epochs, paper.parallel_runs) == (64, [32] * 4, 3, 1)


@pytest.mark.parametrize("arma, baseline, holds", [
    ([15.2, 15.4, 15.3, 15.25, 15.35], [15.0, 15.1, 15.05, 15.0, 15.1], True),  # mean d 0.25 > 2 SE 0.032
    ([15.2, 14.9, 15.3, 15.0, 15.3], [15.0, 15.1, 15.05, 15.0, 15.1], False),  # mean d 0.09 < 2 SE 0.169
    ([15.0, 15.1, 15.05, 15.0, 15.1], [15.2, 15.4, 15.3, 15.25, 15.35], False),  # baseline ahead
])
def test_paired_criterion(arma, baseline, holds):
    result = moving_mnist_verdict.paired_criterion(arma, baseline)
    d = np.subtract(arma, baseline)
    np.testing.assert_allclose(result["threshold"], 2 * d.std(ddof=1) / np.sqrt(5), rtol=1e-12)  # float64 rounding
    assert result["holds"] is holds and ("HOLDS" if holds else "DOES NOT HOLD") in result["verdict"]


def test_paired_criterion_needs_five_seeds():
    result = moving_mnist_verdict.paired_criterion([15.5, 15.6, 15.7, 15.6], [15.0, 15.1, 15.2, 15.1])
    assert result["holds"] is None and "needs >= 5" in result["verdict"]


def test_trivial_predictors():
    inputs = torch.rand(2, 3, 1, 8, 8)
    predictions = moving_mnist_verdict.trivial_predictions(inputs, 4)
    assert all(p.shape == (2, 4, 1, 8, 8) for p in predictions.values())
    assert predictions["trivial: zeros"].abs().sum() == 0
    torch.testing.assert_close(predictions["trivial: mean of inputs"][:, 2], inputs.mean(1), rtol=0, atol=0)
    torch.testing.assert_close(predictions["trivial: copy last input"][:, 3], inputs[:, -1], rtol=0, atol=0)


def test_strip_labels_and_error_difference():
    assert moving_mnist_plots.seed_count(1) == "1 seed" and moving_mnist_plots.seed_count(6) == "6 seeds"
    assert moving_mnist_plots.time_labels(4, 2) == ["t\u22123", "t\u22122", "t\u22121", "t", "t+1", "t+2"]
    target = torch.tensor([0.0, 1.0, 0.5])
    arma, baseline = torch.tensor([0.0, 0.8, 0.5]), torch.tensor([0.2, 0.8, 0.1])
    # ARMA exact where the baseline is off (negative), both off by 0.2 (zero)
    difference = moving_mnist_plots.error_difference(arma, baseline, target)
    torch.testing.assert_close(difference, torch.tensor([-0.2, 0.0, -0.4]), rtol=0, atol=1e-6)  # float32 rounding


def test_standard_error_over_seeds():
    values = np.array([[1.0, 2.0], [2.0, 2.0], [3.0, 5.0]])
    np.testing.assert_allclose(moving_mnist_plots.standard_error(values), [1 / np.sqrt(3), 1.0])
    np.testing.assert_array_equal(moving_mnist_plots.standard_error(values[:1]), [0.0, 0.0])  # one seed: no band


ROW = "| {:<24} |"
"""A first cell of the results table (format_table pads the model column to its widest name)."""


def test_tiny_end_to_end(tmp_path):
    out = moving_mnist.main(TINY + ["--output-dir", str(tmp_path), "--models", "convlstm3", "armalstm3",
                                    "--speeds", "3", "--seeds", "0", "1", "2", "3", "4"])
    trivial = {"trivial: zeros", "trivial: mean of inputs", "trivial: copy last input"}
    assert set(out["results"]) == {"convlstm3", "armalstm3", "criterion", "learned_motion", "environment"} | trivial
    environment = out["results"]["environment"]
    assert {"torch", "numpy", "numba", "arma-plugin"} <= set(environment["versions"])
    assert environment["versions"]["torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert environment["cpu"] and environment["threads_per_run"] == 1  # the quick preset's --cpu-threads
    for name in ("convlstm3", "armalstm3"):
        metrics = out["results"][name]["metrics"]
        assert set(metrics) == {"psnr@3x", "ssim@3x"} and len(metrics["psnr@3x"]["per_seed"]) == 5
    criterion = out["results"]["criterion"]
    assert criterion["speed"] == 3 and isinstance(criterion["holds"], bool)
    per_seed = [out["results"][m]["metrics"]["psnr@3x"]["per_seed"] for m in ("armalstm3", "convlstm3")]
    np.testing.assert_allclose(criterion["differences"], np.subtract(*per_seed), rtol=0, atol=1e-12)
    table = (tmp_path / "results.md").read_text()
    assert ROW.format("armalstm3") in table and ROW.format("trivial: zeros") in table
    assert criterion["verdict"] in table
    curves = json.loads((tmp_path / "per_frame.json").read_text())
    assert len(curves["3"]["armalstm3"]) == 5 and len(curves["3"]["armalstm3"][0]) == 3  # 5 seeds x 3 frames
    assert [p.name for p in out["pictures"]] == ["strip_speed3.png", "psnr_per_frame_speed3.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in out["pictures"])
    assert len(out["checkpoints"]) == 10
    final = tmp_path / "armalstm3" / "speed3" / "seed_0" / "final"
    assert ROW.format("armalstm3") in (final / "README.md").read_text()  # the table is in the card
    loaded = from_pretrained(final)
    best = load_file(str(final.parent / "best" / "model.safetensors"))
    for key, value in loaded.state_dict().items():
        torch.testing.assert_close(value, best[key], rtol=0, atol=0)
    assert any(key.endswith("gates.ar.alpha") for key in best)


def test_fixed_test_file_scores_every_run(tmp_path):
    # mnist_test_seq.npy layout, 20 frames, resized to 12x12
    test_file = tmp_path / "mnist_test_seq.npy"
    np.save(test_file, np.random.default_rng(0).integers(0, 256, size=(20, 3, 64, 64), dtype=np.uint8))
    out = moving_mnist.main(TINY + ["--output-dir", str(tmp_path / "run"), "--models", "convlstm3",
                                    "--seed", "0", "--speeds", "1", "3", "--test-file", str(test_file)])
    assert set(out["results"]["convlstm3"]["metrics"]) == {"psnr@1x", "ssim@1x", "psnr@3x", "ssim@3x"}
    assert "criterion" not in out["results"]  # armalstm3 was not run
    assert [p.name for p in out["pictures"]] == ["strip_speed1.png", "psnr_per_frame_speed1.png",
                                                 "strip_speed3.png", "psnr_per_frame_speed3.png"]


@pytest.mark.slow
def test_parallel_runs_give_the_sequential_results(tmp_path):
    # one thread per run and seeded data: the process a run lands in cannot change its numbers
    argv = TINY + ["--models", "convlstm3", "armalstm3", "--seeds", "0", "1", "--cpu-threads", "1"]
    sequential = moving_mnist.main(argv + ["--output-dir", str(tmp_path / "seq")])
    parallel = moving_mnist.main(argv + ["--output-dir", str(tmp_path / "par"), "--parallel-runs", "2"])
    for name in ("convlstm3", "armalstm3"):
        assert parallel["results"][name] == sequential["results"][name]


PAPER_ON_CPU = ["--preset", "paper", "--digits", "sklearn", "--models", "armalstm3", "--speeds", "3",
                "--train-sequences", "2", "--val-sequences", "1", "--test-sequences", "1", "--batch-size", "2",
                "--input-frames", "1", "--future-frames", "1", "--epochs", "1"]
"""The paper's network (64x64, 12 cells of 32 channels) on one optimizer step of 2 two-frame sequences."""


def test_paper_preset_builds_the_paper_sizes():
    args = moving_mnist.parse_args(PAPER_ON_CPU)
    # Table 3's sizes: 0.887M for the 3x3 ConvLSTM, + 12 gate convs x 128 channels x 4 AR taps
    assert moving_mnist.count_parameters(moving_mnist.build_model(args, "convlstm3")) == 887_489
    assert moving_mnist.count_parameters(moving_mnist.build_model(args, "armalstm3")) == 887_489 + 6_144


@pytest.mark.slow
def test_paper_preset_trains_checkpoints_and_resumes(tmp_path):
    run = tmp_path / "paper"
    first = moving_mnist.main(PAPER_ON_CPU + ["--output-dir", str(run)])
    assert first["results"]["armalstm3"]["params"] == "0.894M"
    checkpoint = run / "armalstm3" / "speed3" / "seed_0" / "checkpoints" / "epoch_0001"
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    assert (state["epoch"], state["step"]) == (1, 1)
    moving_mnist.main(PAPER_ON_CPU[:-1] + ["2", "--output-dir", str(run), "--resume-from-checkpoint"])
    resumed = json.loads((checkpoint.parent / "epoch_0002" / "trainer_state.json").read_text())
    assert (resumed["epoch"], resumed["step"]) == (2, 2)  # continued after epoch 1, not restarted
    assert resumed["history"][0] == state["history"][0]


def test_throughput_mode_times_each_model(tmp_path):
    out = moving_mnist.main(TINY + ["--output-dir", str(tmp_path), "--models", "convlstm3", "armalstm3",
                                    "--throughput-steps", "1"])
    assert [row[0] for row in out["throughput"]] == ["convlstm3", "armalstm3"]
    assert all(float(row[2]) > 0 for row in out["throughput"])
    assert not any(tmp_path.iterdir())  # nothing trained, nothing written


def test_every_variant_builds():
    args = moving_mnist.parse_args(TINY + ["--hidden-channels", "4", "4", "4", "--layers-per-block", "1", "1", "1"])
    for name, variant in moving_mnist.VARIANTS.items():
        model = moving_mnist.build_model(args, name)
        gates = [m for n, m in model.named_modules() if n.endswith(".gates")]
        assert all(hasattr(g, "ar") == variant.arma for g in gates), name
        report = getattr(model, "arma_report", None)  # a plain ConvLSTM is not armafied
        assert (len(report.nonlocal_inserted) if report else 0) == (2 if variant.nonlocal_blocks else 0), name
        assert model(torch.rand(1, 3, 1, 12, 12), 2).shape == (1, 2, 1, 12, 12)
