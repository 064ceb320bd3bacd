"""NonLocal2d: identity at init, the embedded-Gaussian formula, gradients, bad input."""
from __future__ import annotations

import re

import pytest
import torch

from arma_plugin import NonLocal2d


@pytest.mark.parametrize("channels,reduction,size", [(8, 2, (5, 7)), (3, 4, (1, 1)), (16, 1, (4, 4))])
def test_identity_at_init(channels: int, reduction: int, size: tuple[int, int]) -> None:
    block = NonLocal2d(channels, reduction)
    x = torch.randn(2, channels, *size)
    assert torch.equal(block(x), x)  # zero output projection: x + 0 exactly


def reference(block: NonLocal2d, x: torch.Tensor) -> torch.Tensor:
    """Wang et al. 2018 eq. (1)/(3), one position pair at a time (float64)."""
    b, c, h, w = x.shape
    theta, phi, g = (m(x).reshape(b, -1, h * w) for m in (block.theta, block.phi, block.g))
    y = torch.zeros_like(g)
    for i in range(h * w):
        logits = torch.einsum("bc,bcj->bj", theta[:, :, i], phi)
        y[:, :, i] = torch.einsum("bj,bcj->bc", torch.softmax(logits, dim=-1), g)
    return x + block.out(y.reshape(b, -1, h, w))


def test_matches_the_formula_once_trained() -> None:
    torch.manual_seed(0)
    block = NonLocal2d(6, 2).double()
    torch.nn.init.normal_(block.out.weight)
    x = torch.randn(2, 6, 3, 4, dtype=torch.float64)
    # float64, a few dozen multiply-adds per output: agreement to ~1e-14; 1e-10 leaves margin
    torch.testing.assert_close(block(x), reference(block, x), rtol=1e-10, atol=1e-10)
    assert not torch.allclose(block(x), x)


def test_gradients_reach_every_parameter() -> None:
    torch.manual_seed(0)
    block = NonLocal2d(4)
    torch.nn.init.normal_(block.out.weight)
    block(torch.randn(2, 4, 3, 3)).square().sum().backward()
    for name, p in block.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_at_init_only_the_output_projection_gets_gradient() -> None:
    block = NonLocal2d(4)
    block(torch.randn(2, 4, 3, 3)).square().sum().backward()
    assert block.out.weight.grad.abs().sum() > 0
    assert block.theta.weight.grad.abs().sum() == 0  # behind the zero projection


@pytest.mark.parametrize("value", [True, 0, 2.0, "3", -1], ids=repr)
@pytest.mark.parametrize("argument", ["channels", "reduction"])
def test_bad_arguments(argument: str, value) -> None:
    kwargs = {"channels": 4, "reduction": 2, argument: value}
    with pytest.raises(ValueError, match=rf"^{argument} must be an integer >= 1, got {re.escape(repr(value))}$"):
        NonLocal2d(**kwargs)


def test_wrong_input_shape() -> None:
    with pytest.raises(ValueError, match=r"expects \[B, 4, H, W\]"):
        NonLocal2d(4)(torch.randn(2, 3, 5, 5))


def test_jit_script_equals_eager_and_keeps_the_shape_check() -> None:
    block = NonLocal2d(4)
    torch.nn.init.normal_(block.out.weight)
    scripted = torch.jit.script(block)
    x = torch.randn(2, 4, 5, 6)
    torch.testing.assert_close(scripted(x), block(x), rtol=0, atol=0)  # same ops in the same order
    with pytest.raises(Exception, match=r"expects \[B, 4, H, W\]"):
        scripted(torch.randn(2, 3, 5, 6))
