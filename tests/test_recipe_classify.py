"""recipes/classify.py: smoke run, --compare-reparam outputs, data sources, bad input."""
import contextlib
import io
import json
import re
from pathlib import Path

import matplotlib.figure
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import classify
import recipe_kit.results
from arma_plugin import from_pretrained

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


@pytest.fixture(scope="module")
def compare_run(tmp_path_factory, reset_accelerate_state):
    """Both variants once; ``--push-to-hub`` goes to a stand-in that records each repo."""
    output_dir = tmp_path_factory.mktemp("classify_smoke")
    pushed, printed = [], io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(printed):
        patch.setattr(recipe_kit.results, "push_to_hub", lambda model, repo, **card: pushed.append(repo))
        results = classify.main(["--smoke", "--compare-reparam", "--deterministic", "--output-dir", str(output_dir),
                                 "--push-to-hub", "someone/vgg-arma"])
    reset_accelerate_state()
    return output_dir, results, pushed, printed.getvalue()


def test_each_compared_variant_is_pushed_to_its_own_repo(compare_run):
    *_, pushed, _ = compare_run
    assert sorted(pushed) == ["someone/vgg-arma-no_reparam", "someone/vgg-arma-reparam"]


def test_smoke_run_writes_metrics_checkpoint_and_loadable_card(compare_run):
    output_dir, results, *_ = compare_run
    run_dir = output_dir / "reparam" / "seed_0"
    record = json.loads((run_dir / "test_metrics.json").read_text())
    # 120 digits cut 7:1:2 -> 24 test images, every one counted once
    assert record["n_samples"] == record["test_size"] == 24
    assert record["accuracy"] == results["reparam"][0]["accuracy"]  # the same float, through JSON
    card = (run_dir / "final" / "README.md").read_text()
    assert f"| accuracy | {record['accuracy']:.4f} |" in card
    model = from_pretrained(run_dir / "final")
    best = load_file(str(run_dir / "best" / "model.safetensors"))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in best.items())
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_smoke_run_says_where_its_outputs_are(compare_run):
    output_dir, *_, printed = compare_run
    assert f"outputs in {output_dir}: results.md/.json" in printed
    assert "compare_reparam.png and compare_reparam.json" in printed


def test_compare_reparam_plot_has_a_title(tmp_path, monkeypatch):
    saved = []
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda figure, *args, **kwargs: saved.append(figure))
    steps = [{"step": 1, "loss": 1.0, "accuracy": 0.5}, {"step": 2, "loss": float("nan"), "accuracy": 0.1}]
    classify.plot_compare_reparam({"with reparam": steps, "without reparam": steps}, tmp_path / "plot.png",
                                  "vgg11 on digits: with and without re-parameterisation")
    figure, = saved
    assert figure._suptitle.get_text() == "vgg11 on digits: with and without re-parameterisation"


def test_compare_reparam_writes_curves_plot_and_summary(compare_run):
    output_dir, results, *_ = compare_run
    png = output_dir / "compare_reparam.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((output_dir / "compare_reparam.json").read_text())
    assert set(summary) == {"reparam", "no_reparam"}
    for name in summary:
        steps = results[name][0]["steps"]
        assert [s["step"] for s in steps] == list(range(1, len(steps) + 1))
        assert all({"loss", "accuracy"} <= set(s) for s in steps)
        bad = next((s["step"] for s in steps if not np.isfinite(s["loss"])), None)
        assert summary[name]["0"]["first_nonfinite_step"] == bad
    table = json.loads((output_dir / "results.json").read_text())
    assert set(table) == {"reparam", "no_reparam"}


def test_the_two_variants_differ_only_in_reparam(compare_run):
    output_dir, *_ = compare_run
    configs = {name: json.loads((output_dir / name / "seed_0" / "final" / "config.json").read_text())
               for name in ("reparam", "no_reparam")}
    assert configs["reparam"]["arma_config"]["reparam"] is True
    assert configs["no_reparam"]["arma_config"]["reparam"] is False
    assert {**configs["reparam"]["arma_config"], "reparam": None} == {**configs["no_reparam"]["arma_config"], "reparam": None}


def test_no_arma_model_has_no_ar_parameters(tmp_path):
    args = classify.parse_args(["--smoke", "--no-arma", "--output-dir", str(tmp_path)])
    names = [n for n, _ in classify.build_model(args, 10, reparam=True).named_parameters()]
    assert names and not any(n.endswith("ar.alpha") for n in names)
    armafied = [n for n, _ in classify.build_model(classify.parse_args(["--smoke"]), 10, True).named_parameters()]
    assert any(n.endswith("ar.alpha") for n in armafied)


def _image_folder(root: Path, classes: int = 2, per_class: int = 5) -> Path:
    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"class_{c}").mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(root / f"class_{c}" / f"{i}.png")
    return root


def test_image_folder_is_split_and_loaded(tmp_path):
    args = classify.parse_args(["--data-dir", str(_image_folder(tmp_path / "data")), "--image-size", "16"])
    datasets, num_classes = classify.build_datasets(args)
    assert num_classes == 2
    assert sum(len(d) for d in datasets.values()) == 10
    image, label = datasets["train"][0]
    assert image.shape == (3, 16, 16) and label in (0, 1)


