"""recipes/recipe_kit: the training loop (fit, rotation, resume, best epoch, lr schedule), resume
from a corrupt checkpoint, and the zero-batch refusal."""
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

import recipe_kit
from recipe_kit_helpers import BATCH, SAMPLES, assert_same_weights, train, training_args, truncate, weights

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


# ----------------------------------------------------------------------------- fit

def test_fit_trains_every_batch_and_checkpoints_every_epoch(tmp_path):
    recipe_kit.seed_everything(0, deterministic=False)
    before = nn.Linear(3, 1).state_dict()  # the initial weights of train()'s model
    state, model = train(tmp_path, 2)
    assert state.epoch == 2 and state.step == 2 * SAMPLES // BATCH
    assert [s["step"] for s in state.steps] == list(range(1, state.step + 1))
    assert [h["epoch"] for h in state.history] == [1, 2]
    assert all(np.isfinite(h["train_loss"]) for h in state.history)
    assert not torch.equal(model.weight, before["weight"])  # the optimizer did step
    saved = recipe_kit.TrainerState.load(tmp_path / "checkpoints" / "epoch_0002" / recipe_kit.TRAINER_STATE_NAME)
    assert saved.step == state.step and saved.history == state.history
    assert_same_weights(weights(tmp_path / "checkpoints" / "epoch_0002"), model.state_dict())


def test_fit_stores_the_run_config_in_every_checkpoint(tmp_path):
    train(tmp_path, 2, run_config={"lr": 0.1})
    for epoch in (1, 2):
        path = tmp_path / "checkpoints" / f"epoch_{epoch:04d}" / recipe_kit.TRAINER_STATE_NAME
        assert recipe_kit.TrainerState.load(path).run_config == {"lr": 0.1}


@pytest.mark.parametrize("limit, kept", [(1, [4]), (2, [3, 4]), (5, [1, 2, 3, 4])])
def test_checkpoint_rotation_keeps_the_newest(tmp_path, limit, kept):
    train(tmp_path, 4, limit=limit)
    assert [p.name for p in recipe_kit.checkpoint_dirs(tmp_path)] == [f"epoch_{e:04d}" for e in kept]


def test_resume_from_latest_is_bit_identical_to_an_uninterrupted_run(tmp_path, fresh_accelerate_state):
    uninterrupted, model = train(tmp_path / "a", 3)
    train(tmp_path / "b", 1)
    fresh_accelerate_state()
    latest = recipe_kit.resolve_resume("latest", tmp_path / "b")
    assert latest.name == "epoch_0001"
    resumed, resumed_model = train(tmp_path / "b", 3, resume_from=latest)
    # deterministic CPU kernels, the same batches (seedable sampler) and restored RNG/optimizer state
    assert_same_weights(resumed_model.state_dict(), model.state_dict())
    assert resumed.history == uninterrupted.history and resumed.steps == uninterrupted.steps


def test_resume_from_a_named_checkpoint_continues_after_its_epoch(tmp_path, fresh_accelerate_state):
    uninterrupted, model = train(tmp_path / "a", 3)
    fresh_accelerate_state()
    named = tmp_path / "a" / "checkpoints" / "epoch_0001"
    resumed, resumed_model = train(tmp_path / "b", 3, resume_from=named)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]  # epoch 1 from the checkpoint, 2-3 trained
    assert_same_weights(resumed_model.state_dict(), model.state_dict())
    assert [p.name for p in recipe_kit.checkpoint_dirs(tmp_path / "b")] == ["epoch_0002", "epoch_0003"]


def test_resuming_a_finished_run_trains_nothing(tmp_path, fresh_accelerate_state):
    finished, model = train(tmp_path, 2)
    fresh_accelerate_state()
    again, again_model = train(tmp_path, 2, resume_from=recipe_kit.resolve_resume("latest", tmp_path))
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
        assert state.best_metric is None and not (tmp_path / recipe_kit.BEST_DIRNAME).exists()
        return
    assert state.best_metric == scores[best_epoch - 1]
    assert_same_weights(weights(tmp_path / recipe_kit.BEST_DIRNAME),
                        weights(tmp_path / "checkpoints" / f"epoch_{best_epoch:04d}"))


def test_fit_refuses_a_loader_without_a_single_batch(tmp_path):
    # 3 samples, batch 4, drop_last: zero optimizer steps and a NaN train loss if it ran
    with pytest.raises(ValueError, match=r"3 training samples give no batch .* batch size of 4 .* 0 optimizer steps"):
        train(tmp_path, 2, samples=3)
    assert not tmp_path.exists() or not any(tmp_path.iterdir())  # nothing written


