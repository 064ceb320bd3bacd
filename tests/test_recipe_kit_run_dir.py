"""recipes/recipe_kit: one run per output folder (lock, refusals, the default folder), the decode
pass over data files, the seed table, Hub repo names and how a refusal ends a script."""
import json
from pathlib import Path

import numpy as np
import pytest
from filelock import FileLock
from PIL import Image

import recipe_kit
from recipe_kit_helpers import BATCH, listing, train, training_args, truncate

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


# ----------------------------------------------------------------------------- one run per output folder

def test_run_config_leaves_out_where_and_how_long_a_run_goes(tmp_path):
    args = training_args(tmp_path, resume_from_checkpoint="latest", push_to_hub="me/x", epochs=7)
    config = recipe_kit.run_config(args)
    assert not set(recipe_kit.NOT_RUN_CONFIG) & set(config)
    assert config["lr"] == 0.1 and config["batch_size"] == BATCH and config["seed"] == 0
    assert json.loads(json.dumps(config)) == config  # stored as it is compared


def test_run_config_holds_the_epochs_a_decaying_schedule_spans(tmp_path):
    config = recipe_kit.run_config(training_args(tmp_path, lr_scheduler_type="cosine", epochs=7))
    assert config["epochs"] == 7 and config["lr_scheduler_type"] == "cosine"


@pytest.fixture
def previous_run(fresh_accelerate_state):
    """Makes a finished run's folder as a recipe leaves it: its config and a seed's checkpoints."""
    def make(output_dir: Path) -> Path:
        recipe_kit.prepare_output_dir(training_args(output_dir))
        train(output_dir / "seed_0", 2, run_config=recipe_kit.run_config(training_args(output_dir)))
        fresh_accelerate_state()
        return output_dir

    return make


def test_new_run_into_an_empty_folder_stores_its_config(tmp_path):
    args = training_args(tmp_path / "run")
    assert recipe_kit.prepare_output_dir(args) == recipe_kit.run_config(args)
    assert json.loads((tmp_path / "run" / recipe_kit.RUN_CONFIG_NAME).read_text()) == recipe_kit.run_config(args)


def test_new_run_into_a_used_folder_refuses_and_deletes_nothing(tmp_path, previous_run):
    output_dir = previous_run(tmp_path / "run")
    before = listing(output_dir)
    with pytest.raises(ValueError, match=r"--output-dir .*run' already holds a run \(seed_0\); pass --overwrite-output-dir"):
        recipe_kit.prepare_output_dir(training_args(output_dir, lr=0.5))
    assert listing(output_dir) == before


def test_overwrite_output_dir_deletes_the_previous_run_first(tmp_path, previous_run):
    output_dir = previous_run(tmp_path / "run")
    assert recipe_kit.checkpoint_dirs(output_dir / "seed_0")
    args = training_args(output_dir, lr=0.5, overwrite_output_dir=True)
    recipe_kit.prepare_output_dir(args)
    assert listing(output_dir) == [recipe_kit.RUN_CONFIG_NAME]  # the old checkpoints are gone
    assert json.loads((output_dir / recipe_kit.RUN_CONFIG_NAME).read_text())["lr"] == 0.5


def test_overwrite_output_dir_deletes_nothing_that_no_run_wrote(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="no recipe run wrote"):
        recipe_kit.prepare_output_dir(training_args(tmp_path, overwrite_output_dir=True))
    assert listing(tmp_path) == ["notes.txt"]


def test_a_run_that_wrote_only_its_config_can_be_started_again(tmp_path):
    recipe_kit.prepare_output_dir(training_args(tmp_path, lr=0.5))  # e.g. its data failed to load
    recipe_kit.prepare_output_dir(training_args(tmp_path))
    assert json.loads((tmp_path / recipe_kit.RUN_CONFIG_NAME).read_text())["lr"] == 0.1


def test_resume_with_a_changed_config_refuses_naming_the_flags(tmp_path, previous_run):
    output_dir = previous_run(tmp_path / "run")
    before = listing(output_dir)
    args = training_args(output_dir, resume_from_checkpoint="latest", lr=0.5, batch_size=2)
    with pytest.raises(ValueError, match=r"other settings: --batch-size 4 -> 2, --lr 0.1 -> 0.5$"):
        recipe_kit.prepare_output_dir(args)
    assert listing(output_dir) == before


def test_resume_with_the_same_config_and_more_epochs_is_allowed(tmp_path, previous_run):
    output_dir = previous_run(tmp_path / "run")
    args = training_args(output_dir, resume_from_checkpoint="latest", epochs=5, report_to="tensorboard")
    assert recipe_kit.prepare_output_dir(args) == recipe_kit.run_config(training_args(output_dir))


