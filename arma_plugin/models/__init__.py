"""Reference models to armafy (a user's own ``nn.Module``, not a timm/SMP one).

They live in the package (not in ``recipes/``) so that ``from_pretrained`` can rebuild
them from a checkpoint's ``model_factory`` import path.
"""
from .convlstm import ConvLSTMCell, ConvLSTMNet

__all__ = ["ConvLSTMCell", "ConvLSTMNet"]
