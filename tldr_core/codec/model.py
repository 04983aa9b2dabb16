"""The speech codec network: vocoder frames (100/s) -> one token stream (25/s) -> vocoder frames.

Tokenizer: convolutions over speaker-normalised frames (log F0 minus the voice's mean, envelope minus the
voice's mean envelope), downsampled 4x, then finite scalar quantisation (FSQ, Mentzer et al. 2023):
5 bounded scalars rounded to (8, 8, 5, 5, 5) levels = 8000 codes, no codebook to collapse.

Decoder: the FSQ values of each token, plus the voice (256-d SpeakerEncoder embedding and the reference
clip's measured F0 mean/std and mean envelope), -> frames. Only the first layer sees future tokens
(`lookahead` of them); every later layer is causal, so a frame depends on a bounded window of tokens and a
stream can be decoded k tokens at a time with a fixed delay, matching the offline output exactly
(`TokenDecoderStream`). The voice's absolute pitch and timbre come back from the reference statistics,
which is why the tokens need not carry them.

Training-only CTC head: two small convolutions over the quantised values predict the utterance's phones
(CTC, as CosyVoice's supervised semantic tokens). Reconstruction alone let the tokens lose the words (the
decoded envelope was over-smoothed; WER +68), so the phone loss pushes the codes to carry the phones. The
head is not exported and not needed to encode or decode.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tldr_core.codec.features import AP, CONFIG as FEATURES, ENV, LF0, VUV
from tldr_core.text import PHONEMES, STRESS, WORD_BOUNDARY

EMBED_DIM = 256  # SpeakerEncoder's output
# CTC targets are the phones only: stress marks, word gaps and punctuation have no segment of their own
NOT_PHONES = frozenset({WORD_BOUNDARY, *STRESS, ",", ".", "?", "!", ";", ":", "-"})
PHONES: tuple[str, ...] = tuple(p for p in PHONEMES if p not in NOT_PHONES)
_PHONE_ID = {p: 1 + i for i, p in enumerate(PHONES)}  # 0 is the CTC blank


def phone_targets(phonemes: str) -> np.ndarray:
    """A manifest's space-separated phonemes -> CTC target ids (1..len(PHONES)); other symbols dropped."""
    return np.array([_PHONE_ID[p] for p in phonemes.split() if p in _PHONE_ID], dtype=np.int64)


@dataclass
class Batch:
    """Whole clips padded to the longest (frames by repeating the last one), with their true lengths."""

    frames: torch.Tensor         # (B, 4N, dim)
    embedding: torch.Tensor      # (B, 256)
    stats: torch.Tensor          # (B, 2 + n_env)
    lengths: torch.Tensor        # (B,) real frames, a multiple of frames_per_token
    phones: torch.Tensor         # (B, L) CTC targets, zero-padded
    phone_lengths: torch.Tensor  # (B,)


