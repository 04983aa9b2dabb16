"""Alignment hints: the codec's phone alignment gives each token its phoneme, the model predicts durations, and
every generator tells each unit what it says and stops when all is said."""

import numpy as np
import torch

from tldr_core import text
from tldr_core.codec.model import Codec, CodecConfig
from tldr_core.decoding import PatchGenerator, Request, Sampling, SpeculativeGenerator, TokenGenerator
from tldr_core.model import END, Backbone, ModelConfig, Tldr, TldrConfig
from tldr_core.training.alignment import Aligner, durations, forced_alignment, phone_positions
from tldr_core.training.lm_data import Batch
from tldr_core.training.objectives import AlignerObjective, BackboneObjective, TldrObjective

CFG = ModelConfig(speech_vocab=50, dim=64, layers=2, heads=4, kv_heads=2, ffn=128, max_len=256,
                  alignment_hints=True)
# "the cat," : BOS ð ə _ k ˈ æ t , EOS
TEXT_IDS = np.array([text.BOS_ID, *text.phoneme_ids("ð ə _ k ˈ æ t ,".split()), text.EOS_ID])


def peaky(n_frames: int, peaks: dict[int, int], classes: int = 40) -> np.ndarray:
    """CTC log-probabilities: blank everywhere except label `peaks[t]` at frame t."""
    probs = np.full((n_frames, classes), 0.01 / classes)
    probs[:, 0] = 0.99
    for t, label in peaks.items():
        probs[t] = 0.01 / classes
        probs[t, label] = 0.99
    return np.log(probs / probs.sum(1, keepdims=True))


def test_forced_alignment_finds_where_each_phone_starts():
    positions, labels = phone_positions(TEXT_IDS)
    assert [text.PHONEMES[TEXT_IDS[p] - 4] for p in positions] == ["ð", "ə", "k", "æ", "t"]
    starts = [2, 4, 9, 11, 15]
    first = forced_alignment(peaky(20, dict(zip(starts, labels))), labels)
    assert first.tolist() == starts


def test_a_phone_lasts_until_the_next_one_and_marks_take_no_time():
    _, labels = phone_positions(TEXT_IDS)
    d = durations(TEXT_IDS, peaky(20, dict(zip([2, 4, 9, 11, 15], labels))))
    # BOS: 2 frames of silence before ð; the last phone keeps the trailing frames; _, ˈ, "," and EOS none
    assert d.tolist() == [2, 2, 5, 0, 2, 0, 4, 5, 0, 0]
    assert d.sum() == 20


def test_too_few_tokens_for_the_phones_are_shared_out_evenly():
    d = durations(TEXT_IDS, peaky(3, {}))
    assert d.sum() == 3 and d[0] == 0


def test_repeated_phones_need_a_blank_between_them():
    ids = np.array([text.BOS_ID, *text.phoneme_ids("t t".split()), text.EOS_ID])
    _, labels = phone_positions(ids)
    assert forced_alignment(peaky(2, {0: labels[0], 1: labels[1]}), labels) is None  # t t would read as one t
    assert forced_alignment(peaky(3, {0: labels[0], 2: labels[1]}), labels).tolist() == [0, 2]


def hinted_backbone(seed: int = 0) -> Backbone:
    torch.manual_seed(seed)
    return Backbone(CFG).eval()


def test_each_token_is_told_its_phoneme_and_then_to_stop():
    bb = hinted_backbone()
    with torch.no_grad():
        for table in (bb.hints.before, bb.hints.after, bb.hints.into, bb.hints.left):
            table.weight.zero_()
        bb.hints.now.weight.copy_(torch.eye(text.VOCAB_SIZE + 1, CFG.dim))  # row i says id i
    d = torch.tensor([1, 2, 1, 0, 1, 0, 1, 1, 0, 0])
    rows = bb.hints(torch.from_numpy(TEXT_IDS), d, 10).argmax(-1).tolist()
    said = [text.BOS_ID] + [TEXT_IDS[1]] * 2 + [TEXT_IDS[2], TEXT_IDS[4], TEXT_IDS[6], TEXT_IDS[7]]
    assert rows == said + [END] * 3


def request(seed: int = 1) -> Request:
    g = torch.Generator().manual_seed(seed)
    return Request(torch.randn(256, generator=g), torch.from_numpy(TEXT_IDS), torch.randint(0, 50, (24,), generator=g))


def test_a_hinted_model_says_exactly_as_many_tokens_as_its_durations():
    bb = hinted_backbone()
    planned = int(bb.hints.predict(request().speaker, request().text_ids).sum())
    for generator in (TokenGenerator(bb, Sampling()), PatchGenerator(bb, Tldr(bb, TldrConfig(patch_size=4)),
                                                                       Sampling())):
        tokens = [t for group in generator.generate(request(), torch.Generator().manual_seed(0)) for t in group]
        assert len(tokens) == planned == generator.stats.tokens


