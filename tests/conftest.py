import os
import sys
from pathlib import Path

import pytest
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


@pytest.fixture(scope="session")
def reset_accelerate_state():
    """A function that clears the process-wide state Accelerate keeps (``AcceleratorState``,
    ``PartialState``) and the deterministic-algorithms switch of ``--deterministic``, so that
    the next in-process recipe run starts as a fresh process would."""
    from accelerate.state import AcceleratorState

    def reset():
        AcceleratorState._reset_state(reset_partial_state=True)
        torch.use_deterministic_algorithms(False)

    return reset


@pytest.fixture
def fresh_accelerate_state(reset_accelerate_state):
    """For tests that run recipes in-process: the state is cleared after the test (and by the
    yielded function, between two runs inside one test)."""
    yield reset_accelerate_state
    reset_accelerate_state()
