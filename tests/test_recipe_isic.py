"""recipes/isic.py: smoke run end to end, resume, two gloo processes, data loading, bad input."""
import contextlib
import io
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import isic
import isic_data
import recipe_kit.results
from arma_plugin import from_pretrained

REPO = Path(__file__).resolve().parents[1]
SMOKE_IMAGES = 12  # fewer than --smoke's 24 to keep CI short: split 8 / 1 / 3
SMOKE_TEST_SIZE = 3


pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


def run(output_dir: Path, *extra: str) -> dict:
    return isic.main(["--smoke", "--smoke-images", str(SMOKE_IMAGES), "--deterministic",
                      "--output-dir", str(output_dir), *extra])


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, reset_accelerate_state):
    """One 2-epoch smoke run; ``--push-to-hub`` goes to a stand-in that records its call."""
    output_dir = tmp_path_factory.mktemp("isic_smoke")
    pushed, printed = [], io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(printed):
        patch.setattr(recipe_kit.results, "push_to_hub", lambda model, repo, **card: pushed.append((model, repo, card)))
        results = run(output_dir, "--epochs", "2", "--push-to-hub", "someone/arma-unet-smoke")
    reset_accelerate_state()
    return output_dir, results, pushed, printed.getvalue()


def test_smoke_run_says_its_data_is_synthetic_and_where_its_outputs_are(smoke_run):
    output_dir, *_, printed = smoke_run
    assert f"synthetic lesions written to {output_dir / 'smoke_data'} (not ISIC data)" in printed
    assert f"outputs in {output_dir}: results.md/.json (the table above, on synthetic smoke data" in printed


def test_smoke_run_writes_metrics_checkpoints_and_card(smoke_run):
    output_dir, results, *_ = smoke_run
    run_dir = output_dir / "seed_0"
    record = json.loads((run_dir / "test_metrics.json").read_text())
    assert record["n_images"] == record["test_size"] == SMOKE_TEST_SIZE
    assert record["JS"] == results[0]["JS"]  # the same float, through JSON
    table = json.loads((output_dir / "results.json").read_text())
    assert table["arma-unet"]["metrics"]["JS"]["per_seed"] == [record["JS"]]
    assert "one seed: each cell is that run's value (no std)" in (output_dir / "results.md").read_text()
    assert [p.name for p in sorted((run_dir / "checkpoints").iterdir())] == ["epoch_0001", "epoch_0002"]
    card = (run_dir / "final" / "README.md").read_text()
    assert f"| JS | {record['JS']:.4f} |" in card and "synthetic smoke data" in card


def test_final_checkpoint_loads_with_from_pretrained_and_is_the_best_val_model(smoke_run):
    output_dir, *_ = smoke_run
    run_dir = output_dir / "seed_0"
    model = from_pretrained(run_dir / "final")
    best = load_file(str(run_dir / "best" / "model.safetensors"))
    state = model.state_dict()
    assert best.keys() == state.keys()
    for name, tensor in best.items():
        assert torch.equal(state[name], tensor), name
    assert any(name.endswith("ar.alpha") for name in state)  # it is an ARMA model


def test_push_to_hub_gets_the_final_model_and_its_measured_card(smoke_run):
    output_dir, results, pushed, _ = smoke_run
    (model, repo, card), = pushed
    assert repo == "someone/arma-unet-smoke"
    assert f"| JS | {results[0]['JS']:.4f} |" in card["metrics"]
    final = load_file(str(output_dir / "seed_0" / "final" / "model.safetensors"))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in final.items())


def test_resume_after_epoch_one_matches_uninterrupted_run(smoke_run, tmp_path, fresh_accelerate_state):
    output_dir, *_ = smoke_run
    run(tmp_path, "--epochs", "1")
    fresh_accelerate_state()
    run(tmp_path, "--epochs", "2", "--resume-from-checkpoint")
    for name in ("best", "checkpoints/epoch_0002"):
        resumed = load_file(str(tmp_path / "seed_0" / name / "model.safetensors"))
        uninterrupted = load_file(str(output_dir / "seed_0" / name / "model.safetensors"))
        for key, tensor in uninterrupted.items():
            # deterministic CPU kernels, same batches and RNG state: bit-identical
            assert torch.equal(resumed[key], tensor), (name, key)

    # the data is checked again on resume: a file truncated since is named before any step
    fresh_accelerate_state()
    image = sorted((tmp_path / "smoke_data" / isic_data.IMAGE_DIR).glob("*.jpg"))[0]
    _truncate(image)
    with pytest.raises(ValueError, match=rf"1 of {2 * SMOKE_IMAGES} image and mask files cannot be decoded: .*{image.name}"):
        run(tmp_path, "--epochs", "3", "--resume-from-checkpoint")
    assert not (tmp_path / "seed_0" / "checkpoints" / "epoch_0003").exists()


