"""How the package's commands report a mistake in what the user typed: one line, exit code 2,
raised as :class:`UsageError` where the input is read (an output path: :func:`writable_path`).

Shared by ``arma-plugin`` (:mod:`arma_plugin.cli`) and its ``bench`` subcommand
(:mod:`arma_plugin.benchmark`); it imports nothing of the package, so both sit above it.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import NoReturn

__all__ = ["USAGE_ERROR", "UsageError", "OneLineErrorParser", "one_line", "writable_path"]

USAGE_ERROR = 2


class UsageError(Exception):
    """A mistake in the command line: reported as one line, exit code :data:`USAGE_ERROR`."""


def one_line(message: object) -> str:
    """``message`` with every run of whitespace (newlines included) replaced by one space."""
    return " ".join(str(message).split())


class OneLineErrorParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line on stderr (no usage block), exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE_ERROR, f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)\n")


def writable_path(text: str, flag: str, *, directory: bool) -> Path:
    """``text`` as a path this command can create (or write into), checked before any work.

    Creating something is tried in the nearest existing folder, so a read-only file system,
    a missing permission or a pseudo file system (``/proc``) is found before a model is built.
    """
    if not text.strip():
        raise UsageError(f"{flag} is empty; give a path")
    path = Path(text).expanduser()
    if path.exists() and path.is_dir() != directory:
        wanted = "a directory (created if missing)" if directory else "a file path"
        raise UsageError(f"{flag} {text!r} is an existing {'file' if directory else 'directory'}; give {wanted}")
    folder = path if directory else path.parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise UsageError(f"{flag} {text!r}: {str(folder)!r} is a file, so nothing can be created under it")
    try:
        with tempfile.TemporaryDirectory(dir=folder, prefix=".arma-plugin-probe-"):
            pass
    except OSError as err:
        raise UsageError(f"{flag} {text!r} cannot be written: creating anything in {str(folder)!r} "
                         f"fails ({err.strerror or err})") from err
    return path
