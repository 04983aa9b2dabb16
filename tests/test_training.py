"""Training: losses fall on a tiny synthetic task, the TLDR stage never moves the backbone, resume continues
the same run, one learning-rate schedule, batches are grouped by length or mixed as the recipe says, bfloat16
where the CPU has it, and two gloo processes (torchrun's DDP, on CPU) end with identical weights."""

import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from tldr_core.model import Backbone, ModelConfig, Tldr, TldrConfig
from tldr_core.model_store import read_checkpoint
from tldr_core.training import lm_data
from tldr_core.training.lm import TrainConfig, run
from tldr_core.training.objectives import OFF_TEXT, BackboneObjective, TldrObjective, token_sequences
from tldr_core.training.schedule import warmup_cosine
from tldr_core.training.trainer import CHECKPOINT, Process, autocast

CFG = ModelConfig(speech_vocab=40, dim=64, layers=2, heads=4, kv_heads=2, ffn=128, max_len=256)


def items(n: int = 24, seed: int = 0) -> list[lm_data.Utterance]:
    """Speech that is a deterministic function of the text: learnable in a few dozen steps."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        ids = rng.integers(4, 20, size=int(rng.integers(5, 12)))
        tokens = np.repeat(ids * 2, 2)  # each phoneme -> two tokens
        out.append(lm_data.Utterance(str(i), f"spk{i % 4}", np.concatenate([[1], ids, [2]]), tokens,
                                  rng.standard_normal(256).astype(np.float32)))
    return out


def train_backbone(out, steps, resume_state=None, process=Process(0, 1, torch.device("cpu")), self_feed=0.0):
    torch.manual_seed(0)
    bb = Backbone(CFG)
    if resume_state is not None:
        bb.load_state_dict(resume_state["model"])
    cfg = TrainConfig(steps=steps, batch=4, max_prompt=24, lr=3e-3, warmup=5, validate_every=10, self_feed=self_feed)
    describe = {"kind": "backbone", "model_config": CFG.to_dict()}
    history = run(BackboneObjective(bb, self_feed=self_feed), bb, describe, items(), items(8, seed=1), cfg, out,
                  process, resume_state, "test")
    return bb, history


def test_backbone_loss_falls_and_checkpoints_hold_the_history(tmp_path):
    _, history = train_backbone(tmp_path, steps=40)
    assert history[-1]["validation"] < history[0]["validation"] - 0.5
    assert history[-1]["validation_wrong_text"] > history[-1]["validation"] + 0.03  # it has begun to read the text
    state = read_checkpoint(tmp_path / CHECKPOINT, "checkpoint")
    assert state["step"] == 40 and len(state["history"]) == 4


def test_the_alignment_prior_makes_one_head_per_layer_read_the_text_along_its_diagonal():
    objective = BackboneObjective(Backbone(CFG))
    objective.prior = 1.0
    n_text, sos, n_speech = 6, 10, 11  # 6 text positions at 1..6, SOS at 10, 11 speech tokens (and STOP) after it
    bias = objective.alignment_bias([(n_text, sos, n_speech)], 30, torch.device("cpu"))[0]
    speech_to_text = bias[0, sos:sos + n_speech + 1, 1:1 + n_text]
    assert speech_to_text.argmax(1).tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]  # the text, at an even pace
    off_text = torch.cat([bias[0, sos:sos + n_speech + 1, 0], bias[0, sos + 1, 7:sos + 2]])  # speaker; prompt, SOS..
    assert (off_text == OFF_TEXT).all()
    assert torch.equal(bias[1:], bias[1:2].expand(CFG.heads - 1, -1, -1))  # other heads: the causal mask alone
    assert torch.isinf(bias[:, 3, 4:]).all() and not torch.isinf(bias[:, 4, :5]).any()


def test_self_feeding_gives_the_inputs_that_share_of_the_models_own_samples_and_keeps_the_targets():
    utterances = items()
    batch = lm_data.sample_batch(utterances, lm_data.speakers_index(utterances), 4, 8, np.random.default_rng(0))
    objective = BackboneObjective(Backbone(CFG), self_feed=0.5)
    x, target, spans = token_sequences(objective.backbone, batch)
    fed = objective.own_samples(x, spans, batch)
    assert [len(f) for f in fed] == [len(s) for s in batch.speech]
    changed = torch.cat([f != s for f, s in zip(fed, batch.speech)]).float().mean()
    assert 0.3 < changed < 0.65  # half swapped; an untrained model's sample is rarely the true token
    assert all(torch.equal(a, b) for a, b in zip(fed, objective.own_samples(x, spans, batch)))  # one seed, one draw
    _, fed_target, _ = token_sequences(objective.backbone, batch, fed)
    assert torch.equal(fed_target, target)


@pytest.mark.parametrize("self_feed", [0.0, 0.5])
def test_an_interrupted_run_resumes_into_the_same_weights(tmp_path, monkeypatch, self_feed):
    straight, _ = train_backbone(tmp_path / "a", steps=20, self_feed=self_feed)
    real_sample = interrupt_at_step_13(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        train_backbone(tmp_path / "b", steps=20, self_feed=self_feed)
    monkeypatch.setattr(lm_data, "sample_batch", real_sample)
    state = read_checkpoint(tmp_path / "b" / CHECKPOINT, "checkpoint")
    resumed, _ = train_backbone(tmp_path / "b", steps=20, resume_state=state, self_feed=self_feed)
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=name)


def interrupt_at_step_13(monkeypatch):
    """Ctrl+C while the 13th training batch is drawn, after the checkpoint of step 10; returns the real sampler."""
    calls, real_sample = [], lm_data.sample_batch

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 13:
            raise KeyboardInterrupt
        return real_sample(*args, **kwargs)

    monkeypatch.setattr(lm_data, "sample_batch", interrupted)
    return real_sample


def test_tldr_training_learns_and_leaves_the_backbone_identical(tmp_path):
    bb, _ = train_backbone(tmp_path / "bb", steps=20)
    before = {k: v.clone() for k, v in bb.state_dict().items()}
    tldr = Tldr(bb, TldrConfig(patch_size=4, lora_rank=4))
    cfg = TrainConfig(steps=30, batch=4, max_prompt=24, lr=3e-3, warmup=5, validate_every=10)
    describe = {"kind": "tldr", "tldr_config": tldr.tcfg.to_dict()}
    history = run(TldrObjective(bb, tldr), tldr, describe, items(), items(8, seed=1), cfg,
                  tmp_path / "tldr", Process(0, 1, torch.device("cpu")), None, "test")
    assert history[-1]["validation"] < history[0]["validation"]
    assert all(torch.equal(before[k], v) for k, v in bb.state_dict().items())


def test_training_batches_hold_utterances_of_similar_length_and_validation_batches_a_random_mix():
    rng = np.random.default_rng(0)
    utterances = [lm_data.Utterance(str(i), f"spk{i % 10}", np.array([1, 5, 2]), np.zeros(n, dtype=np.int64),
                                 np.zeros(256, dtype=np.float32)) for i, n in enumerate(rng.integers(25, 400, 500))]
    index = lm_data.speakers_index(utterances)

    def spread(similar_length: bool) -> float:  # median over batches of longest / shortest utterance
        batches = [lm_data.sample_batch(utterances, index, 8, 20, np.random.default_rng(s), similar_length)
                   for s in range(50)]
        return float(np.median([max(map(len, b.speech)) / min(map(len, b.speech)) for b in batches]))

    assert spread(similar_length=True) < 1.4   # little padding
    assert spread(similar_length=False) > 3.0


def test_the_recipe_chooses_whether_training_batches_hold_similar_lengths_or_a_random_mix(tmp_path, monkeypatch):
    spreads, real_sample = [], lm_data.sample_batch

    def watched(*args, **kwargs):  # longest / shortest utterance of each training batch (validation: a random mix)
        batch = real_sample(*args, **kwargs)
        spreads.append(max(map(len, batch.speech)) / min(map(len, batch.speech)))
        return batch

    monkeypatch.setattr(lm_data, "sample_batch", watched)
    varied = [lm_data.Utterance(str(i), f"spk{i % 4}", np.array([1, 5, 2]), np.full(n, 3), np.zeros(256, np.float32))
              for i, n in enumerate(np.random.default_rng(0).integers(10, 120, 60))]
    median = {}
    for batches in ("similar", "random"):
        spreads.clear()
        cfg = TrainConfig(steps=20, batch=4, max_prompt=8, validate_every=100, batches=batches)
        bb = Backbone(CFG)
        run(BackboneObjective(bb), bb, {"kind": "backbone"}, varied, varied[:8], cfg, tmp_path / batches,
            Process(0, 1, torch.device("cpu")), None, "test")
        median[batches] = float(np.median(spreads[:20]))
        assert read_checkpoint(tmp_path / batches / CHECKPOINT, "checkpoint")["train_config"]["batches"] == batches
    assert median["similar"] < 1.4 < 2.0 < median["random"]


def test_every_learning_rate_warms_up_linearly_then_falls_along_a_half_cosine_to_its_floor_and_stays_there():
    lr = [warmup_cosine(s, peak=2e-3, steps=1000, warmup=100, floor=0.05) for s in range(1200)]
    assert lr[0] == pytest.approx(2e-5) and lr[49] == pytest.approx(1e-3) and lr[99] == pytest.approx(2e-3)
    assert lr[100] == pytest.approx(2e-3)
    assert lr[550] == pytest.approx(2e-3 * (0.05 + 0.95 / 2))  # half way through the decay: half way to the floor
    assert all(a >= b for a, b in zip(lr[100:], lr[101:]))
    assert lr[1000] == lr[1199] == pytest.approx(1e-4)


def test_precision_bfloat16_runs_matrix_products_in_bfloat16_float32_in_float32_and_auto_follows_the_hardware():
    a = torch.randn(4, 8)
    with autocast("bfloat16", torch.device("cpu")):
        assert (a @ a.T).dtype == torch.bfloat16
    with autocast("float32", torch.device("cpu")):
        assert (a @ a.T).dtype == torch.float32
    native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    with autocast("auto", torch.device("cpu")):
        assert (a @ a.T).dtype == (torch.bfloat16 if native else torch.float32)
    with pytest.raises(ValueError, match="float16"):
        autocast("float16", torch.device("cpu"))


def _ddp_worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    bb, _ = train_backbone(Path(out) / f"rank{rank}", steps=6, process=Process(rank, world, torch.device("cpu")))
    torch.save(bb.state_dict(), f"{out}/weights{rank}.pt")
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_processes_train_one_model(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    a, b = (torch.load(tmp_path / f"weights{r}.pt") for r in (0, 1))
    assert all(torch.equal(a[k], b[k]) for k in a)  # gradients were averaged: the replicas never diverged
    assert (tmp_path / "rank0" / CHECKPOINT).exists() and not (tmp_path / "rank1" / CHECKPOINT).exists()
    single, _ = train_backbone(tmp_path / "single", steps=6)
    assert any(not torch.equal(a[k], v) for k, v in single.state_dict().items())  # two ranks saw other batches
