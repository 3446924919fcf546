"""``python -m fastbp``: the same command line as the ``fastbp`` script."""

from .cli import main

raise SystemExit(main())