def test_resume_from_a_named_checkpoint_checks_that_checkpoints_config(tmp_path, previous_run):
    previous_run(tmp_path / "a")
    checkpoint = str(tmp_path / "a" / "seed_0" / "checkpoints" / "epoch_0002")
    with pytest.raises(ValueError, match=r"epoch_0002 was trained with other settings: --lr 0.1 -> 0.5"):
        recipe_kit.prepare_output_dir(training_args(tmp_path / "b", resume_from_checkpoint=checkpoint, lr=0.5))
    assert not (tmp_path / "b").exists()
    recipe_kit.prepare_output_dir(training_args(tmp_path / "b", resume_from_checkpoint=checkpoint))


def test_resume_into_a_folder_without_a_stored_config_refuses(tmp_path):
    (tmp_path / "seed_0").mkdir()
    with pytest.raises(ValueError, match="no run_config.json: it cannot be checked"):
        recipe_kit.prepare_output_dir(training_args(tmp_path, resume_from_checkpoint="latest"))


def test_a_new_run_replaces_a_previous_run_in_the_default_folder_and_says_so(tmp_path, previous_run, capsys):
    output_dir = previous_run(tmp_path / "run")
    capsys.readouterr()
    recipe_kit.prepare_output_dir(training_args(output_dir, lr=0.5, output_dir_given=False))
    assert f"replacing the previous run in {output_dir}" in capsys.readouterr().out
    assert listing(output_dir) == [recipe_kit.RUN_CONFIG_NAME]
    assert json.loads((output_dir / recipe_kit.RUN_CONFIG_NAME).read_text())["lr"] == 0.5


def test_the_default_folder_is_replaced_only_when_a_run_wrote_it(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(recipe_kit.RecipeError, match="already holds a run"):
        recipe_kit.prepare_output_dir(training_args(tmp_path, output_dir_given=False))
    assert listing(tmp_path) == ["notes.txt"]


def test_a_corrupt_run_config_is_named(tmp_path, previous_run):
    output_dir = previous_run(tmp_path / "run")
    truncate(output_dir / recipe_kit.RUN_CONFIG_NAME)
    for flags in ({"resume_from_checkpoint": "latest"}, {"overwrite_output_dir": True}):
        with pytest.raises(recipe_kit.RecipeError, match=r"run_config\.json is corrupt"):
            recipe_kit.prepare_output_dir(training_args(output_dir, **flags))


def test_a_named_checkpoint_with_a_corrupt_trainer_state_is_named(tmp_path, previous_run):
    checkpoint = previous_run(tmp_path / "a") / "seed_0" / "checkpoints" / "epoch_0002"
    truncate(checkpoint / recipe_kit.TRAINER_STATE_NAME)
    with pytest.raises(recipe_kit.RecipeError, match=r"epoch_0002/trainer_state\.json is corrupt"):
        recipe_kit.prepare_output_dir(training_args(tmp_path / "b", resume_from_checkpoint=str(checkpoint)))


def test_a_second_run_into_a_claimed_folder_stops_at_once(tmp_path):
    output_dir = tmp_path / "run"
    with recipe_kit.claim_output_dir(training_args(output_dir)):
        with pytest.raises(recipe_kit.RecipeError, match="is in use by another run"):
            with recipe_kit.claim_output_dir(training_args(output_dir, lr=0.5)):
                pytest.fail("the second run must not start")
        assert json.loads((output_dir / recipe_kit.RUN_CONFIG_NAME).read_text())["lr"] == 0.1
    with recipe_kit.claim_output_dir(training_args(output_dir, overwrite_output_dir=True, lr=0.5)):
        pass  # the lock ends with the run that held it


def test_a_folder_locked_by_another_process_is_refused(tmp_path):
    output_dir = tmp_path / "run"
    output_dir.mkdir()
    with FileLock(output_dir / recipe_kit.LOCK_NAME):  # another open file description: as another process
        with pytest.raises(recipe_kit.RecipeError, match="is in use by another run"):
            with recipe_kit.claim_output_dir(training_args(output_dir)):
                pytest.fail("the second run must not start")
    assert listing(output_dir) == [recipe_kit.LOCK_NAME]


def test_a_refused_run_leaves_no_folder_behind(tmp_path, previous_run):
    checkpoint = str(previous_run(tmp_path / "a") / "seed_0" / "checkpoints" / "epoch_0002")
    with pytest.raises(recipe_kit.RecipeError, match="other settings"):
        with recipe_kit.claim_output_dir(training_args(tmp_path / "b", resume_from_checkpoint=checkpoint, lr=0.5)):
            pytest.fail("the run must not start")
    assert not (tmp_path / "b").exists()


# ----------------------------------------------------------------------------- refusals end a script

def test_a_refusal_is_one_line_and_exit_status_2(capsys, monkeypatch):
    monkeypatch.setattr("sys.argv", ["isic.py"])

    def refuse():
        raise recipe_kit.RecipeError("--data-dir 'x' does not exist\n(expected a folder)")

    with pytest.raises(SystemExit) as exit_:
        recipe_kit.run_script(refuse)
    assert exit_.value.code == 2
    assert capsys.readouterr().err == "isic.py: error: --data-dir 'x' does not exist (expected a folder)\n"


def test_an_internal_error_keeps_its_traceback():
    def fail():
        raise ValueError("a bug, not a user mistake")

    with pytest.raises(ValueError, match="a bug"):
        recipe_kit.run_script(fail)


def test_user_input_turns_value_errors_into_refusals():
    with pytest.raises(recipe_kit.RecipeError, match="--lr must be > 0"):
        with recipe_kit.user_input():
            recipe_kit.validate_training_args(training_args(Path("unused"), lr=0.0))


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


def test_check_decodable_passes_good_files(tmp_path):
    paths = image_files(tmp_path / "images")
    decoded = []
    recipe_kit.check_decodable([str(p) for p in paths], lambda i: decoded.append(recipe_kit.open_image(paths[i])),
                           what="images")
    assert [image.size for image in decoded] == [(48, 40)] * 4


def test_check_decodable_names_every_truncated_file(tmp_path):
    paths = image_files(tmp_path / "images")
    truncate(paths[1])  # PNG
    truncate(paths[2])  # JPEG
    with pytest.raises(ValueError, match=r"2 of 4 images cannot be decoded: .*image_1\.png .*image_2\.jpg") as error:
        recipe_kit.check_decodable([str(p) for p in paths], lambda i: recipe_kit.open_image(paths[i], draft_size=16),
                               what="images")
    assert "image_0" not in str(error.value) and "image_3" not in str(error.value)


def test_a_missing_dataset_is_a_refusal_naming_the_flag(tmp_path):
    with pytest.raises(recipe_kit.RecipeError, match="--hf-dataset .*missing"):
        recipe_kit.load_hf_dataset(str(tmp_path / "missing"))


def test_open_image_drafts_jpegs_to_the_training_size(tmp_path):
    path = tmp_path / "big.jpg"
    Image.fromarray(np.zeros((400, 480, 3), dtype=np.uint8)).save(path)
    assert recipe_kit.open_image(path).size == (480, 400)
    assert recipe_kit.open_image(path, draft_size=50).size == (60, 50)  # DCT scaling by 1/8, not a resize to 50


# ----------------------------------------------------------------------------- seed table

def table_cells(markdown: str) -> list[list[str]]:
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in markdown.splitlines()
            if line.startswith("|") and not line.startswith("|-")]


