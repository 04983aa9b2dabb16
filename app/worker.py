"""Slow work off the UI thread: each job runs a plain function in its own QThread.

A job's result, or a sentence saying why it failed, comes back to a callback on the UI thread, so the
window never freezes and never shows a traceback. The QThread is waited for and then simply dropped:
handing the worker to deleteLater while Python still holds it crashed test runs at random.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
from PySide6.QtCore import QObject, QThread, Signal, Slot

from app.audio_io import AudioDeviceError, Player
from tldr_core.errors import TldrError

log = logging.getLogger(__name__)


class _Job(QObject):
    ended = Signal(object)  # the job itself, so a late signal from an old job is recognised

    def __init__(self, work: Callable[[], Any]):
        super().__init__()
        self.work = work
        self.outcome: tuple[bool, Any] | None = None  # (succeeded, result or message)

    @Slot()
    def run(self) -> None:
        try:
            self.outcome = (True, self.work())
        except TldrError as error:
            self.outcome = (False, str(error))
        except Exception as error:  # a bug: keep the window alive, log the traceback for a report
            log.exception("background job failed")
            self.outcome = (False, f"Something unexpected went wrong ({type(error).__name__}: {error}). "
                                   f"Please report it; the app keeps running.")
        self.ended.emit(self)


class Background(QObject):
    """Runs one job at a time in a QThread; on_done(result) or on_error(message) is called on the UI thread."""

    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        self._thread: QThread | None = None
        self._job: _Job | None = None
        self._callbacks: tuple[Callable[[Any], None], Callable[[str], None]] | None = None

    @property
    def busy(self) -> bool:
        return self._thread is not None

    def start(self, work: Callable[[], Any], on_done: Callable[[Any], None], on_error: Callable[[str], None]) -> None:
        if self.busy:
            raise RuntimeError("a background job is already running")
        self._callbacks = (on_done, on_error)
        self._thread, self._job = QThread(), _Job(work)
        self._job.moveToThread(self._thread)
        self._thread.started.connect(self._job.run)
        self._job.ended.connect(self._ended)  # queued: this object lives on the UI thread
        self._thread.start()

    def wait(self) -> None:
        """Block until the running job (if any) ends and deliver its outcome now (for Stop and closing)."""
        if self._job is not None:
            self._ended(self._job)

    @Slot(object)
    def _ended(self, job: _Job) -> None:
        if job is not self._job:
            return  # delivered already by wait()
        self._thread.quit()  # run() executes inside `started`, so this waits for it to return
        self._thread.wait()
        self._thread = self._job = None
        on_done, on_error = self._callbacks
        self._callbacks = None
        succeeded, value = job.outcome
        (on_done if succeeded else on_error)(value)


def stream_to_player(chunks: Iterable[np.ndarray], player: Player, session: int,
                     on_first_push: Callable[[], None] | None = None) -> tuple[np.ndarray, str | None]:
    """Play chunks as they come (model patches, or a clip) and keep them all for Play again and Export.

    Stops producing between chunks once player.stop() has ended `session` (the Player's session when the sound
    began). on_first_push is called once, right after the first chunk was handed to the Player (for "click to
    first sound"). Without a working output device the chunks are still collected: returns (all audio, None) or
    (all audio, why it was not heard).
    """
    parts, problem = [], None
    for chunk in chunks:
        if player.session != session:
            break
        parts.append(np.asarray(chunk, dtype=np.float32).reshape(-1))
        if problem is None:
            try:
                player.push(parts[-1], session)
                if on_first_push is not None and len(parts) == 1:
                    on_first_push()
            except AudioDeviceError as error:
                problem = str(error)
    if player.session == session:
        player.finish()
    return (np.concatenate(parts) if parts else np.zeros(0, np.float32)), problem
