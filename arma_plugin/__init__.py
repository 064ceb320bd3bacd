"""arma-plugin: ARMA layers (Su et al., NeurIPS 2020) for timm and SMP models."""
from .layers import ARMAConv2d, AutoRegressive2d
from .layers.nonlocal_block import NonLocal2d
from .convert import ARMAConfig, ConversionReport, ar_parameters, armafy, non_ar_parameters
from .convert.export import FixedSizeAutoRegressive2d, for_export
from .hub import (CheckpointError, CheckpointMismatchError, CheckpointNotFoundError,
                  CorruptCheckpointError, IncompatibleCheckpointError, UnknownArchitectureError,
                  UnsafeCheckpointError, from_pretrained, push_to_hub, save_pretrained)
from .table import format_table
from .validation import check_choice, check_positive_int
from .version import __version__

__all__ = ["ARMAConv2d", "AutoRegressive2d", "__version__",
           "armafy", "ARMAConfig", "ConversionReport", "NonLocal2d", "for_export", "FixedSizeAutoRegressive2d", "ar_parameters", "non_ar_parameters",
           "save_pretrained", "from_pretrained", "push_to_hub",
           "CheckpointError", "CheckpointNotFoundError", "IncompatibleCheckpointError",
           "CorruptCheckpointError", "CheckpointMismatchError", "UnknownArchitectureError",
           "UnsafeCheckpointError", "format_table", "check_choice", "check_positive_int"]
