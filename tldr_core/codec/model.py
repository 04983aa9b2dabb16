"""The speech codec network: vocoder frames (100/s) -> one token stream (25 or 50/s) -> vocoder frames.

Tokenizer: convolutions over speaker-normalised frames (log F0 minus the voice's mean, envelope minus the
voice's mean envelope) or over the frozen Whisper encoder's output (50/s), downsampled to the token rate, then
finite scalar quantisation (FSQ, Mentzer et al. 2023): 4 bounded scalars rounded to (8, 5, 5, 5) levels = 1000
codes, no codebook to collapse (runs up to 5 used (8, 8, 5, 5, 5) = 8000; a language model trained on a few hours
learns more from fewer codes, docs/EXPERIMENTS.md).

Decoder: the FSQ values of each token, plus the voice (256-d SpeakerEncoder embedding and the reference
clip's measured F0 mean/std and mean envelope), -> frames. Only the first layer sees future tokens
(`lookahead` of them); every later layer is a causal convolution that carries its last inputs from one call
to the next (`DecoderState`), so a stream is decoded k tokens at a time with a fixed delay, each token
once, and matches the offline output exactly (`DecoderStream`; offline decoding is the same code run
on the whole clip from a zero state). The voice's absolute pitch and timbre come back from the reference
statistics, which is why the tokens need not carry them.

Voice memory (`memory_dim` > 0): the decoder also reads the reference clip itself. Each decoded token attends
over the reference's tokens (keys: its quantised values in context) and takes back what the voice's own frames
looked like there (values: the reference's speaker-normalised frames, all of each token's), as kNN-VC swaps each
frame for the voice's nearest ones, but learnt, so sounds the reference lacks still come from the tokens.
Attention over a fixed clip needs no state: streamed = offline still. Trained in another clip's voice
(`Reference`), as the app decodes in a voice sample's.

Training-only CTC head: two small convolutions over the quantised values predict the utterance's phones
(CTC, as CosyVoice's supervised semantic tokens). Reconstruction alone let the tokens lose the words (the
decoded envelope was over-smoothed; WER +68), so the phone loss pushes the codes to carry the phones. The
head is not exported and not needed to encode or decode.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tldr_core.codec.features import AP, CONFIG as FEATURES, ENV, LF0, VUV
from tldr_core.text import PHONES

EMBED_DIM = 256  # SpeakerEncoder's output
WHISPER_DIM = 384  # Whisper tiny.en encoder's output
# CTC targets are the phones only: stress marks, word gaps and punctuation have no segment of their own
_PHONE_ID = {p: 1 + i for i, p in enumerate(PHONES)}  # 0 is the CTC blank


def phone_targets(phonemes: str) -> np.ndarray:
    """A manifest's space-separated phonemes -> CTC target ids (1..len(PHONES)); other symbols dropped."""
    return np.array([_PHONE_ID[p] for p in phonemes.split() if p in _PHONE_ID], dtype=np.int64)


def phone_error_rate(readings: Iterable[tuple[torch.Tensor, np.ndarray]]) -> float:
    """Greedy phone error rate (%) over clips, each given as ((T, classes) CTC log-probabilities, its phone ids):
    the greedy reading merges repeats and drops blanks."""
    import jiwer

    refs, hyps = [], []
    for log_probs, phones in readings:
        best = log_probs.argmax(-1).tolist()
        hyps.append(" ".join(str(p) for i, p in enumerate(best) if p != 0 and (i == 0 or p != best[i - 1])))
        refs.append(" ".join(str(p) for p in phones))
    return 100 * jiwer.wer(refs, hyps)


@dataclass
class Batch:
    """Whole clips padded to the longest (frames by repeating the last one), with their true lengths."""

    frames: torch.Tensor         # (B, fN, dim): N tokens of f = frames_per_token frames
    embedding: torch.Tensor      # (B, 256)
    stats: torch.Tensor          # (B, 2 + n_env)
    lengths: torch.Tensor        # (B,) real frames, a multiple of frames_per_token
    phones: torch.Tensor         # (B, L) CTC targets, zero-padded
    phone_lengths: torch.Tensor  # (B,)
    features: torch.Tensor | None = None  # (B, fN / 2, 384) Whisper encoder output, for a codec whose source is it
    reference: "Reference | None" = None   # another clip of each voice, for a codec with a voice memory


@dataclass
class Reference:
    """Another clip of each batch item's speaker, padded alike: the voice the decoder renders (embedding, stats)
    and, for a voice memory, what it reads (its tokens come from `Codec.encode` of frames / features)."""

    frames: torch.Tensor          # (B, fM, dim)
    embedding: torch.Tensor       # (B, 256)
    stats: torch.Tensor           # (B, 2 + n_env)
    lengths: torch.Tensor         # (B,) real frames, a multiple of frames_per_token
    features: torch.Tensor | None = None  # (B, fM / 2, 384)


