"""ARMA checkpoints: safetensors weights, a rebuild recipe, a model card, the Hugging Face Hub.

A stock ``timm.create_model("hf-hub:...")`` cannot rebuild an ARMA model (Su et al., NeurIPS
2020, Def. 1: every converted conv carries an AR filter ``alpha``), so a checkpoint directory
holds everything needed to rebuild one without downloading anything but itself:

* ``model.safetensors``: the state dict (safetensors only; pickle is never written or read);
* ``config.json``: the format version, the *base* model (timm architecture + ``create_model``
  arguments, SMP class + init arguments, or an ``nn.Module`` class named by import path), the
  :class:`~arma_plugin.ARMAConfig` and the :class:`~arma_plugin.ConversionReport`;
* ``README.md``: a ``huggingface_hub.ModelCard`` from ``arma_plugin/model_cards/arma_model_card.md``.

Loading rebuilds the base with no pretrained weights, armafies it with the saved config and
loads the weights strictly. Hub-style directories written by timm's ``save_for_hf`` /
``push_to_hf_hub`` or SMP's ``save_pretrained`` are read as a *base* to armafy with
``from_pretrained(..., armafy_base=True)``: all file and Hub handling lives here, and
``armafy`` stays a pure model-to-model transform (data flows layers <- convert <- hub).

One concept per module: ``errors`` (the ``CheckpointError`` hierarchy), ``checkpoint_format``
(file names and ``config.json``), ``base_spec`` (the base model and rebuilding it without
fetching weights), ``factory`` (importing a model class without running a checkpoint's code),
``weights`` (safetensors), ``files`` (a local directory under its lock, or the Hub), ``card``
(the model card), ``pretrained`` (the three functions).
"""
from .checkpoint_format import FORMAT_VERSION
from .errors import (CheckpointError, CheckpointMismatchError, CheckpointNotFoundError,
                     CorruptCheckpointError, IncompatibleCheckpointError, UnknownArchitectureError,
                     UnsafeCheckpointError)
from .pretrained import from_pretrained, push_to_hub, save_pretrained

__all__ = [
    "save_pretrained", "from_pretrained", "push_to_hub",
    "CheckpointError", "CheckpointNotFoundError", "IncompatibleCheckpointError",
    "CorruptCheckpointError", "CheckpointMismatchError", "UnknownArchitectureError",
    "UnsafeCheckpointError", "FORMAT_VERSION",
]
