"""The package's version: its one definition (read by pyproject.toml, ``__init__``, the CLI and checkpoints)."""
__version__ = "0.1.0"
