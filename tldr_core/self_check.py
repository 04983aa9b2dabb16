"""`TLDRVoice --check [OUT.wav]` (or `python main.py --check`): the whole speech path, without the window.

It checks the shipped files against their manifests, loads the default model, its TLDR adapters and the codec,
prepares a starter voice (reading, trimming, loudness, speaker encoder, codec tokens) and speaks a word token by
token and a sentence patch by patch. Meant for a packaged app (packaging/build_app.sh), where a module or data
file left out of the bundle shows up only when something runs: this runs all of it, in seconds, and says what
failed.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from tldr_core import audio, paths
from tldr_core.errors import TldrError
from tldr_core.synthesis import BASELINE, TLDR, Synthesizer

CHECK_TEXT = "Hello, this is TLDR Voice. It costs $3.50."


def run_check(out: Path | None = None) -> int:
    """0 when every step worked (the speech is written to `out` when given), else 1 with the reason on stderr."""
    started = time.perf_counter()
    try:
        synth = Synthesizer(progress=lambda step: print(f"check: {step}", flush=True))
        for k in synth.patch_sizes:
            synth.load_adapter(k)
        voices = sorted((paths.RESOURCES_DIR / "voices").glob("*.wav"))
        if not voices:
            raise TldrError(f"No starter voices in '{paths.RESOURCES_DIR / 'voices'}'. Reinstall TLDR Voice.")
        voice = synth.prepare_voice(audio.load_reference_clip(voices[0]).samples)
        patch_size = 4 if 4 in synth.patch_sizes else synth.patch_sizes[0]
        if not list(synth.stream("Hello.", voice, BASELINE, 1, seed=0)):
            raise TldrError("The token-by-token baseline made no audio.")
        chunks = list(synth.stream(CHECK_TEXT, voice, TLDR, patch_size, seed=0))
    except TldrError as error:
        print(f"check failed: {error}", file=sys.stderr)
        return 1
    speech = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    if not len(speech) or not np.isfinite(speech).all():
        print("check failed: the model made no usable audio.", file=sys.stderr)
        return 1
    if out is not None:
        audio.write_wav(out, speech, audio.SAMPLE_RATE)
    s = synth.last_stats
    print(f"check: resources in {paths.RESOURCES_DIR}; model on {s.device}, patch sizes {synth.patch_sizes}; "
          f"{s.audio_seconds:.2f} s of speech from '{voices[0].name}', first audio after "
          f"{s.first_audio_seconds * 1000:.0f} ms; {time.perf_counter() - started:.1f} s in all", flush=True)
    return 0
