"""The voice library: the voices a person has recorded or imported, kept under the user data folder.

Each voice is a folder voices/<id>/ holding the prepared clip (clip.wav, 16 kHz), its speaker embedding
(embedding.npy) and voice.json (name, creation time, speech seconds, source, what preparing the clip noticed
(light clipping...), and once the voice has been spoken with: its prompt tokens and codec statistics, tagged with
the codec they belong to; for a codec whose decoder reads the clip itself, also the clip's frames and tokens in
codec_reference.npz). The folder is named by a random id, never by the voice's name, so a name can be any
Unicode text and cannot point anywhere else on disk. A voice is built in a hidden temporary folder and renamed into
place, so a crash, a full disk or a read-only folder leaves either a complete voice or none; a folder damaged anyway
(by hand, by a disk fault) is skipped with a notice instead of breaking the list.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import unicodedata
import uuid
import zipfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import soundfile as sf

from tldr_core import paths
from tldr_core.audio import SAMPLE_RATE, ReferenceClip, load_reference_clip, prepare_reference_clip, write_wav
from tldr_core.errors import SaveError, VoiceError
from tldr_core.files import atomic_path
from tldr_core.settings import write_json
from tldr_core.speaker import EMBEDDING_DIM, SpeakerEncoder

FORMAT_VERSION = 1
CLIP_FILE, EMBEDDING_FILE, META_FILE = "clip.wav", "embedding.npy", "voice.json"
REFERENCE_FILE = "codec_reference.npz"
MAX_NAME_CHARS = 80
STALE_TEMP_SECONDS = 24 * 3600  # a hidden folder this old belongs to a crashed save, not a running one


@dataclass(frozen=True)
class SavedVoice:
    id: str
    name: str
    created: str  # ISO 8601, UTC
    speech_seconds: float
    source: str | None  # the imported file, or None for a recording
    prompt_tokens: list[int] | None  # the clip in speech-codec tokens; None until first spoken with
    folder: Path
    codec_stats: list[float] | None = None  # the codec decoder's reference statistics of the clip
    codec: str | None = None  # sha256 of the codec that made both (another codec must redo them)
    notices: tuple[str, ...] = ()  # what preparing the clip noticed (ReferenceClip.notices), for the user

    @property
    def clip_path(self) -> Path:
        return self.folder / CLIP_FILE

    def clip(self) -> np.ndarray:
        """The prepared clip: mono float32 at SAMPLE_RATE."""
        samples, _ = sf.read(self.clip_path, dtype="float32")
        return samples

    def embedding(self) -> np.ndarray:
        return np.load(self.folder / EMBEDDING_FILE)

    def codec_reference(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The clip's frames and token ids as the `codec` read them (for a decoder with a voice memory), if kept
        and readable; None means derive them again."""
        try:
            with np.load(self.folder / REFERENCE_FILE) as kept:
                return kept["frames"].astype(np.float32), kept["tokens"].astype(np.int64)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):  # absent or damaged
            return None


def _clean_name(name: str) -> str:
    """The name as stored: NFC (so the same letters typed two ways match) without outer spaces."""
    return unicodedata.normalize("NFC", name).strip()


