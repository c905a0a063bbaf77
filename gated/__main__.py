"""Allow `python -m gated`."""

from gated.cli import main

raise SystemExit(main())
