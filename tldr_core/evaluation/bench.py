"""`tldr-voice bench`: the token-level baseline against TLDR k = 2, 4, 6, 8 and, for a model with a draft, SSD
(speculative decoding) at each gamma asked for, with the exact acceptance rule and the SSD paper's looser one, and
TLDR k=4 verified speculatively (the draft proposing whole patches), measured in one run.

Every mode says the same fixed sentences in the same voices with the same seed, after one untimed warm-up
(first use loads an adapter). The timed utterances take turns across modes (each sentence and voice is said
by every mode before the next), so a busy or slow spell of the machine falls on all modes alike, and
speed-ups are ratios of real-time factors taken in this run. Peak memory: on CUDA the allocator's peak per
mode; on CPU the process's peak resident set after the mode's warm-up (it only grows, so read it as a running
maximum).
"""

from __future__ import annotations

import json
import resource
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from tldr_core import audio, paths
from tldr_core.files import write_text
from tldr_core.decoding import SSD_RULE, Speculation
from tldr_core.synthesis import BASELINE, SSD, TLDR, TLDR_SSD, SpeakStats, Synthesizer, VoicePrompt

BENCH_TEXTS = (
    "The quick brown fox jumps over the lazy dog.",
    "Please call Stella and ask her to bring these things with her from the store.",
    "A rainbow is a division of white light into many beautiful colors.",
)
BENCH_VOICES = paths.RESOURCES_DIR / "voices"


@dataclass(frozen=True)
class BenchMode:
    """One row of the bench: a decoding mode, its patch size (1: token level) and, for SSD, how it speculates."""

    mode: str
    patch_size: int = 1
    speculation: Speculation | None = None

    @property
    def name(self) -> str:
        if self.mode == BASELINE:
            return "baseline"
        if self.mode == TLDR:
            return f"TLDR k={self.patch_size}"
        s = self.speculation
        rule = f" b={s.tolerance:g}" if s.acceptance == SSD_RULE else ""
        return f"SSD g={s.gamma}{rule}" if self.mode == SSD else f"k={self.patch_size}+SSD g={s.gamma}{rule}"


@dataclass
class ModeResult:
    mode: str
    patch_size: int
    real_time_factor: float
    first_audio_ms: float          # median over utterances
    backbone_steps: int
    tokens: int
    steps_per_second_of_audio: float
    kv_speech_bytes: int           # largest of the utterances
    kv_speech_bytes_per_second: float  # summed over utterances / seconds of audio: lengths differ by mode
    kv_bytes: int
    peak_memory_bytes: int
    stopped_by_model: int
    utterances: int
    tokens_per_step: float = float("nan")  # speech tokens per backbone pass (prefills included)
    gamma: int | None = None               # SSD: tokens drafted per verification (TLDR + SSD: patches)
    acceptance: str | None = None          # SSD: "exact", or "ssd" (the paper's rule with tolerance beta)
    tolerance: float | None = None
    acceptance_rate: float = float("nan")  # SSD: drafted tokens the backbone kept
    speedup: float = float("nan")  # baseline RTF / this RTF
    kv_speech_saving: float = float("nan")  # 1 - this / baseline, per second of audio (SSD: draft's cache included)
    name: str = ""


def _peak_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)


def bench_voices(synth: Synthesizer, folder: Path = BENCH_VOICES) -> list[VoicePrompt]:
    return [synth.prepare_voice(audio.load_reference_clip(p).samples) for p in sorted(folder.glob("*.wav"))]


@dataclass
class _Tally:
    """One mode's utterances so far."""

    wall: float = 0.0
    seconds: float = 0.0
    first_ms: list[float] = field(default_factory=list)
    steps: int = 0
    tokens: int = 0
    stopped: int = 0
    kv_speech: int = 0
    kv_speech_sum: int = 0
    kv: int = 0
    peak_memory: int = 0
    drafted: int = 0
    accepted: int = 0

    def add(self, s: SpeakStats) -> None:
        self.wall, self.seconds = self.wall + s.wall_seconds, self.seconds + s.audio_seconds
        self.first_ms.append(s.first_audio_seconds * 1000)
        self.steps, self.tokens, self.stopped = self.steps + s.backbone_steps, self.tokens + s.tokens, \
            self.stopped + s.stopped_by_model
        self.kv_speech, self.kv = max(self.kv_speech, s.kv_speech_bytes), max(self.kv, s.kv_bytes)
        self.kv_speech_sum += sum(sentence.kv_speech_bytes for sentence in s.per_sentence)
        self.drafted, self.accepted = self.drafted + s.drafted, self.accepted + s.accepted

    def result(self, mode: BenchMode) -> ModeResult:
        s = mode.speculation
        return ModeResult(mode.mode, mode.patch_size, self.wall / self.seconds, float(np.median(self.first_ms)),
                          self.steps, self.tokens, self.steps / self.seconds, self.kv_speech,
                          self.kv_speech_sum / self.seconds, self.kv, self.peak_memory, self.stopped,
                          len(self.first_ms), tokens_per_step=self.tokens / self.steps,
                          gamma=s.gamma if s else None, acceptance=s.acceptance if s else None,
                          tolerance=s.tolerance if s and s.acceptance == SSD_RULE else None,
                          acceptance_rate=self.accepted / self.drafted if self.drafted else float("nan"),
                          name=mode.name)


