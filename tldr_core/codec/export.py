"""ONNX export of the codec, so the app runs tokenizer and decoder with onnxruntime (no torch needed).

Two graphs, both with dynamic length: tokenizer.onnx (frames (1, 4N, dim) + stats (1, 2+n_env) -> token
ids (1, N)) and decoder.onnx (token ids (1, N) + embedding (1, 256) + stats -> frames (1, 4N, dim)). The
FSQ index arithmetic is inside the graphs, so callers only ever see integer token ids. codec.json keeps
the numbers the runtime needs (look-ahead, causal context, frames per token, vocabulary size).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from tldr_core.codec.model import EMBED_DIM, Codec
from tldr_core.codec.train import load_codec

OPSET = 17


class _Tokenizer(nn.Module):
    def __init__(self, codec: Codec):
        super().__init__()
        self.codec = codec

    def forward(self, frames: torch.Tensor, stats: torch.Tensor) -> torch.Tensor:
        return self.codec.tokens(frames, stats)


class _Decoder(nn.Module):
    def __init__(self, codec: Codec):
        super().__init__()
        self.codec = codec

    def forward(self, tokens: torch.Tensor, embedding: torch.Tensor, stats: torch.Tensor) -> torch.Tensor:
        return self.codec.decode(self.codec.fsq.from_index(tokens), embedding, stats)


def export_codec(checkpoint: Path, out_dir: Path) -> dict:
    """Write tokenizer.onnx, decoder.onnx and codec.json into out_dir; returns the codec.json content."""
    codec = load_codec(checkpoint)
    cfg = codec.cfg
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    n = 12
    frames = torch.randn(1, n * cfg.frames_per_token, cfg.feature_dim)
    stats = torch.randn(1, 2 + cfg.n_env)
    tokens = torch.randint(0, cfg.vocab_size, (1, n))
    embedding = torch.randn(1, EMBED_DIM)
    with torch.no_grad():
        torch.onnx.export(_Tokenizer(codec), (frames, stats), out_dir / "tokenizer.onnx", dynamo=False,
                          opset_version=OPSET, input_names=["frames", "stats"], output_names=["tokens"],
                          dynamic_axes={"frames": {1: "frames"}, "tokens": {1: "tokens"}})
        torch.onnx.export(_Decoder(codec), (tokens, embedding, stats), out_dir / "decoder.onnx", dynamo=False,
                          opset_version=OPSET, input_names=["tokens", "embedding", "stats"],
                          output_names=["frames"], dynamic_axes={"tokens": {1: "tokens"}, "frames": {1: "frames"}})
    meta = {"lookahead": cfg.lookahead, "context_tokens": codec.context_tokens,
            "frames_per_token": cfg.frames_per_token, "vocab_size": cfg.vocab_size,
            "levels": list(cfg.levels), "feature_dim": cfg.feature_dim, "tokens_per_second": 25}
    (out_dir / "codec.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta
