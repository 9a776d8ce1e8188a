"""`python -m facestream`: the same as the `facestream` command."""

from __future__ import annotations

from facestream.cli import main

raise SystemExit(main())
