"""A virtual sound card for tests: ALSA's `file` plugin in front of its `null` device.

Whatever a real sounddevice OutputStream plays on the default device is written to a raw file (float32
mono, the format PortAudio picks for float streams; each new stream starts the file afresh), and an InputStream records what was put in a second
raw file, so the whole audio path runs with no sound card and can be checked sample by sample. The null
device is not paced in real time: streams run as fast as the callbacks do.

`unpluggable_speakers` is a sound card that is pulled out mid-sound: its file plugin writes into a pipe whose
reader goes away after a while, so the next write fails as on a vanished device; the pipe is removed then, so
nothing can hang opening it again.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import sounddevice as sd

ASOUNDRC = """\
pcm.!default {{ type plug; slave.pcm "tap" }}
pcm.tap {{ type file; slave.pcm "null"; file "{played}"; infile "{microphone}"; format "raw" }}
"""


@dataclass
class AlsaTap:
    played_file: Path
    microphone_file: Path

    def played(self) -> np.ndarray:
        """All samples the latest stream sent to the device (PortAudio's priming silence included)."""
        return np.fromfile(self.played_file, dtype="<f4") if self.played_file.exists() else np.zeros(0, "<f4")

    def speak_into_microphone(self, samples: np.ndarray) -> None:
        """What the next recording will hear (16 kHz mono); after it, the microphone hears silence."""
        np.asarray(samples, dtype="<f4").tofile(self.microphone_file)

    @staticmethod
    def pace_like_a_real_microphone(recorder) -> None:
        """Make `recorder` receive its blocks in real time, as from a sound card (the null device is not paced),
        for tests that watch what happens while a recording runs."""
        callback = recorder._callback

        def paced(data, frames, time_info, status):
            time.sleep(frames / recorder.sample_rate)
            callback(data, frames, time_info, status)

        recorder._callback = paced


def _use_alsa_config(monkeypatch, config: Path | None) -> None:
    """Point PortAudio at another ALSA configuration; it re-reads it only when re-initialised."""
    if config is None:
        monkeypatch.delenv("ALSA_CONFIG_PATH", raising=False)
    else:
        monkeypatch.setenv("ALSA_CONFIG_PATH", f"/usr/share/alsa/alsa.conf:{config}")
    sd._terminate()
    sd._initialize()


@pytest.fixture
def alsa_tap(tmp_path, monkeypatch):
    if not Path("/usr/share/alsa/alsa.conf").exists():
        pytest.skip("ALSA is not installed (Linux with libasound2 and libportaudio2 needed)")
    tap = AlsaTap(tmp_path / "played.f32", tmp_path / "microphone.f32")
    tap.speak_into_microphone(np.zeros(0))
    config = tmp_path / "asoundrc"
    config.write_text(ASOUNDRC.format(played=tap.played_file, microphone=tap.microphone_file))
    _use_alsa_config(monkeypatch, config)
    yield tap
    monkeypatch.undo()
    _use_alsa_config(monkeypatch, None)


@pytest.fixture
def no_sound_card(tmp_path, monkeypatch):
    """A machine without any audio device (ALSA is told of none)."""
    config = tmp_path / "asoundrc-empty"
    config.write_text("pcm.!default { type hw; card 99 }\n")
    _use_alsa_config(monkeypatch, config)
    if sd.query_devices():
        pytest.skip("this machine has sound cards that ALSA finds by itself")
    yield
    monkeypatch.undo()
    _use_alsa_config(monkeypatch, None)


UNPLUGGABLE = """\
pcm.!default {{ type plug; slave.pcm "pipe" }}
pcm.pipe {{ type file; slave.pcm "null"; file "{pipe}"; format "raw" }}
"""


@pytest.fixture
def unpluggable_speakers(tmp_path, monkeypatch):
    """Speakers unplugged after the first half second of sound (silence included); yields the Event set then."""
    if not Path("/usr/share/alsa/alsa.conf").exists():
        pytest.skip("ALSA is not installed (Linux with libasound2 and libportaudio2 needed)")
    folder = tmp_path / "speakers"
    folder.mkdir()
    os.mkfifo(folder / "pcm")
    reader = os.open(folder / "pcm", os.O_RDONLY | os.O_NONBLOCK)  # now ALSA's opening for writing never waits
    unplugged = threading.Event()

    def listen(wanted: int = 16000 * 4 // 2) -> None:
        heard = 0
        while heard < wanted:
            try:
                heard += len(os.read(reader, 65536))
            except BlockingIOError:
                pass
            time.sleep(0.001)
        os.close(reader)
        shutil.rmtree(folder)
        unplugged.set()

    config = tmp_path / "asoundrc-unpluggable"
    config.write_text(UNPLUGGABLE.format(pipe=folder / "pcm"))
    _use_alsa_config(monkeypatch, config)
    threading.Thread(target=listen, daemon=True).start()
    yield unplugged
    monkeypatch.undo()
    _use_alsa_config(monkeypatch, None)
