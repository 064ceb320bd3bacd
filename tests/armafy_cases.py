"""Models and measures shared by the armafy tests (not a test module itself)."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import Conv2dSame

# Identity target: max |armafied - original| / max |original| in float32. The AR
# solve at alpha = 0 is the identity up to rounding of the solver (an FFT path is not bit-exact),
# and errors of ~1e-7 per layer must not add up past this over ~50 layers.
IDENTITY_TOL = 1e-5


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out - ref).abs().max() / ref.abs().max())


class Tiny(nn.Module):
    """Every case armafy distinguishes: plain, dilated, pointwise, unused, shared, subclass
    (timm's Conv2dSame) and functional convs."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.body = nn.Sequential(nn.Conv2d(8, 8, 3, padding=2, dilation=2), nn.ReLU(), nn.Conv2d(8, 8, 1))
        self.shared = nn.Conv2d(8, 8, 3, padding=1)
        self.unused = nn.Conv2d(8, 8, 3)
        self.same = Conv2dSame(8, 4, 3, stride=2)
        self.weight = nn.Parameter(torch.randn(8, 8, 3, 3) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.body(self.stem(x))
        x = self.shared(self.shared(x))
        x = F.conv2d(x, self.weight, padding=1)
        return self.same(x)


class Branchy(Tiny):
    """Data-dependent control flow in the root forward: torch.fx cannot trace it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        return self.same(x) if x.sum() > 0 else self.same(-x)


def tiny_and_input() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return Tiny().eval(), torch.randn(2, 3, 16, 16)