@dataclass
class Memory:
    """A reference clip as the voice memory reads it: (B, M, memory_dim) keys and values, (B, M) True where real."""

    keys: torch.Tensor
    values: torch.Tensor
    mask: torch.Tensor


@dataclass
class CodecConfig:
    """Sizes; `frames_per_token` = 4 turns 100 frames/s into 25 tokens/s, 2 into 50/s (measured: at 50/s the round
    trip keeps 10 more WER points of real speech than 25/s with the same 1000 codes, docs/EXPERIMENTS.md).

    `source` is what the tokenizer reads: "world", the speaker-normalised vocoder frames themselves (100/s), or
    "whisper", the frozen Whisper tiny.en encoder's output (384-d, 50/s), which was trained on 680k hours to keep
    what recognition needs."""

    source: str = "world"
    feature_dim: int = FEATURES.dim
    n_env: int = FEATURES.n_env
    levels: tuple[int, ...] = (8, 5, 5, 5)
    frames_per_token: int = 4
    channels: int = 256           # token-rate width of both halves
    frame_channels: int = 128     # width of the decoder's frame-rate layers
    encoder_blocks: int = 3
    decoder_blocks: int = 6
    frame_blocks: int = 3
    kernel: int = 5
    lookahead: int = 2            # tokens the decoder may wait for (2 tokens = 80 ms at 25/s, 40 ms at 50/s)
    ctc_weight: float = 0.3       # phone (CTC) loss weight; 1.0 collapsed the codes before the decoder learnt
    memory_dim: int = 0           # width of the voice memory's attention over the reference clip (0: none)
    memory_heads: int = 4
    # formant postfilter on the decoded envelope: env + s (env - smoothed env), 5-point Hann along the mel axis;
    # it undoes the L1 decoder's flattened formants (measured: similarity 0.72 -> 0.77; 2 sharpened as much,
    # 3 lowered it). Not trained: it acts after the loss, in decoding only.
    formant_sharpening: float = 1.0
    # per-dimension scale of the normalised frames (set from training data by `fit_scales`)
    scale: list[float] = field(default_factory=lambda: [1.0] * FEATURES.dim)

    @property
    def vocab_size(self) -> int:
        return int(np.prod(self.levels))

    @property
    def source_dim(self) -> int:
        return WHISPER_DIM if self.source == "whisper" else self.feature_dim

    @property
    def source_per_token(self) -> int:
        """Source frames per token: vocoder frames (100/s) or Whisper frames (50/s, half as many)."""
        return self.frames_per_token // 2 if self.source == "whisper" else self.frames_per_token

    @property
    def tokens_per_second(self) -> int:
        return FEATURES.frames_per_second // self.frames_per_token

    @property
    def cond_dim(self) -> int:
        return EMBED_DIM + 2 + self.n_env

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "CodecConfig":
        d = dict(d)
        d["levels"] = tuple(d["levels"])
        return cls(**d)


# ------------------------------------------------------------------------------------- voice statistics

def reference_stats(frames: np.ndarray) -> np.ndarray:
    """(frames, dim) -> [mean log F0, std log F0, mean envelope...] over voiced frames (all if none)."""
    voiced = frames[:, VUV] > 0.5
    ref = frames[voiced] if voiced.sum() >= 2 else frames
    lf0 = ref[:, LF0]
    return np.concatenate([[lf0.mean(), max(float(lf0.std()), 0.01)], ref[:, ENV].mean(axis=0)]).astype(np.float32)


# the reconstruction's parts and their weights: the envelope carries the words (measured: a decoded envelope alone
# ruins WER, decoded F0 does not)
RECON_WEIGHTS = {"f0": 1.0, "vuv": 0.5, "env": 2.0, "ap": 0.5}


def weighted(parts: dict[str, torch.Tensor]) -> torch.Tensor:
    """The reconstruction loss from its parts (`Codec.reconstruction`; voice tuning replaces the envelope's)."""
    return sum(weight * parts[name] for name, weight in RECON_WEIGHTS.items())


def normalise(frames: torch.Tensor, stats: torch.Tensor) -> torch.Tensor:
    """Remove the voice: (B, T, dim) frames minus the reference F0 mean and mean envelope."""
    out = frames.clone()
    out[..., LF0] = frames[..., LF0] - stats[:, None, 0]
    out[..., ENV] = frames[..., ENV] - stats[:, None, 2:]
    return out


