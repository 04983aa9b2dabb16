"""The desktop app (Qt only): windows, widgets, the background worker and audio I/O. Model code lives in tldr_core."""
