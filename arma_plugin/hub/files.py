"""Where a checkpoint's files live: a local directory (written and read under a lock) or the Hub.

Writers and readers of one directory exclude each other through an inter-process lock, the file
:data:`LOCK_NAME` inside the directory (``filelock``, as ``huggingface_hub`` locks its cache):

* ``save_pretrained`` writes every file in full under a name no other writer uses (the save id),
  then, holding the lock, renames them into place: weights, ``config.json``, card;
* ``from_pretrained`` reads ``config.json`` and the weights holding the lock, so concurrent saves
  and a load never mix files of different saves. Loading creates no file: a directory without
  the lock file (no arma-plugin save wrote it) or where it cannot be opened (read-only) is read
  without the lock; a save racing such a read makes the save ids differ, which is refused.

A string that looks like a local path is never sent to the Hub (:func:`looks_like_local_path`).
"""
from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from filelock import FileLock, Timeout
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import EntryNotFoundError, HFValidationError, HfHubHTTPError

from .checkpoint_format import CONFIG_NAME, PICKLE_SUFFIXES, WEIGHTS_NAME, package_version
from .errors import CheckpointNotFoundError, UnsafeCheckpointError

__all__ = ["LOCK_NAME", "LOCK_TIMEOUT_S", "directory_lock", "publish_files", "looks_like_local_path",
           "file_fetcher"]

LOCK_NAME = ".arma-plugin.lock"
# Writers hold the lock only for their renames and readers while reading two files, so a wait
# this long means a process is stuck, not busy.
LOCK_TIMEOUT_S = 300.0


@contextlib.contextmanager
def directory_lock(directory: Path, action: str, *, writing: bool) -> Iterator[None]:
    """Hold ``directory``'s lock. Reading (``writing=False``) creates no lock file and goes on
    without the lock where it is missing or cannot be opened; a lock held by another process for
    longer than :data:`LOCK_TIMEOUT_S` raises ``TimeoutError``."""
    if not writing and not (directory / LOCK_NAME).is_file():
        yield
        return
    lock = FileLock(directory / LOCK_NAME, timeout=LOCK_TIMEOUT_S)
    try:
        lock.acquire()
    except Timeout as err:
        raise TimeoutError(f"{action}: {directory} stayed locked by another process saving or loading it "
                           f"for {LOCK_TIMEOUT_S:.0f} s (lock file {lock.lock_file})") from err
    except OSError:
        if writing:
            raise
        yield
        return
    try:
        yield
    finally:
        lock.release()


def publish_files(directory: Path, writers: Mapping[str, Callable[[Path], Any]], save_id: str) -> None:
    """Write each file under a name unique to this save, then rename them into place in order,
    holding the directory's lock; nothing of this save is left behind if anything fails."""
    directory.mkdir(parents=True, exist_ok=True)
    staged = {name: directory / f".{name}.{save_id}.tmp" for name in writers}
    try:
        for name, write in writers.items():
            write(staged[name])
        with directory_lock(directory, "save_pretrained", writing=True):
            for name, path in staged.items():
                os.replace(path, directory / name)
    finally:
        for path in staged.values():
            path.unlink(missing_ok=True)


def looks_like_local_path(source: str | os.PathLike) -> bool:
    """A ``Path``, or a string that exists or starts with ``.``, ``/``, ``~`` (or ``\\``) or holds
    more than one ``/``: a Hub id is ``name`` or ``namespace/name``."""
    if not isinstance(source, str):
        return True
    return (source.startswith((".", "/", "~", "\\")) or source.count("/") > 1 or "\\" in source
            or Path(source).exists())


def file_fetcher(repo_id_or_path: str | os.PathLike,
                 **hub_kwargs: Any) -> tuple[Callable[[str], str], Path | None]:
    """``fetch(filename) -> local path`` for a directory or a Hub repo, refusing pickles, and the
    local directory (``None`` for the Hub)."""
    if looks_like_local_path(repo_id_or_path):
        directory = Path(repo_id_or_path).expanduser()
        return _local_fetcher(directory), directory
    repo_id = str(repo_id_or_path)

    def fetch_hub(filename: str) -> str:
        try:
            path = hf_hub_download(repo_id, filename, library_name="arma-plugin",
                                   library_version=package_version(), **hub_kwargs)
        except HFValidationError as err:
            raise CheckpointNotFoundError(repo_id, "is neither a local directory nor a valid Hub "
                                                   f"repo id ({err})") from err
        except (EntryNotFoundError, HfHubHTTPError, OSError) as err:
            hint = (f"; arma-plugin reads only {WEIGHTS_NAME} (pickle checkpoints are refused)"
                    if filename == WEIGHTS_NAME else "")
            raise CheckpointNotFoundError(f"{repo_id}/{filename}", "not a local directory, and not "
                                          f"found on the Hub or in its cache{hint} "
                                          f"({type(err).__name__}: {err})") from err
        # later files come from the same commit, even if the repo is pushed to in between
        snapshot = Path(path).parent.name
        if re.fullmatch(r"[0-9a-f]{40}", snapshot):
            hub_kwargs["revision"] = snapshot
        return path
    return fetch_hub, None


def _local_fetcher(source: Path) -> Callable[[str], str]:
    if source.is_file():
        if source.suffix in PICKLE_SUFFIXES:
            raise UnsafeCheckpointError(source, _PICKLE_REFUSAL)
        raise CheckpointNotFoundError(source, "is a file; pass the directory that holds "
                                              f"{CONFIG_NAME} and {WEIGHTS_NAME}")
    if not source.is_dir():
        raise CheckpointNotFoundError(source, "no such local directory (a path is never looked up "
                                              "on the Hub; a Hub id is 'name' or 'namespace/name')")

    def fetch_local(filename: str) -> str:
        path = source / filename
        if path.is_file():
            return str(path)
        if filename == WEIGHTS_NAME:
            pickles = sorted(p.name for p in source.iterdir() if p.suffix in PICKLE_SUFFIXES)
            if pickles:
                raise UnsafeCheckpointError(source / pickles[0], _PICKLE_REFUSAL)
        raise CheckpointNotFoundError(path, "missing")
    return fetch_local


_PICKLE_REFUSAL = (f"pickle checkpoints are refused: unpickling can run arbitrary code. Convert it "
                   f"once, in a trusted environment, to {WEIGHTS_NAME} (safetensors.torch.save_file)")
