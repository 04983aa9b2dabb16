"""Where a codec's weights come from, and the fingerprint that ties a speech model to its tokens.

A codec lives either as a training checkpoint (.pt: `tldr-voice train codec`) or as an exported folder
(tokenizer.onnx, decoder.onnx, codec.json, manifest.json: `tldr-voice codec export`, what the app runs).
`load_codec` gives the torch network from either, so a checkpoint can be judged before export and the shipped
codec's decoder can be trained further on its own tokens. `codec_fingerprint` is the sha256 of what the tokens
mean: a speech model records it when it is trained and refuses any other codec at run time. It is taken from the
tokenizer's weights and settings (`tokenizer_fingerprint`), not from a file's bytes: a checkpoint and its export,
or two exports of one tokenizer by different torch versions (which number the graph's anonymous weights
differently), share it, so a decoder can be retrained and re-exported under a speech model that stays valid.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from tldr_core.codec.model import Codec, CodecConfig
from tldr_core.codec.whisper_weights import whisper_weights_file
from tldr_core.errors import ModelError
from tldr_core.files import file_sha256, verified_manifest
from tldr_core.model_store import read_checkpoint


def codec_fingerprint(codec_path: Path) -> str:
    """sha256 of what the speech tokens mean, for a checkpoint or an exported folder: its `tokenizer_fingerprint`
    (an export keeps it in codec.json; a folder exported before it did is known by its tokenizer.onnx's sha256)."""
    path = Path(codec_path)
    if not path.is_dir():
        return tokenizer_fingerprint(load_codec(path))
    meta = path / "codec.json"
    kept = json.loads(meta.read_text()).get("fingerprint") if meta.is_file() else None
    return kept or file_sha256(path / "tokenizer.onnx")


def tokenizer_fingerprint(codec: Codec) -> str:
    """sha256 of what decides a codec's tokens: the tokenizer's weights, its source, levels and frame scales, and
    for a Whisper codec the encoder's weights file."""
    cfg = codec.cfg
    settings = {"source": cfg.source, "levels": list(cfg.levels), "frames_per_token": cfg.frames_per_token,
                "scale": cfg.scale}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for name, tensor in sorted(codec.state_dict().items()):
        if name.startswith("enc_"):
            digest.update(name.encode())
            digest.update(tensor.detach().float().contiguous().numpy().tobytes())
    if cfg.source == "whisper":
        digest.update(file_sha256(whisper_weights_file()).encode())
    return digest.hexdigest()


def load_codec(path: Path) -> Codec:
    """A trained Codec, in eval mode, from a training checkpoint (.pt) or an exported folder (so the shipped
    codec's decoder can be retrained on its tokens); a clear error for a missing or foreign file."""
    path = Path(path)
    if path.is_dir():
        return _codec_from_export(path)
    state = read_checkpoint(path, "codec checkpoint", "Train one with `tldr-voice train codec`.")
    try:
        model = Codec(CodecConfig.from_dict(state["codec_config"]))
        model.load_state_dict(state["model"])
    except (KeyError, RuntimeError, TypeError) as error:
        raise ModelError(f"'{path}' is not a TLDR Voice codec checkpoint or is damaged ({error}).") from None
    return model.eval()


def _codec_from_export(folder: Path) -> Codec:
    """The Codec whose weights an exported folder holds: its config from codec.json, its weights from the two
    ONNX graphs' initializers (named `codec.<parameter>`). The training-only phone head is not exported and
    comes back untrained, which a decoder-only run never uses."""
    try:
        import onnx
        from google.protobuf.message import DecodeError
        from onnx import numpy_helper
    except ImportError:
        raise ModelError("Reading an exported codec's weights needs the onnx package: "
                         "pip install -e '.[export]'.") from None
    restore = "Export a codec checkpoint with `tldr-voice codec export`, or pass the checkpoint itself."
    verified_manifest(folder, "codec", restore)
    try:
        meta = json.loads((folder / "codec.json").read_text())
        model = Codec(CodecConfig.from_dict(meta["config"]))
        weights = {}
        for graph in ("tokenizer.onnx", "decoder.onnx"):
            for tensor in onnx.load(str(folder / graph)).graph.initializer:
                if tensor.name.startswith("codec."):
                    weights[tensor.name.removeprefix("codec.")] = torch.from_numpy(numpy_helper.to_array(tensor).copy())
        missing, unexpected = model.load_state_dict(weights, strict=False)
    except (OSError, KeyError, ValueError, TypeError, RuntimeError, DecodeError) as error:
        raise ModelError(f"'{folder}' does not hold an exported TLDR Voice codec ({error}). {restore}") from None
    lost = [name for name in missing if not name.startswith("ctc_head.")]
    if lost or unexpected:
        raise ModelError(f"The codec in '{folder}' does not match its codec.json (missing {lost[:3]}, unexpected "
                         f"{unexpected[:3]}). {restore}")
    return model.eval()
