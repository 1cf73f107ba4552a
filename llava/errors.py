"""User-caused errors and the CLI wrapper that turns them into one ``error:`` line (exit 2).

Its own module, below everything else, so that the model and pruning code can raise :class:`InputError`
without importing the eval layer.
"""
from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path
from typing import Any, Callable


class InputError(ValueError):
    """A user-supplied file or argument is malformed; the message names the culprit."""


DEBUG_ENV = "FASTERVLM_DEBUG"


def cli(main: Callable[[], Any]) -> None:
    """Run a CLI's ``main`` so that a user-caused failure prints one ``error:`` line and exits 2, not a traceback.

    User-caused: :class:`InputError` and the ``ValueError``/``OSError``/``ImportError``/``NotImplementedError`` that loaders raise
    for a bad argument, file or checkpoint (their messages name it). ``--debug`` or ``FASTERVLM_DEBUG=1`` re-raises
    with the traceback. Ctrl-C exits 130; finished answers are on disk already (every writer appends or renames).
    """
    debug = "--debug" in sys.argv[1:] or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    try:
        main()
    except KeyboardInterrupt:
        if debug:
            raise
        print("interrupted; work finished so far is kept (rerun to resume)", file=sys.stderr)
        sys.exit(130)
    except (InputError, ValueError, OSError, ImportError, NotImplementedError) as e:
        if debug:
            raise
        kind = "" if isinstance(e, InputError) else f"{type(e).__name__}: "
        frame = traceback.extract_tb(e.__traceback__)[-1]
        print(f"error: {kind}{e}", file=sys.stderr)
        print(f"  (raised at {Path(frame.filename).name}:{frame.lineno}; --debug or {DEBUG_ENV}=1 shows the traceback)",
              file=sys.stderr)
        sys.exit(2)
