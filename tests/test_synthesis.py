"""Streaming synthesis, `speak` and `bench` on a tiny untrained model: the plumbing, not the voice quality
(which the README measures on the shipped model)."""

import json
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch

from faults import raise_cuda_out_of_memory, read_only
from tldr_core import audio
from tldr_core.cli import main
from tldr_core.errors import ModelError, TextInputError
from tldr_core.files import file_sha256
from tldr_core.model import Tldr, TldrConfig
from tldr_core.model_store import load_backbone, pack_model
from tldr_core.paths import RESOURCES_DIR
from tldr_core.synthesis import BASELINE, GPU_FULL, TLDR, Synthesizer
from tldr_core.voices import VoiceLibrary

VOICE = RESOURCES_DIR / "voices" / "flite-rms.wav"


@pytest.fixture(scope="module")
def synth(tiny_model):
    return Synthesizer(tiny_model, device="cpu")


def test_a_prepared_voice_has_a_whole_patch_prompt(voice):
    assert len(voice.prompt_tokens) in (24, 48, 72)
    assert voice.embedding.shape == (256,)


def test_a_saved_voice_is_prepared_once_per_codec_with_the_embedding_it_was_saved_with(tiny_model):
    """The library embedded the clip when the voice was saved: preparing it reuses that embedding (the codec's own
    speaker encoder is never loaded), keeps the prompt in the library for this codec (with the clip's frames and
    tokens, which the shipped codec's voice memory reads), and redoes it for another or when that file is damaged."""
    library = VoiceLibrary(device="cpu")
    saved = library.create_from_file("Rms", VOICE)
    fresh = Synthesizer(tiny_model, device="cpu")
    prompt = fresh.saved_voice_prompt(saved, library)
    assert "speaker" not in vars(fresh.codec)  # cached_property: set only when loaded
    np.testing.assert_array_equal(prompt.embedding, saved.embedding())
    kept = library.get(saved.id)
    assert kept.codec == fresh.codec_sha256 and kept.prompt_tokens == prompt.prompt_tokens.tolist()

    made, make = [], fresh.prepare_voice
    fresh.prepare_voice = lambda *args: made.append(args) or make(*args)  # from here on, making one is noticed
    again = fresh.saved_voice_prompt(kept, library)
    assert made == [] and np.array_equal(again.prompt_tokens, prompt.prompt_tokens)
    assert fresh.codec.reads_reference and all(np.array_equal(a, b) for a, b in zip(again.reference, prompt.reference))
    (kept.folder / "codec_reference.npz").write_bytes(b"damaged")
    fresh.saved_voice_prompt(library.get(saved.id), library)
    assert len(made) == 1
    library.save_prompt(saved.id, kept.prompt_tokens, kept.codec_stats, "another codec")
    fresh.saved_voice_prompt(library.get(saved.id), library)
    assert len(made) == 2


def test_audio_streams_in_chunks_and_every_sentence_is_said(synth, voice):
    chunks = list(synth.stream("First sentence here. And a second one!", voice, TLDR, 4, seed=0))
    stats = synth.last_stats
    assert len(chunks) > 3 and all(c.dtype == np.float32 for c in chunks)
    assert stats.sentences == 2 and 0 < stats.first_audio_seconds < stats.wall_seconds
    assert stats.audio_seconds == pytest.approx(sum(map(len, chunks)) / audio.SAMPLE_RATE)
    assert np.isfinite(np.concatenate(chunks)).all()


def test_the_codec_thread_renders_every_patch_in_order(synth, voice):
    """The audio is exactly what pushing each sentence's patches to the codec one after another gives."""
    streamed = np.concatenate(list(synth.stream("One sentence. Then another.", voice, TLDR, 4, seed=1)))
    codec = synth.codec.stream(voice.timbre)
    expected = []
    for sentence in synth.last_stats.per_sentence:
        tokens = np.array(sentence.history)
        expected += [codec.push(tokens[i:i + 4]) for i in range(0, len(tokens), 4)]
    np.testing.assert_array_equal(streamed, np.concatenate(expected + [codec.finish()]))


def test_the_same_seed_gives_the_same_audio(synth, voice):
    a = np.concatenate(list(synth.stream("Say it twice.", voice, TLDR, 2, seed=5)))
    b = np.concatenate(list(synth.stream("Say it twice.", voice, TLDR, 2, seed=5)))
    np.testing.assert_array_equal(a, b)


def test_cancel_stops_within_one_patch(synth, voice):
    produced = []
    chunks = synth.stream("A sentence long enough to be stopped in the middle of it.", voice, TLDR, 4, seed=0,
                          cancel=lambda: len(produced) >= 2)
    for chunk in chunks:
        produced.append(chunk)
    assert synth.last_stats.cancelled and len(produced) == 2


