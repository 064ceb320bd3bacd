"""What a checkpoint's numbers, patterns and tensors may make the loader do: nothing hangs, nothing
huge is allocated, no value is cast or read as a number it is not."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from arma_plugin import (ARMAConfig, AutoRegressive2d, CheckpointError, CheckpointMismatchError,
                         CorruptCheckpointError, from_pretrained)
from arma_plugin.convert.config import MATCH_TIMEOUT_S, matches
from arma_plugin.validation import MAX_AR_KERNEL_SIZE, MAX_COUNT, check_odd_kernel_size, check_positive_int
from hub_models import edit_config, rewrite_weights, states_equal, tiny_checkpoint  # noqa: F401

# --------------------------------------------------------------------------- module-name regexes

# Patterns that backtrack catastrophically in Python's `re` (nested or overlapping quantifiers).
HOSTILE_PATTERNS = [r"(.*.*.*.*)*Z", r"(a+)+$", r"(\w|\d)*Z", r"(.*a){25}", r"((a|aa)+)+b", r"(.*?\.){11}P",
                    r"(layer|l|la|lay)*(\d|\.|\w)*+Z"]


@pytest.mark.timeout(120)  # the whole loop; each load is well under a second when it does not hang
@pytest.mark.parametrize("field", ["target_modules", "exclude_modules"])
def test_a_hostile_regex_in_the_config_never_hangs_the_loader(field, tiny_checkpoint, tmp_path):
    for index, pattern in enumerate(HOSTILE_PATTERNS):
        directory = shutil.copytree(tiny_checkpoint, tmp_path / str(index))
        edit_config(directory, lambda c: c["arma_config"].update({field: pattern}))
        try:
            from_pretrained(directory)
        except CheckpointError as err:
            assert err.path.endswith(("config.json", "model.safetensors"))


def test_a_regex_that_runs_out_of_time_is_refused_naming_it():
    name = "a." * 40  # (.*?\.){11}P tries every way of choosing 11 of the 40 dots
    with pytest.raises(ValueError, match=r"regex '\(\.\*\?\\\\\.\)\{11\}P' took over .* s to match"):
        matches(name, r"(.*?\.){11}P")
    assert MATCH_TIMEOUT_S <= 1


def test_an_overlong_regex_is_refused():
    with pytest.raises(ValueError, match="target_modules regex must be at most 1000 characters"):
        ARMAConfig(target_modules="a" * 1001)


# --------------------------------------------------------------------------- integer bounds

KERNEL_BOUND = f"ar_kernel_size must be an odd integer <= {MAX_AR_KERNEL_SIZE}"


@pytest.mark.parametrize("build, message", [
    (lambda: AutoRegressive2d(4, dilation=10**30), f"dilation must be an integer <= {MAX_COUNT}"),
    (lambda: AutoRegressive2d(4, ar_kernel_size=2**62 + 1), KERNEL_BOUND),
    (lambda: AutoRegressive2d(2**40), f"channels must be an integer <= {MAX_COUNT}"),
    (lambda: ARMAConfig(ar_kernel_size=2**62 + 1), f"ARMAConfig.{KERNEL_BOUND}"),
    (lambda: ARMAConfig(ar_dilation=10**30), f"ARMAConfig.ar_dilation .* must be an integer <= {MAX_COUNT}"),
])
def test_huge_integers_are_refused_naming_the_argument_and_the_bound(build, message):
    with pytest.raises(ValueError, match=message):
        build()


@pytest.mark.parametrize("where, value, message", [
    (("arma_config", "ar_kernel_size"), 2**62 + 1, KERNEL_BOUND),
    (("arma_config", "ar_kernel_size"), MAX_AR_KERNEL_SIZE + 2, f"<= {MAX_AR_KERNEL_SIZE}"),
    (("arma_config", "ar_dilation"), 10**30, f"ar_dilation .* must be an integer <= {MAX_COUNT}"),
    (("base", "model_args", "num_classes"), 10**12,
     rf"model_args \['num_classes=1000000000000'\] exceed the bound {MAX_COUNT}"),
    (("base", "model_args", "drop_rate"), -2**70, "drop_rate=-1180591620717411303424"),
])
def test_huge_integers_in_a_checkpoint_are_corrupt(where, value, message, tiny_checkpoint, tmp_path):
    directory = shutil.copytree(tiny_checkpoint, tmp_path / "m")

    def put(config):
        for key in where[:-1]:
            config = config[key]
        config[where[-1]] = value
    edit_config(directory, put)
    with pytest.raises(CorruptCheckpointError, match=message) as info:
        from_pretrained(directory)
    assert info.value.path.endswith("config.json")


@pytest.mark.parametrize("args", [{"num_classes": 3 * 10**6}, {"num_classes": 4, "stem_width": 2**15}])
def test_a_base_larger_than_its_weights_is_refused_before_it_is_allocated(args, tiny_checkpoint, tmp_path):
    """Built for real, the first would ask for 1.2 GB, the second for 116 GB."""
    directory = shutil.copytree(tiny_checkpoint, tmp_path / "m")
    edit_config(directory, lambda c: c["base"]["model_args"].update(args))
    with pytest.raises(CorruptCheckpointError, match=r"describes a base model holding \d+ values, more than"):
        from_pretrained(directory)


def test_numpy_integers_are_accepted_as_python_ints():
    assert type(check_positive_int("channels", np.int64(3))) is int
    assert type(check_odd_kernel_size("ar_kernel_size", np.int32(5))) is int
    config = ARMAConfig(ar_kernel_size=np.int64(5), ar_dilation=np.uint8(2))
    assert json.loads(json.dumps(config.to_dict()))["ar_kernel_size"] == 5
    torch.manual_seed(0)
    layer = AutoRegressive2d(np.int64(4), ar_kernel_size=np.int64(5), dilation=np.int64(2))
    torch.manual_seed(0)
    reference = AutoRegressive2d(4, ar_kernel_size=5, dilation=2)
    with torch.no_grad():
        layer.alpha.normal_(0, 0.3)
        reference.alpha.copy_(layer.alpha)
    x = torch.randn(1, 4, 8, 8)
    assert torch.equal(layer(x), reference(x))
    for value in (True, np.bool_(True), np.float64(3.0)):
        with pytest.raises(ValueError, match="channels must be an integer >= 1"):
            check_positive_int("channels", value)


# --------------------------------------------------------------------------- tensors and JSON numbers

@pytest.mark.parametrize("dtype", [torch.bool, torch.int64, torch.uint8, torch.int8])
def test_non_floating_weights_for_floating_parameters_are_refused(dtype, tiny_checkpoint, tmp_path):
    directory = shutil.copytree(tiny_checkpoint, tmp_path / "m")
    rewrite_weights(directory, lambda t: t.update({"fc.weight": t["fc.weight"].to(dtype),
                                                   "layer1.0.conv1.ar.alpha": t["layer1.0.conv1.ar.alpha"].to(dtype)}))
    with pytest.raises(CheckpointMismatchError, match=rf"not floating point.*fc.weight: {dtype}") as info:
        from_pretrained(directory)
    assert "layer1.0.conv1.ar.alpha" in str(info.value) and info.value.path.endswith("model.safetensors")


def test_float64_weights_still_load(tiny_checkpoint, tmp_path):
    """A floating dtype other than the model's is a lossless or intended cast, as in load_state_dict."""
    directory = shutil.copytree(tiny_checkpoint, tmp_path / "m")
    rewrite_weights(directory, lambda t: t.update({"fc.weight": t["fc.weight"].double()}))
    assert states_equal(from_pretrained(directory), from_pretrained(tiny_checkpoint))


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_numbers_in_config_json_are_refused(literal, tiny_checkpoint, tmp_path):
    directory = shutil.copytree(tiny_checkpoint, tmp_path / "m")
    text = (directory / "config.json").read_text()
    text = text.replace('"model_args": {', f'"model_args": {{"drop_rate": {literal}, ', 1)
    (directory / "config.json").write_text(text)
    with pytest.raises(CorruptCheckpointError, match=f"config.json: holds the non-finite number {literal}"):
        from_pretrained(directory)
