"""Sound in and out through sounddevice (PortAudio).

The Player takes audio in chunks as they are produced (a voice sample now, model patches later) and plays
them through one OutputStream whose callback reads a thread-safe buffer, so sound starts with the first
chunk, not the last. The Recorder fills a buffer from an InputStream and reports the live level for a meter.
Both turn "no such device" into an AudioDeviceError whose message a person can act on; a device that stops
working mid-sound (unplugged) ends the Player's sound with a message too, never a hang.
"""

from __future__ import annotations

import threading
from collections import deque
from functools import partial

import numpy as np
import sounddevice as sd
from PySide6.QtCore import QObject, Signal

from tldr_core.audio import SAMPLE_RATE
from tldr_core.errors import TldrError

BLOCK_SECONDS = 0.02  # one callback's worth of audio: Stop is heard within this (plus the device's latency)
SILENCE_DBFS = -90.0  # the meter's floor
DEVICE_LOST = ("The sound device stopped working while playing (was it unplugged?). Plug it back in or choose "
               "another output device in Settings; Export… still saves the whole speech.")


class AudioDeviceError(TldrError):
    """No speakers or microphone, or the chosen one cannot be opened."""


def device_names(kind: str) -> list[str]:
    """Names of the devices that can play ("output") or record ("input"), as sounddevice lists them."""
    key = "max_output_channels" if kind == "output" else "max_input_channels"
    try:
        return [d["name"] for d in sd.query_devices() if d[key] > 0]
    except sd.PortAudioError:
        return []


def _open_error(kind: str, device: str | None, error: Exception) -> AudioDeviceError:
    """The message for a stream that would not open, from what is actually missing."""
    if not device_names(kind):
        if kind == "output":
            return AudioDeviceError("No audio output device was found (no speakers, headphones or sound card), "
                                    "so nothing can be played. Export… still saves the audio to a file.")
        return AudioDeviceError("No microphone was found: plug one in (and allow this app to use it), or "
                                "import an audio file instead.")
    if device is not None and device not in device_names(kind):
        return AudioDeviceError(f"The {kind} device '{device}' is not connected: choose another one in Settings "
                                f"(or the system default).")
    return AudioDeviceError(f"The audio {kind} could not be opened ({error}). Choose another {kind} device in "
                            f"Settings.")


def _dbfs(block: np.ndarray) -> float:
    peak = float(np.max(np.abs(block))) if block.size else 0.0
    return max(SILENCE_DBFS, 20 * np.log10(peak)) if peak > 0 else SILENCE_DBFS


