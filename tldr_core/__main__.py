"""`python -m tldr_core` is the same as the `tldr-voice` command."""

from tldr_core.cli import main

raise SystemExit(main())