def test_fit_refuses_an_unknown_monitor(tmp_path):
    recipe_kit.seed_everything(0, deterministic=False)
    accelerator = recipe_kit.make_accelerator(training_args(tmp_path))
    model = nn.Linear(1, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = DataLoader(TensorDataset(torch.zeros(4, 1)), batch_size=2)
    with pytest.raises(ValueError, match="monitor='acc'"):
        recipe_kit.fit(accelerator, model, optimizer, loader, training_step=lambda m, b: {"loss": m(b[0]).sum()},
                   evaluate=lambda m: {"loss": 0.0}, epochs=1, run_dir=tmp_path, monitor="acc")


def test_latest_checkpoint_skips_interrupted_saves(tmp_path):
    for epoch, complete in [(1, True), (2, True), (3, False)]:
        folder = tmp_path / "checkpoints" / f"epoch_{epoch:04d}"
        folder.mkdir(parents=True)
        if complete:
            recipe_kit.TrainerState(epoch=epoch).save(folder / recipe_kit.TRAINER_STATE_NAME)
    assert recipe_kit.resolve_resume("latest", tmp_path).name == "epoch_0002"
    assert recipe_kit.resolve_resume("latest", tmp_path / "fresh") is None
    assert recipe_kit.resolve_resume(None, tmp_path) is None


# ----------------------------------------------------------------------------- corrupt checkpoints

@pytest.mark.parametrize("broken", [recipe_kit.WEIGHTS_NAME, recipe_kit.TRAINER_STATE_NAME, "optimizer.bin"])
def test_resume_from_latest_skips_a_corrupt_checkpoint_and_says_so(tmp_path, broken, capsys, fresh_accelerate_state):
    _, model = train(tmp_path / "a", 2)
    train(tmp_path / "b", 2)
    fresh_accelerate_state()
    truncate(tmp_path / "b" / "checkpoints" / "epoch_0002" / broken)
    capsys.readouterr()
    latest = recipe_kit.resolve_resume("latest", tmp_path / "b")
    assert latest.name == "epoch_0001"
    line, = capsys.readouterr().out.splitlines()
    assert f"resuming from {latest}" in line and f"epoch_0002/{broken}" in line
    resumed, resumed_model = train(tmp_path / "b", 2, resume_from=latest)
    assert [h["epoch"] for h in resumed.history] == [1, 2]  # epoch 2 trained again, as in an uninterrupted run
    assert_same_weights(resumed_model.state_dict(), model.state_dict())


def test_resume_with_only_corrupt_checkpoints_stops_naming_the_newest_broken_file(tmp_path):
    train(tmp_path, 2)
    for epoch in (1, 2):
        truncate(tmp_path / "checkpoints" / f"epoch_{epoch:04d}" / recipe_kit.WEIGHTS_NAME)
    with pytest.raises(ValueError, match=r"no complete checkpoint .*epoch_0002/model\.safetensors is corrupt"):
        recipe_kit.resolve_resume("latest", tmp_path)


def test_resume_from_a_named_corrupt_checkpoint_stops_naming_the_file(tmp_path):
    train(tmp_path, 1)
    checkpoint = tmp_path / "checkpoints" / "epoch_0001"
    truncate(checkpoint / "random_states_0.pkl")
    with pytest.raises(ValueError, match=r"--resume-from-checkpoint: .*epoch_0001/random_states_0\.pkl is corrupt"):
        recipe_kit.resolve_resume(str(checkpoint), tmp_path)


# ----------------------------------------------------------------------------- the train-and-test skeleton

def test_train_and_test_trains_then_tests_the_best_val_weights(tmp_path, fresh_accelerate_state):
    data = torch.Generator().manual_seed(1)
    dataset = TensorDataset(torch.randn(SAMPLES, 3, generator=data), torch.randn(SAMPLES, 1, generator=data))
    scores = iter([0.5, 0.9, 0.7])  # epoch 2 is the best

    def mse(model, loader):
        return {"mse": sum(nn.functional.mse_loss(model(x), y).item() for x, y in loader)}

    def run(args):
        with recipe_kit.recipe_accelerator(args, "test") as accelerator:
            return recipe_kit.train_and_test(
                accelerator, args, {"seed": 0, "lr": 0.1, "epochs": 3, "batch_size": BATCH},
                build_model=lambda: nn.Linear(3, 1), datasets={"train": dataset, "val": dataset, "test": dataset},
                training_step=lambda model, batch: {"loss": nn.functional.mse_loss(model(batch[0]), batch[1])},
                evaluate=lambda model, loader: {"score": next(scores)}, test=mse, run_dir=tmp_path, monitor="score")

    trained = run(training_args(tmp_path))
    assert (trained.state.epoch, trained.state.best_epoch, trained.parameters) == (3, 2, 4)
    best = weights(tmp_path / recipe_kit.BEST_DIRNAME)
    assert_same_weights(trained.model.state_dict(), best)
    assert_same_weights(best, weights(tmp_path / "checkpoints" / "epoch_0002"))
    expected = {"mse": sum(nn.functional.mse_loss(x @ best["weight"].T + best["bias"], y).item()
                           for x, y in DataLoader(dataset, batch_size=BATCH))}
    assert trained.test == pytest.approx(expected, rel=1e-6)  # the same sums in another order of float32 ops
    fresh_accelerate_state()
    resumed = run(training_args(tmp_path, resume_from_checkpoint="latest"))  # --resume-from-checkpoint
    assert resumed.state.step == trained.state.step  # the finished run was resumed, not trained again


# ----------------------------------------------------------------------------- lr schedule

def schedule_factors(schedule: str, warmup: int, epochs: int = 3, batches_per_epoch: int = 3) -> list[float]:
    """The lr of every optimizer step, as a fraction of the peak."""
    args = training_args(Path("unused"), epochs=epochs, lr_scheduler_type=schedule, num_warmup_steps=warmup)
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = recipe_kit.make_lr_scheduler(args, optimizer, batches_per_epoch)
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
    scheduler = recipe_kit.make_lr_scheduler(args, optimizer, batches_per_epoch=5)  # 3 optimizer steps an epoch
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


def test_resume_continues_the_schedule_where_it_stopped(tmp_path, fresh_accelerate_state):
    uninterrupted, model = train(tmp_path / "a", 3, schedule="cosine", warmup=2)
    fresh_accelerate_state()
    named = tmp_path / "a" / "checkpoints" / "epoch_0001"
    resumed, resumed_model = train(tmp_path / "b", 3, resume_from=named, schedule="cosine", warmup=2)
    assert [step["lr"] for step in resumed.steps] == [step["lr"] for step in uninterrupted.steps]
    assert_same_weights(resumed_model.state_dict(), model.state_dict())