@pytest.mark.parametrize("mode, patch_size", [(TLDR, 4), (BASELINE, 1)])
def test_cuda_out_of_memory_moves_speaking_to_the_cpu_with_a_notice(tiny_model, voice, mode, patch_size):
    """The GPU fills up in the middle of the first sentence, after its first sound: the models move to the CPU,
    the sentence goes on there from where its sound had got to (nothing is said twice: one codec token is
    640 samples), and the notice says what happened. (Here the models are on the CPU already; on a GPU the same
    test sees them move.)"""
    synth = Synthesizer(tiny_model, device="auto")
    text = "One sentence here. And another one."
    hook = raise_cuda_out_of_memory({3})
    try:
        audio_out = np.concatenate(list(synth.stream(text, voice, mode, patch_size, seed=3)))
    finally:
        hook.remove()
    stats = synth.last_stats
    assert stats.notices == [GPU_FULL] and stats.device == "cpu" and synth.device.type == "cpu"
    assert next(synth.backbone.parameters()).device.type == "cpu"
    assert stats.sentences == 2 and len(audio_out) == stats.tokens * 640 and np.isfinite(audio_out).all()
    list(synth.stream(text, voice, mode, patch_size, seed=3))
    assert synth.last_stats.notices == []  # said once, when it happened


def test_speak_prints_the_notice_when_the_gpu_runs_out_of_memory(tiny_model, tmp_path, capsys):
    hook = raise_cuda_out_of_memory({2})
    try:
        assert main(["speak", "Hello world.", "--voice", str(VOICE), "--out", str(tmp_path / "out.wav"),
                     "--model", str(tiny_model), "--device", "auto"]) == 0
    finally:
        hook.remove()
    printed = capsys.readouterr().out
    assert f"notice: {GPU_FULL}" in printed and "on cpu" in printed


def test_running_out_of_memory_again_after_moving_is_a_clear_error_not_a_loop(synth, voice):
    hook = raise_cuda_out_of_memory(set(range(1, 100)))
    try:
        with pytest.raises(ModelError, match="ran out of memory even on the CPU.*shorter text"):
            list(synth.stream("Hello there.", voice, TLDR, 4, seed=0))
    finally:
        hook.remove()


