"""What the corpus will contain, decided before a single sample is synthesised.

The plan is a pure function of (seed, hours, shippable_only, the voices available): splits, pseudo-speakers
and their sentences come from seeded random streams, and durations are estimated from text length, so the
same settings always give the same plan and its hash tells whether a half-built folder can be resumed.

Splits are made by source human, never by engine or speaker: the same person heard through two engines,
or through a pitch-shifted sibling, would otherwise leak between train and test. Humans are shuffled
within each family (recorded, neural, formant) so every split gets some of each.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from dataclasses import asdict, dataclass

from tldr_core.corpus.sentences import sentence_stream
from tldr_core.corpus.engines import SourceVoice
from tldr_core.errors import CorpusError
from tldr_core.text import normalize_text

SPLITS = ("train", "validation", "test")
PLAN_FORMAT = 1  # bump when rendering changes, so old half-built folders are not resumed with new audio


@dataclass(frozen=True)
class PlanConfig:
    warps: tuple[tuple[str, int], ...] = (("recorded", 3), ("neural", 2), ("formant", 1))  # WORLD siblings
    f0_scale: tuple[float, float] = (0.8, 1.3)
    envelope_shift: tuple[float, float] = (0.04, 0.12)  # envelope warp 1 -/+ this: 0.88-0.96 or 1.04-1.12
    kokoro_blends_per_split: int = 4
    kokoro_blend_weight: tuple[float, float] = (0.5, 0.8)  # of the first voice; the second gets the rest
    kokoro_max_share: float = 0.15  # of the hours: Kokoro costs ~0.75 CPU-s per audio-s, the rest ~0.05
    held_out_share: float = 0.1  # of each family's humans for validation, and as many again for test
    # Duration estimate: seconds_fixed (mostly the silence at both ends) + seconds per normalised character,
    # fitted per engine on a 1 h build (802 utterances).
    seconds_fixed: float = 0.35
    seconds_per_char: tuple[tuple[str, float], ...] = (
        ("espeak-ng", 0.052), ("flite", 0.056), ("festival", 0.061), ("rhvoice", 0.062), ("pico", 0.058),
        ("kokoro", 0.063))


@dataclass(frozen=True)
class Speaker:
    """A pseudo-speaker: a source voice as is, or warped by WORLD, or a blend of Kokoro voices."""

    id: str
    voice: SourceVoice  # for a blend, the voice with the larger weight
    split: str
    f0_scale: float = 1.0
    envelope_scale: float = 1.0
    mix: tuple[tuple[str, float], ...] = ()  # Kokoro timbre blend: (engine voice, weight) pairs


@dataclass(frozen=True)
class Utterance:
    id: str
    speaker: Speaker
    text: str
    normalized_text: str
    estimated_seconds: float


@dataclass(frozen=True)
class Plan:
    seed: int
    hours: float
    shippable_only: bool
    voices: tuple[SourceVoice, ...]
    speakers: tuple[Speaker, ...]
    utterances: tuple[Utterance, ...]

    def settings(self) -> dict:
        return {"seed": self.seed, "hours": self.hours, "shippable_only": self.shippable_only,
                "voices": [v.id for v in self.voices]}

    def hash(self) -> str:
        """Changes whenever any planned file would differ."""
        body = {"format": PLAN_FORMAT, "settings": self.settings(), "speakers": [asdict(s) for s in self.speakers],
                "utterances": [(u.id, u.speaker.id, u.normalized_text) for u in self.utterances]}
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def assign_splits(voices: list[SourceVoice], seed: int, held_out_share: float) -> dict[str, str]:
    """Source human -> split. A family with fewer than 3 humans goes to train whole."""
    splits = {}
    for family in sorted({v.family for v in voices}):
        humans = sorted({v.source_human for v in voices if v.family == family})
        random.Random(f"tldr-splits-{seed}-{family}").shuffle(humans)
        held = max(1, round(held_out_share * len(humans))) if len(humans) >= 3 else 0
        for i, human in enumerate(humans):
            splits[human] = "test" if i < held else "validation" if i < 2 * held else "train"
    return splits


def make_speakers(voices: list[SourceVoice], splits: dict[str, str], seed: int, config: PlanConfig) -> list[Speaker]:
    """Each voice as is, its WORLD siblings, and Kokoro blends; a speaker's split is its human's."""
    speakers = []
    warps = dict(config.warps)
    for voice in voices:
        split = splits[voice.source_human]
        speakers.append(Speaker(voice.id, voice, split))
        rng = random.Random(f"tldr-warps-{seed}-{voice.id}")  # per voice: independent of what else is installed
        for i in range(1, warps[voice.family] + 1):
            f0 = round(rng.uniform(*config.f0_scale), 4)
            shift = rng.uniform(*config.envelope_shift)
            envelope = round(1 + shift if rng.random() < 0.5 else 1 - shift, 4)
            speakers.append(Speaker(f"{voice.id}-w{i}", voice, split, f0, envelope))
    for split in SPLITS:  # blends only within a split, so no base voice reaches two splits
        bases = [v for v in voices if v.engine == "kokoro" and splits[v.source_human] == split]
        if len(bases) < 2:
            continue
        rng = random.Random(f"tldr-blends-{seed}-{split}")
        for i in range(1, config.kokoro_blends_per_split + 1):
            first, second = rng.sample(bases, 2)
            w = round(rng.uniform(*config.kokoro_blend_weight), 4)
            mix = ((first.engine_voice, w), (second.engine_voice, round(1 - w, 4)))
            speakers.append(Speaker(f"kokoro-mix-{split}-{i}", first, split, mix=mix))
    return sorted(speakers, key=lambda s: s.id)


def check_hours(hours: float) -> None:
    if not (hours > 0 and math.isfinite(hours)):
        raise CorpusError(f"--hours must be a positive number of hours, not {hours} (0 only with --real-speech, "
                          f"for a corpus of real speech alone).")


def make_plan(seed: int, hours: float, shippable_only: bool, voices: list[SourceVoice],
              config: PlanConfig = PlanConfig()) -> Plan:
    check_hours(hours)
    voices = sorted((v for v in voices if v.shippable or not shippable_only), key=lambda v: v.id)
    if not voices:
        raise CorpusError("No voice is left to build with: the installed voices are all non-shippable; "
                          "drop --shippable-only or install more voices.")
    splits = assign_splits(voices, seed, config.held_out_share)
    speakers = make_speakers(voices, splits, seed, config)

    n_kokoro = sum(s.voice.engine == "kokoro" for s in speakers)
    n_other = len(speakers) - n_kokoro
    share = min(n_kokoro / len(speakers), config.kokoro_max_share) if n_other else 1.0
    budget = {s.id: hours * 3600 * (share / n_kokoro if s.voice.engine == "kokoro" else (1 - share) / n_other)
              for s in speakers}

    per_char = dict(config.seconds_per_char)
    sentences = ((text, normalize_text(text)) for text in sentence_stream(seed))
    utterances = []
    text, normalized = next(sentences)
    for speaker in speakers:
        planned, n = 0.0, 0
        while True:
            seconds = round(config.seconds_fixed + per_char[speaker.voice.engine] * len(normalized), 3)
            if n and planned + seconds / 2 > budget[speaker.id]:  # stop nearest the budget, at least one each
                break
            n += 1
            planned += seconds
            utterances.append(Utterance(f"{speaker.id}-{n:04d}", speaker, text, normalized, seconds))
            text, normalized = next(sentences)
    return Plan(seed, hours, shippable_only, tuple(voices), tuple(speakers), tuple(utterances))
