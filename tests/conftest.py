import sys
from pathlib import Path

# Recipes are scripts, not a package: make them importable for their tests.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "recipes"))
