"""arma-plugin: ARMA layers (Su et al., NeurIPS 2020) for timm and SMP models."""
from .layers import ARMAConv2d, AutoRegressive2d

__version__ = "0.1.0"

__all__ = ["ARMAConv2d", "AutoRegressive2d", "__version__"]
