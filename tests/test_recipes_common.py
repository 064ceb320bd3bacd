"""recipes/common.py: the training loop (fit, rotation, resume, best epoch, lr schedule), one run per output
folder, the zero-batch refusal, the decode pass over data files, and the seed table."""
import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from accelerate.state import AcceleratorState
from PIL import Image
from safetensors.torch import load_file
from torch.utils.data import DataLoader, TensorDataset

import common

SAMPLES, BATCH = 12, 4  # 3 optimizer steps per epoch


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Each test builds its own Accelerator; leave no global state to other tests."""
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def training_args(output_dir: Path, **flags) -> argparse.Namespace:
    """The shared recipe flags as a recipe parses them, with ``flags`` overriding."""
    parser = argparse.ArgumentParser()
    common.add_training_args(parser, output_dir=str(output_dir), epochs=3, batch_size=BATCH, lr=0.1)
    args = parser.parse_args(["--cpu"])
    for key, value in flags.items():
        setattr(args, key, value)
    return args


def train(run_dir: Path, epochs: int, *, resume_from: Path | None = None, limit: int = 10,
          samples: int = SAMPLES, scores: list[float] | None = None, mode: str = "max",
          run_config: dict | None = None, schedule: str = "constant",
          warmup: int = 0) -> tuple[common.TrainerState, nn.Module]:
    """A linear regression trained by ``common.fit`` as a recipe does: seed, model, prepare, fit.

    ``scores`` scripts the validation metric per epoch (for best-epoch tracking); without it
    the metric is the validation loss. ``schedule`` and ``warmup`` are the lr schedule flags;
    the schedule spans ``epochs``.
    """
    common.seed_everything(0, deterministic=False)
    args = training_args(run_dir, epochs=epochs, lr_scheduler_type=schedule, num_warmup_steps=warmup)
    accelerator = common.make_accelerator(args)
    data = torch.Generator().manual_seed(1)
    inputs, targets = torch.randn(samples, 3, generator=data), torch.randn(samples, 1, generator=data)
    model = nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = DataLoader(TensorDataset(inputs, targets), batch_size=BATCH, shuffle=True, drop_last=True)
    lr_scheduler = common.make_lr_scheduler(args, optimizer, len(loader))
    model, optimizer, lr_scheduler, loader = accelerator.prepare(model, optimizer, lr_scheduler, loader)
    scripted = iter(scores or [])

    def training_step(model, batch):
        x, y = batch
        return {"loss": nn.functional.mse_loss(model(x), y)}

    def evaluate(model):
        with torch.no_grad():
            loss = nn.functional.mse_loss(model(inputs), targets).item()
        return {"score": next(scripted) if scores else -loss, "loss": loss}

    state = common.fit(accelerator, model, optimizer, loader, training_step=training_step, evaluate=evaluate,
                       epochs=epochs, run_dir=run_dir, monitor="score", mode=mode, resume_from=resume_from,
                       checkpoints_total_limit=limit, run_config=run_config, lr_scheduler=lr_scheduler)
    return state, accelerator.unwrap_model(model)


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "model.safetensors"))


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


# ----------------------------------------------------------------------------- fit

def test_fit_trains_every_batch_and_checkpoints_every_epoch(tmp_path):
    common.seed_everything(0, deterministic=False)
    before = nn.Linear(3, 1).state_dict()  # the initial weights of train()'s model
    state, model = train(tmp_path, 2)
    assert state.epoch == 2 and state.step == 2 * SAMPLES // BATCH
    assert [s["step"] for s in state.steps] == list(range(1, state.step + 1))
    assert [h["epoch"] for h in state.history] == [1, 2]
    assert all(np.isfinite(h["train_loss"]) for h in state.history)
    assert not torch.equal(model.weight, before["weight"])  # the optimizer did step
    saved = common.TrainerState.load(tmp_path / "checkpoints" / "epoch_0002" / common.TRAINER_STATE_NAME)
    assert saved.step == state.step and saved.history == state.history
    assert_same_weights(weights(tmp_path / "checkpoints" / "epoch_0002"), model.state_dict())


def test_fit_stores_the_run_config_in_every_checkpoint(tmp_path):
    train(tmp_path, 2, run_config={"lr": 0.1})
    for epoch in (1, 2):
        path = tmp_path / "checkpoints" / f"epoch_{epoch:04d}" / common.TRAINER_STATE_NAME
        assert common.TrainerState.load(path).run_config == {"lr": 0.1}


@pytest.mark.parametrize("limit, kept", [(1, [4]), (2, [3, 4]), (5, [1, 2, 3, 4])])
def test_checkpoint_rotation_keeps_the_newest(tmp_path, limit, kept):
    train(tmp_path, 4, limit=limit)
    assert [p.name for p in common.checkpoint_dirs(tmp_path)] == [f"epoch_{e:04d}" for e in kept]


def test_resume_from_latest_is_bit_identical_to_an_uninterrupted_run(tmp_path):
    uninterrupted, model = train(tmp_path / "a", 3)
    train(tmp_path / "b", 1)
    AcceleratorState._reset_state(reset_partial_state=True)
    latest = common.resolve_resume("latest", tmp_path / "b")
    assert latest.name == "epoch_0001"
    resumed, resumed_model = train(tmp_path / "b", 3, resume_from=latest)
    # deterministic CPU kernels, the same batches (seedable sampler) and restored RNG/optimizer state
    assert_same_weights(resumed_model.state_dict(), model.state_dict())
    assert resumed.history == uninterrupted.history and resumed.steps == uninterrupted.steps


def test_resume_from_a_named_checkpoint_continues_after_its_epoch(tmp_path):
    uninterrupted, model = train(tmp_path / "a", 3)
    AcceleratorState._reset_state(reset_partial_state=True)
    named = tmp_path / "a" / "checkpoints" / "epoch_0001"
    resumed, resumed_model = train(tmp_path / "b", 3, resume_from=named)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]  # epoch 1 from the checkpoint, 2-3 trained
    assert_same_weights(resumed_model.state_dict(), model.state_dict())
    assert [p.name for p in common.checkpoint_dirs(tmp_path / "b")] == ["epoch_0002", "epoch_0003"]


def test_resuming_a_finished_run_trains_nothing(tmp_path):
    finished, model = train(tmp_path, 2)
    AcceleratorState._reset_state(reset_partial_state=True)
    again, again_model = train(tmp_path, 2, resume_from=common.resolve_resume("latest", tmp_path))
    assert again.step == finished.step and again.history == finished.history
    assert_same_weights(again_model.state_dict(), model.state_dict())


@pytest.mark.parametrize("scores, mode, best_epoch", [
    ([0.5, 0.9, 0.7], "max", 2),
    ([0.5, 0.9, 0.7], "min", 1),
    ([float("nan"), 0.2, 0.1], "max", 2),  # NaN is never the best
    ([float("nan")] * 3, "max", None),
])
def test_best_epoch_tracking_keeps_that_epochs_weights(tmp_path, scores, mode, best_epoch):
    state, _ = train(tmp_path, 3, scores=scores, mode=mode)
    assert state.best_epoch == best_epoch
    if best_epoch is None:
        assert state.best_metric is None and not (tmp_path / common.BEST_DIRNAME).exists()
        return
    assert state.best_metric == scores[best_epoch - 1]
    assert_same_weights(weights(tmp_path / common.BEST_DIRNAME),
                        weights(tmp_path / "checkpoints" / f"epoch_{best_epoch:04d}"))


def test_fit_refuses_a_loader_without_a_single_batch(tmp_path):
    # 3 samples, batch 4, drop_last: zero optimizer steps and a NaN train loss if it ran
    with pytest.raises(ValueError, match=r"3 training samples give no batch .* batch size of 4 .* 0 optimizer steps"):
        train(tmp_path, 2, samples=3)
    assert not tmp_path.exists() or not any(tmp_path.iterdir())  # nothing written


def test_fit_refuses_an_unknown_monitor(tmp_path):
    common.seed_everything(0, deterministic=False)
    accelerator = common.make_accelerator(training_args(tmp_path))
    model = nn.Linear(1, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = DataLoader(TensorDataset(torch.zeros(4, 1)), batch_size=2)
    with pytest.raises(ValueError, match="monitor='acc'"):
        common.fit(accelerator, model, optimizer, loader, training_step=lambda m, b: {"loss": m(b[0]).sum()},
                   evaluate=lambda m: {"loss": 0.0}, epochs=1, run_dir=tmp_path, monitor="acc")


def test_latest_checkpoint_skips_interrupted_saves(tmp_path):
    for epoch, complete in [(1, True), (2, True), (3, False)]:
        folder = tmp_path / "checkpoints" / f"epoch_{epoch:04d}"
        folder.mkdir(parents=True)
        if complete:
            common.TrainerState(epoch=epoch).save(folder / common.TRAINER_STATE_NAME)
    assert common.resolve_resume("latest", tmp_path).name == "epoch_0002"
    assert common.resolve_resume("latest", tmp_path / "fresh") is None
    assert common.resolve_resume(None, tmp_path) is None


# ----------------------------------------------------------------------------- lr schedule

def schedule_factors(schedule: str, warmup: int, epochs: int = 3, batches_per_epoch: int = 3) -> list[float]:
    """The lr of every optimizer step, as a fraction of the peak."""
    args = training_args(Path("unused"), epochs=epochs, lr_scheduler_type=schedule, num_warmup_steps=warmup)
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = common.make_lr_scheduler(args, optimizer, batches_per_epoch)
    factors = []
    for _ in range(epochs * batches_per_epoch):
        factors.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return factors


@pytest.mark.parametrize("schedule, middle, last", [("constant", 1.0, 1.0), ("linear", 0.5, 1 / 8),
                                                    ("cosine", 0.5, 0.5 * (1 + np.cos(7 * np.pi / 8)))])
def test_lr_schedules_warm_up_then_take_their_shape(schedule, middle, last):
    # 9 steps, 1 of warm-up: from 0 to the peak, then 8 steps of decay (step 5 is its middle)
    factors = schedule_factors(schedule, warmup=1)
    assert factors[0] == 0.0 and factors[1] == 1.0
    assert factors[5] == pytest.approx(middle) and factors[8] == pytest.approx(last)
    assert all(a >= b for a, b in zip(factors[1:], factors[2:]))


def test_lr_schedule_counts_optimizer_steps_not_batches():
    args = training_args(Path("unused"), epochs=2, lr_scheduler_type="linear", gradient_accumulation_steps=2)
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = common.make_lr_scheduler(args, optimizer, batches_per_epoch=5)  # 3 optimizer steps an epoch
    for _ in range(3):
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.5)  # half of the 6 steps done


def test_warm_up_as_long_as_the_run_is_refused():
    with pytest.raises(ValueError, match="--num-warmup-steps must be less than the run's 9 optimizer steps"):
        schedule_factors("cosine", warmup=9)


def test_fit_steps_the_schedule_and_logs_each_steps_lr(tmp_path):
    state, _ = train(tmp_path, 3, schedule="cosine", warmup=1)
    lrs = [step["lr"] for step in state.steps]
    assert lrs[:2] == [0.0, 0.1]  # the lr each step used: warm-up from 0, then train()'s peak 0.1
    assert lrs[-1] == pytest.approx(0.1 * 0.5 * (1 + np.cos(7 * np.pi / 8)))


def test_resume_continues_the_schedule_where_it_stopped(tmp_path):
    uninterrupted, model = train(tmp_path / "a", 3, schedule="cosine", warmup=2)
    AcceleratorState._reset_state(reset_partial_state=True)
    named = tmp_path / "a" / "checkpoints" / "epoch_0001"
    resumed, resumed_model = train(tmp_path / "b", 3, resume_from=named, schedule="cosine", warmup=2)
    assert [step["lr"] for step in resumed.steps] == [step["lr"] for step in uninterrupted.steps]
    assert_same_weights(resumed_model.state_dict(), model.state_dict())


# ----------------------------------------------------------------------------- one run per output folder

def test_run_config_leaves_out_where_and_how_long_a_run_goes(tmp_path):
    args = training_args(tmp_path, resume_from_checkpoint="latest", push_to_hub="me/x", epochs=7)
    config = common.run_config(args)
    assert not set(common.NOT_RUN_CONFIG) & set(config)
    assert config["lr"] == 0.1 and config["batch_size"] == BATCH and config["seed"] == 0
    assert json.loads(json.dumps(config)) == config  # stored as it is compared


def test_run_config_holds_the_epochs_a_decaying_schedule_spans(tmp_path):
    config = common.run_config(training_args(tmp_path, lr_scheduler_type="cosine", epochs=7))
    assert config["epochs"] == 7 and config["lr_scheduler_type"] == "cosine"


def previous_run(output_dir: Path) -> Path:
    """A finished run's folder as a recipe leaves it: its config and a seed's checkpoints."""
    common.prepare_output_dir(training_args(output_dir))
    train(output_dir / "seed_0", 2, run_config=common.run_config(training_args(output_dir)))
    AcceleratorState._reset_state(reset_partial_state=True)
    return output_dir


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_new_run_into_an_empty_folder_stores_its_config(tmp_path):
    args = training_args(tmp_path / "run")
    assert common.prepare_output_dir(args) == common.run_config(args)
    assert json.loads((tmp_path / "run" / common.RUN_CONFIG_NAME).read_text()) == common.run_config(args)


def test_new_run_into_a_used_folder_refuses_and_deletes_nothing(tmp_path):
    output_dir = previous_run(tmp_path / "run")
    before = listing(output_dir)
    with pytest.raises(ValueError, match=r"--output-dir .*run' already holds a run \(seed_0\); pass --overwrite-output-dir"):
        common.prepare_output_dir(training_args(output_dir, lr=0.5))
    assert listing(output_dir) == before


def test_overwrite_output_dir_deletes_the_previous_run_first(tmp_path):
    output_dir = previous_run(tmp_path / "run")
    assert common.checkpoint_dirs(output_dir / "seed_0")
    args = training_args(output_dir, lr=0.5, overwrite_output_dir=True)
    common.prepare_output_dir(args)
    assert listing(output_dir) == [common.RUN_CONFIG_NAME]  # the old checkpoints are gone
    assert json.loads((output_dir / common.RUN_CONFIG_NAME).read_text())["lr"] == 0.5


def test_overwrite_output_dir_deletes_nothing_that_no_run_wrote(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="no recipe run wrote"):
        common.prepare_output_dir(training_args(tmp_path, overwrite_output_dir=True))
    assert listing(tmp_path) == ["notes.txt"]


def test_a_run_that_wrote_only_its_config_can_be_started_again(tmp_path):
    common.prepare_output_dir(training_args(tmp_path, lr=0.5))  # e.g. its data failed to load
    common.prepare_output_dir(training_args(tmp_path))
    assert json.loads((tmp_path / common.RUN_CONFIG_NAME).read_text())["lr"] == 0.1


def test_resume_with_a_changed_config_refuses_naming_the_flags(tmp_path):
    output_dir = previous_run(tmp_path / "run")
    before = listing(output_dir)
    args = training_args(output_dir, resume_from_checkpoint="latest", lr=0.5, batch_size=2)
    with pytest.raises(ValueError, match=r"other settings: --batch-size 4 -> 2, --lr 0.1 -> 0.5$"):
        common.prepare_output_dir(args)
    assert listing(output_dir) == before


def test_resume_with_the_same_config_and_more_epochs_is_allowed(tmp_path):
    output_dir = previous_run(tmp_path / "run")
    args = training_args(output_dir, resume_from_checkpoint="latest", epochs=5, report_to="tensorboard")
    assert common.prepare_output_dir(args) == common.run_config(training_args(output_dir))


def test_resume_from_a_named_checkpoint_checks_that_checkpoints_config(tmp_path):
    previous_run(tmp_path / "a")
    checkpoint = str(tmp_path / "a" / "seed_0" / "checkpoints" / "epoch_0002")
    with pytest.raises(ValueError, match=r"epoch_0002 was trained with other settings: --lr 0.1 -> 0.5"):
        common.prepare_output_dir(training_args(tmp_path / "b", resume_from_checkpoint=checkpoint, lr=0.5))
    assert not (tmp_path / "b").exists()
    common.prepare_output_dir(training_args(tmp_path / "b", resume_from_checkpoint=checkpoint))


def test_resume_into_a_folder_without_a_stored_config_refuses(tmp_path):
    (tmp_path / "seed_0").mkdir()
    with pytest.raises(ValueError, match="no run_config.json: it cannot be checked"):
        common.prepare_output_dir(training_args(tmp_path, resume_from_checkpoint="latest"))


# ----------------------------------------------------------------------------- data files

def image_files(folder: Path) -> list[Path]:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    paths = []
    for i, suffix in enumerate([".jpg", ".png", ".jpg", ".png"]):
        path = folder / f"image_{i}{suffix}"
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def test_check_decodable_passes_good_files(tmp_path):
    paths = image_files(tmp_path / "images")
    decoded = []
    common.check_decodable([str(p) for p in paths], lambda i: decoded.append(common.open_image(paths[i])),
                           what="images")
    assert [image.size for image in decoded] == [(48, 40)] * 4


def test_check_decodable_names_every_truncated_file(tmp_path):
    paths = image_files(tmp_path / "images")
    truncate(paths[1])  # PNG
    truncate(paths[2])  # JPEG
    with pytest.raises(ValueError, match=r"2 of 4 images cannot be decoded: .*image_1\.png .*image_2\.jpg") as error:
        common.check_decodable([str(p) for p in paths], lambda i: common.open_image(paths[i], draft_size=16),
                               what="images")
    assert "image_0" not in str(error.value) and "image_3" not in str(error.value)


def test_open_image_drafts_jpegs_to_the_training_size(tmp_path):
    path = tmp_path / "big.jpg"
    Image.fromarray(np.zeros((400, 480, 3), dtype=np.uint8)).save(path)
    assert common.open_image(path).size == (480, 400)
    assert common.open_image(path, draft_size=50).size == (60, 50)  # DCT scaling by 1/8, not a resize to 50


# ----------------------------------------------------------------------------- seed table

def table_cells(markdown: str) -> list[list[str]]:
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in markdown.splitlines()
            if line.startswith("|") and not line.startswith("|-")]


def test_seed_table_is_mean_and_sample_std(tmp_path):
    rows = {"arma-unet": {0: {"JS": 0.7}, 1: {"JS": 0.8}, 2: {"JS": 0.9}}}
    md, js = common.write_seed_table(rows, ["JS"], tmp_path / "results", extra_columns={"arma-unet": {"params": "3.45M"}})
    # values chosen so that mean = 0.8 and the ddof=1 std = 0.1 exactly (ddof=0 would be 0.0816)
    assert table_cells(md.read_text()) == [["model", "params", "JS"], ["arma-unet", "3.45M", "0.800 ± 0.100"]]
    stats = json.loads(js.read_text())["arma-unet"]["metrics"]["JS"]
    assert stats["per_seed"] == [0.7, 0.8, 0.9]
    assert stats["std"] == pytest.approx(0.1, abs=1e-12)  # float64 rounding only


def test_seed_table_of_one_seed_reports_no_spread(tmp_path):
    md, js = common.write_seed_table({"unet": {0: {"JS": 0.75}}}, ["JS"], tmp_path / "results")
    assert table_cells(md.read_text())[1] == ["unet", "0.750"]
    assert json.loads(js.read_text())["unet"]["metrics"]["JS"]["std"] is None


@pytest.mark.parametrize("seeds, variant, expected", [
    (None, None, "me/x"), ([0, 1], None, "me/x-seed1"),
    (None, "reparam", "me/x-reparam"), ([0, 1], "no_reparam", "me/x-no_reparam-seed1")])
def test_hub_repo_names_one_repo_per_run(tmp_path, seeds, variant, expected):
    args = training_args(tmp_path, push_to_hub="me/x", seeds=seeds)
    assert common.hub_repo_for_seed(args, 1, variant) == expected
    assert common.hub_repo_for_seed(training_args(tmp_path, seeds=seeds), 1, variant) is None


def test_fit_options_follow_the_shared_flags(tmp_path):
    run_dir = tmp_path / "seed_0"
    for epoch in (1, 2):
        folder = run_dir / "checkpoints" / f"epoch_{epoch:04d}"
        folder.mkdir(parents=True)
        common.TrainerState(epoch=epoch).save(folder / common.TRAINER_STATE_NAME)
    args = training_args(tmp_path, resume_from_checkpoint="latest", checkpoints_total_limit=3)
    options = common.fit_options(args, run_dir)
    assert options == {"resume_from": run_dir / "checkpoints" / "epoch_0002", "checkpoints_total_limit": 3,
                       "run_config": common.run_config(args)}
    assert common.fit_options(training_args(tmp_path), run_dir)["resume_from"] is None
