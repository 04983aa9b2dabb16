"""The codec as the app uses it: audio -> tokens, tokens (+ a timbre) -> audio, offline or streamed.

A `Timbre` is what the decoder needs to know about the target speaker: the SpeakerEncoder embedding and
the reference statistics measured on the clip, and the clip's frames and tokens (for a decoder with a voice
memory, and the voice calibration); it is computed once per reference clip. `AudioStream`
turns tokens pushed k at a time into audio chunks: the decoder waits for `lookahead` tokens (80 ms),
the vocoder for one frame (10 ms); the decoder carries its causal layers' state from push to push, so
each token is decoded once and the concatenated chunks equal the offline output.

Voice calibration (`Calibration`): the decoder, trained on 23 speakers, renders a new voice's sounds the way its
training voices make them, and that loses the voice (speaker similarity 0.58 where the analysed frames keep 0.93).
The reference clip shows how it errs on this voice: decoded from its own tokens, its frames can be set against
its analysed ones. Each decoded frame then takes the errors of its nearest decoded reference frames (weighted, see
`Calibration.apply`), so a vowel is corrected the way this voice's own vowels needed (kNN-VC swaps whole frames,
which loses the words on a short reference; adding only the decoder's error keeps what the tokens say). Frame by
frame, and continuous in the frame: a stream's envelopes equal the offline ones to float rounding.

Voice tuning (`codec.tuning`) goes further, once per voice: the decoder's weights fine-tuned on the reference clip
itself (seconds; kept in the user cache), run by the same ONNX graph. `CodecRuntime.prepare` does both for a voice.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from tldr_core import paths
from tldr_core.codec.features import CONFIG as FEATURES, ENV, analyze
from tldr_core.codec.model import Codec, CodecConfig, DecoderStream, numpy_step, reference_stats
from tldr_core.codec.store import load_codec
from tldr_core.codec.tuning import Tuning, keep_tuned, read_tuned, tune
from tldr_core.codec.vocoder import StreamingVocoder
from tldr_core.codec.whisper import log_mel, mel_pieces
from tldr_core.codec.whisper_weights import load_whisper_encoder
from tldr_core.errors import ModelError
from tldr_core.files import verified_manifest
from tldr_core.onnx_session import open_session
from tldr_core.settings import VOICE_MATCHES
from tldr_core.speaker import SpeakerEncoder

DEFAULT_CODEC = paths.RESOURCES_DIR / "codec"  # tokenizer.onnx, decoder.onnx, codec.json; manifest.json: their sha256


MEMORY_FRAMES = 1500  # a voice memory reads at most the middle 15 s of a reference clip (trained on 3-15 s)
CALIBRATION_NEIGHBOURS = VOICE_MATCHES[0]  # frames whose errors correct one frame (0: off)


@dataclass
class Timbre:
    """The speaker the decoder renders: (256,) SpeakerEncoder embedding + (2 + n_env,) frame statistics, and the
    reference clip's own vocoder frames (fM, dim: f per token) and token ids (M,), which a voice memory and the
    calibration read."""

    embedding: np.ndarray
    stats: np.ndarray
    frames: np.ndarray | None = None
    tokens: np.ndarray | None = None

    @classmethod
    def of(cls, frames: np.ndarray, embedding: np.ndarray, tokens: np.ndarray | None = None) -> "Timbre":
        """A reference clip's timbre from its vocoder frames (whole tokens), its speaker embedding and its tokens."""
        return cls(embedding, reference_stats(frames), frames, tokens)

    def memory(self, frames_per_token: int) -> tuple[np.ndarray, np.ndarray]:
        """What a voice memory and the calibration read: the middle (at most MEMORY_FRAMES of frames) token ids and
        their frames."""
        if self.tokens is None or self.frames is None or not len(self.tokens):
            raise ModelError("Decoding reads the voice sample itself (its tokens and frames), and none was given: "
                             "make the timbre with CodecRuntime.encode or CodecRuntime.timbre.")
        n = min(len(self.tokens), len(self.frames) // frames_per_token)
        length = min(n, MEMORY_FRAMES // frames_per_token)
        start = (n - length) // 2
        frames = self.frames[start * frames_per_token:(start + length) * frames_per_token]
        return self.tokens[start:start + length].astype(np.int64), frames.astype(np.float32)


@dataclass
class Calibration:
    """How the decoder misses one voice, measured on its reference clip: the clip's decoded envelopes (M, n_env)
    and, for each, the analysed minus the decoded envelope."""

    decoded: np.ndarray
    error: np.ndarray
    CHUNK = 64  # frames whose distances to every reference frame are held at once (64 x M x n_env floats)

    def apply(self, frames: np.ndarray, k: int = CALIBRATION_NEIGHBOURS) -> np.ndarray:
        """Each frame's envelope plus the errors of its `k` nearest decoded reference envelopes (squared distance),
        weighted by how much nearer each is than the next nearest after them: weights that fall to zero as a
        neighbour is overtaken make the correction a continuous function of the frame, so a stream, whose frames
        equal the offline ones only to float rounding, still equals the offline decode; nothing else changes."""
        if k <= 0 or not len(frames):
            return frames
        k = min(k, len(self.decoded) - 1)
        out = frames.copy()
        for start in range(0, len(frames), self.CHUNK):
            env = frames[start:start + self.CHUNK, ENV].astype(np.float32)
            # elementwise, not a matrix product: BLAS's own threads, woken here, would fight the model's for the cores
            distance = ((env[:, None, :] - self.decoded[None]) ** 2).sum(-1)
            nearest = np.argpartition(distance, k, axis=1)[:, :k + 1]
            near = np.take_along_axis(distance, nearest, 1)
            order = np.argsort(near, axis=1)
            nearest, near = np.take_along_axis(nearest, order, 1), np.take_along_axis(near, order, 1)
            weights = near[:, k:] - near[:, :k] + 1e-9  # the (k+1)-th nearest's distance minus each of the k's
            weights /= weights.sum(1, keepdims=True)
            out[start:start + self.CHUNK, ENV] = env + (self.error[nearest[:, :k]] * weights[..., None]).sum(1)
        return out


@dataclass
class Roundtrip:
    tokens: np.ndarray
    audio: np.ndarray
    encode_seconds: float
    decode_seconds: float


class _TorchBackend:
    """A training checkpoint (.pt), run with torch: for evaluating checkpoints before export."""

    def __init__(self, path: Path):
        self.model = load_codec(path)
        self.margin = self.model.window_margin
        self.frames_per_token, self.vocab_size = self.model.cfg.frames_per_token, self.model.cfg.vocab_size
        self.whisper = load_whisper_encoder() if self.model.cfg.source == "whisper" else None
        self.has_memory = self.model.memory is not None
        self.decoder_sha256 = None  # a checkpoint's tuned voices are not kept

    def zero_state(self) -> tuple[np.ndarray, ...]:
        state = self.model.zero_state()
        return state.tokens.numpy(), state.frames.numpy()

    @torch.no_grad()
    def tokens(self, samples: np.ndarray, frames: np.ndarray, stats: np.ndarray) -> np.ndarray:
        if self.whisper is not None:
            spt = self.model.cfg.source_per_token
            heard = [(self.whisper(torch.from_numpy(piece)[None]), n) for piece, n in mel_pieces(log_mel(samples))]
            return np.concatenate([self.model.tokens(None, None, features)[0, :n // spt] for features, n in heard])
        return self.model.tokens(torch.from_numpy(frames)[None], torch.from_numpy(stats)[None])[0].numpy()

    def step(self, ids: np.ndarray, valid: np.ndarray, timbre: Timbre, state: tuple[np.ndarray, ...],
             reference: tuple[np.ndarray, np.ndarray] | None, tuned: Codec | None = None
             ) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
        return numpy_step(tuned or self.model, ids, valid, timbre.embedding, timbre.stats, state, reference)

    @property
    def torch_codec(self) -> Codec:
        return self.model

    def with_weights(self, weights: dict[str, np.ndarray]) -> Codec:
        """A copy of the model with these decoder weights (by initializer name: "codec.<parameter>")."""
        model = copy.deepcopy(self.model)
        model.load_state_dict({name.removeprefix("codec."): torch.from_numpy(w) for name, w in weights.items()},
                              strict=False)
        return model


class _OnnxBackend:
    """The exported codec (a folder from `export_codec`), run with onnxruntime on one CPU thread."""

    def __init__(self, folder: Path):
        restore = "Reinstall TLDR Voice, or export a trained codec with `tldr-voice codec export`."
        manifest = verified_manifest(folder, "codec", restore)  # sha256 of every file, before onnxruntime reads one
        meta_path = folder / "codec.json"
        if not meta_path.is_file():
            raise ModelError(f"'{folder}' holds no codec (codec.json is missing): {restore}")
        meta = json.loads(meta_path.read_text())
        if "state_shapes" not in meta:
            raise ModelError(f"The codec in '{folder}' was exported by an older TLDR Voice (its decoder carries "
                             f"no state): {restore}")
        self.folder, self.restore = folder, restore
        self.decoder_sha256 = manifest.get("files", {}).get("decoder.onnx", {}).get("sha256")  # names tuned voices
        self.tokenizer, self.notices = open_session(folder / "tokenizer.onnx", "cpu", "codec tokenizer", restore)
        self.decoder, _ = open_session(folder / "decoder.onnx", "cpu", "codec decoder", restore)
        self.margin, self.state_shapes = tuple(meta["window_margin"]), meta["state_shapes"]
        self.frames_per_token, self.vocab_size = meta["frames_per_token"], meta["vocab_size"]
        cfg = CodecConfig.from_dict(meta["config"])  # an older export's missing fields read as their defaults
        self.whisper, self.source_per_token, self.has_memory = (cfg.source == "whisper", cfg.source_per_token,
                                                                cfg.memory_dim > 0)

    def zero_state(self) -> tuple[np.ndarray, ...]:
        return tuple(np.zeros((1, *shape), dtype=np.float32) for shape in self.state_shapes)

    def tokens(self, samples: np.ndarray, frames: np.ndarray, stats: np.ndarray) -> np.ndarray:
        if self.whisper:  # Whisper reads at most 30 s at once: longer clips go in pieces (`mel_pieces`)
            spt = self.source_per_token
            return np.concatenate([self.tokenizer.run(None, {"mel": piece[None]})[0][0, :n // spt]
                                   for piece, n in mel_pieces(log_mel(samples))])
        return self.tokenizer.run(None, {"frames": frames[None].astype(np.float32),
                                         "stats": stats[None].astype(np.float32)})[0][0]

    @cached_property
    def torch_codec(self) -> Codec:
        """The codec in torch (its weights read from the ONNX graphs), for tuning the decoder to a voice."""
        return load_codec(self.folder)

    def with_weights(self, weights: dict[str, np.ndarray]):
        """A decoder session whose graph runs these weights instead of the shipped ones (by initializer name)."""
        return open_session(self.folder / "decoder.onnx", "cpu", "codec decoder", self.restore,
                            initializers=weights)[0]

    def step(self, ids: np.ndarray, valid: np.ndarray, timbre: Timbre, state: tuple[np.ndarray, ...],
             reference: tuple[np.ndarray, np.ndarray] | None, tuned=None) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
        inputs = {"tokens": ids[None], "valid": valid[None], "embedding": timbre.embedding[None].astype(np.float32),
                  "stats": timbre.stats[None].astype(np.float32), "past_tokens": state[0], "past_frames": state[1]}
        if reference is not None:
            inputs |= {"reference_tokens": reference[0][None], "reference_frames": reference[1][None]}
        frames, *new = (tuned or self.decoder).run(None, inputs)
        return frames[0], tuple(new)


class AudioStream:
    """Push token ids k at a time, get audio; `finish` returns the tail. Output = offline `decode`."""

    def __init__(self, runtime: "CodecRuntime", timbre: Timbre, neighbours: int):
        self.decoder = runtime.decoder_stream(timbre)
        self.calibration = runtime.calibration(timbre) if neighbours > 0 else None
        self.neighbours = neighbours
        self.vocoder = StreamingVocoder()

    def push(self, tokens: np.ndarray) -> np.ndarray:
        return self.vocoder.push(self._calibrated(self.decoder.push(tokens)))

    def finish(self) -> np.ndarray:
        return np.concatenate([self.vocoder.push(self._calibrated(self.decoder.finish())), self.vocoder.flush()])

    def _calibrated(self, frames: np.ndarray) -> np.ndarray:
        return frames if self.calibration is None else self.calibration.apply(frames, self.neighbours)


@dataclass
class PreparedVoice:
    """What decoding in one voice needs beyond its timbre, made once: the decoder tuned to it (None: the shipped
    one) and its calibration."""

    tuned: object | None
    calibration: Calibration | None  # None for a timbre without its clip's frames and tokens


class CodecRuntime:
    """A codec loaded once: an exported folder (onnxruntime) or a training checkpoint .pt (torch)."""

    def __init__(self, model_path: Path | None = None, threads: int = 1, calibration: int = CALIBRATION_NEIGHBOURS,
                 tuning: Tuning = Tuning()):
        """`calibration`: how many of the reference's decoded frames correct each decoded frame (`Calibration`;
        0: none); `tuning`: how the decoder is tuned to each voice (`codec.tuning`; 0 steps: not at all)."""
        self.neighbours, self.tuning = calibration, tuning
        path = Path(model_path) if model_path else DEFAULT_CODEC
        if path.suffix == ".pt":
            torch.set_num_threads(threads)
            self.backend = _TorchBackend(path)
        else:
            self.backend = _OnnxBackend(path)
        self.vocab_size = self.backend.vocab_size
        self._voices: dict[str, PreparedVoice] = {}  # the last few voices', by content

    @property
    def tokens_per_second(self) -> int:
        return FEATURES.frames_per_second // self.backend.frames_per_token

    @property
    def reads_reference(self) -> bool:
        """Whether decoding reads the reference clip's frames and tokens (a voice memory, the calibration or the
        tuning), not only its timbre."""
        return self.backend.has_memory or self.neighbours > 0 or self.tuning.steps > 0

    @cached_property
    def speaker(self) -> SpeakerEncoder:
        """Loaded on first use: a caller that has the clip's embedding already (a saved voice) never needs it."""
        return SpeakerEncoder(device="cpu")

    def frames(self, samples: np.ndarray) -> np.ndarray:
        """Vocoder frames of 16 kHz audio, padded to whole tokens (what the tokenizer reads)."""
        frames = analyze(samples)
        pad = -len(frames) % self.backend.frames_per_token  # whole tokens: repeat the last frame
        return np.concatenate([frames, np.repeat(frames[-1:], pad, axis=0)])

    def timbre(self, samples: np.ndarray) -> Timbre:
        """The decoder's view of a reference clip (16 kHz mono), its tokens included."""
        return self.encode(samples)[1]

    def encode(self, samples: np.ndarray, embedding: np.ndarray | None = None) -> tuple[np.ndarray, Timbre]:
        """16 kHz mono audio -> (token ids, its timbre); `embedding`: the clip's, when already known."""
        frames = self.frames(samples)
        timbre = Timbre.of(frames, self.speaker.embed(samples) if embedding is None else embedding)
        timbre.tokens = self.backend.tokens(samples, frames, timbre.stats)
        return timbre.tokens, timbre

    def decode(self, tokens: np.ndarray, timbre: Timbre) -> np.ndarray:
        """Token ids -> audio in the given timbre (offline: all tokens at once)."""
        stream = self.stream(timbre)  # one decoder call for all but the last `lookahead` tokens
        return np.concatenate([stream.push(tokens), stream.finish()])

    def stream(self, timbre: Timbre, calibration: int | None = None) -> AudioStream:
        """`calibration`: neighbours per frame for this stream (None: the runtime's own setting)."""
        return AudioStream(self, timbre, self.neighbours if calibration is None else calibration)

    def decoder_stream(self, timbre: Timbre) -> DecoderStream:
        """Token ids -> vocoder frames, as decoded in this voice (tuned to it; no calibration)."""
        return self._decoder_stream(timbre, self.prepare(timbre).tuned)

    def _decoder_stream(self, timbre: Timbre, tuned: object | None) -> DecoderStream:
        b = self.backend
        reference = timbre.memory(b.frames_per_token) if b.has_memory else None  # read once, not at every push
        return DecoderStream(lambda ids, valid, state: b.step(ids, valid, timbre, state, reference, tuned),
                             b.zero_state(), b.margin)

    def calibration(self, timbre: Timbre) -> Calibration:
        """The voice's `Calibration` (made by `prepare`)."""
        calibration = self.prepare(timbre).calibration
        if calibration is None:
            timbre.memory(self.backend.frames_per_token)  # raises the ModelError that says what is missing
        return calibration

    def prepare(self, timbre: Timbre, progress: Callable[[float], None] | None = None,
                cancel: Callable[[], bool] | None = None) -> PreparedVoice | None:
        """Tune the decoder to this voice (`codec.tuning`: seconds; kept on disk, so once per voice and codec) and
        measure its calibration: its reference clip (the middle 15 s, as a voice memory reads) decoded from its own
        tokens, ~0.1 s. Preparing a voice does it, so speaking does not wait; kept for the last few voices.
        `progress` hears the tuning's fraction done; None when `cancel` said so before the end."""
        voice = hashlib.sha1(b"".join(a.tobytes() for a in (timbre.tokens, timbre.frames, timbre.stats,
                                                              timbre.embedding) if a is not None)).hexdigest()
        key = f"{voice}-{self.tuning.key() if self.tuning.steps > 0 else 'untuned'}"
        if key not in self._voices:
            tuned, calibration = None, None
            if self.tuning.steps > 0:
                weights = self._tuned_weights(timbre, voice, progress, cancel)
                if weights is None:
                    return None
                tuned = self.backend.with_weights(weights)
            if timbre.tokens is not None and timbre.frames is not None:  # a bare timbre is only decoded, as is
                tokens, frames = timbre.memory(self.backend.frames_per_token)
                stream = self._decoder_stream(timbre, tuned)
                decoded = np.concatenate([stream.push(tokens), stream.finish()])[:, ENV]
                calibration = Calibration(decoded.astype(np.float32),
                                          (frames[:len(decoded), ENV] - decoded).astype(np.float32))
            self._voices[key] = PreparedVoice(tuned, calibration)
            while len(self._voices) > 8:
                del self._voices[next(iter(self._voices))]
        return self._voices[key]

    def _tuned_weights(self, timbre: Timbre, key: str, progress: Callable[[float], None] | None,
                       cancel: Callable[[], bool] | None) -> dict[str, np.ndarray] | None:
        """The decoder's weights tuned to this voice: from the user cache when this codec tuned it before."""
        decoder = self.backend.decoder_sha256
        path = (paths.voice_tuning_dir() / hashlib.sha1(
            f"{decoder}-{self.tuning.key()}-{key}".encode()).hexdigest()).with_suffix(".npz") if decoder else None
        weights = read_tuned(path) if path is not None else None
        if weights is None:
            weights = tune(self.backend.torch_codec, timbre.tokens, timbre.frames,
                           timbre.memory(self.backend.frames_per_token), timbre.embedding, timbre.stats, self.tuning,
                           progress, cancel)
            if weights is not None and path is not None:
                keep_tuned(path, weights)
        return weights

    def roundtrip(self, samples: np.ndarray, stream_tokens: int = 0, reference: np.ndarray | None = None) -> Roundtrip:
        """Encode and decode a clip in its own timbre, or in a `reference` clip's (as the app speaks in a voice
        sample's); `stream_tokens` > 0 decodes that many at a time. The voice is prepared (`prepare`: tuning,
        calibration) before decoding is timed, as the app prepares a voice once, before its first speech."""
        start = time.perf_counter()
        tokens, timbre = self.encode(samples)
        if reference is not None:
            timbre = self.timbre(reference)
        encoded = time.perf_counter()
        self.prepare(timbre)
        prepared = time.perf_counter()
        if stream_tokens > 0:
            stream = self.stream(timbre)
            chunks = [stream.push(tokens[i:i + stream_tokens]) for i in range(0, len(tokens), stream_tokens)]
            audio = np.concatenate(chunks + [stream.finish()])
        else:
            audio = self.decode(tokens, timbre)
        done = time.perf_counter()
        return Roundtrip(tokens, audio[:len(samples)], encoded - start, done - prepared)
