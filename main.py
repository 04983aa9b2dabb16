"""Start the TLDR Voice desktop app: `python main.py`; `python main.py --check [OUT.wav]` runs the speech path once
without the window (tldr_core/self_check.py): the packaged app's own check."""

import sys
from pathlib import Path

if __name__ == "__main__":
    if sys.argv[1:2] == ["--check"]:
        from tldr_core.self_check import run_check

        raise SystemExit(run_check(Path(sys.argv[2]) if len(sys.argv) > 2 else None))
    from app.main_window import run

    raise SystemExit(run())