def _listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_new_run_into_a_used_output_dir_refuses_and_deletes_nothing(smoke_run):
    output_dir, *_ = smoke_run
    before = _listing(output_dir)
    with pytest.raises(recipe_kit.RecipeError, match="already holds a run .*--overwrite-output-dir"):
        run(output_dir, "--epochs", "2")
    assert _listing(output_dir) == before


def test_resume_with_a_changed_lr_refuses(smoke_run):
    output_dir, *_ = smoke_run
    before = _listing(output_dir)
    with pytest.raises(ValueError, match=r"other settings: --lr 0.001 -> 0.01$"):
        run(output_dir, "--epochs", "2", "--resume-from-checkpoint", "--lr", "0.01")
    assert _listing(output_dir) == before


def test_batch_larger_than_the_train_split_refuses_before_training(tmp_path):
    # 8 training images, --batch-size 9 with drop_last: 0 optimizer steps if it ran
    with pytest.raises(ValueError, match="8 training samples give no batch .* 0 optimizer steps"):
        run(tmp_path, "--batch-size", "9")
    assert not (tmp_path / "seed_0").exists() and not (tmp_path / "results.md").exists()


def test_overwrite_output_dir_clears_the_previous_run(smoke_run, tmp_path):
    output_dir = tmp_path / "run"
    shutil.copytree(smoke_run[0], output_dir)
    assert (output_dir / "seed_0" / "checkpoints").is_dir()
    # stopped by the batch check right after the folder is cleared, to keep the test short
    with pytest.raises(ValueError, match="0 optimizer steps"):
        run(output_dir, "--batch-size", "9", "--overwrite-output-dir")
    assert not (output_dir / "seed_0").exists() and not (output_dir / "results.md").exists()


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def test_truncated_image_and_mask_fail_before_training_named(tmp_path):
    root = isic_data.write_synthetic_isic(tmp_path / "data", 8)
    image = sorted((root / isic_data.IMAGE_DIR).glob("*.jpg"))[2]
    mask = sorted((root / isic_data.MASK_DIR).glob("*.png"))[5]
    _truncate(image)
    _truncate(mask)
    with pytest.raises(ValueError, match=rf"2 of 16 image and mask files cannot be decoded: .*{image.name}.*{mask.name}"):
        isic.main(["--data-dir", str(root), "--output-dir", str(tmp_path / "out"), "--encoder", "resnet18"])
    assert not (tmp_path / "out" / "seed_0").exists()


def test_unreadable_files_are_listed_before_training(tmp_path):
    root = isic_data.write_synthetic_isic(tmp_path / "data", 8)
    image = sorted((root / isic_data.IMAGE_DIR).glob("*.jpg"))[1]
    mask = sorted((root / isic_data.MASK_DIR).glob("*.png"))[4]
    data = bytearray(image.read_bytes())
    data[2:200] = np.random.default_rng(0).integers(0, 256, 198, dtype=np.uint8).tobytes()  # scrambled header
    image.write_bytes(bytes(data))
    mask.write_bytes(b"")
    with pytest.raises(recipe_kit.RecipeError,
                       match=rf"2 of 16 image and mask files cannot be decoded: .*{image.name} .*{mask.name} "):
        isic.main(["--data-dir", str(root), "--output-dir", str(tmp_path / "out"), "--encoder", "resnet18"])
    assert not (tmp_path / "out" / "seed_0").exists()


