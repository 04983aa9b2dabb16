"""Errors a person can act on.

Every failure that bad input can cause is raised as a subclass of TldrError whose message says what is
wrong and what to do about it; the app and the CLI show that message instead of a traceback.
"""


class TldrError(Exception):
    """Base of all expected failures: str(error) is a complete sentence meant for the user."""


class AudioInputError(TldrError):
    """An audio file or recording cannot serve as a voice sample (unreadable, silent, clipped, too short...)."""


class TextInputError(TldrError):
    """Text that cannot be spoken (empty, nothing pronounceable, too long)."""


class ModelError(TldrError):
    """A model file is missing, damaged or incompatible."""


class CorpusError(TldrError):
    """The training corpus cannot be built or read (missing voices, damaged files)."""


class VoiceError(TldrError):
    """A saved voice cannot be named, found or changed as asked."""


class SaveError(TldrError, OSError):
    """A file could not be written (a read-only folder, a full disk); nothing was half-written. Also an OSError,
    so code that copes with a failed write keeps coping."""
