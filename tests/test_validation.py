"""The shared argument checks: one rule and one message per kind of argument."""
import argparse

import numpy as np
import pytest
import torch.nn as nn

from arma_plugin import ARMAConfig
from arma_plugin.erf import erf_map, theoretical_radius
from arma_plugin.validation import (MAX_AR_KERNEL_SIZE, MAX_COUNT, check_bool, check_choice, check_odd_kernel_size,
                                   check_positive_int, positive_int)


@pytest.mark.parametrize("value", [1, 2, MAX_COUNT, np.int64(3), np.uint16(7)])
def test_positive_int_accepts_and_returns(value) -> None:
    checked = check_positive_int("channels", value)
    assert checked == value and type(checked) is int


@pytest.mark.parametrize("value", [MAX_COUNT + 1, 10**30, np.int64(2**62)])
def test_positive_int_refuses_above_the_bound_naming_it(value) -> None:
    with pytest.raises(ValueError, match=f"^channels must be an integer <= {MAX_COUNT}, got "):
        check_positive_int("channels", value)
    assert check_positive_int("steps", value, maximum=value) == value


@pytest.mark.parametrize("value", [True, False, 0, -1, 2.0, "3", None, [1]])
def test_positive_int_refuses_with_the_argument_named(value) -> None:
    with pytest.raises(ValueError, match=r"^channels must be an integer >= 1, got ") as info:
        check_positive_int("channels", value)
    assert repr(value) in str(info.value)


def test_positive_int_minimum() -> None:
    assert check_positive_int("size", 0, minimum=0) == 0
    with pytest.raises(ValueError, match="size must be an integer >= 2, got 1"):
        check_positive_int("size", 1, minimum=2)


@pytest.mark.parametrize("value", [3, 5, 7, 11, MAX_AR_KERNEL_SIZE, np.int64(5)])
def test_odd_kernel_size_accepts(value) -> None:
    assert check_odd_kernel_size("ar_kernel_size", value) == value


@pytest.mark.parametrize("value", [MAX_AR_KERNEL_SIZE + 2, 2**62 + 1])
def test_odd_kernel_size_refuses_above_the_bound_naming_it(value) -> None:
    with pytest.raises(ValueError, match=f"ar_kernel_size must be an odd integer <= {MAX_AR_KERNEL_SIZE}"):
        check_odd_kernel_size("ar_kernel_size", value)


@pytest.mark.parametrize("value", [1, 2, 4, -3, 3.0, True, "3"])
def test_odd_kernel_size_refuses(value) -> None:
    with pytest.raises(ValueError, match=r"ar_kernel_size must be an odd integer >= 3 \(3, 5, 7, \.\.\.\)"):
        check_odd_kernel_size("ar_kernel_size", value)


def test_choice_lists_the_allowed_values() -> None:
    assert check_choice("boundary", "zeros", ("circular", "zeros")) == "zeros"
    with pytest.raises(ValueError, match=r"boundary must be one of \('circular', 'zeros'\), got 'reflect'"):
        check_choice("boundary", "reflect", ["circular", "zeros"])


@pytest.mark.parametrize("call", [
    lambda: ARMAConfig(ar_dilation=True),
    lambda: theoretical_radius(2.0),
    lambda: theoretical_radius(2, kernel_size=3.0),
    lambda: theoretical_radius(2, dilation=True),
    lambda: erf_map(nn.Identity(), (1, 4, 4), n_samples=0),
    lambda: erf_map(nn.Identity(), (1, 4.0, 4)),
])
def test_the_package_uses_the_one_rule(call) -> None:
    """Entry points that take a count refuse booleans and floats with the shared message."""
    with pytest.raises(ValueError, match="must be an integer >= 1, got"):
        call()


@pytest.mark.parametrize("text", ["0", "-1", "2.0", "x", "True"])
def test_positive_int_argument_type_refuses(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=f"must be an integer >= 1, got {text!r}"):
        positive_int(text)


def test_positive_int_argument_type_parses() -> None:
    assert positive_int("7") == 7


@pytest.mark.parametrize("value", [True, False])
def test_bool_accepts_and_returns(value: bool) -> None:
    assert check_bool("reparam", value) is value


@pytest.mark.parametrize("value", [0, 1, "True", None])
def test_bool_refuses_with_the_argument_named(value) -> None:
    with pytest.raises(ValueError, match=f"^reparam must be True or False, got {value!r}$"):
        check_bool("reparam", value)