def test_tldr_needs_fewer_backbone_steps_and_less_speech_cache_than_the_baseline(synth, voice):
    text = "The same words in both modes."
    list(synth.stream(text, voice, BASELINE, seed=0))
    base = synth.last_stats
    list(synth.stream(text, voice, TLDR, 4, seed=0))
    tldr = synth.last_stats
    assert tldr.backbone_steps <= -(-(tldr.tokens + 1) // 4) + 1  # one per patch of 4 (tokens, STOP), + prefill
    assert base.backbone_steps >= base.tokens                      # one per token
    assert tldr.kv_speech_bytes < base.kv_speech_bytes / 3


def test_empty_text_and_a_missing_patch_size_are_clear_errors(synth, voice):
    with pytest.raises(TextInputError):
        list(synth.stream("   ", voice))
    with pytest.raises(ModelError, match="patch size 8"):
        list(synth.stream("Hello.", voice, TLDR, 8))


def test_a_damaged_model_file_is_reported_before_loading(tiny_model, tmp_path):
    copy = shutil.copytree(tiny_model, tmp_path / "model")
    data = bytearray((copy / "backbone.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / "backbone.pt").write_bytes(bytes(data))
    with pytest.raises(ModelError, match="damaged"):
        Synthesizer(copy, device="cpu")
    with pytest.raises(ModelError, match="missing"):
        Synthesizer(tmp_path / "nowhere", device="cpu")


def test_a_model_paired_with_another_codec_is_refused(tiny_model, tmp_path):
    copy = shutil.copytree(tiny_model, tmp_path / "model")
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["codec_sha256"] = "0" * 64
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match="codec"):
        Synthesizer(copy, device="cpu")


def test_an_adapter_is_packed_only_with_the_backbone_it_was_trained_on(tiny_model, tmp_path):
    raw = tiny_model.parent / "raw"
    other = tmp_path / "other_backbone.pt"
    shutil.copy(raw / "backbone.pt", other)
    with open(other, "ab") as f:
        f.write(b"\0")  # the same weights, but not the file the adapters were trained on
    with pytest.raises(ModelError, match="another backbone"):
        pack_model(other, {2: raw / "tldr_k2.pt"}, tmp_path / "model", recipe={})
    assert not (tmp_path / "model").exists()


def test_speak_writes_a_wav_and_reports_the_figures(tiny_model, tmp_path, capsys):
    out = tmp_path / "out.wav"
    assert main(["speak", "Hello world.", "--voice", str(VOICE), "--out", str(out), "--model", str(tiny_model),
                 "--device", "cpu", "--patch-size", "2"]) == 0
    printed = capsys.readouterr().out
    for figure in ("time to first audio", "real-time factor", "backbone steps", "KV cache"):
        assert figure in printed
    samples, rate = sf.read(out)
    assert rate == audio.SAMPLE_RATE and len(samples) > 0


def test_speak_into_a_read_only_folder_is_one_clear_line_and_no_file(tiny_model, tmp_path, capsys):
    (tmp_path / "out").mkdir()
    with read_only(tmp_path / "out"):
        assert main(["speak", "Hello.", "--voice", str(VOICE), "--out", str(tmp_path / "out" / "o.wav"),
                     "--model", str(tiny_model), "--device", "cpu"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and "o.wav' could not be saved" in error and error.count("\n") == 1
    assert list((tmp_path / "out").iterdir()) == []


def test_speak_with_a_bad_voice_file_is_one_clear_line(tiny_model, tmp_path, capsys):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio at all")
    assert main(["speak", "Hello.", "--voice", str(bad), "--out", str(tmp_path / "o.wav"),
                 "--model", str(tiny_model)]) == 2
    assert capsys.readouterr().err.startswith("error: ")


def test_bench_compares_every_mode_in_one_run(tiny_model, tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "--model", str(tiny_model), "--device", "cpu", "--rounds", "2", "--json", str(out)]) == 0
    results = json.loads(out.read_text())["results"]
    assert [(r["mode"], r["patch_size"]) for r in results] == [("baseline", 1), ("tldr", 2), ("tldr", 4)]
    assert all(r["utterances"] == 2 * 3 * 2 for r in results)  # rounds x texts x voices
    assert results[0]["speedup"] == 1.0
    assert results[2]["kv_speech_saving"] > 0.6
    assert "TLDR k=4" in capsys.readouterr().out


def test_packing_a_packed_backbone_with_new_adapters_keeps_its_file_and_training_record(tiny_model, tmp_path):
    """New adapters join a shipped backbone: its file stays byte for byte (the adapters were trained against its
    sha256) and the new folder's manifest keeps how it was trained."""
    backbone = tiny_model / "backbone.pt"
    torch.manual_seed(1)
    tcfg = TldrConfig(patch_size=4, lora_rank=4)
    adapter = {"kind": "tldr", "tldr_config": tcfg.to_dict(), "backbone_sha256": file_sha256(backbone),
               "model": Tldr(load_backbone(backbone), tcfg).state_dict(), "step": 7, "history": [{"step": 7}]}
    torch.save(adapter, tmp_path / "k4.pt")
    manifest = pack_model(backbone, {4: tmp_path / "k4.pt"}, tmp_path / "model", recipe={})
    assert file_sha256(tmp_path / "model" / "backbone.pt") == file_sha256(backbone)
    shipped = json.loads((tiny_model / "manifest.json").read_text())
    assert manifest["training"]["backbone"] == shipped["training"]["backbone"]
    assert manifest["training"]["tldr_k4.pt"]["steps"] == 7
    assert Synthesizer(tmp_path / "model", device="cpu").patch_sizes == [4]


def test_a_codec_whose_decoder_reads_the_voice_sample_gets_it_from_prepared_and_saved_voices(tmp_path):
    """With a voice-memory codec a prepared voice carries its clip's frames and tokens to the decoder, and so does a
    saved voice (made again from its clip: the library keeps no frames); both speak. Without the clip the decoder
    cannot run, so this is what carries it."""
    from tiny_model import make_tiny_model
    from tldr_core.codec.model import Codec, CodecConfig
    from tldr_core.synthesis import VoicePrompt
    from tldr_core.training.codec_export import export_codec

    torch.manual_seed(0)
    codec = Codec(CodecConfig(channels=32, frame_channels=16, encoder_blocks=1, decoder_blocks=2, frame_blocks=1,
                              memory_dim=16))
    torch.nn.init.normal_(codec.memory.out.weight, std=0.1)  # a memory that has learnt something
    torch.save({"codec_config": codec.cfg.to_dict(), "model": codec.state_dict()}, tmp_path / "codec.pt")
    export_codec(tmp_path / "codec.pt", tmp_path / "codec")
    synth = Synthesizer(make_tiny_model(tmp_path, codec=tmp_path / "codec"), device="cpu",
                        codec_dir=tmp_path / "codec")
    assert synth.codec.reads_reference

    voice = synth.prepare_voice(audio.load_reference_clip(VOICE).samples)
    frames, tokens = voice.reference
    assert len(tokens) == len(frames) // 4 and len(tokens) >= len(voice.prompt_tokens)
    spoken = np.concatenate(list(synth.stream("Hello there.", voice, TLDR, 4, seed=0)))
    assert len(spoken) and np.isfinite(spoken).all()
    with pytest.raises(ModelError, match="reads the voice sample itself"):
        list(synth.stream("Hello there.", VoicePrompt(voice.embedding, voice.prompt_tokens, voice.stats), TLDR, 4))

    library = VoiceLibrary(device="cpu")
    saved = library.create_from_file("Rms", VOICE)
    synth.saved_voice_prompt(saved, library)
    prompt = synth.saved_voice_prompt(library.get(saved.id), library)  # kept in the library, still made again
    assert prompt.reference is not None
    assert len(list(synth.stream("Hello there.", prompt, TLDR, 4, seed=0)))