def test_predicted_durations_give_every_phone_a_token_and_marks_none():
    bb = hinted_backbone()
    with torch.no_grad():
        bb.hints.durations.out.bias.fill_(-5.0)  # predicts ~0 tokens everywhere
    d = bb.hints.predict(torch.randn(256), torch.from_numpy(TEXT_IDS))
    phones, _ = phone_positions(TEXT_IDS)
    assert (d[phones] >= 1).all() and d[np.setdiff1d(np.arange(len(TEXT_IDS)), phones)].sum() == 0


def test_greedy_speculation_with_hints_says_what_the_backbone_says():
    bb = hinted_backbone(0)
    draft = Backbone(ModelConfig(**{**CFG.to_dict(), "dim": 32, "ffn": 64})).eval()
    greedy = Sampling(temperature=0)
    token_level = [t for g in TokenGenerator(bb, greedy).generate(request()) for t in g]
    speculative = [t for g in SpeculativeGenerator(bb, draft, greedy).generate(request()) for t in g]
    assert speculative == token_level


def batch() -> Batch:
    g = torch.Generator().manual_seed(3)
    d = [torch.tensor([2, 3, 2, 0, 4, 0, 2, 3, 0, 0]), torch.tensor([1, 4, 3, 0, 2, 0, 2, 2, 0, 0])]
    return Batch(torch.randn(2, 256, generator=g), [torch.from_numpy(TEXT_IDS)] * 2,
                 torch.randint(0, 50, (2, 24), generator=g), [torch.randint(0, 50, (int(x.sum()),), generator=g)
                                                               for x in d], d)


def test_the_backbone_learns_durations_beside_its_tokens_and_an_adapter_reads_the_hints():
    bb = hinted_backbone().train()
    objective = BackboneObjective(bb)
    optimiser = torch.optim.Adam(bb.parameters(), lr=3e-3)
    first = None
    for _ in range(30):
        loss = objective(batch())
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        first = first or dict(objective.figures)
    assert objective.figures["durations"] < 0.5 * first["durations"]
    assert objective.figures["tokens"] < first["tokens"]
    tldr = Tldr(bb, TldrConfig(patch_size=4))
    assert torch.isfinite(TldrObjective(bb, tldr)(batch()))


def test_a_phone_head_trained_on_frozen_tokens_reads_and_aligns_them():
    """`tldr-voice train aligner`, for a codec whose own checkpoint (and phone head) is gone: only the phone head
    learns, so the tokens keep their meaning; on tokens that say each phone as two of its own code, the phone
    error rate falls and forced alignment then finds each phone within a token of where it starts."""
    from test_codec_model import TINY as TINY_CODEC

    torch.manual_seed(0)
    codec = Codec(CodecConfig(**TINY_CODEC))
    frozen = {k: v.clone() for k, v in codec.state_dict().items() if not k.startswith("ctc_head.")}
    rng = np.random.default_rng(0)
    phones = sorted(text.PHONES)[:12]
    code = {p: 3 + 5 * i for i, p in enumerate(phones)}

    def batch() -> Batch:
        said = [list(rng.permutation(phones)[:int(rng.integers(4, 9))]) for _ in range(8)]  # no phone twice
        ids = [torch.tensor([text.BOS_ID, *text.phoneme_ids(s), text.EOS_ID]) for s in said]
        speech = [torch.tensor([code[p] for p in s for _ in range(2)]) for s in said]
        return Batch(torch.zeros(8, 256), ids, torch.zeros(8, 0, dtype=torch.long), speech)

    objective = AlignerObjective(codec)
    optimiser = torch.optim.Adam([p for p in codec.parameters() if p.requires_grad], lr=1e-2)
    per = []
    for step in range(150):
        if step in (0, 149):
            objective.eval()
            with torch.no_grad():
                objective(batch())
            per.append(objective.figures["per"])
            objective.train()
        loss = objective(batch())
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    assert per[0] > 80 and per[1] < 10, per
    assert all(torch.equal(v, codec.state_dict()[k]) for k, v in frozen.items())
    test = batch()
    d = Aligner(codec).durations(test.text_ids[0].numpy(), test.speech[0].numpy())
    positions, _ = phone_positions(test.text_ids[0].numpy())
    starts = np.cumsum(d)[positions] - d[positions]  # CTC may place a phone's peak on either of its tokens
    assert d.sum() == len(test.speech[0]) and (d[positions] >= 1).all()
    assert np.abs(starts - 2 * np.arange(len(positions))).max() <= 1