class Player(QObject):
    """Plays mono float32 chunks at SAMPLE_RATE as they are pushed; push() and stop() work from any thread.

    Each stop() ends a session. A producer notes `session` when its sound begins and passes it to push(), so a
    chunk it was pushing while Stop was pressed is dropped instead of starting the sound again.
    """

    finished = Signal()  # all that was pushed before finish() has played, or there was nothing to play
    failed = Signal(str)  # the device stopped mid-sound (unplugged?): what to tell the user

    def __init__(self, device: str | None = None, block_seconds: float = BLOCK_SECONDS):
        super().__init__()
        self.device = device  # a sounddevice name; None: the system default
        self.blocksize = int(round(block_seconds * SAMPLE_RATE))
        self.played_samples = 0  # handed to the device since the last start
        self._chunks: deque[np.ndarray] = deque()
        self._offset = 0  # samples of _chunks[0] already played
        self._ended = False  # finish() was called: an empty buffer is the end, not an underrun
        self._session = 0  # bumps on every stop()
        self._lost = -1  # the session whose device stopped working: the rest of its sound is not played
        self._lock = threading.Lock()  # the buffer, shared with the audio callback
        self._stream_lock = threading.Lock()
        self._stream: sd.OutputStream | None = None

    @property
    def session(self) -> int:
        return self._session

    @property
    def is_playing(self) -> bool:
        """A sound is running; not once its device is lost (PortAudio may report the stream active a moment more,
        while it calls back that it ended)."""
        stream = self._stream
        return stream is not None and stream.active and self._lost != self._session

    def push(self, chunk: np.ndarray, session: int | None = None) -> None:
        """Queue a chunk and start the stream if it is not running; AudioDeviceError if it cannot start.

        session: the session the chunk belongs to (None: the current one); a stopped session's are dropped.
        """
        chunk = np.asarray(chunk, dtype=np.float32).reshape(-1)
        session = self._session if session is None else session
        with self._lock:
            if session != self._session:
                return
            if session == self._lost:
                raise AudioDeviceError(DEVICE_LOST)
            self._chunks.append(chunk)
            self._ended = False
        with self._stream_lock:
            if session != self._session or (self._stream is not None and self._stream.active):
                return
            self._close_stream()
            try:
                self._stream = sd.OutputStream(
                    samplerate=SAMPLE_RATE, blocksize=self.blocksize, device=self.device, channels=1,
                    dtype="float32", latency="low", callback=self._callback,
                    finished_callback=partial(self._stream_finished, session))
                self.played_samples = 0
                self._stream.start()
            except (sd.PortAudioError, ValueError) as error:
                self._close_stream()
                with self._lock:
                    self._chunks.clear()
                raise _open_error("output", self.device, error) from None

    def finish(self) -> None:
        """No more chunks will come: the stream ends (and `finished` fires) once the buffer has played."""
        with self._lock:
            self._ended = True
        if self._stream is None:  # nothing was pushed since the last stop(), or it could not be played
            self.finished.emit()

    def stop(self) -> None:
        """Silence now: drop what is queued and abort the stream (at most one block more is heard)."""
        with self._lock:
            self._chunks.clear()
            self._offset = 0
            self._ended = True
            self._session += 1
        with self._stream_lock:
            self._close_stream()

    def _close_stream(self) -> None:
        if self._stream is not None:
            self._stream.abort()
            self._stream.close()
            self._stream = None

    def _callback(self, out: np.ndarray, frames: int, time_info, status: sd.CallbackFlags) -> None:
        """PortAudio's thread: copy the next block from the buffer; silence where it has run dry."""
        filled = 0
        with self._lock:
            while filled < frames and self._chunks:
                chunk = self._chunks[0]
                take = min(frames - filled, len(chunk) - self._offset)
                out[filled:filled + take, 0] = chunk[self._offset:self._offset + take]
                filled += take
                self._offset += take
                if self._offset == len(chunk):
                    self._chunks.popleft()
                    self._offset = 0
            done = self._ended and not self._chunks
        out[filled:] = 0
        self.played_samples += filled
        if done:
            raise sd.CallbackStop  # PortAudio still plays this last block, then ends the stream

    def _stream_finished(self, session: int) -> None:
        """PortAudio's thread, when a stream has ended: played out, aborted by stop(), or failed (unplugged)."""
        if session != self._session:  # stop() aborted it
            return
        with self._lock:
            played_out = self._ended and not self._chunks
            if not played_out:
                self._lost = session
        if played_out:
            self.finished.emit()
        else:
            self.failed.emit(DEVICE_LOST)


class Recorder:
    """Records mono audio from the chosen microphone, up to max_seconds, keeping the live level for a meter."""

    def __init__(self, device: str | None = None, max_seconds: float = 30.0):
        self.device = device
        self.max_seconds = max_seconds
        self.sample_rate = SAMPLE_RATE
        self.level_dbfs = SILENCE_DBFS  # peak of the latest block
        self._blocks: list[np.ndarray] = []
        self._frames = 0
        self._lock = threading.Lock()
        self._stream: sd.InputStream | None = None

    @property
    def seconds(self) -> float:
        return self._frames / self.sample_rate

    @property
    def is_recording(self) -> bool:
        return self._stream is not None and self._stream.active

    def start(self) -> None:
        """Start recording at 16 kHz, or at the device's own rate when it does not offer that."""
        self._blocks, self._frames, self.level_dbfs = [], 0, SILENCE_DBFS
        try:
            try:
                sd.check_input_settings(device=self.device, channels=1, dtype="float32", samplerate=SAMPLE_RATE)
                self.sample_rate = SAMPLE_RATE
            except sd.PortAudioError:
                self.sample_rate = int(sd.query_devices(self.device, "input")["default_samplerate"])
            self._stream = sd.InputStream(samplerate=self.sample_rate, device=self.device, channels=1,
                                          dtype="float32", callback=self._callback)
            self._stream.start()
        except (sd.PortAudioError, ValueError) as error:
            self._stream = None
            raise _open_error("input", self.device, error) from None

    def stop(self) -> np.ndarray:
        """End the recording: mono float32 at self.sample_rate."""
        if self._stream is not None:
            self._stream.abort()
            self._stream.close()
            self._stream = None
        with self._lock:
            return np.concatenate(self._blocks) if self._blocks else np.zeros(0, np.float32)

    def _callback(self, data: np.ndarray, frames: int, time_info, status: sd.CallbackFlags) -> None:
        room = int(self.max_seconds * self.sample_rate) - self._frames
        block = data[:room, 0].copy()
        with self._lock:
            self._blocks.append(block)
            self._frames += len(block)
        self.level_dbfs = _dbfs(block)
        if len(block) == room:
            raise sd.CallbackStop  # the maximum length is reached