def test_a_missing_data_dir_is_one_line_and_exit_status_2(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("sys.argv", ["isic.py", "--data-dir", str(tmp_path / "nowhere"),
                                     "--output-dir", str(tmp_path / "out"), "--encoder", "resnet18"])
    with pytest.raises(SystemExit) as exit_:
        recipe_kit.run_script(isic.main)
    assert exit_.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith("isic.py: error: --data-dir ") and "does not exist" in error and error.count("\n") == 1


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_process_launch_counts_every_test_image_once(tmp_path):
    """Also: a linear lr schedule spans the run's optimizer steps under two processes (Accelerate
    steps the prepared scheduler once per process per optimizer step)."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(_free_port()),
               str(REPO / "recipes" / "isic.py"), "--smoke", "--smoke-images", str(SMOKE_IMAGES),
               "--epochs", "1", "--batch-size", "2", "--lr-scheduler-type", "linear", "--output-dir", str(tmp_path)]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads((tmp_path / "seed_0" / "test_metrics.json").read_text())
    assert record["num_processes"] == 2
    # 3 test images over 2 ranks: padded to 4 by the sampler, de-duplicated by gather_for_metrics
    assert record["n_images"] == record["test_size"] == SMOKE_TEST_SIZE
    assert record["ranks_agree"] is True
    peak = json.loads((tmp_path / "run_config.json").read_text())["lr"]
    checkpoint = next((tmp_path / "seed_0" / "checkpoints").glob("epoch_*"))
    lrs = [step["lr"] for step in json.loads((checkpoint / "trainer_state.json").read_text())["steps"]]
    steps = len(lrs)
    assert steps >= 2 and lrs == pytest.approx([peak * (1 - k / steps) for k in range(steps)])


def test_smoke_split_sizes():
    assert {k: len(v) for k, v in isic_data.split_indices(SMOKE_IMAGES).items()} == {"train": 8, "val": 1, "test": SMOKE_TEST_SIZE}


def test_split_is_the_documented_isic_split():
    split = isic_data.split_indices(2594)
    assert {k: len(v) for k, v in split.items()} == {"train": 1815, "val": 259, "test": 520}
    assert sorted(sum(split.values(), [])) == list(range(2594))
    assert split == isic_data.split_indices(2594)


@pytest.mark.parametrize("n", [5, 0])
def test_split_refuses_too_few_samples(n):
    with pytest.raises(ValueError, match="too few"):
        isic_data.split_indices(n)


def test_augmentation_keeps_masks_binary_and_aligned(tmp_path):
    # an image that *is* its mask, lesion in one corner (a quarter of the image): after any
    # flip/rotation the two must still coincide
    mask = np.zeros((40, 48), dtype=np.uint8)
    mask[:20, :24] = 255
    image_path, mask_path = tmp_path / "ISIC_0000000.jpg", tmp_path / "ISIC_0000000_segmentation.png"
    Image.fromarray(np.stack([mask] * 3, -1)).save(image_path, quality=100)
    Image.fromarray(mask).save(mask_path)
    dataset = isic_data.LesionDataset(isic_data.FolderSource([(image_path, mask_path)], 32), [0], 32, augment=True)
    torch.manual_seed(0)
    corners = set()
    for _ in range(16):
        image, mask_t = dataset[0]
        assert set(mask_t.unique().tolist()) <= {0.0, 1.0}
        agree = ((image[0] > 0.5) == mask_t[0].bool()).float().mean()
        # JPEG and the bilinear resize blur only the lesion's edge; a flip or rotation applied
        # to one of the two and not the other would leave about 50% agreement
        assert agree > 0.9
        corners.add(tuple(mask_t[0, [0, 0, -1, -1], [0, -1, 0, -1]].tolist()))
    assert len(corners) > 1  # augmentation did move the lesion


def test_synthetic_images_have_lesions_and_skin(tmp_path):
    isic_data.write_synthetic_isic(tmp_path, 6)
    for _, mask_path in isic_data.find_isic_pairs(tmp_path):
        lesion = (np.asarray(Image.open(mask_path)) > 0).mean()
        assert 0.02 < lesion < 0.6, mask_path.name


def _save_hf_dataset(tmp_path: Path, n: int, form: str, mask_size=(40, 48)):
    import datasets

    rng = np.random.default_rng(0)
    rows = {"image": [Image.fromarray(rng.integers(0, 255, (48, 40, 3), dtype=np.uint8)) for _ in range(n)],
            "mask": [Image.fromarray((rng.random(mask_size[::-1]) > 0.5).astype(np.uint8) * 255) for _ in range(n)]}
    features = datasets.Features({"image": datasets.Image(), "mask": datasets.Image()})
    dataset = datasets.Dataset.from_dict(rows, features=features)
    if form == "save_to_disk":
        dataset.save_to_disk(str(tmp_path / "ds"))
        return str(tmp_path / "ds")
    dataset.to_parquet(str(tmp_path / "ds.parquet"))
    return str(tmp_path / "ds.parquet")


@pytest.mark.parametrize("form", ["save_to_disk", "parquet"])
def test_hf_dataset_is_split_and_loaded(tmp_path, form):
    name = _save_hf_dataset(tmp_path, 12, form)
    args = isic.parse_args(["--hf-dataset", name, "--image-size", "32", "--encoder", "resnet18"])
    datasets = isic.build_datasets(args)
    assert {k: len(v) for k, v in datasets.items()} == {k: len(v) for k, v in isic_data.split_indices(12).items()}
    image, mask = datasets["test"][0]
    assert image.shape == (3, 32, 32) and mask.shape == (1, 32, 32)
    assert set(mask.unique().tolist()) <= {0.0, 1.0}


def test_hf_dataset_mask_size_mismatch_is_reported(tmp_path):
    name = _save_hf_dataset(tmp_path, 8, "parquet", mask_size=(41, 48))
    args = isic.parse_args(["--hf-dataset", name, "--image-size", "32", "--encoder", "resnet18"])
    train = isic.build_datasets(args)["train"]
    with pytest.raises(ValueError, match="mask size"):
        train[0]
    # and the decode pass finds every such row before training, naming it
    rows = len(train)
    with pytest.raises(ValueError, match=rf"{rows} of {rows} rows cannot be decoded: --hf-dataset .* train split "
                                         r"row 0 \(ValueError: 'mask' of row 0: mask size"):
        train.source.check_decodable()


def test_hf_dataset_unknown_column_is_reported(tmp_path):
    name = _save_hf_dataset(tmp_path, 8, "parquet")
    args = isic.parse_args(["--hf-dataset", name, "--mask-column", "label", "--encoder", "resnet18"])
    with pytest.raises(ValueError, match="no column"):
        isic.build_datasets(args)


def _break_missing(root):
    return root / "nowhere"


def _break_empty(root):
    for path in (root / isic_data.IMAGE_DIR).glob("*.jpg"):
        path.unlink()
    return root


def _break_image_without_mask(root):
    for path in sorted((root / isic_data.MASK_DIR).glob("*.png"))[:2]:
        path.unlink()
    return root


def _break_mask_size(root):
    mask_path = sorted((root / isic_data.MASK_DIR).glob("*.png"))[0]
    Image.open(mask_path).resize((10, 10)).save(mask_path)
    return root


def _break_layout(root):
    (root / isic_data.MASK_DIR).rename(root / "masks")
    return root


@pytest.mark.parametrize("breaker, match", [
    (_break_missing, "does not exist"),
    (_break_empty, "no .jpg images"),
    (_break_image_without_mask, r"2 image\(s\) .* have no .*ISIC_0000000.jpg"),
    (_break_mask_size, r"differ in size .*ISIC_0000000.jpg"),
    (_break_layout, "has no ISIC2018_Task1_Training_GroundTruth/"),
])
def test_bad_data_folder_fails_before_training(tmp_path, breaker, match):
    root = breaker(isic_data.write_synthetic_isic(tmp_path / "data", 8))
    output_dir = tmp_path / "out"
    with pytest.raises(ValueError, match=match):
        isic.main(["--data-dir", str(root), "--output-dir", str(output_dir), "--encoder", "resnet18"])
    assert not (output_dir / "seed_0").exists()


@pytest.mark.parametrize("flags, match", [
    (["--arch", "Vnet"], "not an SMP architecture"),
    (["--encoder", "resnet-nope"], "neither an SMP encoder"),
    (["--encoder", "tu-not_a_timm_model"], "neither an SMP encoder"),
    (["--image-size", "40"], "multiple of 32"),
    (["--ar-kernel-size", "4"], "ar_kernel_size"),
    (["--epochs", "0"], "--epochs"),
])
def test_bad_model_flags_fail_before_training(tmp_path, flags, match):
    with pytest.raises(ValueError, match=match):
        isic.parse_args(["--smoke", "--output-dir", str(tmp_path), *flags])


def test_unknown_model_is_an_argparse_error(tmp_path, capsys):
    with pytest.raises(SystemExit):
        isic.parse_args(["--smoke", "--model", "arma-vnet"])
    assert "invalid choice" in capsys.readouterr().err


def test_unknown_nonlocal_module_is_reported(tmp_path):
    args = isic.parse_args(["--smoke", "--model", "nl-arma-unet", "--nonlocal-after", "decoder.nope",
                            "--output-dir", str(tmp_path)])
    with pytest.raises(ValueError, match="decoder.nope"):
        isic.build_model(args)


@pytest.mark.parametrize("model", isic.MODELS)
def test_model_variants_build_and_publish(model, tmp_path):
    args = isic.parse_args(["--smoke", "--model", model, "--output-dir", str(tmp_path)])
    built = isic.build_model(args)
    names = [name for name, _ in built.named_modules()]
    assert any(n.endswith(".ar") for n in names) == ("arma" in model)
    assert any(type(m).__name__ == "NonLocal2d" for m in built.modules()) == model.startswith("nl-")
    assert built(torch.randn(2, 3, 32, 32)).shape == (2, 1, 32, 32)
    loaded = from_pretrained(recipe_kit.publish(built, tmp_path, {}, repo_id=None))
    assert type(loaded) is type(built)
    for key, tensor in built.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], tensor), key


def test_paper_preset_is_the_table_2_size():
    args = isic.parse_args(["--preset", "paper", "--model", "unet", "--data-dir", "unused"])
    assert (args.encoder, args.image_size, args.lr) == ("mobilenet_v2", 224, 1e-3)
    count = recipe_kit.count_parameters(isic.build_model(args))
    assert abs(count - 3.453e6) / 3.453e6 < 0.01  # Table 2: U-Net 3.453M; within 1%
