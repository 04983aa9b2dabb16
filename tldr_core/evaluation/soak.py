"""`tldr-voice soak`: many Speak runs in one process, each with a random text, voice, decoding and sometimes a
Stop, to find what only shows over time: memory that keeps growing, threads left running, and failures.

A failure is a traceback, or an outcome other than the one the input calls for. The texts and voices include
the odd ones people bring (emoji, other scripts, nothing to say, far too much; clips at 8 or 96 kHz, in stereo,
lightly or badly clipped, silent, empty, half a second), each marked with what must happen: spoken (a lightly
clipped clip with its notice), or refused with a clear message, i.e. the right TldrError. Every run prepares its
voice from the clip afresh (checks, trimming, speaker encoder, codec tokens), as an import does, then speaks.
A Stop comes after a random number of chunks, through the cancel callback or by closing the stream as the app
does; no chunk may come after it.

Memory is the process's resident set after a warm-up (its first runs speak with each decoding in turn, so every
adapter exists before the baseline) against the end; threads are the process's OS threads (Python's,
onnxruntime's, torch's) at the same two points. Both come from /proc/self/status, so the soak runs on Linux.
"""

from __future__ import annotations

import gc
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from math import gcd
from pathlib import Path

import numpy as np
from scipy.signal import resample_poly

from tldr_core import audio, paths, text
from tldr_core.errors import AudioInputError, TextInputError, TldrError
from tldr_core.settings import VOICE_MATCHES
from tldr_core.synthesis import BASELINE, SSD, TLDR, TLDR_SSD, Synthesizer

CANCEL, CLOSE = "cancel", "close"  # how a run is stopped: the cancel callback, or the caller closing the stream


@dataclass(frozen=True)
class SoakText:
    text: str
    speakable: bool  # False: a TextInputError must say why not


