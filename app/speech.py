"""Speech in the app, without widgets: which model folder, which decoding, one Speak run, and its figures.

The window runs `speak` in a background job: it prepares the voice once (cached per voice id), streams the
model's patches to the Player as they are generated (so sound starts long before generation ends) and
returns everything that was made, for Play again and Export. Stop ends the Player's session, which is also
the model's cancel signal, so generation halts within one patch.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from app.audio_io import Player
from app.worker import stream_to_player
from tldr_core import paths
from tldr_core.codec.tuning import Tuning
from tldr_core.decoding import Sampling
from tldr_core.errors import ModelError
from tldr_core.settings import SPECULATIVE_MODES, Settings
from tldr_core.model_store import NO_DRAFT
from tldr_core.synthesis import BASELINE, SSD, SpeakStats, Synthesizer, VoicePrompt
from tldr_core.voices import SavedVoice, VoiceLibrary

MODEL_DIR_ENV = "TLDR_VOICE_MODEL_DIR"  # another model folder than the shipped one (a trained or test model)
NO_MODEL_MESSAGE = ("No speech model is installed (resources/default_model is missing), so Speak is unavailable. "
                    "Reinstall TLDR Voice, or train one with packaging/train_default_model.sh.")
LOADING_MESSAGE = "The speech model is still loading…"


def model_dir_to_use(model_dir: str | Path | None = None) -> Path | None:
    """The model folder the app loads: the one given, else $TLDR_VOICE_MODEL_DIR, else None (the default)."""
    if model_dir is not None:
        return Path(model_dir)
    from_env = os.environ.get(MODEL_DIR_ENV, "").strip()
    return Path(from_env) if from_env else None


def nothing_to_load(model_dir: Path | None) -> bool:
    """True when the app should not even try to load: no folder was chosen and none ships yet."""
    return model_dir is None and not paths.default_model_installed()


def load_synthesizer(model_dir: Path | None, device: str, progress: Callable[[str], None]) -> Synthesizer:
    """Slow (seconds for the real model): call it in a background job. ModelError says what is wrong."""
    try:
        synth = Synthesizer(model_dir, device=device, progress=progress)
        for k in synth.patch_sizes:  # all of them now, so switching the patch size is instant
            progress(f"loading the TLDR adapter for patch size {k}")
            synth.load_adapter(k)
        return synth
    except (OSError, RuntimeError) as error:  # an unreadable file or a codec that will not load
        raise ModelError(f"The speech model could not be loaded ({error}). Reinstall TLDR Voice.") from None


@dataclass(frozen=True)
class Decoding:
    mode: str         # TLDR, BASELINE, SSD or TLDR_SSD
    patch_size: int   # speech tokens per step (1 for the baseline and SSD)


def decoding_for(settings: Settings, patch_sizes: list[int], has_draft: bool = False) -> Decoding:
    """The settings as a decoding the loaded model can do; ModelError when its patch size has no adapter, or a
    speculative mode is asked of a model without a draft."""
    mode = settings.decoding_mode
    if mode == BASELINE:
        return Decoding(BASELINE, 1)
    if mode in SPECULATIVE_MODES and not has_draft:
        raise ModelError(f"{NO_DRAFT} Or choose another decoding in Settings.")
    if mode == SSD:
        return Decoding(SSD, 1)
    if settings.patch_size not in patch_sizes:
        raise ModelError(f"This model has no TLDR adapter for patch size {settings.patch_size} (it has "
                         f"{', '.join(map(str, patch_sizes)) or 'none'}): choose another patch size in Settings.")
    return Decoding(mode, settings.patch_size)


@dataclass
class SpeakRequest:
    text: str
    voice: SavedVoice
    decoding: Decoding
    temperature: float
    voice_match: int  # the codec's calibration (tldr_core.settings.VOICE_MATCHES)
    voice_tuning: int  # the codec's tuning steps per voice (tldr_core.settings.VOICE_TUNINGS)
    seed: int | None
    clicked: float  # time.perf_counter() when Speak was clicked


@dataclass
class SpeakOutcome:
    audio: np.ndarray               # everything generated (also when stopped early or not heard)
    problem: str | None             # why it was not heard (no sound card...), else None
    stats: SpeakStats | None        # None when stopped before generation began
    first_sound_seconds: float | None  # Speak click -> first chunk handed to the Player; None if none was
    stopped: bool = False           # Stop (or a new Speak) ended it before the text was all spoken


def speak(synth: Synthesizer, request: SpeakRequest, voices: dict[str, VoicePrompt], player: Player,
          session: int, on_first_sound: Callable[[float], None] | None = None,
          library: VoiceLibrary | None = None, on_tuning: Callable[[float], None] | None = None) -> SpeakOutcome:
    """Generate and play; runs in a background job. `voices` caches VoicePrompt per voice id; the
    library (when given) keeps its prompt tokens and statistics across restarts. A voice spoken with for the first
    time is tuned first (seconds; `on_tuning` hears the fraction done), and Stop cancels that too."""

    def cancelled() -> bool:  # Stop, or a newer Speak
        return player.session != session

    synth.codec.tuning = Tuning(steps=request.voice_tuning)
    prepared = voices.get(request.voice.id)
    if prepared is None:
        prepared = synth.saved_voice_prompt(request.voice, library, on_tuning, cancelled)
        if prepared is not None:
            voices[request.voice.id] = prepared
    elif synth.codec.prepare(prepared.timbre, on_tuning, cancelled) is None:  # tuned again after a settings change
        prepared = None
    if prepared is None or cancelled():  # stopped while the voice was being prepared
        return SpeakOutcome(np.zeros(0, np.float32), None, None, None, stopped=True)
    first_sound: list[float] = []

    def pushed() -> None:
        first_sound.append(time.perf_counter() - request.clicked)
        if on_first_sound is not None:
            on_first_sound(first_sound[0])

    chunks = synth.stream(request.text, prepared, mode=request.decoding.mode,
                          patch_size=request.decoding.patch_size, sampling=Sampling(temperature=request.temperature),
                          seed=request.seed, cancel=cancelled,
                          calibration=request.voice_match)
    try:
        audio, problem = stream_to_player(chunks, player, session, on_first_push=pushed)
    finally:
        chunks.close()  # a stopped stream ends now, which completes its figures
    stopped = player.session != session or synth.last_stats.cancelled  # the player may notice first
    return SpeakOutcome(audio, problem, synth.last_stats, first_sound[0] if first_sound else None, stopped)


def describe(outcome: SpeakOutcome) -> str:
    """The figures of one Speak for the status line."""
    stats = outcome.stats
    if stats is None:
        return "Stopped before any speech was generated."
    parts = []
    if outcome.first_sound_seconds is not None:
        parts.append(f"first sound {outcome.first_sound_seconds:.2f} s after the click")
    if np.isfinite(stats.first_audio_seconds):
        parts.append(f"time to first audio {stats.first_audio_seconds:.2f} s")
    if stats.audio_seconds:
        parts.append(f"real-time factor {stats.real_time_factor:.2f}")
    if stats.mode in SPECULATIVE_MODES:
        parts.append("speculative (SSD)" if stats.mode == SSD else f"patch size {stats.patch_size} + speculation")
        if stats.drafted:
            parts.append(f"{stats.acceptance_rate:.0%} of drafted tokens kept")
        if stats.backbone_steps:
            parts.append(f"{stats.tokens_per_step:.1f} tokens per model step")
    else:
        parts.append("token by token (baseline)" if stats.patch_size == 1 else f"patch size {stats.patch_size}")
    parts.append(stats.device)
    head = (f"Stopped after {stats.audio_seconds:.1f} s of speech" if outcome.stopped
            else f"Spoke {stats.audio_seconds:.1f} s of speech")
    return " ".join([f"{head}: {' · '.join(parts)}.", *stats.notices])
