"""Run the `tldr-voice` command line as a user would: a fresh process, its output and exit status."""

import os
import subprocess
import sys


def run_cli(*args, timeout: float = 120, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tldr_core", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})
