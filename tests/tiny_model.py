"""A tiny, untrained model folder made on the fly, for tests that need the whole pipeline but not quality.

It has the real file layout (packed by `pack_model`, float16, manifest with sha256) and is paired with the
shipped codec, so Synthesizer, the CLI and the app load it exactly as they load the default model. `tiny_model`
has no draft model (as every folder packed before SSD); `tiny_model_with_draft` is the same with one; `voice` is
a starter voice prepared by the test module's own `synth`."""

from pathlib import Path

import pytest
import torch

from tldr_core.audio import load_reference_clip
from tldr_core.codec.runtime import DEFAULT_CODEC
from tldr_core.files import file_sha256
from tldr_core.model import Backbone, ModelConfig, Tldr, TldrConfig
from tldr_core.model_store import pack_model
from tldr_core.paths import RESOURCES_DIR
from tldr_core.codec.store import codec_fingerprint

TINY = ModelConfig(dim=64, layers=2, heads=2, kv_heads=1, ffn=128, max_len=1024, tokens_per_phoneme=0.5)
TINY_PATCH_SIZES = (2, 4)
TINY_DRAFT = ModelConfig(dim=32, layers=1, heads=2, kv_heads=1, ffn=64, max_len=1024, tokens_per_phoneme=0.5)


def make_tiny_model(folder: Path, draft: bool = False, codec: Path = DEFAULT_CODEC) -> Path:
    torch.manual_seed(0)
    backbone = Backbone(TINY)
    raw = folder / "raw"
    raw.mkdir(parents=True)
    torch.save({"kind": "backbone", "model_config": TINY.to_dict(), "model": backbone.state_dict(),
                "codec_sha256": codec_fingerprint(codec)}, raw / "backbone.pt")
    adapters = {}
    for k in TINY_PATCH_SIZES:
        tcfg = TldrConfig(patch_size=k, lora_rank=4)
        torch.save({"kind": "tldr", "tldr_config": tcfg.to_dict(), "model": Tldr(backbone, tcfg).state_dict(),
                    "backbone_sha256": file_sha256(raw / "backbone.pt")}, raw / f"tldr_k{k}.pt")
        adapters[k] = raw / f"tldr_k{k}.pt"
    draft_file = None
    if draft:
        draft_file = raw / "draft.pt"
        torch.save({"kind": "draft", "model_config": TINY_DRAFT.to_dict(), "model": Backbone(TINY_DRAFT).state_dict(),
                    "backbone_sha256": file_sha256(raw / "backbone.pt")}, draft_file)
    pack_model(raw / "backbone.pt", adapters, folder / "model", recipe={"note": "untrained, for tests"},
               draft_checkpoint=draft_file)
    return folder / "model"


@pytest.fixture(scope="module")
def voice(synth):
    """A starter voice prepared by the test module's own `synth` fixture (a Synthesizer on one of these models)."""
    return synth.prepare_voice(load_reference_clip(RESOURCES_DIR / "voices" / "flite-rms.wav").samples)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def tiny_model_with_draft(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny_draft"), draft=True)
