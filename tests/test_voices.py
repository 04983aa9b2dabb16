"""The voice library keeps each voice complete on disk, survives restarts and shrugs off damaged folders."""

import json
from dataclasses import replace

import numpy as np
import pytest
import soundfile as sf

from faults import full_disk, read_only
from tldr_core import paths
from tldr_core.audio import load_reference_clip
from tldr_core.errors import AudioInputError, SaveError
from tldr_core.speaker import EMBEDDING_DIM
from tldr_core.errors import VoiceError
from tldr_core.voices import VoiceLibrary


@pytest.fixture
def library():
    return VoiceLibrary()


@pytest.fixture
def anna(library, speech_wav):
    return library.create_from_file("Anna", speech_wav)


def test_an_imported_voice_keeps_clip_embedding_and_metadata(anna, speech_wav):
    assert anna.folder.parent == paths.user_data_dir() / "voices"
    assert sorted(p.name for p in anna.folder.iterdir()) == ["clip.wav", "embedding.npy", "voice.json"]
    assert sf.info(anna.clip_path).samplerate == 16000
    assert anna.embedding().shape == (EMBEDDING_DIM,)
    assert abs(np.linalg.norm(anna.embedding()) - 1) < 1e-4
    assert anna.speech_seconds > 2 and anna.source == str(speech_wav.resolve())
    assert anna.prompt_tokens is None  # reserved until the speech codec exists
    meta = json.loads((anna.folder / "voice.json").read_text(encoding="utf-8"))
    assert meta["name"] == "Anna" and "prompt_tokens" in meta and meta["created"].endswith("+00:00")


def test_voices_persist_across_a_fresh_library(anna):
    again = VoiceLibrary().list()
    assert [(v.id, v.name) for v in again] == [(anna.id, "Anna")]
    assert np.array_equal(again[0].clip(), anna.clip())


def test_a_recording_in_memory_becomes_a_voice(library, speech_wav):
    samples, rate = sf.read(speech_wav, dtype="float32")
    voice = library.create_from_samples("Ünïcødé 声音 🎙", samples, rate)
    assert voice.source is None
    assert [v.name for v in VoiceLibrary().list()] == ["Ünïcødé 声音 🎙"]


def test_rename_and_delete_persist(library, anna):
    library.rename(anna.id, "  Anna B  ")
    assert [v.name for v in VoiceLibrary().list()] == ["Anna B"]
    library.delete(anna.id)
    assert VoiceLibrary().list() == []
    assert list((paths.user_data_dir() / "voices").iterdir()) == []


@pytest.mark.parametrize("name, reason", [("", "needs a name"), ("   ", "needs a name"),
                                          ("two\nlines", "one line"), ("x" * 81, "at most 80"),
                                          ("anna", "already a voice")])
def test_bad_names_are_refused_with_a_reason(library, anna, name, reason):
    with pytest.raises(VoiceError, match=reason):
        library.create_from_file(name, "never-read.wav")


def test_a_voice_may_keep_its_own_name_when_renamed(library, anna):
    assert library.rename(anna.id, "ANNA").name == "ANNA"


def test_names_that_look_like_paths_stay_names(library, speech_wav):
    voice = library.create_from_file("../../etc/passwd", speech_wav)
    assert voice.folder.parent == library.root and voice.name == "../../etc/passwd"
    with pytest.raises(VoiceError):
        library.get("../voices")


def test_a_bad_recording_is_refused_and_leaves_nothing_behind(library):
    with pytest.raises(AudioInputError, match="No speech"):
        library.create_from_samples("Silence", np.zeros(16000 * 5, np.float32), 16000)
    assert list(library.root.iterdir()) == []


def test_a_damaged_voice_is_skipped_with_a_notice(library, anna, speech_wav):
    bert = library.create_from_file("Bert", speech_wav)
    (anna.folder / "voice.json").write_text("{not json", encoding="utf-8")
    (library.root / "stray-folder").mkdir()
    fresh = VoiceLibrary()
    assert [v.name for v in fresh.list()] == ["Bert"]
    assert len(fresh.notices) == 2 and all("damaged" in n and "skipped" in n for n in fresh.notices)
    np.save(bert.folder / "embedding.npy", np.zeros(3, np.float32))
    assert fresh.list() == [] and len(fresh.notices) == 3


def test_on_a_full_disk_or_in_a_read_only_folder_no_voice_is_half_saved(library, speech_wav):
    for fault in (full_disk(room=4096), read_only(library.root)):
        with fault, pytest.raises(SaveError, match=f"voice 'Anna' could not be saved in '{library.root}' .*nothing "
                                                   f"was half-written"):
            library.create_from_file("Anna", speech_wav)
        assert list(library.root.iterdir()) == []
    anna = library.create_from_file("Anna", speech_wav)
    with full_disk(room=0), pytest.raises(SaveError):
        library.rename(anna.id, "Bert")
    assert [v.name for v in VoiceLibrary().list()] == ["Anna"] and sorted(p.name for p in anna.folder.iterdir()) == [
        "clip.wav", "embedding.npy", "voice.json"]


def test_what_preparing_the_clip_noticed_is_kept_with_the_voice(library, speech_wav):
    clip = load_reference_clip(speech_wav)
    voice = library.create("Anna", replace(clip, notices=("The recording is lightly clipped.",)))
    assert VoiceLibrary().get(voice.id).notices == ("The recording is lightly clipped.",)


def test_an_unfinished_save_is_invisible(library, anna):
    (library.root / ".new-0123456789ab").mkdir()
    assert [v.id for v in library.list()] == [anna.id] and library.notices == []
