"""Speculative decoding (SSD): a draft proposes, the backbone verifies in one pass, and with the exact rule the
tokens have the very distribution of token-by-token sampling, which a broken acceptance rule demonstrably lacks."""

from collections import Counter
from collections.abc import Callable
from dataclasses import replace

import pytest
import torch
from scipy.stats import chi2
from test_decoding import StopBiased

from tldr_core.decoding import (PatchGenerator, Request, Sampling, Speculation, SpeculativeGenerator,
                                SpeculativePatchGenerator, TokenGenerator, accept_probability, distribution, sample)
from tldr_core.model import Backbone, ModelConfig, Tldr, TldrConfig

# A toy vocabulary (4 codes + STOP) so that the joint law of the first tokens has few outcomes and can be
# written out exactly; sampling with every rule of the baseline active: top-k and top-p cut the tail, RAS
# redraws any token already in the last 4, STOP is masked for the first token (expected length 2: bounds 1..4).
TOY = ModelConfig(speech_vocab=4, dim=32, layers=2, heads=2, kv_heads=1, ffn=64, max_len=64, tokens_per_phoneme=1.0)
TOY_DRAFT = ModelConfig(speech_vocab=4, dim=16, layers=1, heads=2, kv_heads=1, ffn=32, max_len=64,
                        tokens_per_phoneme=1.0)
TOY_SAMPLING = Sampling(temperature=1.0, top_k=3, top_p=0.9, ras_window=4, ras_threshold=0.2)
FIRST = 3          # tokens whose joint law is compared
SAMPLES = 2000     # per generator
STOP = TOY.stop

CFG = ModelConfig(speech_vocab=50, dim=64, layers=2, heads=4, kv_heads=2, ffn=128, max_len=256, tokens_per_phoneme=2.0)
DRAFT = ModelConfig(speech_vocab=50, dim=32, layers=1, heads=2, kv_heads=1, ffn=64, max_len=256,
                    tokens_per_phoneme=2.0)


def random_model(cfg: ModelConfig, seed: int, std: float = 0.5) -> Backbone:
    """Untrained, with weights large enough that the next token depends strongly on the tokens before it."""
    torch.manual_seed(seed)
    model = Backbone(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, std)
    return model


def request(cfg: ModelConfig, phonemes: int, prompt: int = 24) -> Request:
    g = torch.Generator().manual_seed(1)
    return Request(torch.randn(256, generator=g), torch.randint(4, 54, (phonemes + 2,), generator=g),
                   torch.randint(0, cfg.speech_vocab, (prompt,), generator=g))


def tokens(generator, req: Request, seed: int, first: int | None = None) -> tuple[int, ...]:
    """The first `first` outcomes of one generation (a STOP ends them), as one tuple."""
    out: list[int] = []
    run = generator.generate(req, torch.Generator().manual_seed(seed))
    for group in run:
        out.extend(group)
        if first is not None and len(out) >= first:
            run.close()
            return tuple(out[:first])
    return tuple(out) + ((generator.backbone.cfg.stop,) if generator.stats.stopped else ())


def law_of(next_logits: Callable[[list[int]], torch.Tensor], req: Request, model: Backbone,
           sampling: Sampling) -> dict[tuple[int, ...], float]:
    """The probability of every outcome of the first FIRST tokens, walking every prefix: `next_logits(said)` gives
    the logits of the token after `said`, the per-token sampling distribution the rest."""
    min_tokens = int(0.5 * req.expected_tokens(model.cfg.tokens_per_phoneme))
    law: dict[tuple[int, ...], float] = {}

    def walk(said: list[int], mass: float) -> None:
        if len(said) == FIRST:
            law[tuple(said)] = mass
            return
        p = distribution(next_logits(said), said, sampling, len(said) >= min_tokens, STOP)
        for token, pt in enumerate(p.tolist()):
            if pt > 0:
                if token == STOP:
                    law[tuple(said) + (STOP,)] = mass * pt
                else:
                    walk(said + [token], mass * pt)

    with torch.inference_mode():
        walk([], 1.0)
    return law