class VoiceLibrary:
    """Create, list, rename and delete saved voices. Listing is cheap; creating runs the speaker encoder."""

    def __init__(self, root: Path | None = None, device: str = "auto"):
        self.root = root or paths.user_data_dir() / "voices"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError:  # a read-only data folder: list() says so, create() refuses with the reason
            pass
        self.device = device
        self.notices: list[str] = []  # what the last list() had to skip
        self._encoder: SpeakerEncoder | None = None
        for leftover in self.root.glob(".*"):  # remains of saves and deletions cut short by a crash
            if leftover.is_dir() and time.time() - leftover.stat().st_mtime > STALE_TEMP_SECONDS:
                shutil.rmtree(leftover, ignore_errors=True)

    # --------------------------------------------------------------------------------------------- reading

    def list(self) -> list[SavedVoice]:
        """All complete voices, sorted by name; damaged folders are skipped and described in self.notices."""
        voices, self.notices = [], []
        if not self.root.is_dir():
            self.notices.append(f"The voices folder '{self.root}' could not be made, so no voice can be saved: check "
                                f"that its parent folder can be written to.")
            return voices
        for folder in sorted(self.root.iterdir()):
            if folder.name.startswith(".") or not folder.is_dir():
                continue
            try:
                voices.append(self._read(folder))
            except (OSError, ValueError, KeyError, TypeError) as error:
                self.notices.append(f"The saved voice in {folder} is damaged ({error}) and was skipped; delete "
                                    f"that folder or import the voice again.")
        return sorted(voices, key=lambda v: (v.name.casefold(), v.created))

    def get(self, voice_id: str) -> SavedVoice:
        folder = self.root / voice_id
        if not voice_id or voice_id.startswith(".") or folder.parent != self.root or not folder.is_dir():
            raise VoiceError("That voice no longer exists (it was deleted or its folder moved).")
        try:
            return self._read(folder)
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise VoiceError(f"The saved voice in {folder} is damaged ({error}); delete it and import the voice "
                             f"again.") from None

    def _read(self, folder: Path) -> SavedVoice:
        meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
        if meta.get("format") != FORMAT_VERSION:
            raise ValueError(f"unknown format {meta.get('format')!r}")
        name = meta["name"]
        if not isinstance(name, str) or not _clean_name(name):
            raise ValueError("it has no name")
        info = sf.info(folder / CLIP_FILE)
        if info.samplerate != SAMPLE_RATE or info.frames == 0:
            raise ValueError(f"{CLIP_FILE} is not a {SAMPLE_RATE} Hz clip")
        embedding = np.load(folder / EMBEDDING_FILE)
        if embedding.shape != (EMBEDDING_DIM,) or not np.isfinite(embedding).all():
            raise ValueError(f"{EMBEDDING_FILE} is not a {EMBEDDING_DIM}-value embedding")
        tokens, stats = meta.get("prompt_tokens"), meta.get("codec_stats")
        if tokens is not None and not all(isinstance(t, int) for t in tokens):
            raise ValueError("its prompt tokens are not whole numbers")
        if stats is not None and not all(isinstance(v, (int, float)) for v in stats):
            raise ValueError("its codec statistics are not numbers")
        notices = meta.get("notices", [])
        if not isinstance(notices, list) or not all(isinstance(n, str) for n in notices):
            raise ValueError("its notices are not sentences")
        return SavedVoice(id=folder.name, name=name, created=str(meta["created"]),
                     speech_seconds=float(meta["speech_seconds"]), source=meta.get("source"),
                     prompt_tokens=tokens, folder=folder, codec_stats=stats, codec=meta.get("codec"),
                     notices=tuple(notices))

    # --------------------------------------------------------------------------------------------- writing

    def check_name(self, name: str, renaming: str | None = None) -> str:
        """The name as it will be stored, or VoiceError saying why it cannot be used.

        renaming: the id of the voice being renamed, which may keep its own name.
        """
        clean = _clean_name(name)
        if not clean:
            raise VoiceError("A voice needs a name: type one.")
        if len(clean) > MAX_NAME_CHARS:
            raise VoiceError(f"That name has {len(clean)} characters; at most {MAX_NAME_CHARS} are allowed.")
        if any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in clean):
            raise VoiceError("A voice name must be one line of visible text (no line breaks or control "
                             "characters).")
        for voice in self.list():
            if voice.id != renaming and voice.name.casefold() == clean.casefold():
                raise VoiceError(f"There is already a voice called '{voice.name}': choose another name.")
        return clean

    def _encoder_for(self) -> SpeakerEncoder:
        if self._encoder is None:  # loading the ONNX session once saves ~50 ms per voice
            self._encoder = SpeakerEncoder(device=self.device)
        return self._encoder

    def create(self, name: str, sample: ReferenceClip, source: str | None = None) -> SavedVoice:
        """Save a prepared sample as a new voice (embedding it first): complete on disk, or not at all."""
        name = self.check_name(name)
        embedding = self._encoder_for().embed(sample.samples)
        voice_id = uuid.uuid4().hex[:12]
        building = self.root / f".new-{voice_id}"
        try:
            building.mkdir(parents=True)
            write_wav(building / CLIP_FILE, sample.samples, SAMPLE_RATE, subtype="FLOAT")
            np.save(building / EMBEDDING_FILE, embedding.astype(np.float32))
            write_json(building / META_FILE, {
                "format": FORMAT_VERSION, "name": name,
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "speech_seconds": round(sample.speech_seconds, 2), "source": source, "notices": list(sample.notices),
                "prompt_tokens": None})
            os.rename(building, self.root / voice_id)
        except BaseException as error:
            shutil.rmtree(building, ignore_errors=True)
            if isinstance(error, OSError):  # a read-only or full data folder
                raise SaveError(f"The voice '{name}' could not be saved in '{self.root}' ({error.strerror or error}); "
                                f"nothing was half-written. Make room on the disk, or make that folder writable, "
                                f"and try again.") from None
            raise
        return self.get(voice_id)

    def create_from_file(self, name: str, path: str | Path) -> SavedVoice:
        """Import an audio file (any format soundfile reads); AudioInputError says why one is refused."""
        self.check_name(name)  # before the slow part, so a bad name is reported at once
        return self.create(name, load_reference_clip(path), source=str(Path(path).resolve()))

    def create_from_samples(self, name: str, samples: np.ndarray, sample_rate: int) -> SavedVoice:
        """Save a recording held in memory; AudioInputError says why one is refused."""
        self.check_name(name)
        return self.create(name, prepare_reference_clip(samples, sample_rate))

    def rename(self, voice_id: str, new_name: str) -> SavedVoice:
        voice = self.get(voice_id)
        name = self.check_name(new_name, renaming=voice_id)
        meta = json.loads((voice.folder / META_FILE).read_text(encoding="utf-8"))
        meta["name"] = name
        write_json(voice.folder / META_FILE, meta)
        return self.get(voice_id)

    def save_prompt(self, voice_id: str, tokens: list[int], stats: list[float], codec: str,
                    reference: tuple[np.ndarray, np.ndarray] | None = None) -> SavedVoice:
        """Keep what the model derived from the clip, so the next session need not derive it again; `reference`:
        the clip's frames and token ids, for a codec with a voice memory (written first: voice.json names the codec
        they belong to only once they are in place)."""
        voice = self.get(voice_id)
        if reference is not None:
            with atomic_path(voice.folder / REFERENCE_FILE) as tmp:
                np.savez(tmp, frames=reference[0], tokens=reference[1])
        else:
            (voice.folder / REFERENCE_FILE).unlink(missing_ok=True)
        meta = json.loads((voice.folder / META_FILE).read_text(encoding="utf-8"))
        meta.update(prompt_tokens=[int(t) for t in tokens], codec_stats=[float(v) for v in stats], codec=codec)
        write_json(voice.folder / META_FILE, meta)
        return self.get(voice_id)

    def delete(self, voice_id: str) -> None:
        """Remove a voice; it is first renamed to a hidden folder, so it never lingers half-deleted."""
        voice = self.get(voice_id)
        doomed = self.root / f".deleted-{voice.id}"
        os.rename(voice.folder, doomed)
        shutil.rmtree(doomed, ignore_errors=True)
