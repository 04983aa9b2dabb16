"""Real speech for tests that need voices: espeak-ng clips, and a folder laid out like a built corpus."""

import json
import shutil
import subprocess

import numpy as np
import pytest
import soundfile as sf

from tldr_core.audio import SAMPLE_RATE, to_model_rate, write_wav


def espeak(voice: str, text: str, tmp_path) -> np.ndarray:
    """A real speech clip from espeak-ng, as mono float32 at 16 kHz."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    wav = tmp_path / f"{voice}.wav"  # read back at once, so reusing the name is fine
    subprocess.run(["espeak-ng", "-v", voice, "-w", str(wav), text], check=True)
    samples, sample_rate = sf.read(wav, dtype="float32")
    return to_model_rate(samples, sample_rate)


def write_corpus(root, voices: dict[str, str], sentences: list[str], tmp_path) -> None:
    """Every voice (espeak-ng name -> split) says every sentence: wavs/<voice>-<i>.wav and manifest.jsonl rows with
    the fields the corpus readers use."""
    rows = []
    for voice, split in voices.items():
        for i, sentence in enumerate(sentences):
            path = f"wavs/{voice}-{i}.wav"
            samples = espeak(voice, sentence, tmp_path)
            write_wav(root / path, samples, SAMPLE_RATE)
            rows.append({"id": f"{voice}-{i}", "path": path, "speaker": voice, "source_human": f"espeak-{voice}",
                         "split": split, "text": sentence, "duration": len(samples) / SAMPLE_RATE, "shippable": True})
    (root / "manifest.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