def exact_law(model: Backbone, req: Request, sampling: Sampling) -> dict[tuple[int, ...], float]:
    """The law of token-level sampling, from full passes of `model` over each prefix (no cache)."""
    prefix = model.prefix(req.speaker[None], req.text_ids[None])
    start = torch.cat([prefix, model.speech_embed(req.prompt[None]), model.sos(1)], dim=1)

    def next_logits(said: list[int]) -> torch.Tensor:
        x = torch.cat([start, model.speech_embed(torch.tensor([said], dtype=torch.long))], dim=1)
        return model.logits(model(x)[0, -1])

    return law_of(next_logits, req, model, sampling)


def chi_square(counts: Counter, law: dict[tuple[int, ...], float]) -> tuple[float, float, float]:
    """(statistic, p-value, total variation) of observed outcome counts against an exact law; outcomes expected
    fewer than 5 times are pooled into one cell. An outcome the law gives no mass makes the statistic infinite."""
    n = sum(counts.values())
    tv = 0.5 * sum(abs(counts[outcome] / n - law.get(outcome, 0.0)) for outcome in {*counts, *law})
    if any(outcome not in law for outcome in counts):
        return float("inf"), 0.0, tv
    cells, pooled_obs, pooled_exp = [], 0, 0.0
    for outcome, p in law.items():
        if n * p >= 5:
            cells.append((counts[outcome], n * p))
        else:
            pooled_obs, pooled_exp = pooled_obs + counts[outcome], pooled_exp + n * p
    if pooled_exp > 0:
        cells.append((pooled_obs, pooled_exp))
    statistic = sum((o - e) ** 2 / e for o, e in cells)
    p_value = float(chi2.sf(statistic, len(cells) - 1)) if len(cells) > 1 else 1.0  # one cell: nothing to test
    return statistic, p_value, tv


@pytest.fixture(autouse=True)
def one_thread():
    """Thousands of tiny forward passes: a second thread only spins (and the machine may be busy)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_the_distribution_is_the_one_sample_draws_from():
    """`distribution` is the baseline's `sample` written out, STOP mask and RAS mixture included."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(8, generator=g)
    cfg = Sampling(temperature=0.9, top_k=4, top_p=0.8, ras_window=4, ras_threshold=0.2)
    for history, allow_stop in (([], False), ([1, 2, 1], True), ([5, 6, 7, 0], False)):
        p = distribution(logits, history, cfg, allow_stop, stop=7)
        draws = Counter(sample(logits, history, cfg, g, allow_stop, 7) for _ in range(6000))
        law = {(t,): float(pt) for t, pt in enumerate(p) if pt > 0}
        assert len(law) >= 3
        _, p_value, _ = chi_square(Counter({(t,): c for t, c in draws.items()}), law)
        assert p_value > 1e-3, (history, p_value)
    assert distribution(logits, [], Sampling(temperature=0), True, 7).tolist() == \
        [1.0 if t == int(logits.argmax()) else 0.0 for t in range(8)]


@pytest.mark.slow
def test_speculative_tokens_have_exactly_the_backbones_distribution_and_broken_rules_do_not(monkeypatch):
    """SAMPLES seeded generations of each kind against the exact law of the backbone's first FIRST tokens: token
    level and exact speculation fit it (chi-square p > 1e-3); a verifier that keeps every drafted token, or one
    that draws its correction from the backbone's distribution instead of the residual, is told apart (p < 1e-12)."""
    backbone, draft = random_model(TOY, seed=0, std=0.1), random_model(TOY_DRAFT, seed=1, std=0.1)
    req = request(TOY, phonemes=2)  # expected 2 tokens: STOP masked for the first, allowed from the second
    law = exact_law(backbone, req, TOY_SAMPLING)
    assert sum(law.values()) == pytest.approx(1.0, abs=1e-5) and len(law) > 40
    draft_law = exact_law(draft, req, TOY_SAMPLING)
    assert 0.5 * sum(abs(law.get(o, 0) - draft_law.get(o, 0)) for o in {*law, *draft_law}) > 0.5  # far apart

    def fit(generator) -> tuple[float, float, float]:
        return chi_square(Counter(tokens(generator, req, seed, FIRST) for seed in range(SAMPLES)), law)

    baseline = fit(TokenGenerator(backbone, TOY_SAMPLING))
    exact = [fit(SpeculativeGenerator(backbone, draft, TOY_SAMPLING, Speculation(gamma=g))) for g in (2, 4)]
    for _, p_value, tv in (baseline, *exact):
        assert p_value > 1e-3 and tv < 0.1, (baseline, exact)
    with monkeypatch.context() as broken:
        broken.setattr("tldr_core.decoding.accept_probability", lambda p, q, speculation: 1.0)
        always = fit(SpeculativeGenerator(backbone, draft, TOY_SAMPLING, Speculation(gamma=2)))
    with monkeypatch.context() as broken:
        broken.setattr("tldr_core.decoding._residual", lambda p, q, g: int(torch.multinomial(p, 1, generator=g)))
        from_p = fit(SpeculativeGenerator(backbone, draft, TOY_SAMPLING, Speculation(gamma=2)))
    for _, p_value, tv in (always, from_p):
        assert p_value < 1e-12 and tv > 0.15, (always, from_p)