def denormalise(frames: torch.Tensor, stats: torch.Tensor) -> torch.Tensor:
    """Put the voice back: the inverse of `normalise`."""
    out = frames.clone()
    out[..., LF0] = frames[..., LF0] + stats[:, None, 0]
    out[..., ENV] = frames[..., ENV] + stats[:, None, 2:]
    return out


# ------------------------------------------------------------------------------------------------- FSQ

class FSQ(nn.Module):
    """Finite scalar quantisation: each of len(levels) values is squashed and rounded to `level` steps."""

    def __init__(self, levels: tuple[int, ...]):
        super().__init__()
        self.register_buffer("levels", torch.tensor(levels, dtype=torch.float32), persistent=False)
        radix = np.concatenate([[1], np.cumprod(levels[:-1])]).astype(np.int64)
        self.register_buffer("radix", torch.tensor(radix), persistent=False)

    def quantise(self, z: torch.Tensor) -> torch.Tensor:
        """(..., d) -> values in [-1, 1] on the level grid; straight-through gradient. The value is exactly the
        grid's (q plus an exact zero), so that from_index(to_index(q)) gives it back bit for bit."""
        half = (self.levels - 1) / 2
        offset = 1.0 - self.levels % 2 * 1.0  # even levels sit between integers: shift by one half
        bounded = torch.tanh(z) * half
        q = torch.round(bounded - offset / 2) + offset / 2
        return (q + (bounded - bounded.detach())) / half

    def to_index(self, q: torch.Tensor) -> torch.Tensor:
        digits = torch.round(q * (self.levels - 1) / 2 + (self.levels - 1) / 2).long()
        return (digits * self.radix).sum(-1)

    def from_index(self, index: torch.Tensor) -> torch.Tensor:
        digits = (index[..., None] // self.radix) % self.levels.long()
        return (digits.float() - (self.levels - 1) / 2) / ((self.levels - 1) / 2)


# ---------------------------------------------------------------------------------------------- layers

class CausalConv(nn.Conv1d):
    """Conv1d over (B, C, T) that sees `left` steps of past and `right` of future (default: causal).

    `past` holds the `left` inputs before x (a stream carries them from call to call); zeros when None, which
    is where a clip begins."""

    def __init__(self, c_in: int, c_out: int, kernel: int, dilation: int = 1, right: int = 0):
        super().__init__(c_in, c_out, kernel, dilation=dilation)
        self.left, self.right = dilation * (kernel - 1) - right, right

    def forward(self, x: torch.Tensor, past: torch.Tensor | None = None) -> torch.Tensor:
        if past is None:
            return super().forward(F.pad(x, (self.left, self.right)))
        return super().forward(F.pad(torch.cat([past, x], dim=-1), (0, self.right)))


class ResBlock(nn.Module):
    """x + conv(gelu(conv(gelu(x)))): a dilated residual block, no normalisation across time."""

    def __init__(self, channels: int, kernel: int, dilation: int, causal: bool = True):
        super().__init__()
        right = 0 if causal else dilation * (kernel - 1) // 2
        self.conv1 = CausalConv(channels, channels, kernel, dilation, right)
        self.conv2 = nn.Conv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor, past: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (output, the last `left` inputs of the dilated convolution: the `past` of the next call)."""
        h = F.gelu(x)
        seen = h if past is None else torch.cat([past, h], dim=-1)
        y = x + self.conv2(F.gelu(self.conv1(h, past)))
        if past is None:
            seen = F.pad(seen, (self.conv1.left, 0))
        return y, seen[..., seen.shape[-1] - self.conv1.left:]


@dataclass
class DecoderState:
    """What a streaming decoder carries between calls: the last inputs of every causal convolution, packed
    along time per rate, (B, channels, sum of the token-rate blocks' `left`) and the same at frame rate."""

    tokens: torch.Tensor
    frames: torch.Tensor


class VoiceMemory(nn.Module):
    """Multi-head attention from the decoder's token-rate state to a reference clip (`Memory`).

    Keys read the reference's quantised values through a small non-causal convolution (a sound in its context),
    values its frames; the output layer starts at zero, so a decoder trained without a memory is where a memory
    decoder's training starts."""

    def __init__(self, levels: int, frame_values: int, channels: int, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.key = nn.Sequential(nn.Conv1d(levels, channels, 3, padding=1), nn.GELU(), nn.Conv1d(channels, dim, 1))
        self.value = nn.Linear(frame_values, dim)
        self.query = nn.Linear(channels, dim)
        self.out = nn.Linear(dim, channels)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def read(self, q: torch.Tensor, frames: torch.Tensor, mask: torch.Tensor) -> Memory:
        """(B, M, levels) quantised values + (B, M, frames_per_token * dim) normalised frames of a reference."""
        return Memory(self.key(q.transpose(1, 2)).transpose(1, 2), self.value(frames), mask)

    def forward(self, x: torch.Tensor, memory: Memory) -> torch.Tensor:
        """(B, C, N) -> (B, C, N): what each position takes from the reference."""
        b, _, n = x.shape
        split = lambda t: t.reshape(b, t.shape[1], self.heads, -1).transpose(1, 2)  # (B, heads, len, dim/heads)
        query, key, value = split(self.query(x.transpose(1, 2))), split(memory.keys), split(memory.values)
        scores = query @ key.transpose(2, 3) / key.shape[-1] ** 0.5
        scores = scores.masked_fill(~memory.mask[:, None, None, :], -1e4)
        taken = (scores.softmax(-1) @ value).transpose(1, 2).reshape(b, n, -1)
        return self.out(taken).transpose(1, 2)


# ----------------------------------------------------------------------------------------------- model

class Codec(nn.Module):
    """Tokenizer (encode) and speaker-conditioned decoder (decode) of normalised vocoder frames."""

    def __init__(self, cfg: CodecConfig):
        super().__init__()
        self.cfg = cfg
        c, k, d = cfg.channels, cfg.kernel, len(cfg.levels)
        self.register_buffer("scale", torch.tensor(cfg.scale, dtype=torch.float32))
        self.register_buffer("postfilter", formant_postfilter(cfg.n_env, cfg.formant_sharpening), persistent=False)
        # tokenizer: non-causal (it sees whole clips), to the token rate by stride-2 convolutions (25/s: two from
        # 100 Hz frames, one from Whisper's 50 Hz; 50/s: one, none)
        self.enc_in = nn.Conv1d(cfg.source_dim, c, k, padding=k // 2)
        downs = int(np.log2(cfg.source_per_token))
        self.enc_down = nn.ModuleList([nn.Conv1d(c, c, 4, stride=2, padding=1) for _ in range(downs)])
        self.enc_blocks = nn.ModuleList([ResBlock(c, 3, 3 ** i, causal=False) for i in range(cfg.encoder_blocks)])
        self.enc_out = nn.Conv1d(c, d, 1)
        self.fsq = FSQ(cfg.levels)
        # decoder: one look-ahead layer, then causal blocks at the token rate and at 100 Hz
        # the look-ahead layer reads an explicit window: 2 past tokens, the decoded ones, `lookahead` future ones
        self.dec_in = nn.Conv1d(d, c, cfg.lookahead + 3)
        self.cond = nn.Linear(cfg.cond_dim, c)
        # dilations 1, 2, 4, 1, 2, 4...: ~1 s of past context; the streaming decoder re-runs that window
        self.dec_blocks = nn.ModuleList([ResBlock(c, 3, 2 ** (i % 3)) for i in range(cfg.decoder_blocks)])
        self.up = nn.Conv1d(c, cfg.frame_channels * cfg.frames_per_token, 1)
        self.frame_cond = nn.Linear(cfg.cond_dim, cfg.frame_channels)
        self.frame_blocks = nn.ModuleList([ResBlock(cfg.frame_channels, k, 2 ** i)
                                           for i in range(cfg.frame_blocks)])
        self.out = nn.Conv1d(cfg.frame_channels, cfg.feature_dim, 1)
        self.memory = (VoiceMemory(d, cfg.feature_dim * cfg.frames_per_token, c, cfg.memory_dim, cfg.memory_heads)
                       if cfg.memory_dim else None)
        # training only: phones from the quantised values; small, so the codes themselves must be phonetic
        self.ctc_head = nn.Sequential(nn.Conv1d(d, c, 3, padding=1), nn.GELU(),
                                      nn.Conv1d(c, 1 + len(PHONES), 3, padding=1))

    @property
    def window_margin(self) -> tuple[int, int]:
        """Tokens before and after the decoded ones that the look-ahead layer reads: (past, `lookahead`)."""
        return self.dec_in.kernel_size[0] - 1 - self.cfg.lookahead, self.cfg.lookahead

    def zero_state(self, batch: int = 1) -> DecoderState:
        """The state at the start of a clip (what offline decoding's zero padding means)."""
        lefts = [b.conv1.left for b in self.dec_blocks], [b.conv1.left for b in self.frame_blocks]
        return DecoderState(torch.zeros(batch, self.cfg.channels, sum(lefts[0])),
                            torch.zeros(batch, self.cfg.frame_channels, sum(lefts[1])))

    def encode(self, frames: torch.Tensor, stats: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        """(B, N * frames_per_token, dim) frames + (B, 2+n_env) stats, or (B, N * source_per_token, 384) Whisper
        features for a "whisper" codec, -> (B, N, len(levels)) quantised values."""
        if self.cfg.source == "whisper":
            x = features.transpose(1, 2)
        else:
            x = (normalise(frames, stats) / self.scale).transpose(1, 2)
        x = self.enc_in(x)
        for down in self.enc_down:
            x = down(F.gelu(x))
        for block in self.enc_blocks:
            x, _ = block(x)
        return self.fsq.quantise(self.enc_out(F.gelu(x)).transpose(1, 2))

    def tokens(self, frames: torch.Tensor, stats: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        """What `encode` reads -> (B, N) token ids in [0, vocab_size)."""
        return self.fsq.to_index(self.encode(frames, stats, features))

    def conditioning(self, embedding: torch.Tensor, stats: torch.Tensor) -> torch.Tensor:
        """The voice as one vector: speaker embedding + F0 mean/std + mean envelope (scaled like frames)."""
        env = stats[:, 2:] / self.scale[ENV]
        return torch.cat([embedding, stats[:, :1] - 5.0, stats[:, 1:2] * 10.0, env], dim=1)

    def remember(self, q: torch.Tensor, frames: torch.Tensor, stats: torch.Tensor, lengths: torch.Tensor) -> Memory:
        """A reference clip for the voice memory: (B, M, levels) quantised values, (B, fM, dim) frames, its stats and
        (B,) real frame counts."""
        b, m, _ = q.shape
        values = (normalise(frames, stats) / self.scale).reshape(b, m, -1)
        mask = torch.arange(m)[None] < (lengths // self.cfg.frames_per_token)[:, None]
        return self.memory.read(q, values, mask)

    def decode_normalised(self, q: torch.Tensor, cond: torch.Tensor, state: DecoderState | None = None,
                          memory: Memory | None = None) -> tuple[torch.Tensor, DecoderState]:
        """(B, past + N + lookahead, levels) quantised values, the window the look-ahead layer reads, + (B,
        cond_dim) -> (B, fN, dim) normalised, scaled frames of the N middle tokens, and the state after them.

        A whole clip is decoded from `zero_state` with zeros as its window margin; a stream passes each
        call's state to the next and gets the same frames. `memory`: the reference clip, for a voice memory."""
        cfg = self.cfg
        state = state or self.zero_state(q.shape[0])
        x = self.dec_in(q.transpose(1, 2))
        if memory is not None:
            x = x + self.memory(x, memory)
        x = x + self.cond(cond)[:, :, None]
        x, token_state = self._causal(self.dec_blocks, x, state.tokens)
        b, _, n = x.shape
        x = self.up(F.gelu(x)).view(b, cfg.frame_channels, cfg.frames_per_token, n)
        x = x.permute(0, 1, 3, 2).reshape(b, cfg.frame_channels, n * cfg.frames_per_token)
        x = x + self.frame_cond(cond)[:, :, None]
        x, frame_state = self._causal(self.frame_blocks, x, state.frames)
        return self.out(F.gelu(x)).transpose(1, 2), DecoderState(token_state, frame_state)

    @staticmethod
    def _causal(blocks: nn.ModuleList, x: torch.Tensor, packed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Run causal blocks, each from its slice of the packed past; returns the output and the new pack."""
        pasts = packed.split([b.conv1.left for b in blocks], dim=-1)
        new = []
        for block, past in zip(blocks, pasts):
            x, carried = block(x, past)
            new.append(carried)
        return x, torch.cat(new, dim=-1)

    def decode(self, q: torch.Tensor, embedding: torch.Tensor, stats: torch.Tensor,
               state: DecoderState | None = None, memory: Memory | None = None) -> tuple[torch.Tensor, DecoderState]:
        """Quantised values (a window, as `decode_normalised`) -> vocoder frames in the voice given by
        (embedding, stats, and the reference clip's `memory` for a voice memory), and the state after them."""
        y, state = self.decode_normalised(q, self.conditioning(embedding, stats), state, memory)
        y = y * self.scale
        vuv = (y[..., VUV:VUV + 1] > 0).float()  # the voicing output is a logit
        return self.in_voice(torch.cat([y[..., :VUV], vuv, y[..., VUV + 1:]], dim=-1), stats), state

    def in_voice(self, frames: torch.Tensor, stats: torch.Tensor) -> torch.Tensor:
        """Decoded frames in their own units, still speaker-normalised -> vocoder frames in the voice of `stats`,
        through the formant postfilter: what decoding outputs."""
        out = denormalise(frames, stats)
        return torch.cat([out[..., :ENV.start], out[..., ENV] @ self.postfilter, out[..., ENV.stop:]], dim=-1)

    def decode_clip(self, q: torch.Tensor, embedding: torch.Tensor, stats: torch.Tensor) -> torch.Tensor:
        """(B, N, levels) quantised values of whole clips -> (B, fN, dim) vocoder frames."""
        return self.decode(self.pad_window(q), embedding, stats)[0]

    def pad_window(self, q: torch.Tensor) -> torch.Tensor:
        """Whole clips' values with their window margins: zeros before the first and after the last token."""
        before, after = self.window_margin
        return F.pad(q, (0, 0, before, after))

    def decode_ids(self, ids: torch.Tensor, valid: torch.Tensor, embedding: torch.Tensor, stats: torch.Tensor,
                   state: DecoderState, reference_ids: torch.Tensor | None = None,
                   reference_frames: torch.Tensor | None = None) -> tuple[torch.Tensor, DecoderState]:
        """`decode` of a window of token ids, (B, W) with (B, W) `valid` 1 inside the stream and 0 in a margin
        that runs past its ends (those positions read as zeros, as in `pad_window`): the exported graph. A voice
        memory reads the reference clip's (B, M) token ids and (B, fM, dim) frames."""
        memory = None
        if self.memory is not None:
            lengths = torch.full((ids.shape[0],), reference_frames.shape[1], dtype=torch.long)
            memory = self.remember(self.fsq.from_index(reference_ids), reference_frames, stats, lengths)
        return self.decode(self.fsq.from_index(ids) * valid[..., None], embedding, stats, state, memory)

    def reconstruction(self, pred: torch.Tensor, frames: torch.Tensor, stats: torch.Tensor, lengths: torch.Tensor
                       ) -> dict[str, torch.Tensor]:
        """How far (B, T, dim) decoded normalised frames (`decode_normalised`) are from the (B, T, dim) vocoder
        frames of clips `lengths` long, in the voice of `stats`: each part, and "recon", their weighted sum."""
        target = normalise(frames, stats) / self.scale
        mask = (torch.arange(frames.shape[1])[None] < lengths[:, None]).float()
        n = mask.sum()
        voiced = frames[..., VUV] * mask
        vuv = F.binary_cross_entropy_with_logits(pred[..., VUV], frames[..., VUV], reduction="none")
        parts = {
            "f0": ((pred[..., LF0] - target[..., LF0]).abs() * voiced).sum() / voiced.sum().clamp(min=1),
            "vuv": (vuv * mask).sum() / n,
            "env": ((pred[..., ENV] - target[..., ENV]).abs().mean(-1) * mask).sum() / n,
            "ap": ((pred[..., AP] - target[..., AP]).abs().mean(-1) * mask).sum() / n,
        }
        parts["recon"] = weighted(parts)
        return parts

    def calibrate(self, pred: torch.Tensor, ref_q: torch.Tensor, ref_frames: torch.Tensor, ref_stats: torch.Tensor,
                  ref_cond: torch.Tensor, memory: Memory | None, ref_lengths: torch.Tensor, k: int) -> torch.Tensor:
        """(B, T, dim) decoded normalised frames corrected as the runtime's voice calibration corrects them with k
        neighbours, measured on the reference clips ((B, M, levels) values, (B, fM, dim) frames, stats, conditioning,
        real lengths) decoded from their own tokens. The correction itself carries no gradient, as at run time it is
        a lookup."""
        with torch.no_grad():
            ref_pred, _ = self.decode_normalised(self.pad_window(ref_q), ref_cond, memory=memory)
            ref_target = normalise(ref_frames, ref_stats) / self.scale
            correction = calibrated(pred[..., ENV].detach(), ref_pred[..., ENV],
                                    ref_target[..., ENV] - ref_pred[..., ENV], ref_lengths, k)
        return torch.cat([pred[..., :ENV.start], pred[..., ENV] + correction, pred[..., ENV.stop:]], -1)

    def heard(self, pred: torch.Tensor) -> torch.Tensor:
        """Decoded normalised frames as a phone listener hears them: voicing as a probability, in the frames' own
        units (still speaker-normalised, like the listener's training frames)."""
        return torch.cat([pred[..., :VUV], torch.sigmoid(pred[..., VUV:VUV + 1]), pred[..., VUV + 1:]], -1) * self.scale

    def phone_log_probs(self, q: torch.Tensor) -> torch.Tensor:
        """(B, N, levels) quantised values -> (B, N, 1 + len(PHONES)) CTC log-probabilities (0 = blank)."""
        return self.ctc_head(q.transpose(1, 2)).transpose(1, 2).log_softmax(-1)

    def loss(self, batch: Batch, listener: Callable[[torch.Tensor, Batch], torch.Tensor] | None = None,
             calibrate: int = 0,
             perceiver: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None
             ) -> dict[str, torch.Tensor]:
        """Reconstruction losses (padding masked out) and the phone CTC loss of a batch of whole clips; with a
        `listener` (decoded speaker-normalised frames, voicing as a probability, -> a loss; training/listener.py)
        also how well the decoded frames are heard. `calibrate` = k > 0 (with references): the listener hears the
        frames both as decoded and as the runtime's voice calibration corrects them with k neighbours
        (`calibrated`), half each, so the decoder learns frames whose correction keeps the words. A `perceiver`
        ((decoded, original) vocoder frames and lengths -> a loss; training/perceiver.py) hears what the runtime
        outputs: the corrected frames when calibrating, in the voice's units, with the formant postfilter."""
        frames, stats, embedding, memory = batch.frames, batch.stats, batch.embedding, None
        q = self.encode(frames, stats, batch.features)
        ref = batch.reference
        if ref is not None:  # decoded in another clip's voice, as in use: its stats, its embedding, its frames
            stats, embedding = ref.stats, ref.embedding
            with torch.no_grad():
                ref_q = self.encode(ref.frames, ref.stats, ref.features)
            if self.memory is not None:
                memory = self.remember(ref_q, ref.frames, ref.stats, ref.lengths)
        pred, _ = self.decode_normalised(self.pad_window(q), self.conditioning(embedding, stats), memory=memory)
        parts = self.reconstruction(pred, frames, stats, batch.lengths)
        log_probs = self.phone_log_probs(q).transpose(0, 1)  # (N, B, classes), as ctc_loss wants
        parts["ctc"] = F.ctc_loss(log_probs, batch.phones, batch.lengths // self.cfg.frames_per_token,
                                  batch.phone_lengths, blank=0, zero_infinity=True)
        parts["total"] = parts["recon"] + self.cfg.ctc_weight * parts["ctc"]
        if listener is None and perceiver is None:
            return parts
        heard = [pred]  # the decoded frames, and those the calibration corrects
        if calibrate > 0 and ref is not None:
            heard.append(self.calibrate(pred, ref_q, ref.frames, ref.stats, self.conditioning(ref.embedding, ref.stats),
                                        memory, ref.lengths, calibrate))
        heard = [self.heard(y) for y in heard]
        if listener is not None:
            parts["listener"] = sum(listener(y, batch) for y in heard) / len(heard)
        if perceiver is not None:
            parts["perceiver"] = perceiver(self.in_voice(heard[-1], stats), frames, batch.lengths)
        return parts


def calibrated(env: torch.Tensor, ref_env: torch.Tensor, ref_error: torch.Tensor, ref_lengths: torch.Tensor,
               k: int) -> torch.Tensor:
    """The voice calibration's correction (codec.runtime.Calibration: the errors of the k nearest decoded reference
    frames, weighted by how much nearer each is than the (k+1)-th) for a batch: (B, T, n) decoded envelopes, (B, R, n)
    the references' decoded envelopes and their errors, (B,) their real lengths -> (B, T, n). Training's copy of
    the runtime's numpy one, in the loss's normalised units."""
    distance = torch.cdist(env, ref_env) ** 2
    distance = distance.masked_fill((torch.arange(ref_env.shape[1])[None] >= ref_lengths[:, None])[:, None], 1e9)
    k = min(k, int(ref_lengths.min()) - 1)
    if k < 1:  # a reference of one frame has no neighbour to weigh against
        return torch.zeros_like(env)
    near, nearest = distance.topk(k + 1, dim=-1, largest=False)  # sorted, nearest first
    weights = near[..., k:] - near[..., :k] + 1e-9
    weights = weights / weights.sum(-1, keepdim=True)
    errors = torch.gather(ref_error[:, None].expand(-1, env.shape[1], -1, -1), 2,
                          nearest[..., :k, None].expand(-1, -1, -1, ref_error.shape[-1]))
    return (errors * weights[..., None]).sum(2)


def formant_postfilter(n_env: int, strength: float, width: int = 5) -> torch.Tensor:
    """(n_env, n_env) matrix P with env @ P = env + strength (env - smoothed env): per frame, so a stream
    and an offline decode get the same. Smoothing: a Hann window along the envelope, edges repeated."""
    window = np.hanning(width + 2)[1:-1]
    window /= window.sum()
    smooth = np.zeros((n_env, n_env))
    for i in range(n_env):  # row i: output point i as a weighted sum of input points
        for offset, w in zip(range(-(width // 2), width // 2 + 1), window):
            smooth[i, min(max(i + offset, 0), n_env - 1)] += w
    matrix = (1 + strength) * np.eye(n_env) - strength * smooth
    return torch.tensor(matrix.T, dtype=torch.float32)


def fit_scales(frames: list[np.ndarray]) -> list[float]:
    """Per-dimension spread of speaker-normalised frames, so every output counts alike in the loss."""
    rows = []
    for f in frames:
        s = reference_stats(f)
        g = f.astype(np.float64).copy()
        g[:, LF0] -= s[0]
        g[:, ENV] -= s[2:]
        rows.append(g)
    std = np.concatenate(rows).std(axis=0)
    std[VUV] = 1.0  # a logit target stays 0/1
    return [float(max(v, 1e-3)) for v in std]


@torch.no_grad()
def numpy_step(codec: Codec, ids: np.ndarray, valid: np.ndarray, embedding: np.ndarray, stats: np.ndarray,
               state: tuple[np.ndarray, ...], reference: tuple[np.ndarray, np.ndarray] | None = None
               ) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    """`Codec.decode_ids` for one stream, numpy in and out: what the exported decoder graph computes.
    `reference`: the reference clip's (M,) token ids and (fM, dim) frames, for a voice memory."""
    ref_ids, ref_frames = (None, None) if reference is None else (torch.from_numpy(reference[0])[None],
                                                                    torch.from_numpy(reference[1])[None])
    frames, new = codec.decode_ids(torch.from_numpy(ids)[None], torch.from_numpy(valid)[None],
                                   torch.from_numpy(embedding)[None], torch.from_numpy(stats)[None],
                                   DecoderState(*(torch.from_numpy(a) for a in state)), ref_ids, ref_frames)
    return frames[0].numpy(), (new.tokens.numpy(), new.frames.numpy())


class DecoderStream:
    """Decodes a token stream k tokens at a time; the frames equal an offline decode of the whole stream.

    `step(ids, valid, state)` decodes a window of token ids (W,) - the `margin` = (past, look-ahead) tokens
    the first layer reads around the decoded ones, `valid` 0 where the window runs past either end of the
    stream - from a state (numpy arrays, as the torch model or its ONNX export carries them) and returns
    ((W - past - look-ahead) * frames_per_token, dim) frames and the next state. A token's frames need
    `lookahead` later tokens, so each push returns the frames of all but the newest `lookahead` tokens;
    `finish` (end of stream) returns the rest. Every token goes through the decoder once.
    """

    def __init__(self, step: Callable, state: tuple[np.ndarray, ...], margin: tuple[int, int]):
        self.step, self.state, (self.before, self.after) = step, state, margin
        self.tokens = np.zeros(0, dtype=np.int64)  # the stream's tail: from `before` tokens ahead of `emitted`
        self.offset = 0   # stream position of self.tokens[0]
        self.emitted = 0  # tokens whose frames were returned

    @classmethod
    def for_codec(cls, codec: Codec, embedding: np.ndarray, stats: np.ndarray,
                  reference: tuple[np.ndarray, np.ndarray] | None = None) -> "DecoderStream":
        """A stream through the torch model (the runtime uses its ONNX export the same way); `reference`: what a
        voice memory reads (`Timbre.memory`)."""
        zero = codec.zero_state()
        return cls(lambda ids, valid, state: numpy_step(codec, ids, valid, embedding, stats, state, reference),
                   (zero.tokens.numpy(), zero.frames.numpy()), codec.window_margin)

    def _frames(self, upto: int) -> np.ndarray:
        first, end = self.emitted - self.before, upto + self.after  # the window, in stream positions
        position = np.arange(first, end)
        inside = (position >= 0) & (position < self.offset + len(self.tokens))
        ids = np.zeros(end - first, dtype=np.int64)
        ids[inside] = self.tokens[position[inside] - self.offset]
        frames, self.state = self.step(ids, inside.astype(np.float32), self.state)
        self.emitted = upto
        keep = max(0, self.emitted - self.before - self.offset)  # drop what no later window reads
        self.tokens, self.offset = self.tokens[keep:], self.offset + keep
        return frames

    def push(self, tokens: np.ndarray) -> np.ndarray:
        """Add token ids; return (frames, dim) for every token whose look-ahead is now available."""
        self.tokens = np.concatenate([self.tokens, np.asarray(tokens, dtype=np.int64).reshape(-1)])
        ready = self.offset + len(self.tokens) - self.after
        if ready <= self.emitted:
            return np.zeros((0, FEATURES.dim), dtype=np.float32)
        return self._frames(ready)

    def finish(self) -> np.ndarray:
        """The frames of the last `lookahead` tokens (the stream has ended)."""
        end = self.offset + len(self.tokens)
        if end <= self.emitted:
            return np.zeros((0, FEATURES.dim), dtype=np.float32)
        return self._frames(end)