def bench_modes(synth: Synthesizer, patch_sizes: list[int] | None = None, gammas: list[int] | None = None,
                tolerances: list[float] | None = None, patch_gammas: list[int] | None = None,
                patch_tolerances: list[float] | None = None) -> list[BenchMode]:
    """Baseline first (every speed-up is against it), TLDR at each patch size, then, when the model has a draft,
    SSD at each gamma and TLDR k=4 + SSD at each patch gamma: exact, and with the paper's rule at each tolerance."""
    modes = [BenchMode(BASELINE)] + [BenchMode(TLDR, k) for k in (patch_sizes or synth.patch_sizes)]
    if synth.has_draft:
        for mode, k, speculations, betas in ((SSD, 1, gammas or [Speculation().gamma], tolerances),
                                             (TLDR_SSD, 4, patch_gammas if 4 in synth.patch_sizes else [],
                                              patch_tolerances)):
            for gamma in speculations or []:
                exact = Speculation(gamma=gamma)
                modes.append(BenchMode(mode, k, exact))
                modes += [BenchMode(mode, k, replace(exact, acceptance=SSD_RULE, tolerance=b)) for b in betas or []]
    return modes


def run_bench(synth: Synthesizer, seed: int = 0, patch_sizes: list[int] | None = None, rounds: int = 1,
              gammas: list[int] | None = None, tolerances: list[float] | None = None,
              patch_gammas: list[int] | None = None, patch_tolerances: list[float] | None = None) -> list[ModeResult]:
    """Every mode of `bench_modes`: `rounds` x texts x voices utterances each, taking turns."""
    voices = bench_voices(synth)
    modes = bench_modes(synth, patch_sizes, gammas, tolerances, patch_gammas, patch_tolerances)
    tallies = {mode: _Tally() for mode in modes}

    def say(sentence: str, voice: VoicePrompt, mode: BenchMode) -> None:
        for _ in synth.stream(sentence, voice, mode.mode, mode.patch_size, seed=seed, speculation=mode.speculation):
            pass

    for mode in modes:
        say(BENCH_TEXTS[0], voices[0], mode)  # warm-up, untimed
        tallies[mode].peak_memory = _peak_memory(synth.device)
    for _ in range(rounds):
        for voice in voices:
            for sentence in BENCH_TEXTS:
                for mode in modes:
                    if synth.device.type == "cuda":
                        torch.cuda.reset_peak_memory_stats(synth.device)
                    say(sentence, voice, mode)
                    tally = tallies[mode]
                    tally.add(synth.last_stats)
                    if synth.device.type == "cuda":
                        tally.peak_memory = max(tally.peak_memory, _peak_memory(synth.device))
    results = [tallies[mode].result(mode) for mode in modes]
    base = results[0]
    for r in results:
        r.speedup = base.real_time_factor / r.real_time_factor
        r.kv_speech_saving = 1 - r.kv_speech_bytes_per_second / base.kv_speech_bytes_per_second
    return results


def table(results: list[ModeResult]) -> str:
    head = (f"{'mode':<19}{'RTF':>8}{'speed-up':>10}{'TTFA ms':>9}{'steps/s audio':>15}{'tok/pass':>10}"
            f"{'accept':>8}{'KV speech':>11}{'saving':>8}{'KV all':>10}{'peak MB':>9}{'stopped':>9}")
    rows = [head]
    for r in results:
        accept = f"{r.acceptance_rate:>8.0%}" if np.isfinite(r.acceptance_rate) else f"{'-':>8}"
        rows.append(f"{r.name:<19}{r.real_time_factor:>8.3f}{r.speedup:>9.2f}x{r.first_audio_ms:>9.0f}"
                    f"{r.steps_per_second_of_audio:>15.1f}{r.tokens_per_step:>10.2f}{accept}"
                    f"{r.kv_speech_bytes / 1024:>9.0f}kB{r.kv_speech_saving:>8.0%}"
                    f"{r.kv_bytes / 1024:>8.0f}kB{r.peak_memory_bytes / 2**20:>9.0f}"
                    f"{r.stopped_by_model:>6}/{r.utterances}")
    plain = {r.patch_size: r for r in results if r.mode == TLDR}
    for r in results:
        if r.mode == TLDR_SSD and r.patch_size in plain:
            rows.append(f"{r.name}: {plain[r.patch_size].real_time_factor / r.real_time_factor:.2f}x the speed of "
                        f"plain TLDR k={r.patch_size}")
    return "\n".join(rows)


def write_json(results: list[ModeResult], synth: Synthesizer, out: Path) -> None:
    doc = {"device": str(synth.device), "threads": torch.get_num_threads(), "texts": list(BENCH_TEXTS),
           "voices": [p.name for p in sorted(BENCH_VOICES.glob("*.wav"))],
           "model": str(synth.folder.folder), "results": [r.__dict__ for r in results]}
    write_text(out, json.dumps(doc, indent=2) + "\n")
