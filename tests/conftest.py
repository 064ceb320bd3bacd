import os
import sys
from pathlib import Path

import torch

# Triton decides at decoration time (its own library's functions: at its import) whether
# kernels are compiled or interpreted, so this is set before anything imports triton: on a
# machine without a GPU the triton backend's tests then run its kernels on CPU tensors.
# Nothing else in the suite runs Triton kernels (torch.compile on CPU emits C++). With a GPU
# the kernels stay compiled, and an explicit setting is always kept.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Recipes are scripts, not a package: make them importable for their tests.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "recipes"))
