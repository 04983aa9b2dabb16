"""The default-model recipe runs from nothing to a model the app loads: every stage at toy size (~2 min)."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from tldr_core.paths import REPO_ROOT
from tldr_core.synthesis import Synthesizer

TOY = {"HOURS": "0.03", "CODEC_STEPS": "3", "CODEC_LEVELS": "4 4 4", "BACKBONE_STEPS": "3", "TLDR_STEPS": "2", "PATCH_SIZES": "4",
       "DIM": "64", "LAYERS": "2", "HEADS": "2", "FFN": "128", "BATCH": "2", "THREADS": "1", "EVAL_LIMIT": "0"}


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="the corpus needs espeak-ng")
def test_the_recipe_script_builds_a_loadable_model_and_times_every_stage(tmp_path):
    env = {**os.environ, **TOY, "WORK": str(tmp_path / "work"), "OUT": str(tmp_path / "out"), "PY": sys.executable,
           "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run(["bash", "packaging/train_default_model.sh"], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    for stage in ("corpus", "codec", "backbone", "TLDR k=4", "pack", "bench"):
        assert f"== {stage}" in done.stdout and " took " in done.stdout
    manifest = json.loads((tmp_path / "out" / "default_model" / "manifest.json").read_text())
    assert manifest["recipe"]["backbone_steps"] == 3 and set(manifest["tldr"]) == {"4"}
    synth = Synthesizer(tmp_path / "out" / "default_model", device="cpu", codec_dir=tmp_path / "out" / "codec")
    assert synth.patch_sizes == [4] and synth.backbone.cfg.speech_vocab == 4 * 4 * 4  # the codec's vocabulary
    assert (tmp_path / "work" / "bench.json").is_file()