@pytest.mark.parametrize("gamma", [1, 2, 3, 5])
def test_greedy_speculation_says_what_greedy_token_level_says(gamma):
    """At temperature 0 both must say the same tokens: a cache not rolled back right would change them."""
    backbone, draft = random_model(CFG, seed=0, std=0.3), random_model(DRAFT, seed=1, std=0.3)
    req, greedy = request(CFG, phonemes=20), Sampling(temperature=0)
    expected = tokens(TokenGenerator(backbone, greedy), req, seed=0)
    speculative = SpeculativeGenerator(backbone, draft, greedy, Speculation(gamma=gamma))
    assert tokens(speculative, req, seed=0) == expected
    stats = speculative.stats
    assert 0 < stats.accepted < stats.drafted  # some drafts were wrong, so the rollback was exercised
    assert stats.backbone_steps < stats.tokens + 1


def test_a_draft_that_is_the_backbone_is_always_accepted_and_gives_gamma_plus_one_tokens_per_pass():
    backbone = random_model(CFG, seed=0, std=0.3)
    generator = SpeculativeGenerator(backbone, backbone, Sampling(), Speculation(gamma=3))
    said = tokens(generator, request(CFG, phonemes=20), seed=4)
    stats = generator.stats
    assert stats.accepted == stats.drafted and stats.acceptance_rate == 1.0
    assert len(said) >= 20 and stats.backbone_steps <= -(-len(said) // 4) + 1
    assert stats.tokens_per_step > 3


def stop_biased(cfg: ModelConfig, seed: int, bias: float) -> StopBiased:
    torch.manual_seed(seed)
    model = StopBiased(cfg).eval()
    model.stop_bias = bias
    return model


@pytest.mark.parametrize("gamma", [1, 4, 7])
def test_the_length_bounds_are_the_baselines(gamma):
    """STOP refused before half the expected length, output cut at twice it, whatever gamma and the draft want."""
    req = request(CFG, phonemes=20)  # expected 40 tokens
    never = SpeculativeGenerator(stop_biased(CFG, 0, -50.0), stop_biased(DRAFT, 1, +50.0), Sampling(),
                                 Speculation(gamma=gamma))
    assert len(tokens(never, req, seed=0)) == 80 and never.stats.tokens == 80 and not never.stats.stopped
    eager = SpeculativeGenerator(stop_biased(CFG, 0, +50.0), stop_biased(DRAFT, 1, -50.0), Sampling(),
                                 Speculation(gamma=gamma))
    assert tokens(eager, req, seed=0)[-1] == CFG.stop and eager.stats.tokens == 20 and eager.stats.stopped


def test_stats_count_drafts_and_both_caches():
    """The caches end holding the prompt and the tokens said (rejected drafts rolled back), the draft's counted too."""
    backbone, draft = random_model(CFG, seed=0, std=0.3), random_model(DRAFT, seed=1, std=0.3)
    generator = SpeculativeGenerator(backbone, draft, Sampling(), Speculation(gamma=4))
    said = tokens(generator, request(CFG, phonemes=20, prompt=24), seed=2)
    s = generator.stats
    assert s.tokens == len(said) - s.stopped and s.history == list(said[:s.tokens])
    assert s.draft_steps == s.drafted and s.backbone_steps >= -(-s.tokens // 5)
    bb_position = backbone.new_cache(max_len=1).bytes_per_position
    dr_position = draft.new_cache(max_len=1).bytes_per_position
    draft_speech = s.kv_speech_bytes - (24 + s.tokens) * bb_position
    assert draft_speech in ((24 + s.tokens) * dr_position, (24 + s.tokens - 1) * dr_position)  # the last unread
    assert s.kv_bytes > s.draft_kv_bytes > draft_speech


def test_the_ssd_rule_loosens_the_exact_one_by_its_tolerance():
    exact, loose = Speculation(), Speculation(acceptance="ssd", tolerance=0.2)
    assert accept_probability(0.3, 0.6, exact) == pytest.approx(0.5)
    assert accept_probability(0.3, 0.6, loose) == pytest.approx(0.7)
    assert accept_probability(0.9, 0.6, exact) == accept_probability(0.9, 0.6, loose) == 1.0
    assert accept_probability(0.0, 0.6, loose) == pytest.approx(0.2)  # even a token the backbone would never say
    with pytest.raises(ValueError):
        Speculation(acceptance="always")
    backbone, draft = random_model(CFG, seed=0, std=0.3), random_model(DRAFT, seed=1, std=0.3)
    rates = {}
    for rule in (exact, Speculation(acceptance="ssd", tolerance=0.3)):
        generator = SpeculativeGenerator(backbone, draft, Sampling(), rule)
        drafted = accepted = 0
        for seed in range(5):
            tokens(generator, request(CFG, phonemes=20), seed)
            drafted, accepted = drafted + generator.stats.drafted, accepted + generator.stats.accepted
        rates[rule.acceptance] = accepted / drafted
    assert rates["ssd"] > rates["exact"] + 0.1


# ------------------------------------------------------------------------ TLDR patches + speculation

def random_tldr(backbone: Backbone, k: int, seed: int, std: float) -> Tldr:
    """An untrained adapter whose compressor and extractor matter (weights large enough to change the tokens)."""
    torch.manual_seed(seed)
    tldr = Tldr(backbone, TldrConfig(patch_size=k)).eval()
    with torch.no_grad():
        for name, p in tldr.named_parameters():
            if p.dim() == 2 and not name.startswith("lora"):
                p.normal_(0, std)
    return tldr


def exact_patch_law(patches: PatchGenerator, req: Request) -> dict[tuple[int, ...], float]:
    """The law of TLDR's sampling, from full passes over each prefix: the adapted backbone over the whole patches
    said, the extractor over the tokens of the patch being said."""
    bb, tldr, k = patches.backbone, patches.tldr, patches.tldr.k
    speaker = req.speaker[None]
    start = torch.cat([bb.prefix(speaker, req.text_ids[None]), tldr.patches(bb, req.prompt[None]), bb.sos(1)], dim=1)

    def next_logits(said: list[int]) -> torch.Tensor:
        whole = len(said) // k * k
        x = torch.cat([start, tldr.patches(bb, torch.tensor([said[:whole]], dtype=torch.long))], dim=1)
        rows = [tldr.extractor.start(bb(x)[:, -1], speaker),
                bb.speech_embed(torch.tensor([said[whole:]], dtype=torch.long))]
        return bb.logits(tldr.extractor(torch.cat(rows, dim=1))[0, -1])

    return law_of(next_logits, req, bb, patches.sampling)


@pytest.mark.slow
def test_speculative_patches_have_exactly_tldrs_distribution_and_broken_rules_do_not(monkeypatch):
    """As for SSD, against the exact law of TLDR k=2's first FIRST tokens (they span two patches, so a drafted
    patch is verified from the hidden state of the one before): plain TLDR and exact speculation fit it; keeping
    every drafted token, or correcting from the extractor's distribution instead of the residual, does not."""
    backbone, draft = random_model(TOY, seed=0, std=0.1), random_model(TOY_DRAFT, seed=1, std=0.1)
    patches = PatchGenerator(backbone, random_tldr(backbone, 2, seed=2, std=0.3), TOY_SAMPLING)
    req = request(TOY, phonemes=2)
    law = exact_patch_law(patches, req)
    assert sum(law.values()) == pytest.approx(1.0, abs=1e-5) and len(law) > 40
    draft_law = exact_law(draft, req, TOY_SAMPLING)
    assert 0.5 * sum(abs(law.get(o, 0) - draft_law.get(o, 0)) for o in {*law, *draft_law}) > 0.5

    def fit(generator) -> tuple[float, float, float]:
        return chi_square(Counter(tokens(generator, req, seed, FIRST) for seed in range(SAMPLES)), law)

    plain = fit(patches)
    exact = [fit(SpeculativePatchGenerator(patches, draft, Speculation(gamma=g))) for g in (1, 2)]
    for _, p_value, tv in (plain, *exact):
        assert p_value > 1e-3 and tv < 0.1, (plain, exact)
    with monkeypatch.context() as broken:
        broken.setattr("tldr_core.decoding.accept_probability", lambda p, q, speculation: 1.0)
        always = fit(SpeculativePatchGenerator(patches, draft, Speculation(gamma=2)))
    with monkeypatch.context() as broken:
        broken.setattr("tldr_core.decoding._residual", lambda p, q, g: int(torch.multinomial(p, 1, generator=g)))
        from_p = fit(SpeculativePatchGenerator(patches, draft, Speculation(gamma=1)))
    for _, p_value, tv in (always, from_p):
        assert p_value < 1e-12 and tv > 0.15, (always, from_p)


def bigram_draft(cfg: ModelConfig, said: tuple[int, ...]) -> Backbone:
    """A draft that proposes the most frequent successor in `said` of the last token it read: its blocks add
    nothing, so its hidden state is its input's embedding (one-hot), and its head maps token to successor."""
    draft = Backbone(cfg).eval()
    successor = {a: Counter(b for x, b in zip(said, said[1:]) if x == a).most_common(1)[0][0] for a in said[:-1]}
    with torch.no_grad():
        for block in draft.blocks:
            block.attn.wo.weight.zero_()
            block.w_down.weight.zero_()
        draft.speech_embed.weight.copy_(torch.eye(cfg.speech_vocab + 1, cfg.dim) * 5)
        draft.head.weight.zero_()
        for a, b in successor.items():
            draft.head.weight[b, a] = 20.0
    return draft


@pytest.mark.parametrize("k, gamma", [(2, 1), (2, 3), (4, 1), (4, 2)])
def test_greedy_speculative_patches_say_what_greedy_tldr_says(k, gamma):
    """At temperature 0 both must say the same tokens, with a draft that knows TLDR's bigrams (mostly right) and
    with an unrelated one: caches not rolled back right, a patch verified from the wrong hidden state, or a bonus
    patch taken after a correction would change them."""
    backbone = random_model(TOY, seed=0, std=0.3)
    patches = PatchGenerator(backbone, random_tldr(backbone, k, seed=7, std=0.3), Sampling(temperature=0))
    req = request(TOY, phonemes=12)
    expected = tokens(patches, req, seed=0)
    rates = []
    for draft in (bigram_draft(TOY_DRAFT, expected), random_model(TOY_DRAFT, seed=1, std=0.3)):
        speculative = SpeculativePatchGenerator(patches, draft, Speculation(gamma=gamma))
        assert tokens(speculative, req, seed=0) == expected
        rates.append(speculative.stats.acceptance_rate)
        assert speculative.stats.backbone_steps <= patches.stats.backbone_steps
    assert 0.3 < rates[0] < 1.0 and rates[1] < rates[0]  # rejections too, so the rollback was exercised


def test_a_draft_that_agrees_with_the_extractor_settles_gamma_plus_one_patches_per_pass():
    """A TLDR whose extractor always says token 3 and a draft that always proposes it: every drafted patch is
    kept and the extractor adds one, so each pass says (gamma + 1) k tokens."""
    backbone, draft = random_model(CFG, seed=0, std=0.3), random_model(DRAFT, seed=1, std=0.3)
    tldr = random_tldr(backbone, 4, seed=2, std=0.3)
    for model in (backbone, draft):
        model.logits = lambda hidden: torch.nn.functional.one_hot(
            torch.full(hidden.shape[:-1], 3), CFG.speech_vocab + 1).float() * 50
    generator = SpeculativePatchGenerator(PatchGenerator(backbone, tldr, Sampling()), draft, Speculation(gamma=2))
    said = tokens(generator, request(CFG, phonemes=20), seed=0)
    s = generator.stats
    assert said == (3,) * 80 and s.accepted == s.drafted and s.tokens == 80
    assert s.backbone_steps == -(-80 // 12) + (80 % 12 == 0)


@pytest.mark.parametrize("k, gamma", [(2, 1), (4, 2), (4, 3)])
def test_speculative_patches_keep_tldrs_length_bounds(k, gamma):
    """STOP refused before half the expected length, output cut at twice it, whatever gamma and the draft want."""
    req = request(CFG, phonemes=20)  # expected 40 tokens
    never = stop_biased(CFG, 0, -50.0)
    generator = SpeculativePatchGenerator(PatchGenerator(never, random_tldr(never, k, 2, 0.3), Sampling()),
                                          stop_biased(DRAFT, 1, +50.0), Speculation(gamma=gamma))
    assert len(tokens(generator, req, seed=0)) == 80 and not generator.stats.stopped
    eager = stop_biased(CFG, 0, +50.0)
    generator = SpeculativePatchGenerator(PatchGenerator(eager, random_tldr(eager, k, 2, 0.3), Sampling()),
                                          stop_biased(DRAFT, 1, -50.0), Speculation(gamma=gamma))
    assert tokens(generator, req, seed=0)[-1] == CFG.stop and generator.stats.tokens == 20


def test_speculative_patches_follow_a_hinted_models_durations():
    """With alignment hints the tokens must be greedy TLDR's, as many as the durations say."""
    cfg = replace(TOY, alignment_hints=True, max_len=256)
    backbone = random_model(cfg, seed=0, std=0.3)
    with torch.no_grad():  # 2 tokens per phone
        backbone.hints.durations.out.weight.zero_()
        backbone.hints.durations.out.bias.fill_(1.1)
    patches = PatchGenerator(backbone, random_tldr(backbone, 4, seed=7, std=0.3), Sampling(temperature=0))
    req = request(cfg, phonemes=12)
    expected = tokens(patches, req, seed=0)
    draft = bigram_draft(replace(TOY_DRAFT, alignment_hints=True, max_len=256), expected)
    speculative = SpeculativePatchGenerator(patches, draft, Speculation(gamma=2))
    assert tokens(speculative, req, seed=0) == expected and speculative.stats.accepted > 0
    assert len(expected) == int(backbone.hints.predict(req.speaker, req.text_ids).sum())


def test_speculative_patch_caches_hold_the_prompt_and_the_tokens_said():
    """Rejected drafts rolled back: the backbone ends holding the prompt's patches and the whole patches said (but
    perhaps the last), the draft the prompt and the tokens said (but perhaps the last patch's)."""
    backbone, draft = random_model(CFG, seed=0, std=0.3), random_model(DRAFT, seed=1, std=0.3)
    patches = PatchGenerator(backbone, random_tldr(backbone, 4, seed=2, std=0.3), Sampling())
    generator = SpeculativePatchGenerator(patches, draft, Speculation(gamma=2))
    said = tokens(generator, request(CFG, phonemes=20, prompt=24), seed=2)
    s = generator.stats
    assert s.tokens == len(said) - s.stopped and s.history == list(said[:s.tokens])
    assert 0 < s.accepted < s.drafted
    bb_position = patches.backbone.new_cache(max_len=1).bytes_per_position
    dr_position = draft.new_cache(max_len=1).bytes_per_position
    possible = {(24 // 4 + p) * bb_position + (24 + t) * dr_position
                for p in (s.tokens // 4 - 1, s.tokens // 4) for t in range(s.tokens - 4, s.tokens + 1)}
    assert s.kv_speech_bytes in possible and s.kv_bytes > s.draft_kv_bytes
