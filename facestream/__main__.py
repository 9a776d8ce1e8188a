"""`python -m facestream`: the same as the `facestream` command."""

from __future__ import annotations

from facestream.cli import main

# guarded: the server's workers (multiprocessing, spawn) import this module again
if __name__ == "__main__":
    raise SystemExit(main())
