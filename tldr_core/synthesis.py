"""Streaming synthesis: load a model once, prepare a voice once, then text -> audio chunks as it is generated.

    synth = Synthesizer()                                 # the shipped default model, CUDA when available
    voice = synth.prepare_voice(samples)                  # 16 kHz clip -> VoicePrompt (embedding, prompt tokens...)
    for chunk in synth.stream("Hello there.", voice):     # float32 16 kHz chunks, one per patch (or group)
        play(chunk)
    print(synth.last_stats)

Long text is split into sentences; all sentences go through one codec stream, so the audio is continuous
(no gap, no click at a sentence boundary). The codec (token decoder and vocoder) runs on its own thread, in
order, while the model goes on generating: a chunk is yielded as soon as it is ready, and the model never
waits for the codec. `cancel` is checked between patches (SSD: between verification steps), so Stop takes
effect within one patch. Should CUDA run out of memory while generating, the models move to the CPU and the
sentence goes on there (slower), with a notice in `last_stats.notices`.

Decoding modes: "tldr" (patches of k tokens), "baseline" (token by token), "ssd" (speculative decoding: a
draft model proposes, the backbone verifies several tokens per pass) and "tldr-ssd" (TLDR patches verified
speculatively: the draft proposes whole patches); the last two only for a model folder with a draft.

A saved voice (voices.py) is prepared once: `saved_voice_prompt` keeps its prompt tokens and statistics in the
library, tagged with the codec's fingerprint, and makes them again only for another codec; the embedding the
library computed when the voice was saved is used as it is. A codec with a voice memory also reads the clip's
frames and tokens (`VoicePrompt.reference`).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from tldr_core import text
from tldr_core.audio import SAMPLE_RATE
from tldr_core.codec.runtime import DEFAULT_CODEC, CodecRuntime, Timbre
from tldr_core.codec.store import codec_fingerprint
from tldr_core.codec.tuning import Tuning
from tldr_core.decoding import (PATCH_SPECULATION, GenerationStats, PatchGenerator, Request, Sampling, Speculation,
                                SpeculativeGenerator, SpeculativePatchGenerator, StepFigures, TokenGenerator)
from tldr_core.errors import ModelError, VoiceError
from tldr_core.model import PROMPT_MULTIPLE, Tldr, max_prompt_tokens
from tldr_core.model_store import NO_DRAFT, load_backbone, load_draft, load_tldr, open_model_folder
from tldr_core.settings import SPECULATIVE_MODES
from tldr_core.voices import SavedVoice, VoiceLibrary

BASELINE_GROUP = 4        # the baseline and SSD hand the codec 4 tokens (160 ms) at a time; TLDR each patch
BASELINE = "baseline"
TLDR = "tldr"
SSD = "ssd"
TLDR_SSD = "tldr-ssd"
GPU_FULL = ("The GPU ran out of memory, so the speech is being made on the CPU from here on (slower). To use the GPU "
            "again, close other programs that use it and load the model again (restart, or choose the compute device "
            "again in Settings).")


@dataclass
class VoicePrompt:
    """Everything synthesis needs from a reference clip, computed once: whom to speak like, and how they sound."""

    embedding: np.ndarray      # (256,) SpeakerEncoder embedding
    prompt_tokens: np.ndarray  # codec tokens of the clip's middle, a multiple of PROMPT_MULTIPLE long
    stats: np.ndarray          # the codec decoder's reference statistics
    reference: tuple[np.ndarray, np.ndarray] | None = None  # the clip's frames and token ids, for a voice memory

    @property
    def timbre(self) -> Timbre:
        frames, tokens = self.reference or (None, None)
        return Timbre(self.embedding, self.stats, frames, tokens)


@dataclass
class SpeakStats(StepFigures):
    """One `stream` call, as the CLI and the app report it."""

    mode: str
    patch_size: int            # 1 for the token-level baseline and SSD
    device: str
    first_audio_seconds: float = float("nan")
    wall_seconds: float = 0.0
    audio_seconds: float = 0.0
    sentences: int = 0
    stopped_by_model: int = 0  # sentences the model ended itself (the rest hit the length bound)
    backbone_steps: int = 0
    tokens: int = 0
    kv_bytes: int = 0          # largest whole cache of any sentence (SSD: the backbone's and the draft's)
    kv_speech_bytes: int = 0   # its speech part (prompt + generated units)
    drafted: int = 0           # SSD: tokens the draft proposed, and how many of them the backbone kept
    accepted: int = 0
    speculation: Speculation | None = None  # SSD (and TLDR + SSD): gamma and the acceptance rule
    cancelled: bool = False
    notices: list[str] = field(default_factory=list)  # what the user should know (e.g. moved to the CPU)
    per_sentence: list[GenerationStats] = field(default_factory=list, repr=False)

    @property
    def real_time_factor(self) -> float:
        return self.wall_seconds / self.audio_seconds if self.audio_seconds else float("nan")


def default_speculation(mode: str) -> Speculation:
    """How a speculative mode speculates unless told: SSD with gamma 4 tokens and the exact rule; TLDR + SSD as
    `tldr-voice bench` found fastest at the quality of plain TLDR (decoding.PATCH_SPECULATION)."""
    return PATCH_SPECULATION if mode == TLDR_SSD else Speculation()


def pick_device(device: str) -> torch.device:
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelError("CUDA was asked for but no usable NVIDIA GPU was found: choose device 'auto' or 'cpu'.")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


class Synthesizer:
    """A model folder (backbone + TLDR adapters) and its codec, loaded once."""

    def __init__(self, model_dir: Path | None = None, device: str = "auto", codec_dir: Path | None = None,
                 progress: Callable[[str], None] | None = None, tuning: Tuning = Tuning()):
        """`tuning`: how the codec's decoder is tuned to each voice (`codec.tuning`)."""
        say = progress or (lambda message: None)
        say("checking model files")
        self.folder = open_model_folder(model_dir)
        codec_dir = Path(codec_dir) if codec_dir else DEFAULT_CODEC
        self.codec_sha256 = codec_fingerprint(codec_dir)
        expected = self.folder.manifest.get("codec_sha256")
        if expected and self.codec_sha256 != expected:
            raise ModelError(f"The codec in '{codec_dir}' is not the one this model was trained with: reinstall "
                             f"TLDR Voice, or retrain the model on this codec.")
        self.device = pick_device(device)
        say("loading the backbone")
        self.backbone = load_backbone(self.folder.backbone_path()).to(self.device)
        self.draft = None
        if self.folder.has_draft:
            say("loading the draft model")
            self.draft = load_draft(self.folder.draft_path(), self.backbone).to(self.device)
        say("loading the codec")
        self.codec = CodecRuntime(codec_dir, tuning=tuning)
        self._codec_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="codec")  # one: pushes in order
        self._generators: dict[int, PatchGenerator] = {}
        self.last_stats: SpeakStats | None = None
        say("ready")

    @property
    def patch_sizes(self) -> list[int]:
        return self.folder.patch_sizes

    @property
    def has_draft(self) -> bool:
        """Whether this model can decode speculatively (SSD)."""
        return self.draft is not None

    def load_adapter(self, patch_size: int) -> None:
        """Build a TLDR generator now rather than on its first use (it bakes its LoRA into a backbone copy,
        a fraction of a second that would otherwise land in the time to first audio)."""
        self._patch_generator(patch_size, Sampling())

    def _patch_generator(self, patch_size: int, sampling: Sampling) -> PatchGenerator:
        if patch_size not in self._generators:
            tldr: Tldr = load_tldr(self.folder.tldr_path(patch_size), self.backbone).to(self.device)
            self._generators[patch_size] = PatchGenerator(self.backbone, tldr, sampling)
        generator = self._generators[patch_size]
        generator.sampling = sampling
        return generator

    def prepare_voice(self, samples: np.ndarray, embedding: np.ndarray | None = None,
                      progress: Callable[[float], None] | None = None,
                      cancel: Callable[[], bool] | None = None) -> VoicePrompt | None:
        """A 16 kHz mono reference clip (already trimmed and normalised) -> its VoicePrompt, with the codec tuned to
        the voice (seconds the first time; `progress` hears the fraction done) and calibrated on it; `embedding`:
        the clip's speaker embedding when it is known already (else it is computed here). None when cancelled."""
        tokens, timbre = self.codec.encode(samples, embedding)
        length = min(max_prompt_tokens(self.codec.tokens_per_second), len(tokens) // PROMPT_MULTIPLE * PROMPT_MULTIPLE)
        start = (len(tokens) - length) // 2  # the middle: away from breaths and trimmed edges
        reference = (timbre.frames, timbre.tokens) if self.codec.reads_reference else None
        return self._prepared(VoicePrompt(timbre.embedding, tokens[start:start + length].astype(np.int64),
                                          timbre.stats, reference), progress, cancel)

    def _prepared(self, prompt: VoicePrompt, progress: Callable[[float], None] | None,
                  cancel: Callable[[], bool] | None) -> VoicePrompt | None:
        """The prompt, with the codec prepared for its voice now rather than at its first audio."""
        return prompt if self.codec.prepare(prompt.timbre, progress, cancel) is not None else None

    def saved_voice_prompt(self, voice: SavedVoice, library: VoiceLibrary | None = None,
                           progress: Callable[[float], None] | None = None,
                           cancel: Callable[[], bool] | None = None) -> VoicePrompt | None:
        """A saved voice's VoicePrompt: what the library kept for this codec (with the clip's frames and tokens for
        a codec whose decoder reads the clip itself), else made now (and kept when a library is given; a read-only
        or vanished voice folder only costs making it again next time). None when cancelled while tuning."""
        kept = voice.prompt_tokens is not None and voice.codec_stats is not None and voice.codec == self.codec_sha256
        reference = voice.codec_reference() if kept and self.codec.reads_reference else None
        if kept and (reference is not None or not self.codec.reads_reference):
            return self._prepared(VoicePrompt(voice.embedding(), np.array(voice.prompt_tokens, dtype=np.int64),
                                              np.array(voice.codec_stats, dtype=np.float32), reference), progress, cancel)
        try:
            clip, embedding = voice.clip(), voice.embedding()
        except (OSError, RuntimeError, ValueError) as error:  # soundfile reports a damaged file as RuntimeError
            raise VoiceError(f"The sample of '{voice.name}' could not be read ({error}).") from None
        prompt = self.prepare_voice(clip, embedding, progress, cancel)
        if library is not None and prompt is not None:
            try:
                library.save_prompt(voice.id, prompt.prompt_tokens.tolist(), prompt.stats.tolist(), self.codec_sha256,
                                    prompt.reference)
            except (OSError, VoiceError):  # deleted meanwhile, or a read-only disk: speaking still works
                pass
        return prompt

    def stream(self, text_input: str, voice: VoicePrompt, mode: str = TLDR, patch_size: int = 4,
               sampling: Sampling | None = None, seed: int | None = None,
               cancel: Callable[[], bool] | None = None,
               speculation: Speculation | None = None, calibration: int | None = None) -> Iterator[np.ndarray]:
        """Yield float32 16 kHz audio chunks while generating; `last_stats` describes the run when it ends.
        `speculation`: how the speculative modes speculate (default: `default_speculation(mode)`); `calibration`:
        the codec's voice match (CodecRuntime.stream; default: the codec's own)."""
        started = time.perf_counter()
        requests = self._requests(text_input, voice)
        sampling = sampling or Sampling()
        speculation = (speculation or default_speculation(mode)) if mode in SPECULATIVE_MODES else None
        generator, unit, push_every = self._generator(mode, patch_size, sampling, speculation)
        seed = int(seed) if seed is not None else int(torch.seed() % 2**31)
        rng = torch.Generator(device=self.device).manual_seed(seed)
        stats = self.last_stats = SpeakStats(mode, unit, str(self.device), speculation=speculation)
        audio_stream = self.codec.stream(voice.timbre, calibration)
        samples_out = 0
        in_codec: deque[Future] = deque()  # pushes handed to the codec thread, oldest first

        def to_codec(push: Callable, *tokens: np.ndarray) -> None:
            in_codec.append(self._codec_thread.submit(push, *tokens))

        def tokens_of(request: Request) -> Iterator[list[int]]:
            """The sentence's speech tokens. When CUDA runs out of memory the models move to the CPU (once) and
            the sentence is made again there; its tokens already handed on are skipped, so the sound goes on
            from where it had got to instead of saying the start twice."""
            nonlocal generator, rng
            handed = 0
            while True:
                try:
                    made = 0
                    for group in generator.generate(request, rng):
                        fresh = group[max(0, handed - made):]
                        made += len(group)
                        if fresh:
                            handed += len(fresh)
                            yield fresh
                    return
                except torch.cuda.OutOfMemoryError:
                    if GPU_FULL in stats.notices:
                        raise ModelError("Speaking ran out of memory even on the CPU: close other programs, or "
                                         "speak a shorter text.") from None
                # out here, the traceback and the GPU tensors its frames held are gone
                self._move_to_cpu()
                generator = self._generator(mode, patch_size, sampling, speculation)[0]
                rng = torch.Generator().manual_seed(seed)
                stats.device = str(self.device)
                stats.notices.append(GPU_FULL)

        def stopped() -> bool:
            stats.cancelled = stats.cancelled or (cancel is not None and cancel())
            return stats.cancelled

        def emit(wait: bool) -> Iterator[np.ndarray]:
            """Yield the codec's finished chunks in order, until a cancel; `wait`: all of them. The first is
            always waited for, so the time to first audio does not include a model step."""
            nonlocal samples_out
            while in_codec and (wait or samples_out == 0 or in_codec[0].done()) and not stopped():
                chunk = in_codec.popleft().result()
                if len(chunk):
                    if samples_out == 0:
                        stats.first_audio_seconds = time.perf_counter() - started
                    samples_out += len(chunk)
                    yield chunk.astype(np.float32)

        try:
            for request in requests:
                pending: list[int] = []
                for group in tokens_of(request):
                    pending.extend(group)
                    if len(pending) >= push_every:
                        to_codec(audio_stream.push, np.array(pending))
                        pending = []
                    yield from emit(wait=False)
                    if stopped():
                        return
                if pending:
                    to_codec(audio_stream.push, np.array(pending))
                self._count(stats, generator.stats)
            to_codec(audio_stream.finish)
            yield from emit(wait=True)
        except GeneratorExit:  # the caller stopped reading (Stop in the app): that is a cancel too
            stats.cancelled = True
            raise
        finally:
            for push in in_codec:  # a cancelled stream's audio is not wanted
                push.cancel()
            stats.wall_seconds = time.perf_counter() - started
            stats.audio_seconds = samples_out / SAMPLE_RATE

    def speech_tokens(self, text_input: str, voice: VoicePrompt, mode: str = TLDR, patch_size: int = 4,
                      seed: int = 0) -> np.ndarray:
        """The speech token ids `stream` would hand the codec for this text, voice, mode and seed, not decoded: what
        the codec's decoder is fine-tuned on (training/own_tokens.py)."""
        speculation = default_speculation(mode) if mode in SPECULATIVE_MODES else None
        generator = self._generator(mode, patch_size, Sampling(), speculation)[0]
        rng = torch.Generator(device=self.device).manual_seed(seed)
        made = [token for request in self._requests(text_input, voice)
                for group in generator.generate(request, rng) for token in group]
        return np.array(made, dtype=np.int64)

    @staticmethod
    def _requests(text_input: str, voice: VoicePrompt) -> list[Request]:
        """One generation request per sentence; raises TextInputError for empty or oversized text."""
        speaker = torch.from_numpy(voice.embedding).float()
        prompt = torch.from_numpy(voice.prompt_tokens)
        return [Request(speaker, torch.tensor(text.text_to_ids(sentence)), prompt)
                for sentence in text.split_sentences(text_input)]

    def _generator(self, mode: str, patch_size: int, sampling: Sampling, speculation: Speculation | None
                   ) -> tuple[TokenGenerator | PatchGenerator | SpeculativeGenerator | SpeculativePatchGenerator,
                              int, int]:
        """The generator of a decoding mode, the tokens it takes per step, and how many go to the codec at once."""
        if mode == BASELINE:
            return TokenGenerator(self.backbone, sampling), 1, BASELINE_GROUP
        if mode == TLDR:
            return self._patch_generator(patch_size, sampling), patch_size, patch_size
        if mode == SSD:
            if self.draft is None:
                raise ModelError(NO_DRAFT)
            return SpeculativeGenerator(self.backbone, self.draft, sampling, speculation), 1, BASELINE_GROUP
        if mode == TLDR_SSD:
            if self.draft is None:
                raise ModelError(NO_DRAFT)
            patches = self._patch_generator(patch_size, sampling)
            return SpeculativePatchGenerator(patches, self.draft, speculation), patch_size, patch_size
        raise ValueError(f"unknown mode {mode!r}")

    def _move_to_cpu(self) -> None:
        """After CUDA ran out of memory: the models go to the CPU and the GPU's memory is given back (TLDR
        generators, each a LoRA-baked backbone copy, are made again on their next use)."""
        self.device = torch.device("cpu")
        self.backbone.to(self.device)
        if self.draft is not None:
            self.draft.to(self.device)
        self._generators.clear()
        torch.cuda.empty_cache()

    @staticmethod
    def _count(stats: SpeakStats, sentence: GenerationStats) -> None:
        stats.sentences += 1
        stats.stopped_by_model += int(sentence.stopped)
        stats.backbone_steps += sentence.backbone_steps
        stats.tokens += sentence.tokens
        stats.kv_bytes = max(stats.kv_bytes, sentence.kv_bytes)
        stats.kv_speech_bytes = max(stats.kv_speech_bytes, sentence.kv_speech_bytes)
        stats.drafted += sentence.drafted
        stats.accepted += sentence.accepted
        stats.per_sentence.append(sentence)