SOAK_TEXTS = (
    SoakText("Hello there.", True),
    SoakText("The quick brown fox jumps over the lazy dog.", True),
    SoakText("It costs $3.50, on 2024-03-05 at 3:30 pm; call 555-123-4567 or mail jane.doe@example.org.", True),
    SoakText("I ❤️ this 😀 so much!", True),
    SoakText("Привет, как дела? Ελληνικά γράμματα. 日本語のテキスト。", True),
    SoakText("مرحبا بالعالم and नमस्ते दुनिया", True),
    SoakText("naïve café, jalapeño, Zürich; Dr. Smith vs. St. John, etc.", True),
    SoakText("Supercalifragilisticexpialidocious" * 3, True),  # one word longer than a sentence may be
    SoakText("wait...   (really?!)  --  yes\n\n\tno", True),
    SoakText("First sentence. Second one, a little longer than the first! And a third? Yes, and a fourth one too.",
             True),
    SoakText("", False),
    SoakText("   \n\t ", False),
    SoakText("😀🎉👍", False),
    SoakText("?!... — --", False),
    SoakText("\x00\x01\x02", False),
    SoakText("word " * (text.MAX_TEXT_CHARS // 5 + 1), False),  # over the length limit
)


@dataclass(frozen=True)
class SoakVoice:
    name: str
    samples: np.ndarray  # as read or recorded: any rate, mono or (frames, channels)
    sample_rate: int
    usable: bool  # False: an AudioInputError must say why not
    notice: str | None = None  # usable, with a notice that says this


def _resampled(samples: np.ndarray, rate: int, new_rate: int) -> np.ndarray:
    g = gcd(rate, new_rate)
    return resample_poly(samples, new_rate // g, rate // g).astype(np.float32)


def _clipped(samples: np.ndarray, fraction: float) -> np.ndarray:
    """The clip at full scale, with `fraction` of its samples flattened at +-1 in runs of 4 on its loud parts,
    as an overdriven input stage leaves them."""
    peak = samples / np.abs(samples).max()
    loud = np.flatnonzero(np.abs(peak) > 0.3)
    runs = max(1, int(fraction * len(peak) / 4))
    clipped = peak.copy()
    for i in loud[np.linspace(0, len(loud) - 5, runs).astype(int)]:
        clipped[i:i + 4] = np.sign(peak[i])
    return clipped


def soak_voices(folder: Path = paths.RESOURCES_DIR / "voices") -> list[SoakVoice]:
    """Each reference clip of `folder` as it is and as people's files and recordings differ from it, and two that
    hold nothing."""
    voices = []
    for path in sorted(folder.glob("*.wav")):
        samples, rate = audio.read_audio(path)
        start = int(np.flatnonzero(np.abs(samples) > 0.01)[0])
        voices += [
            SoakVoice(path.stem, samples, rate, True),
            SoakVoice(f"{path.stem} at 8 kHz", _resampled(samples, rate, 8000), 8000, True),
            SoakVoice(f"{path.stem} at 96 kHz", _resampled(samples, rate, 96000), 96000, True),
            SoakVoice(f"{path.stem} in stereo, 16 bit", (np.stack([samples, 0.5 * samples], axis=1) * 32767
                                                         ).astype(np.int16), rate, True),
            SoakVoice(f"{path.stem} lightly clipped", _clipped(samples, 0.003), rate, True, "lightly clipped"),
            SoakVoice(f"{path.stem} badly clipped", _clipped(samples, 0.03), rate, False),
            SoakVoice(f"{path.stem} cut to 0.5 s", samples[start:start + rate // 2], rate, False),
        ]
    return voices + [SoakVoice("silence", np.zeros(5 * audio.SAMPLE_RATE, np.float32), audio.SAMPLE_RATE, False),
                     SoakVoice("empty", np.zeros(0, np.float32), audio.SAMPLE_RATE, False)]


@dataclass(frozen=True)
class SoakConfig:
    runs: int = 200
    warmup: int = 10  # runs before the baseline of memory and threads (not counted in `runs`)
    seed: int = 0
    bad_input_chance: float = 0.25  # runs with a text or a voice that must be refused
    stop_chance: float = 0.3  # runs stopped after 1 to 6 chunks
    max_memory_growth: float = 0.05  # the target: resident memory at the end against after the warm-up
    decodings: tuple[tuple[str, int], ...] | None = None  # (mode, patch size); None: every one the model has
    texts: tuple[SoakText, ...] = SOAK_TEXTS


@dataclass(frozen=True)
class Case:
    """What one run does."""

    text: SoakText
    voice: SoakVoice
    mode: str
    patch_size: int
    seed: int
    stop_after: int | None = None  # chunks heard before Stop; None: no Stop
    stop_by: str = CANCEL
    voice_match: int = VOICE_MATCHES[0]  # the codec's calibration

    def describe(self) -> str:
        decoding = f"TLDR k={self.patch_size}" if self.mode == TLDR else self.mode
        stop = f", Stop ({self.stop_by}) after {self.stop_after} chunks" if self.stop_after is not None else ""
        shown = self.text.text if len(self.text.text) <= 60 else f"{self.text.text[:57]}..."
        return (f"{shown!r} ({len(self.text.text)} characters) in '{self.voice.name}', {decoding}, voice match "
                f"{self.voice_match}, seed {self.seed}{stop}")

    @property
    def expected_error(self) -> type[TldrError] | None:
        if not self.voice.usable:
            return AudioInputError  # the voice is prepared before the text is read
        return None if self.text.speakable else TextInputError


@dataclass
class Failure:
    run: str  # "run 17", or "warm-up 3"
    case: str
    error: str  # what went wrong, in one line
    traceback: str = ""  # for an unexpected exception


@dataclass
class SoakReport:
    max_memory_growth: float
    runs: int = 0
    spoken: int = 0  # to the end
    stopped: int = 0  # by a Stop mid-stream
    refused: Counter = field(default_factory=Counter)  # bad input refused with the right clear error, by kind
    failures: list[Failure] = field(default_factory=list)
    audio_seconds: float = 0.0
    seconds: float = 0.0
    rss_start: int = 0  # bytes, after the warm-up
    rss_middle: int = 0  # after half the runs
    rss_end: int = 0
    threads_start: int = 0  # OS threads of the process, after the warm-up
    threads_end: int = 0
    new_threads: list[str] = field(default_factory=list)  # Python threads started during the runs, still running

    @property
    def memory_growth(self) -> float:
        return self.rss_end / self.rss_start - 1 if self.rss_start else float("nan")

    @property
    def threads_left(self) -> int:
        return max(0, self.threads_end - self.threads_start)

    @property
    def memory_ok(self) -> bool:
        return self.memory_growth < self.max_memory_growth

    @property
    def passed(self) -> bool:
        return self.memory_ok and self.threads_left == 0 and not self.failures

    def lines(self) -> list[str]:
        def verdict(ok: bool) -> str:
            return "ok" if ok else "MISSED"

        refused = ", ".join(f"{n} {kind}" for kind, n in sorted(self.refused.items())) or "none"
        mb = 1 / 2**20
        names = f" (Python threads: {', '.join(self.new_threads)})" if self.new_threads else ""
        lines = [f"soak: {self.runs} runs in {self.seconds:.0f} s, {self.audio_seconds:.0f} s of speech: "
                 f"{self.spoken} spoken to the end, {self.stopped} stopped mid-stream, "
                 f"{sum(self.refused.values())} refused with a clear message ({refused})",
                 f"memory: {self.rss_start * mb:.0f} MB after the warm-up, {self.rss_middle * mb:.0f} MB half way, "
                 f"{self.rss_end * mb:.0f} MB at the end: {self.memory_growth:+.1%} (target under "
                 f"{self.max_memory_growth:.0%}) {verdict(self.memory_ok)}",
                 f"threads: {self.threads_start} after the warm-up, {self.threads_end} at the end: "
                 f"{self.threads_left} left running{names} (target 0) {verdict(self.threads_left == 0)}",
                 f"failures: {len(self.failures)} (target 0) {verdict(not self.failures)}"]
        for failure in self.failures:
            lines.append(f"  {failure.run}: {failure.case}: {failure.error}")
        for failure in [f for f in self.failures if f.traceback][:3]:
            lines.append(f"  traceback of {failure.run}:\n{failure.traceback.rstrip()}")
        return lines


def process_figures() -> tuple[int, int]:
    """(resident memory in bytes, OS threads) of this process."""
    try:
        status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    except OSError:
        raise TldrError("The soak reads memory and threads from /proc/self/status, which only Linux has.") from None
    return int(status["VmRSS"].split()[0]) * 1024, int(status["Threads"])


def _settled() -> tuple[int, int, set[threading.Thread]]:
    gc.collect()
    return (*process_figures(), set(threading.enumerate()))


def decodings_of(synth: Synthesizer) -> tuple[tuple[str, int], ...]:
    """Every decoding the model can do: TLDR at each of its patch sizes, token level, and with a draft SSD and
    TLDR + SSD at each patch size."""
    speculative = ((SSD, 1), *((TLDR_SSD, k) for k in synth.patch_sizes)) if synth.has_draft else ()
    return (*((TLDR, k) for k in synth.patch_sizes), (BASELINE, 1), *speculative)


def make_case(rng: np.random.Generator, config: SoakConfig, voices: list[SoakVoice],
              decodings: tuple[tuple[str, int], ...], decoding: int | None = None) -> Case:
    """A random case; with `decoding` (an index into `decodings`) one that speaks to the end with that decoding,
    as a warm-up run must."""
    good_texts = [t for t in config.texts if t.speakable]
    good_voices = [v for v in voices if v.usable]
    texts, voice_pool = good_texts, good_voices
    if decoding is None and rng.random() < config.bad_input_chance:
        if rng.random() < 0.5:
            texts = [t for t in config.texts if not t.speakable] or good_texts
        else:
            voice_pool = [v for v in voices if not v.usable] or good_voices
    mode, patch_size = decodings[int(rng.integers(len(decodings))) if decoding is None else decoding]
    stop = decoding is None and rng.random() < config.stop_chance
    return Case(texts[int(rng.integers(len(texts)))], voice_pool[int(rng.integers(len(voice_pool)))], mode,
                patch_size, seed=int(rng.integers(2**31)), stop_after=int(rng.integers(1, 7)) if stop else None,
                stop_by=CANCEL if rng.random() < 0.5 else CLOSE,
                voice_match=VOICE_MATCHES[int(rng.integers(len(VOICE_MATCHES)))])


def run_case(synth: Synthesizer, case: Case, report: SoakReport, label: str) -> None:
    """Run one case and count its outcome in `report`: spoken, stopped, refused, or a failure named `label`."""
    expected = case.expected_error
    try:
        problem = _speak(synth, case, report)
    except TldrError as error:
        if expected is None or not isinstance(error, expected):
            problem = f"{type(error).__name__} where {expected.__name__ if expected else 'speech'} was due: {error}"
        elif not str(error).strip():
            problem = f"{type(error).__name__} without a message"
        else:
            report.refused[type(error).__name__] += 1
            problem = None
    except Exception as error:  # a traceback: exactly what the soak is looking for
        report.failures.append(Failure(label, case.describe(), f"{type(error).__name__}: {error}",
                                       traceback.format_exc()))
        return
    if problem is not None:
        report.failures.append(Failure(label, case.describe(), problem))


def _speak(synth: Synthesizer, case: Case, report: SoakReport) -> str | None:
    """Prepare the voice and speak; None when the outcome is the one due, else what is wrong with it."""
    clip = audio.prepare_reference_clip(case.voice.samples, case.voice.sample_rate)
    if case.voice.notice and not any(case.voice.notice in notice for notice in clip.notices):
        return f"no notice saying '{case.voice.notice}' (notices: {list(clip.notices)})"
    voice = synth.prepare_voice(clip.samples)
    chunks: list[np.ndarray] = []
    stop_due = case.stop_after is not None
    cancel = (lambda: len(chunks) >= case.stop_after) if stop_due and case.stop_by == CANCEL else None
    stream = synth.stream(case.text.text, voice, case.mode, case.patch_size, seed=case.seed, cancel=cancel,
                          calibration=case.voice_match)
    try:
        for chunk in stream:
            if stop_due and len(chunks) >= case.stop_after:
                return f"a chunk came after Stop ({len(chunks)} chunks were heard)"
            chunks.append(chunk)
            if stop_due and case.stop_by == CLOSE and len(chunks) == case.stop_after:
                break
    finally:
        stream.close()
    if case.expected_error is not None:
        return f"spoken, where {case.expected_error.__name__} was due"
    stats = synth.last_stats
    speech = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    report.audio_seconds += len(speech) / audio.SAMPLE_RATE
    if not np.isfinite(speech).all():
        return "the audio holds NaN or infinity"
    if stats.cancelled:
        report.stopped += 1
        return None
    if stop_due and case.stop_by == CLOSE and len(chunks) == case.stop_after:
        return "the stream was closed but does not count as stopped"
    sentences = len(text.split_sentences(case.text.text))
    if not len(speech) or stats.sentences != sentences:
        return f"{len(speech)} samples for {stats.sentences} of {sentences} sentences"
    report.spoken += 1
    return None


def run_soak(synth: Synthesizer, config: SoakConfig = SoakConfig(), voices: list[SoakVoice] | None = None,
             progress: Callable[[str], None] | None = None) -> SoakReport:
    """`config.warmup` runs, the baseline, then `config.runs` runs; see the module's docstring."""
    voices = voices if voices is not None else soak_voices()
    decodings = config.decodings or decodings_of(synth)
    rng = np.random.default_rng(config.seed)
    warm = SoakReport(config.max_memory_growth)
    for i in range(config.warmup):  # every decoding speaks first, so each is loaded before the baseline
        decoding = i if i < len(decodings) else None
        run_case(synth, make_case(rng, config, voices, decodings, decoding), warm, f"warm-up {i + 1}")
    report = SoakReport(config.max_memory_growth, failures=warm.failures)
    report.rss_start, report.threads_start, threads_before = _settled()
    report.rss_middle = report.rss_start
    started = time.perf_counter()
    for i in range(config.runs):
        report.runs = i + 1
        run_case(synth, make_case(rng, config, voices, decodings), report, f"run {report.runs}")
        if report.runs == config.runs // 2:
            report.rss_middle = _settled()[0]
        if progress and report.runs % 20 == 0:
            progress(f"run {report.runs}/{config.runs}: {report.spoken} spoken, {report.stopped} stopped, "
                     f"{sum(report.refused.values())} refused, {len(report.failures)} failures, "
                     f"{process_figures()[0] / 2**20:.0f} MB")
    report.seconds = time.perf_counter() - started
    report.rss_end, report.threads_end, threads_after = _settled()
    report.new_threads = sorted(t.name for t in threads_after - threads_before)
    return report
