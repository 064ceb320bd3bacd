"""Models and helpers shared by the checkpoint tests (tests/test_hub*.py)."""
from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import huggingface_hub
import pytest
import safetensors.torch
import segmentation_models_pytorch as smp
import timm
import torch
import torch.nn as nn
from safetensors import safe_open

from arma_plugin import armafy, save_pretrained


class TinyNet(nn.Module):
    """A model neither timm nor SMP knows; ``tie`` shares the weight of two 1x1 convs (not armafied)."""

    def __init__(self, channels: int = 4, tie: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.mix1 = nn.Conv2d(channels, channels, 1)
        self.mix2 = nn.Conv2d(channels, channels, 1)
        if tie:
            self.mix2.weight = self.mix1.weight
        self.head = nn.Conv2d(channels, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.head(self.mix2(torch.relu(self.mix1(x))))


TINY = f"{TinyNet.__module__}:TinyNet"

# name -> (builder, save kwargs, input shape). resnet18 and a Unet are the round-trip models users meet first;
# the others keep the many small tests fast. ``zero_init_last=False``: timm zero-initialises each
# ResNet block's last BN, which would leave the block's alpha without gradient in the first step.
MODELS = {
    "timm-resnet18": (lambda: timm.create_model("resnet18", pretrained=False, num_classes=5, zero_init_last=False),
                      {}, (2, 3, 32, 32)),
    "timm-test_resnet": (lambda: timm.create_model("test_resnet", pretrained=False, num_classes=4,
                                                   zero_init_last=False), {}, (2, 3, 32, 32)),
    "smp-unet": (lambda: smp.Unet("resnet18", encoder_weights=None, encoder_depth=3, classes=2,
                                  decoder_channels=(32, 16, 8)), {}, (2, 3, 32, 32)),
    "factory-tinynet": (lambda: TinyNet(), {"model_factory": TINY, "model_kwargs": {"channels": 4}},
                        (2, 3, 16, 16)),
    "factory-tied": (lambda: TinyNet(tie=True),
                     {"model_factory": TinyNet, "model_kwargs": {"channels": 4, "tie": True}}, (2, 3, 16, 16)),
}


@functools.lru_cache(maxsize=None)  # tests only read it; training once per model keeps CI short
def trained_arma(name: str) -> tuple[nn.Module, dict, torch.Tensor]:
    """An armafied model after one Adam step, so every used ``alpha`` is non-zero; in eval mode.

    "Used": an SMP encoder of depth 3 keeps its deeper stages, which forward never reaches (their
    grad stays ``None``).
    """
    build, save_kwargs, shape = MODELS[name]
    torch.manual_seed(0)
    model = armafy(build())
    x = torch.randn(shape)
    model.train()
    # Adam's first step moves every parameter with a gradient by about lr, whatever the gradient's
    # scale (a batch-norm net in train mode on two samples has gradients in the hundreds), so the
    # AR taps stay far from the stability cap and the outputs finite.
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model(x).square().mean().backward()
    opt.step()
    alphas = [p for n, p in model.named_parameters() if n.endswith("alpha") and p.grad is not None]
    assert alphas and all(a.abs().sum() > 0 for a in alphas), "training must move every used alpha"
    model.eval()
    with torch.no_grad():
        assert torch.isfinite(model(x)).all(), "the trained model must have finite outputs to compare"
    return model, save_kwargs, x


def states_equal(a: nn.Module, b: nn.Module) -> bool:
    """Same keys in the same order, every tensor equal bit for bit."""
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A saved timm test_resnet checkpoint; tests copy it before damaging it."""
    model, save_kwargs, _ = trained_arma("timm-test_resnet")
    return save_pretrained(model, tmp_path_factory.mktemp("ckpt") / "tiny", **save_kwargs)


def copy_of(checkpoint: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(checkpoint, tmp_path / "copy"))


def edit_config(directory: Path, edit) -> None:
    path = directory / "config.json"
    config = json.loads(path.read_text())
    edit(config)
    path.write_text(json.dumps(config))




def rewrite_weights(directory: Path, edit, keep_metadata: bool = True) -> None:
    """Apply ``edit`` to the tensors of ``directory/model.safetensors`` and write them back."""
    path = str(directory / "model.safetensors")
    with safe_open(path, "pt") as f:
        metadata = f.metadata() if keep_metadata else None
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    edit(tensors)
    safetensors.torch.save_file(tensors, path, metadata=metadata)


def seeded_tiny_arma(seed: int) -> nn.Module:
    """An armafied TinyNet whose weights and AR coefficients are drawn from ``seed``."""
    torch.manual_seed(seed)
    model = armafy(TinyNet())
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("alpha"):
                parameter.normal_(0, 0.3)
    return model.eval()


class FakeHfApi:
    """Stands in for ``huggingface_hub.HfApi``: records what would be created and uploaded."""

    calls: list = []

    def __init__(self, token=None):
        self.token = token

    def create_repo(self, repo_id, *, repo_type, private, exist_ok):
        self.calls.append(("create_repo", repo_id, repo_type, private, exist_ok, self.token))
        return huggingface_hub.RepoUrl(f"https://huggingface.co/someone/{repo_id.split('/')[-1]}")

    def upload_folder(self, *, repo_id, folder_path, repo_type, commit_message, ignore_patterns):
        files = {p.name: p.read_bytes() for p in Path(folder_path).iterdir() if p.name not in ignore_patterns}
        self.calls.append(("upload_folder", repo_id, repo_type, commit_message, files))
        return "commit-info"
