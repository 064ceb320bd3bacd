"""How a recipe refuses a user mistake: a :class:`RecipeError`, printed by :func:`run_script`
as one line with exit status 2; every other exception keeps its traceback."""
from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator


class RecipeError(ValueError):
    """A user mistake (a bad flag, unreadable data, an output folder in use): :func:`run_script`
    prints its message as one line and exits with status 2, without a traceback."""


@contextmanager
def user_input() -> Iterator[None]:
    """Checks of what the user gave (flags, data files): their ``ValueError`` is a :class:`RecipeError`."""
    try:
        yield
    except RecipeError:
        raise
    except ValueError as error:
        raise RecipeError(str(error)) from error


def run_script(main: Callable[[], Any]) -> None:
    """A recipe's ``if __name__ == "__main__"`` entry: ``main()``; a :class:`RecipeError` becomes
    one line on stderr (from the first process of a launch) and exit status 2; any other
    exception keeps its traceback."""
    try:
        main()
    except RecipeError as error:
        if os.environ.get("RANK", "0") == "0":
            print(f"{Path(sys.argv[0]).name}: error: {' '.join(str(error).split())}", file=sys.stderr)
        sys.exit(2)