@dataclass
class CodecConfig:
    """Sizes; `frames_per_token` = 4 turns 100 frames/s into 25 tokens/s."""

    feature_dim: int = FEATURES.dim
    n_env: int = FEATURES.n_env
    levels: tuple[int, ...] = (8, 8, 5, 5, 5)
    frames_per_token: int = 4
    channels: int = 256           # token-rate width of both halves
    frame_channels: int = 128     # width of the decoder's frame-rate layers
    encoder_blocks: int = 3
    decoder_blocks: int = 6
    frame_blocks: int = 3
    kernel: int = 5
    lookahead: int = 2            # tokens the decoder may wait for (2 tokens = 80 ms)
    ctc_weight: float = 0.3       # phone (CTC) loss weight; 1.0 collapsed the codes before the decoder learnt
    # per-dimension scale of the normalised frames (set from training data by `fit_scales`)
    scale: list[float] = field(default_factory=lambda: [1.0] * FEATURES.dim)

    @property
    def vocab_size(self) -> int:
        return int(np.prod(self.levels))

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
        """(..., d) -> values in [-1, 1] on the level grid; straight-through gradient."""
        half = (self.levels - 1) / 2
        offset = 1.0 - self.levels % 2 * 1.0  # even levels sit between integers: shift by one half
        bounded = torch.tanh(z) * half
        q = torch.round(bounded - offset / 2) + offset / 2
        return (bounded + (q - bounded).detach()) / half

    def to_index(self, q: torch.Tensor) -> torch.Tensor:
        digits = torch.round(q * (self.levels - 1) / 2 + (self.levels - 1) / 2).long()
        return (digits * self.radix).sum(-1)

    def from_index(self, index: torch.Tensor) -> torch.Tensor:
        digits = (index[..., None] // self.radix) % self.levels.long()
        return (digits.float() - (self.levels - 1) / 2) / ((self.levels - 1) / 2)


# ---------------------------------------------------------------------------------------------- layers

class CausalConv(nn.Conv1d):
    """Conv1d over (B, C, T) that pads `left` steps of past and `right` of future (default: causal)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, dilation: int = 1, right: int = 0):
        super().__init__(c_in, c_out, kernel, dilation=dilation)
        self.left, self.right = dilation * (kernel - 1) - right, right

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, (self.left, self.right)))


class ResBlock(nn.Module):
    """x + conv(gelu(conv(gelu(x)))): a dilated causal residual block, no normalisation across time."""

    def __init__(self, channels: int, kernel: int, dilation: int, causal: bool = True):
        super().__init__()
        right = 0 if causal else dilation * (kernel - 1) // 2
        self.conv1 = CausalConv(channels, channels, kernel, dilation, right)
        self.conv2 = nn.Conv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.gelu(self.conv1(F.gelu(x))))


# ----------------------------------------------------------------------------------------------- model

class Codec(nn.Module):
    """Tokenizer (encode) and speaker-conditioned decoder (decode) of normalised vocoder frames."""

    def __init__(self, cfg: CodecConfig):
        super().__init__()
        self.cfg = cfg
        c, k, d = cfg.channels, cfg.kernel, len(cfg.levels)
        self.register_buffer("scale", torch.tensor(cfg.scale, dtype=torch.float32))
        # tokenizer: non-causal (it sees whole clips), 100 Hz -> 25 Hz by two stride-2 convolutions
        self.enc_in = nn.Conv1d(cfg.feature_dim, c, k, padding=k // 2)
        self.enc_down = nn.ModuleList([nn.Conv1d(c, c, 4, stride=2, padding=1) for _ in range(2)])
        self.enc_blocks = nn.ModuleList([ResBlock(c, 3, 3 ** i, causal=False) for i in range(cfg.encoder_blocks)])
        self.enc_out = nn.Conv1d(c, d, 1)
        self.fsq = FSQ(cfg.levels)
        # decoder: one look-ahead layer, then causal blocks at 25 Hz and at 100 Hz
        self.dec_in = CausalConv(d, c, cfg.lookahead + 3, right=cfg.lookahead)
        self.cond = nn.Linear(cfg.cond_dim, c)
        # dilations 1, 2, 4, 1, 2, 4...: ~1 s of past context; the streaming decoder re-runs that window
        self.dec_blocks = nn.ModuleList([ResBlock(c, 3, 2 ** (i % 3)) for i in range(cfg.decoder_blocks)])
        self.up = nn.Conv1d(c, cfg.frame_channels * cfg.frames_per_token, 1)
        self.frame_cond = nn.Linear(cfg.cond_dim, cfg.frame_channels)
        self.frame_blocks = nn.ModuleList([ResBlock(cfg.frame_channels, k, 2 ** i)
                                           for i in range(cfg.frame_blocks)])
        self.out = nn.Conv1d(cfg.frame_channels, cfg.feature_dim, 1)
        # training only: phones from the quantised values; small, so the codes themselves must be phonetic
        self.ctc_head = nn.Sequential(nn.Conv1d(d, c, 3, padding=1), nn.GELU(),
                                      nn.Conv1d(c, 1 + len(PHONES), 3, padding=1))

    @property
    def context_tokens(self) -> int:
        """Past tokens a decoded token depends on (its causal receptive field): enough for exact streaming."""
        frames = sum(b.conv1.left for b in self.frame_blocks)
        return (self.dec_in.left + sum(b.conv1.left for b in self.dec_blocks)
                + -(-frames // self.cfg.frames_per_token))

    def encode(self, frames: torch.Tensor, stats: torch.Tensor) -> torch.Tensor:
        """(B, 4N, dim) frames + (B, 2+n_env) stats -> (B, N, len(levels)) quantised values."""
        x = (normalise(frames, stats) / self.scale).transpose(1, 2)
        x = self.enc_in(x)
        for down in self.enc_down:
            x = down(F.gelu(x))
        for block in self.enc_blocks:
            x = block(x)
        return self.fsq.quantise(self.enc_out(F.gelu(x)).transpose(1, 2))

    def tokens(self, frames: torch.Tensor, stats: torch.Tensor) -> torch.Tensor:
        """(B, 4N, dim) -> (B, N) token ids in [0, vocab_size)."""
        return self.fsq.to_index(self.encode(frames, stats))

    def conditioning(self, embedding: torch.Tensor, stats: torch.Tensor) -> torch.Tensor:
        """The voice as one vector: speaker embedding + F0 mean/std + mean envelope (scaled like frames)."""
        env = stats[:, 2:] / self.scale[ENV]
        return torch.cat([embedding, stats[:, :1] - 5.0, stats[:, 1:2] * 10.0, env], dim=1)

    def decode_normalised(self, q: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """(B, N, levels) quantised values + (B, cond_dim) -> (B, 4N, dim) normalised, scaled frames."""
        cfg = self.cfg
        x = self.dec_in(q.transpose(1, 2)) + self.cond(cond)[:, :, None]
        for block in self.dec_blocks:
            x = block(x)
        b, _, n = x.shape
        x = self.up(F.gelu(x)).view(b, cfg.frame_channels, cfg.frames_per_token, n)
        x = x.permute(0, 1, 3, 2).reshape(b, cfg.frame_channels, n * cfg.frames_per_token)
        x = x + self.frame_cond(cond)[:, :, None]
        for block in self.frame_blocks:
            x = block(x)
        return self.out(F.gelu(x)).transpose(1, 2)

    def decode(self, q: torch.Tensor, embedding: torch.Tensor, stats: torch.Tensor) -> torch.Tensor:
        """Quantised values -> vocoder frames in the voice given by (embedding, stats)."""
        y = self.decode_normalised(q, self.conditioning(embedding, stats)) * self.scale
        y = denormalise(y, stats)
        vuv = (y[..., VUV:VUV + 1] > 0).float()  # the voicing output is a logit
        return torch.cat([y[..., :VUV], vuv, y[..., VUV + 1:]], dim=-1)

    def phone_log_probs(self, q: torch.Tensor) -> torch.Tensor:
        """(B, N, levels) quantised values -> (B, N, 1 + len(PHONES)) CTC log-probabilities (0 = blank)."""
        return self.ctc_head(q.transpose(1, 2)).transpose(1, 2).log_softmax(-1)

    def loss(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Reconstruction losses (padding masked out) and the phone CTC loss of a batch of whole clips."""
        frames, stats = batch.frames, batch.stats
        target = normalise(frames, stats) / self.scale
        q = self.encode(frames, stats)
        pred = self.decode_normalised(q, self.conditioning(batch.embedding, stats))
        mask = (torch.arange(frames.shape[1])[None] < batch.lengths[:, None]).float()
        n = mask.sum()
        voiced = frames[..., VUV] * mask
        vuv = F.binary_cross_entropy_with_logits(pred[..., VUV], frames[..., VUV], reduction="none")
        log_probs = self.phone_log_probs(q).transpose(0, 1)  # (N, B, classes), as ctc_loss wants
        parts = {
            "f0": ((pred[..., LF0] - target[..., LF0]).abs() * voiced).sum() / voiced.sum().clamp(min=1),
            "vuv": (vuv * mask).sum() / n,
            "env": ((pred[..., ENV] - target[..., ENV]).abs().mean(-1) * mask).sum() / n,
            "ap": ((pred[..., AP] - target[..., AP]).abs().mean(-1) * mask).sum() / n,
            "ctc": F.ctc_loss(log_probs, batch.phones, batch.lengths // self.cfg.frames_per_token,
                              batch.phone_lengths, blank=0, zero_infinity=True),
        }
        # the envelope carries the words (measured: a decoded envelope alone ruins WER, decoded F0 does not)
        parts["recon"] = parts["f0"] + 0.5 * parts["vuv"] + 2.0 * parts["env"] + 0.5 * parts["ap"]
        parts["total"] = parts["recon"] + self.cfg.ctc_weight * parts["ctc"]
        return parts


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


class TokenDecoderStream:
    """Decodes a token stream k tokens at a time; the frames equal an offline decode of the whole stream.

    `decode` maps a window of token ids (n,) to its frames (n * frames_per_token, dim), as the torch model
    or its ONNX export does. A token's frames need `lookahead` later tokens, so each push returns the frames
    of all but the newest `lookahead` tokens; `finish` (end of stream, zero-padded like the offline decode)
    returns the rest. Each push re-runs the decoder on the `context` tokens before the new ones (the causal
    receptive field), which gives exactly the offline values without caching every layer's state.
    """

    def __init__(self, decode: Callable[[np.ndarray], np.ndarray], lookahead: int, context: int,
                 frames_per_token: int):
        self.decode, self.lookahead, self.context, self.fpt = decode, lookahead, context, frames_per_token
        self.tokens = np.zeros(0, dtype=np.int64)
        self.emitted = 0  # tokens whose frames were returned

    @classmethod
    def for_codec(cls, codec: Codec, embedding: torch.Tensor, stats: torch.Tensor) -> "TokenDecoderStream":
        @torch.no_grad()
        def decode(tokens: np.ndarray) -> np.ndarray:
            q = codec.fsq.from_index(torch.from_numpy(tokens))[None]
            return codec.decode(q, embedding[None], stats[None])[0].numpy()

        return cls(decode, codec.cfg.lookahead, codec.context_tokens, codec.cfg.frames_per_token)

    def _frames(self, upto: int, final: bool) -> np.ndarray:
        start = max(0, self.emitted - self.context)
        frames = self.decode(self.tokens[start:upto + (0 if final else self.lookahead)])
        out = frames[(self.emitted - start) * self.fpt: (upto - start) * self.fpt]
        self.emitted = upto
        return out

    def push(self, tokens: np.ndarray) -> np.ndarray:
        """Add token ids; return (frames, dim) for every token whose look-ahead is now available."""
        self.tokens = np.concatenate([self.tokens, np.asarray(tokens, dtype=np.int64).reshape(-1)])
        ready = len(self.tokens) - self.lookahead
        if ready <= self.emitted:
            return np.zeros((0, FEATURES.dim), dtype=np.float32)
        return self._frames(ready, final=False)

    def finish(self) -> np.ndarray:
        """The frames of the last `lookahead` tokens (the stream has ended)."""
        if len(self.tokens) <= self.emitted:
            return np.zeros((0, FEATURES.dim), dtype=np.float32)
        return self._frames(len(self.tokens), final=True)
