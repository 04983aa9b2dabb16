"""SSD from training to speech: the draft model learns the backbone's distributions through the one Trainer and
resumes, is packed beside the backbone with its sha256 (folders without one still load), and `speak`, `bench`
and the Synthesizer decode with it, the audio streaming and Stop working between verification steps."""

import json

import numpy as np
import pytest
import torch

from test_training import CFG as TOY, interrupt_at_step_13, items
from tiny_model import TINY_DRAFT
from tldr_core import audio
from tldr_core.cli import main
from tldr_core.decoding import PATCH_SPECULATION, SSD_RULE, Sampling, Speculation
from tldr_core.errors import CorpusError, ModelError
from tldr_core.model import Backbone, ModelConfig
from tldr_core.model_store import open_model_folder, pack_model, read_checkpoint
from tldr_core.files import file_sha256
from tldr_core.paths import RESOURCES_DIR
from tldr_core.synthesis import BASELINE, SSD, TLDR, TLDR_SSD, Synthesizer
from tldr_core.training import draft as draft_recipe
from tldr_core.training import lm_data
from tldr_core.training.lm import TrainConfig, run
from tldr_core.training.objectives import BackboneObjective
from tldr_core.training.trainer import BEST, CHECKPOINT, ONE_CPU

VOICE = RESOURCES_DIR / "voices" / "flite-rms.wav"
SMALL = ModelConfig(dim=32, layers=1, heads=2, kv_heads=1, ffn=64)


@pytest.fixture(scope="module")
def backbone_file(tmp_path_factory):
    """A toy backbone trained 40 steps on speech that follows the text (so it has something to teach)."""
    folder = tmp_path_factory.mktemp("backbone")
    torch.set_num_threads(1)  # as `train` does (TrainConfig.threads)
    torch.manual_seed(0)
    bb = Backbone(TOY)
    cfg = TrainConfig(steps=40, batch=4, max_prompt=24, lr=3e-3, warmup=5, validate_every=40, threads=1)
    run(BackboneObjective(bb), bb, {"kind": "backbone", "model_config": TOY.to_dict(), "codec_sha256": "toy"},
        items(), items(8, seed=1), cfg, folder, ONE_CPU, None, "backbone")
    return folder / CHECKPOINT


@pytest.fixture
def toy_corpus(monkeypatch):
    """`train draft` reads the toy utterances instead of a tokenized corpus (tokens stamped with codec "toy")."""
    def tokenize(corpus, codec, folder, splits, shippable_only, jobs=2):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "codec.sha256").write_text(f"{codec or 'toy'}\n")

    monkeypatch.setattr(lm_data, "tokenize_corpus", tokenize)
    monkeypatch.setattr(lm_data, "load_utterances",
                        lambda corpus, folder, split, shippable: items() if split == "train" else items(8, seed=1))


def train(backbone_file, out, steps=30, validate_every=10, **kwargs):
    cfg = TrainConfig(steps=steps, batch=4, max_prompt=24, lr=3e-3, warmup=5, validate_every=validate_every, threads=1)
    return draft_recipe.train_draft(out, backbone_file, out, cfg, SMALL, device="cpu", **kwargs)


def test_the_draft_learns_the_backbones_distributions_and_leaves_the_backbone_untouched(backbone_file, toy_corpus,
                                                                                         tmp_path):
    before = read_checkpoint(backbone_file, "backbone")["model"]
    history = train(backbone_file, tmp_path / "draft", steps=40, validate_every=5)
    first, last = history[0], history[-1]
    assert last["validation_kl"] < first["validation_kl"] - 0.3
    assert last["validation_acceptance"] > first["validation_acceptance"] + 0.1  # more drafted tokens would be kept
    state = read_checkpoint(tmp_path / "draft" / CHECKPOINT, "draft")
    assert state["kind"] == "draft" and state["model_config"]["dim"] == 32
    assert state["model_config"]["speech_vocab"] == TOY.speech_vocab  # shared with the backbone, not from SMALL
    assert (tmp_path / "draft" / BEST).is_file()
    after = read_checkpoint(backbone_file, "backbone")["model"]
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_the_data_term_alone_is_cross_entropy_on_the_data(backbone_file, toy_corpus, tmp_path):
    history = train(backbone_file, tmp_path / "draft", steps=10, distill=0.0, data=1.0)
    assert history[-1]["validation"] == pytest.approx(history[-1]["validation_ce"])


