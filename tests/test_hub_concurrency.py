"""Processes saving into and loading from one checkpoint directory at the same time."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from arma_plugin import from_pretrained
from arma_plugin.hub.files import LOCK_NAME
from hub_models import seeded_tiny_arma, states_equal

ROUNDS = 25

# Each process saves its own model, then loads the directory: it must hold one of the two models.
WORKER = textwrap.dedent("""
    import sys
    import time
    from pathlib import Path
    sys.path.insert(0, sys.argv[1])
    from arma_plugin import from_pretrained, save_pretrained
    from hub_models import TINY, seeded_tiny_arma, states_equal

    seed, directory, rounds = int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    models = [seeded_tiny_arma(0), seeded_tiny_arma(1)]
    ready = Path(directory).with_name(f"ready{seed}")
    ready.touch()
    while not ready.with_name(f"ready{1 - seed}").exists():  # start the loops together
        time.sleep(0.01)
    for _ in range(rounds):
        save_pretrained(models[seed], directory, model_factory=TINY, model_kwargs={"channels": 4})
        loaded = from_pretrained(directory)
        assert sum(states_equal(loaded, m) for m in models) == 1, "the directory mixes two saves"
    print("done")
""")


def test_two_processes_saving_in_a_loop_leave_exactly_one_model(tmp_path):
    directory = tmp_path / "shared"
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    tests = str(Path(__file__).parent)
    workers = [subprocess.Popen([sys.executable, str(script), tests, str(seed), str(directory), str(ROUNDS)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for seed in (0, 1)]
    results = [w.communicate(timeout=300) for w in workers]

    for worker, (out, err) in zip(workers, results):
        assert worker.returncode == 0 and out.strip() == "done", err
    models = [seeded_tiny_arma(0), seeded_tiny_arma(1)]
    loaded = from_pretrained(directory)
    assert sum(states_equal(loaded, m) for m in models) == 1
    assert sorted(p.name for p in directory.iterdir()) == [LOCK_NAME, "README.md", "config.json",
                                                           "model.safetensors"], "no staged file is left"


def test_loading_creates_no_file(tmp_path):
    import timm
    timm.models.save_for_hf(timm.create_model("test_resnet", pretrained=False), tmp_path, safe_serialization=True)
    before = sorted(p.name for p in tmp_path.iterdir())
    from_pretrained(tmp_path, armafy_base=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == before and LOCK_NAME not in before
