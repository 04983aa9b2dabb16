"""Generation: length bounds tied to the text, sampling rules, and what TLDR saves (steps and KV cache)."""

import torch

from tldr_core.decoding import PatchGenerator, Request, Sampling, TokenGenerator, sample
from tldr_core.model import Backbone, ModelConfig, Tldr, TldrConfig

CFG = ModelConfig(speech_vocab=50, dim=64, layers=2, heads=4, kv_heads=2, ffn=128, max_len=256,
                  tokens_per_phoneme=2.0)


def request(phonemes: int = 20, prompt: int = 24) -> Request:
    g = torch.Generator().manual_seed(1)
    return Request(torch.randn(256, generator=g), torch.randint(4, 54, (phonemes + 2,), generator=g),
                   torch.randint(0, CFG.speech_vocab, (prompt,), generator=g))


class StopBiased(Backbone):
    """An untrained backbone whose STOP logit is pushed up or down by a constant."""

    stop_bias = 0.0

    def logits(self, hidden):
        out = super().logits(hidden).clone()
        out[..., self.cfg.stop] += self.stop_bias
        return out


def backbone(stop_bias: float = 0.0) -> Backbone:
    torch.manual_seed(0)
    bb = StopBiased(CFG).eval()
    bb.stop_bias = stop_bias
    return bb


def run(decoder, req, seed=0):
    groups = list(decoder.generate(req, torch.Generator().manual_seed(seed)))
    return groups, decoder.stats


def test_a_model_that_never_stops_is_cut_at_twice_the_expected_length():
    req = request(phonemes=20)  # expected 40 tokens
    groups, stats = run(TokenGenerator(backbone(-50.0), Sampling()), req)
    assert stats.tokens == 80 and not stats.stopped
    assert sum(len(g) for g in groups) == 80


def test_stop_is_refused_before_half_the_expected_length():
    groups, stats = run(TokenGenerator(backbone(+50.0), Sampling()), request(phonemes=20))
    assert stats.stopped and stats.tokens == 20


def test_zero_temperature_is_greedy():
    logits = torch.tensor([0.1, 3.0, 0.2, 5.0])
    assert sample(logits, [], Sampling(temperature=0), None, allow_stop=False, stop=3) == 1


def test_repetition_aware_sampling_escapes_a_loop():
    logits = torch.full((10,), -20.0)
    logits[7] = 20.0  # nucleus sampling would always say 7
    cfg = Sampling(top_k=1, ras_window=10, ras_threshold=0.2)
    g = torch.Generator().manual_seed(0)
    picks = [sample(logits, [7] * 10, cfg, g, True, 9) for _ in range(50)]
    assert picks.count(7) == 50  # the full distribution still says 7...
    flat = torch.zeros(10)
    top1 = sample(flat, [], Sampling(top_k=1), g, True, 9)
    picks = [sample(flat, [top1] * 10, Sampling(top_k=1), g, True, 9) for _ in range(50)]
    assert len(set(picks)) > 3  # ...but a repeated top-1 choice is redrawn from the whole distribution


def test_tldr_takes_k_times_fewer_backbone_steps_and_keeps_k_times_less_speech_cache():
    bb = backbone(-50.0)
    req = request(phonemes=24, prompt=24)
    _, base = run(TokenGenerator(bb, Sampling()), req)
    for k in (2, 4, 6, 8):
        groups, stats = run(PatchGenerator(bb, Tldr(bb, TldrConfig(patch_size=k)), Sampling()), req)
        assert all(len(g) == k for g in groups[:-1])
        assert stats.tokens == base.tokens == 96
        assert stats.backbone_steps == -(-base.tokens // k) + (base.tokens % k == 0)
        # prompt units + SOS + fed-back units, token level vs patch level
        assert base.kv_speech_bytes / stats.kv_speech_bytes > k * 0.9


def test_the_same_seed_gives_the_same_tokens():
    bb = backbone()
    dec = TokenGenerator(bb, Sampling(temperature=1.0))
    assert run(dec, request(), seed=3)[0] == run(dec, request(), seed=3)[0]