def test_an_interrupted_draft_run_resumes_into_the_same_weights(backbone_file, toy_corpus, tmp_path, monkeypatch):
    train(backbone_file, tmp_path / "straight", steps=20)
    real_sample = interrupt_at_step_13(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        train(backbone_file, tmp_path / "resumed", steps=20)
    monkeypatch.setattr(lm_data, "sample_batch", real_sample)
    with pytest.raises(CorpusError, match="--resume"):
        train(backbone_file, tmp_path / "resumed", steps=20)
    train(backbone_file, tmp_path / "resumed", steps=20, resume=True)
    straight, resumed = (read_checkpoint(tmp_path / run / CHECKPOINT, "draft")["model"]
                         for run in ("straight", "resumed"))
    for name, weights in straight.items():
        torch.testing.assert_close(resumed[name], weights, atol=1e-5, rtol=1e-4, msg=name)


def test_a_draft_trains_only_on_the_tokens_of_its_backbones_codec(backbone_file, toy_corpus, tmp_path):
    with pytest.raises(CorpusError, match="another codec"):
        train(backbone_file, tmp_path / "draft", steps=1, codec=tmp_path / "other-codec")


def test_a_draft_is_packed_with_its_sha256_beside_the_backbone_it_learnt_from(tiny_model_with_draft, tiny_model,
                                                                              tmp_path):
    folder = open_model_folder(tiny_model_with_draft)
    assert folder.has_draft and folder.manifest["files"]["draft.pt"]["sha256"]
    assert not open_model_folder(tiny_model).has_draft  # a folder from before SSD still loads
    raw = tiny_model_with_draft.parent / "raw"
    with pytest.raises(ModelError, match="draft model .* another backbone"):
        pack_model(tiny_model / "backbone.pt", {}, tmp_path / "model", {}, draft_checkpoint=raw / "draft.pt")
    with open(tiny_model_with_draft / "draft.pt", "r+b") as f:
        f.seek(-1, 2)
        last = f.read(1)
        f.seek(-1, 2)
        f.write(bytes([last[0] ^ 1]))
    try:
        with pytest.raises(ModelError, match="damaged"):
            open_model_folder(tiny_model_with_draft)
    finally:
        with open(tiny_model_with_draft / "draft.pt", "r+b") as f:
            f.seek(-1, 2)
            f.write(last)


def test_a_shipped_model_is_packed_again_with_a_new_draft(tiny_model, tmp_path):
    """Packed adapters no longer record their backbone's file; their folder vouches for them, so a new draft
    trained on the packed backbone joins them (the files copied byte for byte), and a foreign adapter still does not."""
    draft = tmp_path / "draft.pt"
    torch.save({"kind": "draft", "model_config": TINY_DRAFT.to_dict(), "model": Backbone(TINY_DRAFT).state_dict(),
                "backbone_sha256": file_sha256(tiny_model / "backbone.pt")}, draft)
    manifest = pack_model(tiny_model / "backbone.pt", {4: tiny_model / "tldr_k4.pt"}, tmp_path / "again", {},
                          draft_checkpoint=draft)
    assert manifest["draft"] == "draft.pt" and open_model_folder(tmp_path / "again").has_draft
    assert (tmp_path / "again" / "tldr_k4.pt").read_bytes() == (tiny_model / "tldr_k4.pt").read_bytes()
    with pytest.raises(ModelError, match="TLDR adapter .* another backbone"):
        pack_model(tiny_model / "backbone.pt", {4: tiny_model.parent / "raw" / "tldr_k4.pt"}, tmp_path / "no", {})


@pytest.fixture(scope="module")
def synth(tiny_model_with_draft):
    return Synthesizer(tiny_model_with_draft, device="cpu")


def test_ssd_streams_what_token_by_token_says_at_temperature_zero(synth, voice):
    """Greedy SSD keeps exactly the baseline's tokens, handed to the codec as they are accepted."""
    text, greedy = "Two sentences here. Then a second one.", Sampling(temperature=0)
    baseline = np.concatenate(list(synth.stream(text, voice, BASELINE, sampling=greedy, seed=0)))
    tokens = [s.history for s in synth.last_stats.per_sentence]
    chunks = list(synth.stream(text, voice, SSD, sampling=greedy, seed=0, speculation=Speculation(gamma=3)))
    stats = synth.last_stats
    assert [s.history for s in stats.per_sentence] == tokens and len(chunks) > 3
    np.testing.assert_allclose(np.concatenate(chunks), baseline, atol=1e-4)
    assert stats.mode == SSD and stats.patch_size == 1 and stats.speculation.gamma == 3
    assert 0 <= stats.accepted <= stats.drafted and stats.backbone_steps <= stats.tokens + stats.sentences
    assert stats.kv_bytes > 0


def test_tldr_ssd_streams_what_tldr_says_at_temperature_zero(synth, voice):
    """Greedy TLDR + SSD keeps exactly plain TLDR's tokens (the draft proposing whole patches), patch by patch."""
    text, greedy = "Two sentences here. Then a second one.", Sampling(temperature=0)
    plain = np.concatenate(list(synth.stream(text, voice, TLDR, 4, sampling=greedy, seed=0)))
    tokens = [s.history for s in synth.last_stats.per_sentence]
    chunks = list(synth.stream(text, voice, TLDR_SSD, 4, sampling=greedy, seed=0,
                               speculation=Speculation(gamma=2)))
    stats = synth.last_stats
    assert [s.history for s in stats.per_sentence] == tokens and len(chunks) > 3
    np.testing.assert_allclose(np.concatenate(chunks), plain, atol=1e-4)
    assert stats.mode == TLDR_SSD and stats.patch_size == 4 and stats.speculation.gamma == 2
    assert 0 <= stats.accepted <= stats.drafted and stats.drafted > 0


def test_tldr_ssd_speculates_by_the_papers_rule_unless_told(synth, voice):
    list(synth.stream("Hello there.", voice, TLDR_SSD, 4, seed=0))
    assert synth.last_stats.speculation == PATCH_SPECULATION and PATCH_SPECULATION.acceptance == SSD_RULE


@pytest.mark.parametrize("mode", [SSD, TLDR_SSD])
def test_cancel_stops_speculation_between_verification_steps(synth, voice, mode):
    produced = []
    chunks = synth.stream("A sentence long enough to be stopped in the middle of it.", voice, mode, seed=0,
                          cancel=lambda: len(produced) >= 2)
    for chunk in chunks:
        produced.append(chunk)
    assert synth.last_stats.cancelled and len(produced) == 2


def test_ssd_on_a_model_without_a_draft_says_how_to_get_one(tiny_model, tmp_path, capsys):
    synth = Synthesizer(tiny_model, device="cpu")
    assert not synth.has_draft
    with pytest.raises(ModelError, match="no draft model.*train draft"):
        list(synth.stream("Hello.", synth.prepare_voice(audio.load_reference_clip(VOICE).samples), SSD))
    for mode in ("ssd", "tldr-ssd"):
        assert main(["speak", "Hello.", "--voice", str(VOICE), "--out", str(tmp_path / "a.wav"), "--model",
                     str(tiny_model), "--device", "cpu", "--mode", mode]) == 2
        assert "no draft model" in capsys.readouterr().err


def test_speak_with_ssd_reports_what_was_kept(tiny_model_with_draft, tmp_path, capsys):
    out = tmp_path / "ssd.wav"
    assert main(["speak", "Hello world.", "--voice", str(VOICE), "--out", str(out), "--model",
                 str(tiny_model_with_draft), "--device", "cpu", "--mode", "ssd", "--gamma", "3",
                 "--acceptance", "ssd", "--tolerance", "0.2"]) == 0
    printed = capsys.readouterr().out
    assert "speculative (SSD), gamma 3, the SSD paper's acceptance, tolerance 0.2" in printed
    assert "drafted tokens kept:" in printed and "tokens per backbone pass" in printed and out.is_file()


def test_speak_with_tldr_ssd_says_how_it_speculated(tiny_model_with_draft, tmp_path, capsys):
    out = tmp_path / "tldr_ssd.wav"
    assert main(["speak", "Hello world.", "--voice", str(VOICE), "--out", str(out), "--model",
                 str(tiny_model_with_draft), "--device", "cpu", "--mode", "tldr-ssd", "--patch-gamma", "3"]) == 0
    printed = capsys.readouterr().out
    assert "TLDR, patch size 4, verified speculatively: gamma 3 patches, the SSD paper's acceptance, tolerance 0.5" \
        in printed and "drafted tokens kept:" in printed and out.is_file()


def test_bench_puts_ssd_beside_token_level_in_the_same_run(tiny_model_with_draft, tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "--model", str(tiny_model_with_draft), "--device", "cpu", "--rounds", "1",
                 "--patch-sizes", "2", "4", "--gammas", "2", "--tolerances", "0.1", "--patch-gammas", "1",
                 "--patch-tolerances", "0.5", "--json", str(out)]) == 0
    results = json.loads(out.read_text())["results"]
    assert [r["name"] for r in results] == ["baseline", "TLDR k=2", "TLDR k=4", "SSD g=2", "SSD g=2 b=0.1",
                                            "k=4+SSD g=1", "k=4+SSD g=1 b=0.5"]
    base, _, _, exact, loose, *patches = results
    assert [(r["mode"], r["patch_size"], r["gamma"]) for r in patches] == [("tldr-ssd", 4, 1)] * 2
    assert "k=4+SSD g=1 b=0.5: " in capsys.readouterr().out
    assert (exact["gamma"], exact["acceptance"], exact["tolerance"]) == (2, "exact", None)
    assert (loose["acceptance"], loose["tolerance"]) == ("ssd", 0.1)
    assert all(0 <= r["acceptance_rate"] <= 1 and r["tokens_per_step"] <= 3 for r in (exact, loose))
    assert base["tokens_per_step"] < 1 and exact["speedup"] > 0
    assert exact["kv_speech_saving"] < 0  # the draft's cache comes on top of the backbone's