@pytest.mark.parametrize("form", ["train_test", "single"])
def test_hf_dataset_splits(tmp_path, form):
    import datasets

    rng = np.random.default_rng(0)

    def make(n):
        return datasets.Dataset.from_dict(
            {"img": [Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)) for _ in range(n)],
             "label": [i % 3 for i in range(n)]},
            features=datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(num_classes=3)}))

    ds = datasets.DatasetDict({"train": make(20), "test": make(6)}) if form == "train_test" else make(20)
    ds.save_to_disk(str(tmp_path / "ds"))
    args = classify.parse_args(["--hf-dataset", str(tmp_path / "ds"), "--image-size", "16"])
    splits, num_classes = classify.build_datasets(args)
    assert num_classes == 3
    expected = {"train": 18, "val": 2, "test": 6} if form == "train_test" else {"train": 14, "val": 2, "test": 4}
    assert {k: len(v) for k, v in splits.items()} == expected
    image, label = splits["val"][0]
    assert image.shape == (3, 16, 16) and 0 <= label < 3


def test_digits_limit_is_a_seeded_subset():
    args = classify.parse_args(["--data", "digits", "--limit", "50"])
    first, _ = classify.build_datasets(args)
    again, _ = classify.build_datasets(args)
    assert {k: len(v) for k, v in first.items()} == {"train": 35, "val": 5, "test": 10}
    assert torch.equal(first["test"][3][0], again["test"][3][0])


def _empty_class(root):
    for path in (root / "class_1").iterdir():
        path.unlink()
    return root


@pytest.mark.parametrize("make, match", [
    (lambda root: root / "nowhere", "does not exist"),
    (lambda root: (root.mkdir(), root)[1], "0 class sub-folder"),
    (lambda root: _empty_class(_image_folder(root)), "has no images"),
])
def test_bad_image_folder_fails_before_training(tmp_path, make, match):
    root = make(tmp_path / "data")
    with pytest.raises(ValueError, match=match):
        classify.main(["--data-dir", str(root), "--output-dir", str(tmp_path / "out")])
    assert not (tmp_path / "out" / "reparam").exists()


def test_truncated_image_fails_before_training_named(tmp_path):
    root = _image_folder(tmp_path / "data")
    broken = root / "class_1" / "3.png"
    broken.write_bytes(broken.read_bytes()[:200])
    with pytest.raises(ValueError, match=r"1 of 10 images cannot be decoded: .*class_1/3\.png"):
        classify.main(["--data-dir", str(root), "--output-dir", str(tmp_path / "out"), "--batch-size", "2"])
    assert not (tmp_path / "out" / "reparam").exists()


def test_limit_decodes_only_the_rows_it_uses(tmp_path):
    root = _image_folder(tmp_path / "data", per_class=10)
    args = classify.parse_args(["--data-dir", str(root), "--limit", "8", "--image-size", "16"])
    datasets, _ = classify.build_datasets(args)
    (rows, indices), = classify.rows_in_use(datasets)
    assert indices == sorted(i for split in datasets.values() for i in split.indices) and len(indices) == 8
    unused = next(i for i in range(len(rows)) if i not in indices)
    Path(rows.name(unused)).write_bytes(b"not an image")
    rows.check_decodable(indices)  # the broken file is not one of the 8: no error
    with pytest.raises(ValueError, match=rf"1 of 9 images cannot be decoded: {re.escape(rows.name(unused))}"):
        rows.check_decodable([*indices, unused])


def test_batch_larger_than_the_train_split_refuses_before_training(tmp_path):
    # --limit 10 gives 7 training digits; --batch-size 8 with drop_last: 0 optimizer steps if it ran
    with pytest.raises(ValueError, match="7 training samples give no batch .* 0 optimizer steps"):
        classify.main(["--smoke", "--limit", "10", "--batch-size", "8", "--output-dir", str(tmp_path)])
    assert not (tmp_path / "reparam" / "seed_0" / "final").exists()


@pytest.mark.parametrize("flags, match", [
    (["--model", "vgg_eleven"], "not a timm model"),
    (["--model-kwargs", "mlp_ratio"], "key=value"),
    (["--no-arma", "--compare-reparam"], "drop --no-arma"),
    (["--limit", "3"], "--limit"),
    (["--boundary", "reflect"], "boundary"),
    (["--seeds", "1", "1"], "distinct"),
    (["--lr", "0"], "--lr"),
])
def test_bad_flags_fail_before_training(flags, match):
    with pytest.raises(ValueError, match=match):
        classify.parse_args(["--data", "digits", *flags])


def test_model_kwargs_are_parsed_as_json():
    assert classify.parse_model_kwargs(["mlp_ratio=0.0625", "global_pool=avg", "drop_rate=0"]) == {
        "mlp_ratio": 0.0625, "global_pool": "avg", "drop_rate": 0}


def test_vgg_with_inplace_relu_trains_when_armafied():
    """timm's VGG applies ReLU(inplace=True) straight to each conv output; the armafied model,
    in-place activations untouched, must still backpropagate."""
    args = classify.parse_args(["--data", "digits", "--model", "vgg11", "--model-kwargs", "mlp_ratio=0.0625"])
    model = classify.build_model(args, 10, reparam=True)
    assert any(getattr(m, "inplace", False) for m in model.modules())
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if n.endswith("ar.alpha"))
