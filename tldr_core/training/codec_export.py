"""ONNX export of the codec, so the app runs tokenizer and decoder with onnxruntime (no torch needed).

Two graphs, both with dynamic length: tokenizer.onnx (frames (1, 4N, dim) + stats (1, 2+n_env) -> token
ids (1, N); for a codec whose source is Whisper: log-mel (1, 4N, 80) -> ids (1, N), the frozen Whisper tiny.en
encoder inside the graph) and decoder.onnx, one step of a stream (a window of token ids (1, W) with its `valid` mask,
embedding (1, 256), stats and the carried state of the causal layers (and, for a decoder with a voice memory,
the reference clip's token ids (1, M) and frames (1, 4M, dim)) -> frames (1, 4(W - margins), dim)
and the next state; a whole clip is one step from the zero state). The FSQ index arithmetic is inside the
graphs, so callers only ever see integer token ids. codec.json keeps the numbers the runtime needs
(look-ahead and window margins, state shapes, frames per token, vocabulary size); manifest.json the sha256 of
the three files (checked whenever the folder is opened), how the weights were trained and an optional recipe.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from tldr_core.codec.model import EMBED_DIM, Codec, DecoderState
from tldr_core.codec.store import load_codec, tokenizer_fingerprint
from tldr_core.codec.whisper import WhisperEncoder
from tldr_core.codec.whisper_weights import load_whisper_encoder
from tldr_core.files import MANIFEST, file_entries, file_sha256, write_text
from tldr_core.model_store import read_checkpoint

OPSET = 17


class _Tokenizer(nn.Module):
    def __init__(self, codec: Codec):
        super().__init__()
        self.codec = codec

    def forward(self, frames: torch.Tensor, stats: torch.Tensor) -> torch.Tensor:
        return self.codec.tokens(frames, stats)


class _WhisperTokenizer(nn.Module):
    """Log-mel (1, T, 80), T a multiple of 4 up to 3000 -> token ids (1, T / frames_per_token): the Whisper encoder
    and the codec's quantiser in one graph."""

    def __init__(self, codec: Codec, whisper: WhisperEncoder):
        super().__init__()
        self.codec, self.whisper = codec, whisper

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        return self.codec.tokens(None, None, self.whisper(mel))


