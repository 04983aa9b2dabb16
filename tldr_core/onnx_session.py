"""Opening ONNX models with onnxruntime: one place that picks CUDA or CPU and explains failures.

Every ONNX model of the app (speaker encoder, codec) is opened here, so they all choose the device the same
way, fall back to the CPU with a notice instead of crashing, and report a missing or damaged file the same way.
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import numpy as np
import onnxruntime as ort

from tldr_core.errors import ModelError

DEVICES = ("auto", "cpu", "cuda")


def _both_runtimes_installed() -> bool:
    """onnxruntime and onnxruntime-gpu write the same folder; with both installed, either may break silently."""
    found = set()
    for name in ("onnxruntime", "onnxruntime-gpu"):
        try:
            metadata.version(name)
            found.add(name)
        except metadata.PackageNotFoundError:
            pass
    return len(found) == 2


def open_session(model_path: Path, device: str, what: str, restore: str, threads: int = 1,
                 initializers: dict[str, np.ndarray] | None = None) -> tuple[ort.InferenceSession, list[str]]:
    """(session, notices) for `model_path`; `what` names the model and `restore` says how to get it back.
    `initializers`: weights that replace the graph's own of the same names (a decoder tuned to a voice)."""
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, not {device!r}")
    notices: list[str] = []
    if _both_runtimes_installed():
        notices.append("Both onnxruntime and onnxruntime-gpu are installed; they overwrite each other. Uninstall "
                       "both and reinstall one: `pip install -e .[cpu]` or `pip install -e .[gpu]`.")
    providers = ["CPUExecutionProvider"]
    if device != "cpu" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    elif device == "cuda":
        notices.append(f"CUDA is not available to onnxruntime (install the [gpu] extra and a CUDA driver to use "
                       f"it); the {what} runs on the CPU instead.")

    model_path = Path(model_path)
    if not model_path.is_file():
        raise ModelError(f"The {what} model {model_path} is missing. {restore}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    values = [(name, ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(w, dtype=np.float32)))
              for name, w in (initializers or {}).items()]
    for name, value in values:
        options.add_initializer(name, value)
    try:
        session = ort.InferenceSession(str(model_path), options, providers=providers)
    except Exception as error:  # onnxruntime raises several unrelated types for unreadable models
        raise ModelError(f"The {what} model {model_path} is damaged ({error}). {restore}") from error
    session.replaced_weights = values  # onnxruntime reads them from these arrays: they live as the session does
    if providers[0] == "CUDAExecutionProvider" and "CUDAExecutionProvider" not in session.get_providers():
        notices.append(f"onnxruntime could not start CUDA (missing CUDA or cuDNN libraries?); the {what} runs on "
                       "the CPU instead.")
    return session, notices
