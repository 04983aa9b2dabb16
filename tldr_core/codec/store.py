"""Where a codec's weights come from, and the fingerprint that ties a speech model to its tokens.

A codec lives either as a training checkpoint (.pt: `tldr-voice train codec`) or as an exported folder
(tokenizer.onnx, decoder.onnx, codec.json, manifest.json: `tldr-voice codec export`, what the app runs).
`load_codec` gives the torch network from either, so a checkpoint can be judged before export and the shipped
codec's decoder can be trained further on its own tokens. `codec_fingerprint` is the sha256 of what the tokens
mean: a speech model records it when it is trained and refuses any other codec at run time.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tldr_core.codec.model import Codec, CodecConfig
from tldr_core.errors import ModelError
from tldr_core.files import file_sha256, verified_manifest
from tldr_core.model_store import read_checkpoint


def codec_fingerprint(codec_path: Path) -> str:
    """sha256 of what the speech tokens mean: an exported codec's tokenizer.onnx (its decoder may be re-exported
    or retrained without retraining the LM), or a whole training checkpoint."""
    path = Path(codec_path)
    return file_sha256(path / "tokenizer.onnx" if path.is_dir() else path)


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
