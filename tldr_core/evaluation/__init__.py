"""Measurements of the system, kept apart from the code that runs it (never imported by the app's hot path)."""
