import os
import sys
from pathlib import Path

# Triton decides at decoration time (its own library's functions: at its import) whether
# kernels are compiled or interpreted, so this is set before anything imports triton: the
# triton backend's tests then run its kernels on CPU tensors. Nothing else in the suite
# runs Triton kernels (torch.compile on CPU emits C++). An explicit setting is kept.
os.environ.setdefault("TRITON_INTERPRET", "1")

# Recipes are scripts, not a package: make them importable for their tests.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "recipes"))
