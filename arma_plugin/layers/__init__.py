from .autoregressive import AutoRegressive2d, autoregressive2d, ar_taps
from .arma_conv import ARMAConv2d
from .nonlocal_block import NonLocal2d

__all__ = ["AutoRegressive2d", "autoregressive2d", "ar_taps", "ARMAConv2d", "NonLocal2d"]
