"""Streaming synthesis: load a model once, prepare a voice once, then text -> audio chunks as it is generated.

    synth = Synthesizer()                                 # the shipped default model, CUDA when available
    voice = synth.prepare_voice(samples)                  # 16 kHz clip -> embedding, prompt tokens, statistics
    for chunk in synth.stream("Hello there.", voice):     # float32 16 kHz chunks, one per patch (or group)
        play(chunk)
    print(synth.last_stats)

Long text is split into sentences; all sentences go through one codec stream, so the audio is continuous
(no gap, no click at a sentence boundary). The codec (token decoder and vocoder) runs on its own thread, in
order, while the model goes on generating: a chunk is yielded as soon as it is ready, and the model never
waits for the codec. `cancel` is checked between patches, so Stop takes effect within one patch.
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
from tldr_core.codec.runtime import DEFAULT_CODEC, CodecRuntime, Voice as CodecVoice
from tldr_core.decoding import DecodeStats, PatchDecoder, Request, Sampling, TokenDecoder
from tldr_core.errors import ModelError
from tldr_core.model import MAX_PROMPT_TOKENS, PROMPT_MULTIPLE, Tldr
from tldr_core.model_store import load_backbone, load_tldr, open_model_folder
from tldr_core.training.data import codec_fingerprint

BASELINE_GROUP = 4        # the baseline hands the codec 4 tokens (160 ms) at a time; TLDR hands it each patch
BASELINE = "baseline"
TLDR = "tldr"


@dataclass
class PreparedVoice:
    """Everything synthesis needs from a reference clip, computed once."""

    embedding: np.ndarray      # (256,) SpeakerEncoder embedding
    prompt_tokens: np.ndarray  # codec tokens of the clip's middle, a multiple of PROMPT_MULTIPLE long
    stats: np.ndarray          # the codec decoder's reference statistics

    @property
    def codec_voice(self) -> CodecVoice:
        return CodecVoice(self.embedding, self.stats)


@dataclass
class SpeakStats:
    """One `stream` call, as the CLI and the app report it."""

    mode: str
    patch_size: int            # 1 for the token-level baseline
    device: str
    first_audio_seconds: float = float("nan")
    wall_seconds: float = 0.0
    audio_seconds: float = 0.0
    sentences: int = 0
    stopped_by_model: int = 0  # sentences the model ended itself (the rest hit the length bound)
    backbone_steps: int = 0
    tokens: int = 0
    kv_bytes: int = 0          # largest whole cache of any sentence
    kv_speech_bytes: int = 0   # its speech part (prompt + generated units)
    cancelled: bool = False
    per_sentence: list[DecodeStats] = field(default_factory=list, repr=False)

    @property
    def real_time_factor(self) -> float:
        return self.wall_seconds / self.audio_seconds if self.audio_seconds else float("nan")


def pick_device(device: str) -> torch.device:
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelError("CUDA was asked for but no usable NVIDIA GPU was found: choose device 'auto' or 'cpu'.")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


class Synthesizer:
    """A model folder (backbone + TLDR adapters) and its codec, loaded once."""

    def __init__(self, model_dir: Path | None = None, device: str = "auto", codec_dir: Path | None = None,
                 progress: Callable[[str], None] | None = None):
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
        say("loading the codec")
        self.codec = CodecRuntime(codec_dir)
        self._codec_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="codec")  # one: pushes in order
        self._decoders: dict[int, PatchDecoder] = {}
        self.last_stats: SpeakStats | None = None
        say("ready")

    @property
    def patch_sizes(self) -> list[int]:
        return self.folder.patch_sizes

    def load_adapter(self, patch_size: int) -> None:
        """Build a TLDR decoder now rather than on its first use (it bakes its LoRA into a backbone copy,
        a fraction of a second that would otherwise land in the time to first audio)."""
        self._patch_decoder(patch_size, Sampling())

    def _patch_decoder(self, patch_size: int, sampling: Sampling) -> PatchDecoder:
        if patch_size not in self._decoders:
            tldr: Tldr = load_tldr(self.folder.tldr_path(patch_size), self.backbone).to(self.device)
            self._decoders[patch_size] = PatchDecoder(self.backbone, tldr, sampling)
        decoder = self._decoders[patch_size]
        decoder.sampling = sampling
        return decoder

    def prepare_voice(self, samples: np.ndarray) -> PreparedVoice:
        """A 16 kHz mono reference clip (already trimmed and normalised) -> its PreparedVoice."""
        tokens, voice = self.codec.encode(samples)
        length = min(MAX_PROMPT_TOKENS, len(tokens) // PROMPT_MULTIPLE * PROMPT_MULTIPLE)
        start = (len(tokens) - length) // 2  # the middle: away from breaths and trimmed edges
        return PreparedVoice(voice.embedding, tokens[start:start + length].astype(np.int64), voice.stats)

    def stream(self, text_input: str, voice: PreparedVoice, mode: str = TLDR, patch_size: int = 4,
               sampling: Sampling | None = None, seed: int | None = None,
               cancel: Callable[[], bool] | None = None) -> Iterator[np.ndarray]:
        """Yield float32 16 kHz audio chunks while generating; `last_stats` describes the run when it ends."""
        started = time.perf_counter()
        sentences = text.split_sentences(text_input)  # raises TextInputError for empty or oversized text
        sampling = sampling or Sampling()
        if mode == BASELINE:
            decoder, unit, push_every = TokenDecoder(self.backbone, sampling), 1, BASELINE_GROUP
        elif mode == TLDR:
            decoder, unit, push_every = self._patch_decoder(patch_size, sampling), patch_size, patch_size
        else:
            raise ValueError(f"unknown mode {mode!r}")
        generator = torch.Generator(device=self.device)
        generator.manual_seed(int(seed) if seed is not None else int(torch.seed() % 2**31))
        stats = self.last_stats = SpeakStats(mode, unit, str(self.device))
        audio_stream = self.codec.stream(voice.codec_voice)
        speaker = torch.from_numpy(voice.embedding).float()
        prompt = torch.from_numpy(voice.prompt_tokens)
        samples_out = 0
        in_codec: deque[Future] = deque()  # pushes handed to the codec thread, oldest first

        def to_codec(push: Callable, *tokens: np.ndarray) -> None:
            in_codec.append(self._codec_thread.submit(push, *tokens))

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
            for sentence in sentences:
                request = Request(speaker, torch.tensor(text.text_to_ids(sentence)), prompt)
                pending: list[int] = []
                for group in decoder.generate(request, generator):
                    pending.extend(group)
                    if len(pending) >= push_every:
                        to_codec(audio_stream.push, np.array(pending))
                        pending = []
                    yield from emit(wait=False)
                    if stopped():
                        return
                if pending:
                    to_codec(audio_stream.push, np.array(pending))
                self._count(stats, decoder.stats)
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

    @staticmethod
    def _count(stats: SpeakStats, sentence: DecodeStats) -> None:
        stats.sentences += 1
        stats.stopped_by_model += int(sentence.stopped)
        stats.backbone_steps += sentence.backbone_steps
        stats.tokens += sentence.tokens
        stats.kv_bytes = max(stats.kv_bytes, sentence.kv_bytes)
        stats.kv_speech_bytes = max(stats.kv_speech_bytes, sentence.kv_speech_bytes)
        stats.per_sentence.append(sentence)
