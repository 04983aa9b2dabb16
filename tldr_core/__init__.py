"""TLDR Voice core: everything below the window (text, audio, speaker, codec, model, training, CLI).

Nothing in this package imports Qt, so it runs the same from the app, the command line and tests.
"""

__version__ = "0.1.0"
