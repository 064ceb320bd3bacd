"""ARMAConfig: validation, JSON round-trip, PEFT-style name matching."""
from __future__ import annotations

import dataclasses
import json

import pytest

from arma_plugin import ARMAConfig
from arma_plugin.convert.config import matches


def test_defaults_are_the_documented_ones() -> None:
    c = ARMAConfig()
    assert (c.ar_kernel_size, c.boundary, c.reparam, c.target_modules, c.exclude_modules,
            c.include_pointwise, c.ar_dilation, c.nonlocal_after, c.mode) == (
        3, "circular", True, None, None, False, 1, (), "module")


@pytest.mark.parametrize("config", [
    ARMAConfig(),
    ARMAConfig(ar_kernel_size=5, boundary="zeros", reparam=False, target_modules=["conv1", "layer2.0.conv2"],
               exclude_modules=r"stem\..*", include_pointwise=True, ar_dilation="match",
               nonlocal_after=["layer3"], mode="graph"),
    ARMAConfig(ar_dilation=2, target_modules=r".*conv\d"),
])
def test_json_round_trip(config: ARMAConfig) -> None:
    data = json.loads(json.dumps(config.to_dict()))
    assert set(data) == {f.name for f in dataclasses.fields(ARMAConfig)}
    assert ARMAConfig.from_dict(data) == config


@pytest.mark.parametrize("field,value", [
    ("ar_kernel_size", 4), ("ar_kernel_size", 1), ("ar_kernel_size", 3.0), ("ar_kernel_size", True),
    ("boundary", "reflect"), ("reparam", 1), ("include_pointwise", "yes"),
    ("target_modules", []), ("target_modules", 3), ("target_modules", ["ok", ""]), ("exclude_modules", "(unclosed"),
    ("ar_dilation", 0), ("ar_dilation", "same"), ("ar_dilation", 1.5), ("ar_dilation", True),
    ("nonlocal_after", "layer3"), ("nonlocal_after", [3]), ("mode", "trace"),
])
def test_invalid_values_name_the_field(field: str, value) -> None:
    with pytest.raises(ValueError, match=field):
        ARMAConfig(**{field: value})


def test_from_dict_rejects_unknown_keys() -> None:
    with pytest.raises(ValueError, match="unknown keys.*'ar_kernal_size'"):
        ARMAConfig.from_dict({"ar_kernal_size": 5})
    with pytest.raises(ValueError, match="mapping"):
        ARMAConfig.from_dict([("ar_kernel_size", 5)])


def test_replace_validates_and_rejects_unknown_fields() -> None:
    assert ARMAConfig().replace(ar_kernel_size=5).ar_kernel_size == 5
    with pytest.raises(ValueError, match="unknown ARMAConfig fields"):
        ARMAConfig().replace(kernel=5)
    with pytest.raises(ValueError, match="boundary"):
        ARMAConfig().replace(boundary="nope")


@pytest.mark.parametrize("name,patterns,expected", [
    ("layer1.0.conv1", ("conv1",), True),        # suffix after a dot
    ("layer1.0.conv1", ("0.conv1",), True),
    ("layer1.0.conv1", ("v1",), False),          # not a whole-component suffix
    ("layer1.0.conv1", ("layer1",), False),      # a prefix is not a match (PEFT rule)
    ("conv1", ("conv1",), True),
    ("layer1.0.conv1", r"layer1\..*", True),     # regex: full match
    ("layer1.0.conv1", r"conv1", False),
])
def test_name_matching(name: str, patterns, expected: bool) -> None:
    assert matches(name, patterns) is expected


@pytest.mark.parametrize("field,value,message", [
    ("ar_kernel_size", 4, "ARMAConfig.ar_kernel_size must be an odd integer >= 3 (3, 5, 7, ...), got 4"),
    ("boundary", "reflect", "ARMAConfig.boundary must be one of ('circular', 'zeros'), got 'reflect'"),
    ("ar_dilation", 0, "ARMAConfig.ar_dilation (or the string 'match') must be an integer >= 1, got 0"),
    ("mode", "trace", "ARMAConfig.mode must be one of ('module', 'graph'), got 'trace'"),
])
def test_messages_are_the_shared_validators(field: str, value, message: str) -> None:
    """The layers and the config refuse the same values with the same words (arma_plugin.validation)."""
    with pytest.raises(ValueError) as info:
        ARMAConfig(**{field: value})
    assert str(info.value) == message
