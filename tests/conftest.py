"""Shared test setup: Qt draws offscreen (CI has no display) and user folders go to a temporary place."""

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
