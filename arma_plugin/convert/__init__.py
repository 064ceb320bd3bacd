"""Turning existing models (timm, SMP, any ``nn.Module``) into ARMA models."""
from .armafy import ar_parameters, armafy, non_ar_parameters
from .config import ARMAConfig
from .report import ConversionReport, ConvEntry, ConvStatus, SkipReason
from .tracing import ARMATracer, trace_model

__all__ = ["armafy", "ARMAConfig", "ConversionReport", "ConvEntry", "ConvStatus", "SkipReason", "ar_parameters",
           "non_ar_parameters", "ARMATracer", "trace_model"]
