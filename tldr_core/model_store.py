"""Model files: loading checkpoints, packing a trained model into a folder the app loads, verifying it.

A model folder holds backbone.pt, tldr_k<K>.pt per patch size, optionally draft.pt (the small draft model of
speculative decoding, SSD) and manifest.json (sha256 of every file, the codec the tokens came from, the
training recipe and measured figures). A folder without a draft (every one packed before SSD) still loads; it
just cannot decode speculatively. The weights are stored in float16
to halve the download; they are loaded back as float32. A file whose sha256 differs from the manifest is
reported as damaged before torch ever reads it.
"""

from __future__ import annotations

import json
import pickle
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from tldr_core import paths
from tldr_core.errors import ModelError
from tldr_core.files import MANIFEST, atomic_path, file_entries, file_sha256, verified_manifest, write_text
from tldr_core.model import Backbone, ModelConfig, Tldr, TldrConfig

REINSTALL = "Reinstall TLDR Voice (git checkout resources/) or train a model with `tldr-voice train`."
NO_DRAFT = ("This model has no draft model, so speculative decoding (SSD) is unavailable: train one with "
            "`tldr-voice train draft` and pack it in with `tldr-voice model pack --draft`.")


def read_checkpoint(path: Path, what: str, restore: str = REINSTALL) -> dict:
    """A torch checkpoint as a dict; a ModelError (not a traceback) when it is missing or not ours, ending
    with `restore`: what to do about it."""
    if not Path(path).is_file():
        raise ModelError(f"No {what} at '{path}'. {restore}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, ValueError) as error:
        raise ModelError(f"'{path}' is not a TLDR Voice {what} or is damaged ({error}). {restore}") from None


def load_weights(module: torch.nn.Module, state: dict) -> None:
    """A file's weights into a module: packed files hold float16, every module computes in float32."""
    module.load_state_dict({k: v.float() for k, v in state["model"].items()})


def load_backbone(path: Path, what: str = "backbone") -> Backbone:
    """A backbone (or a draft model, a small one) from a training checkpoint or a packed weights file (both hold
    model_config + model)."""
    state = read_checkpoint(path, what)
    try:
        model = Backbone(ModelConfig(**state["model_config"]))
        load_weights(model, state)
    except (KeyError, TypeError, RuntimeError) as error:
        raise ModelError(f"'{path}' is not a TLDR Voice {what} or is damaged ({error}). {REINSTALL}") from None
    return model.eval()


def load_draft(path: Path, backbone: Backbone) -> Backbone:
    """SSD's draft model: a small Backbone over the same tokens (checked against `backbone`)."""
    draft = load_backbone(path, "draft model")
    if draft.cfg.speech_vocab != backbone.cfg.speech_vocab:
        raise ModelError(f"The draft model '{path}' speaks {draft.cfg.speech_vocab} codes and the backbone "
                         f"{backbone.cfg.speech_vocab}: train the draft on this backbone's tokens.")
    return draft


def load_tldr(path: Path, backbone: Backbone) -> Tldr:
    state = read_checkpoint(path, "TLDR adapter")
    try:
        tldr = Tldr(backbone, TldrConfig(**state["tldr_config"]))
        load_weights(tldr, state)
    except (KeyError, TypeError, RuntimeError) as error:
        raise ModelError(f"'{path}' is not a TLDR adapter for this backbone or is damaged ({error}).") from None
    return tldr.eval()


# ------------------------------------------------------------------------------------------- folders

@dataclass
class ModelFolder:
    """A verified model folder: where its files are and what the manifest says."""

    folder: Path
    manifest: dict

    @property
    def patch_sizes(self) -> list[int]:
        return sorted(int(k) for k in self.manifest["tldr"])

    def backbone_path(self) -> Path:
        return self.folder / self.manifest["backbone"]

    @property
    def has_draft(self) -> bool:
        return bool(self.manifest.get("draft"))

    def draft_path(self) -> Path:
        if not self.has_draft:
            raise ModelError(NO_DRAFT)
        return self.folder / self.manifest["draft"]

    def tldr_path(self, patch_size: int) -> Path:
        name = self.manifest["tldr"].get(str(patch_size))
        if name is None:
            raise ModelError(f"This model has no TLDR adapter for patch size {patch_size} "
                             f"(it has {', '.join(map(str, self.patch_sizes)) or 'none'}).")
        return self.folder / name


def open_model_folder(folder: Path | None = None) -> ModelFolder:
    """Read the manifest and check every file's sha256; a clear ModelError for anything missing or damaged."""
    folder = Path(folder) if folder else paths.DEFAULT_MODEL_DIR
    manifest = verified_manifest(folder, "model", REINSTALL)
    return ModelFolder(folder, manifest)


def _pack_weights(state: dict, source: Path, out: Path, keep: tuple[str, ...], record: str) -> dict:
    """One file of a model folder, and its training record. A training checkpoint is written in float16 without
    its optimiser. A file that is packed already (new adapters joining a shipped backbone) is copied byte for
    byte, so its sha256 stays what the adapters were trained against; its record comes from its folder's
    manifest (`record`: its key there)."""
    if all(v.dtype == torch.float16 for v in state["model"].values() if v.is_floating_point()):
        if Path(source).resolve() != Path(out).resolve():
            with atomic_path(out) as tmp:
                shutil.copyfile(source, tmp)
        manifest = Path(source).parent / MANIFEST
        training = json.loads(manifest.read_text(encoding="utf-8")).get("training", {}) if manifest.is_file() else {}
        return training.get(record, {"train_config": None, "steps": None, "history": []})
    packed = {key: state[key] for key in keep}
    packed["model"] = {k: v.half() if v.is_floating_point() else v for k, v in state["model"].items()}
    with atomic_path(out) as tmp:
        torch.save(packed, tmp)
    return {"train_config": state.get("train_config"), "steps": state.get("step"),
            "history": state.get("history", [])[-1:]}


def _packed_beside(backbone: Path) -> set[Path]:
    """The files packed together with `backbone` when it is a model folder's backbone (the folder's sha256s checked):
    packed files no longer say which backbone file they were trained on, their folder does; so a shipped model
    can be packed again with a new draft."""
    folder = Path(backbone).resolve().parent
    if not (folder / MANIFEST).is_file():
        return set()
    manifest = open_model_folder(folder).manifest
    if manifest.get("backbone") != Path(backbone).name:
        return set()
    return {folder / name for name in manifest["files"]}


def pack_model(backbone_checkpoint: Path, tldr_checkpoints: dict[int, Path], out: Path, recipe: dict,
               draft_checkpoint: Path | None = None) -> dict:
    """Write a model folder from training checkpoints (optimiser state dropped, float16 weights) or packed files;
    `draft_checkpoint`: SSD's draft model, when there is one."""
    out = Path(out)
    backbone_state = read_checkpoint(backbone_checkpoint, "backbone")
    backbone_sha256 = file_sha256(backbone_checkpoint)
    adapter_states = {k: read_checkpoint(path, "TLDR adapter") for k, path in sorted(tldr_checkpoints.items())}
    trained_on = {tldr_checkpoints[k]: ("TLDR adapter", state, "tldr") for k, state in adapter_states.items()}
    if draft_checkpoint is not None:
        trained_on[draft_checkpoint] = ("draft model", read_checkpoint(draft_checkpoint, "draft model"), "draft")
    packed_with = _packed_beside(backbone_checkpoint)
    for path, (what, state, command) in trained_on.items():  # before anything is written
        if Path(path).resolve() in packed_with:
            continue
        if state.get("backbone_sha256") != backbone_sha256:
            raise ModelError(f"The {what} '{path}' was trained on another backbone than "
                             f"'{backbone_checkpoint}' (or its file has changed since): train it again with "
                             f"`tldr-voice train {command} ... --backbone {backbone_checkpoint}`.")
    out.mkdir(parents=True, exist_ok=True)
    manifest: dict = {"format": 1, "backbone": "backbone.pt", "tldr": {}, "files": {},
                      "codec_sha256": backbone_state.get("codec_sha256"), "recipe": recipe, "training": {}}
    manifest["training"]["backbone"] = _pack_weights(backbone_state, backbone_checkpoint, out / "backbone.pt",
                                                     ("kind", "model_config", "codec_sha256"), "backbone")
    for k, state in adapter_states.items():
        name = f"tldr_k{k}.pt"
        manifest["tldr"][str(k)] = name
        manifest["training"][name] = _pack_weights(state, tldr_checkpoints[k], out / name, ("kind", "tldr_config"),
                                                   name)
    names = ["backbone.pt", *manifest["tldr"].values()]
    if draft_checkpoint is not None:
        manifest["draft"] = "draft.pt"
        manifest["training"]["draft.pt"] = _pack_weights(trained_on[draft_checkpoint][1], draft_checkpoint,
                                                         out / "draft.pt", ("kind", "model_config"), "draft.pt")
        names.append("draft.pt")
    manifest["files"] = file_entries(out, names)
    write_text(out / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    return manifest