def test_seed_table_is_mean_and_sample_std(tmp_path):
    rows = {"arma-unet": {0: {"JS": 0.7}, 1: {"JS": 0.8}, 2: {"JS": 0.9}}}
    md, js = recipe_kit.write_seed_table(rows, ["JS"], tmp_path / "results", extra_columns={"arma-unet": {"params": "3.45M"}})
    # values chosen so that mean = 0.8 and the ddof=1 std = 0.1 exactly (ddof=0 would be 0.0816)
    assert table_cells(md.read_text()) == [["model", "params", "JS"], ["arma-unet", "3.45M", "0.800 ± 0.100"]]
    assert md.read_text().splitlines()[-1] == "mean ± std (sample std, ddof=1) over 3 seeds"
    stats = json.loads(js.read_text())["arma-unet"]["metrics"]["JS"]
    assert stats["per_seed"] == [0.7, 0.8, 0.9]
    assert stats["std"] == pytest.approx(0.1, abs=1e-12)  # float64 rounding only


def test_seed_table_of_one_seed_reports_no_spread(tmp_path):
    md, js = recipe_kit.write_seed_table({"unet": {0: {"JS": 0.75}}}, ["JS"], tmp_path / "results")
    assert table_cells(md.read_text())[1] == ["unet", "0.750"]
    assert md.read_text().splitlines()[-1] == "one seed: each cell is that run's value (no std)"
    assert json.loads(js.read_text())["unet"]["metrics"]["JS"]["std"] is None


@pytest.mark.parametrize("counts, caption", [
    ({3}, "mean ± std (sample std, ddof=1) over 3 seeds"),
    ({1}, "one seed: each cell is that run's value (no std)"),
    ({1, 3}, "mean ± std (sample std, ddof=1) over 3 seeds; a row of one seed shows its value (no std)"),
    ({2, 5}, "mean ± std (sample std, ddof=1) over 2 or 5 seeds"),
])
def test_seed_table_caption_says_what_a_cell_holds(counts, caption):
    assert recipe_kit.seed_caption(counts) == caption


@pytest.mark.parametrize("seeds, variant, expected", [
    (None, None, "me/x"), ([0, 1], None, "me/x-seed1"),
    (None, "reparam", "me/x-reparam"), ([0, 1], "no_reparam", "me/x-no_reparam-seed1")])
def test_hub_repo_names_one_repo_per_run(tmp_path, seeds, variant, expected):
    args = training_args(tmp_path, push_to_hub="me/x", seeds=seeds)
    assert recipe_kit.hub_repo_for_seed(args, 1, variant) == expected
    assert recipe_kit.hub_repo_for_seed(training_args(tmp_path, seeds=seeds), 1, variant) is None