class _Decoder(nn.Module):
    def __init__(self, codec: Codec):
        super().__init__()
        self.codec = codec

    def forward(self, tokens: torch.Tensor, valid: torch.Tensor, embedding: torch.Tensor, stats: torch.Tensor,
                past_tokens: torch.Tensor, past_frames: torch.Tensor, reference_tokens: torch.Tensor | None = None,
                reference_frames: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        frames, state = self.codec.decode_ids(tokens, valid, embedding, stats, DecoderState(past_tokens, past_frames),
                                              reference_tokens, reference_frames)
        return frames, state.tokens, state.frames


def export_codec(checkpoint: Path, out_dir: Path, recipe: dict | None = None) -> dict:
    """Write tokenizer.onnx, decoder.onnx, codec.json and manifest.json into out_dir; returns the codec.json
    content. An intact tokenizer.onnx of the same tokenizer already there is kept (a retrained decoder changes only
    decoder.onnx). `recipe` (how the codec was made, what it measured) goes into the manifest as it is."""
    codec = load_codec(checkpoint)
    cfg = codec.cfg
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    n = 12
    frames = torch.randn(1, n * cfg.frames_per_token, cfg.feature_dim)
    stats = torch.randn(1, 2 + cfg.n_env)
    tokens = torch.randint(0, cfg.vocab_size, (1, n))
    embedding = torch.randn(1, EMBED_DIM)
    state = codec.zero_state()
    fingerprint = tokenizer_fingerprint(codec)
    with torch.no_grad():
        if _same_tokenizer(out_dir, fingerprint):
            pass  # a decoder retrained under a frozen tokenizer: the folder's tokenizer.onnx stays as it is
        elif cfg.source == "whisper":
            torch.onnx.export(_WhisperTokenizer(codec, load_whisper_encoder()), (torch.randn(1, 4 * n, 80),),
                              out_dir / "tokenizer.onnx", dynamo=False, opset_version=OPSET, input_names=["mel"],
                              output_names=["tokens"], dynamic_axes={"mel": {1: "mel"}, "tokens": {1: "tokens"}})
        else:
            torch.onnx.export(_Tokenizer(codec), (frames, stats), out_dir / "tokenizer.onnx", dynamo=False,
                              opset_version=OPSET, input_names=["frames", "stats"], output_names=["tokens"],
                              dynamic_axes={"frames": {1: "frames"}, "tokens": {1: "tokens"}})
        inputs = (tokens, torch.ones(1, n), embedding, stats, state.tokens, state.frames)
        names = ["tokens", "valid", "embedding", "stats", "past_tokens", "past_frames"]
        axes = {"tokens": {1: "window"}, "valid": {1: "window"}, "frames": {1: "frames"}}
        if codec.memory is not None:
            inputs += (torch.randint(0, cfg.vocab_size, (1, 2 * n)), torch.randn(1, 2 * n * cfg.frames_per_token,
                                                                                  cfg.feature_dim))
            names += ["reference_tokens", "reference_frames"]
            axes |= {"reference_tokens": {1: "reference"}, "reference_frames": {1: "reference_frames"}}
        # unfolded, so every weight keeps its parameter's name (folding would store the voice memory's linear
        # weights transposed under generated names, and `load_codec` could not rebuild the decoder from the graph)
        torch.onnx.export(_Decoder(codec), inputs, out_dir / "decoder.onnx", dynamo=False, opset_version=OPSET,
                          input_names=names, output_names=["frames", "next_tokens", "next_frames"], dynamic_axes=axes,
                          do_constant_folding=False)
    meta = {"lookahead": cfg.lookahead, "window_margin": list(codec.window_margin),
            "state_shapes": [list(state.tokens.shape[1:]), list(state.frames.shape[1:])],
            "frames_per_token": cfg.frames_per_token, "vocab_size": cfg.vocab_size,
            "levels": list(cfg.levels), "feature_dim": cfg.feature_dim, "tokens_per_second": cfg.tokens_per_second,
            "config": cfg.to_dict(),  # what `load_codec` needs to rebuild the network from the two graphs
            "fingerprint": fingerprint}  # what the tokens mean: a speech model is paired by it
    write_text(out_dir / "codec.json", json.dumps(meta, indent=2) + "\n")
    manifest = {"format": 1, "files": file_entries(out_dir, ["tokenizer.onnx", "decoder.onnx", "codec.json"]),
                "training": _training(Path(checkpoint)), "recipe": recipe or {}}
    write_text(out_dir / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    return meta


def _same_tokenizer(folder: Path, fingerprint: str) -> bool:
    """Whether `folder` already holds an intact export of the tokenizer with this fingerprint (its tokenizer.onnx
    as its manifest recorded it): re-exporting it would only rewrite 39 MB as other bytes of the same graph."""
    try:
        meta = json.loads((folder / "codec.json").read_text())
        recorded = json.loads((folder / MANIFEST).read_text())["files"]["tokenizer.onnx"]["sha256"]
        return meta.get("fingerprint") == fingerprint and file_sha256(folder / "tokenizer.onnx") == recorded
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _training(source: Path) -> dict:
    """What a checkpoint says of its own training (an exported folder's manifest, when re-exporting one)."""
    if source.is_dir():
        return json.loads((source / MANIFEST).read_text()).get("training", {})
    state = read_checkpoint(source, "codec checkpoint")
    return {"steps": state.get("step"), "train_config": state.get("train_config"),
            "decoder_only": state.get("frozen_tokenizer", False), "last_validation": state.get("history", [])[-1:]}
