"""The Player and the Recorder drive real sounddevice streams on a virtual ALSA device (tests/alsa_tap.py)."""

import time

import numpy as np
import pytest

from app.audio_io import DEVICE_LOST, AudioDeviceError, Player, Recorder, device_names


def tone(seconds: float, hz: float = 220.0, rate: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * hz * t) + 0.01).astype(np.float32)  # never exactly zero


def sound_only(samples: np.ndarray) -> np.ndarray:
    """What was played without the silence the device adds: priming, padding of the last block, and gaps
    where the buffer ran dry (the unpaced null device outruns any producer)."""
    return samples[samples != 0]


def test_the_virtual_device_is_listed(alsa_tap):
    assert "default" in device_names("output") and "default" in device_names("input")


def test_pushed_chunks_reach_the_device_sample_for_sample(qtbot, alsa_tap):
    audio = tone(1.5)
    player = Player()
    with qtbot.waitSignal(player.finished, timeout=5000):
        for chunk in np.array_split(audio, [100, 1000, 5000, 5001, 16000]):  # uneven, like model patches
            player.push(chunk)
        player.finish()
    player.stop()  # closes the stream, so ALSA writes out its last period
    played = sound_only(alsa_tap.played())
    assert len(played) == len(audio)
    np.testing.assert_allclose(played, audio, atol=1e-6)
    assert player.played_samples == len(audio)


def test_stop_halts_within_one_block(qtbot, alsa_tap):
    player = Player()
    player.push(tone(600))  # ten minutes: far more than plays before stop() below
    qtbot.waitUntil(lambda: player.played_samples > 16000, timeout=5000)
    player.stop()
    at_stop = player.played_samples
    time.sleep(0.2)
    assert player.played_samples == at_stop and not player.is_playing
    heard = len(sound_only(alsa_tap.played()))
    assert at_stop <= heard <= at_stop + player.blocksize < 600 * 16000


def test_a_new_sound_after_stop_plays_cleanly(qtbot, alsa_tap):
    player = Player()
    player.push(tone(600, hz=440))
    qtbot.waitUntil(lambda: player.played_samples > 0, timeout=5000)
    player.stop()
    with qtbot.waitSignal(player.finished, timeout=5000):
        player.push(tone(0.5))
        player.finish()
    player.stop()
    np.testing.assert_allclose(sound_only(alsa_tap.played()), tone(0.5), atol=1e-6)  # nothing of the old one


def test_a_chunk_of_a_stopped_sound_is_dropped(alsa_tap):
    player = Player()
    session = player.session  # a producer's sound begins...
    player.stop()  # ...Stop is pressed while it is still making its next chunk...
    player.push(tone(1.0), session)  # ...which then arrives late
    assert not player.is_playing and player.played_samples == 0


def test_no_output_device_gives_a_clear_error(no_sound_card):
    with pytest.raises(AudioDeviceError, match="No audio output device.*Export"):
        Player().push(tone(0.1))


def test_a_missing_named_device_says_which(alsa_tap):
    with pytest.raises(AudioDeviceError, match="'USB Headset' is not connected"):
        Player(device="USB Headset").push(tone(0.1))


def test_speakers_unplugged_mid_sound_end_it_with_a_message_and_nothing_waits_on_them(qtbot, unpluggable_speakers):
    player = Player()
    with qtbot.waitSignal(player.failed, timeout=5000) as failure:
        player.push(tone(600))  # ten minutes: still playing when the speakers go
        player.finish()
    assert failure.args == [DEVICE_LOST] and unpluggable_speakers.is_set() and not player.is_playing
    more, started = tone(0.1), time.perf_counter()
    with pytest.raises(AudioDeviceError, match="stopped working"):
        player.push(more)  # more of the same sound is refused at once, not queued for a dead device
    assert time.perf_counter() - started < 1.0  # no wait on the device (generous: the CI machine is shared)
    player.stop()


def test_the_recorder_hears_the_microphone_up_to_its_maximum_length(qtbot, alsa_tap):
    voice = tone(3.0)
    alsa_tap.speak_into_microphone(voice)
    recorder = Recorder(max_seconds=2.0)
    recorder.start()
    qtbot.waitUntil(lambda: not recorder.is_recording, timeout=5000)  # stops by itself at the maximum
    recorded = recorder.stop()
    assert recorder.sample_rate == 16000 and len(recorded) == 2 * 16000
    assert recorder.level_dbfs > -10
    np.testing.assert_allclose(sound_only(recorded), voice[:len(sound_only(recorded))], atol=1e-6)
    assert len(sound_only(recorded)) > 16000


def test_no_microphone_gives_a_clear_error(no_sound_card):
    with pytest.raises(AudioDeviceError, match="No microphone was found"):
        Recorder().start()
